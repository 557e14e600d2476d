"""Errors of the ledger, each also one of the wire error kinds in `config.errors`."""

from __future__ import annotations

from config.errors import Conflict, Invalid, NotFound, TribuneError, Unavailable


class RecorderError(TribuneError):
    """Root of the recorder's errors."""


class LedgerUnavailable(RecorderError, Unavailable):
    """PostgreSQL cannot be reached; nothing was written."""


class MigrationError(RecorderError):
    """The schema cannot be brought up to date."""


class SessionNotFound(RecorderError, NotFound):
    pass


class SessionConflict(RecorderError, Conflict):
    pass


class InvalidInput(RecorderError, Invalid):
    pass
