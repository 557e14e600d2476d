"""Errors of the live channel, each also one of the wire error kinds in `config.errors`."""

from __future__ import annotations

from config.errors import Conflict, Forbidden, Invalid, NotFound, RateLimited, TribuneError


class InteractionError(TribuneError):
    """Root of the live channel's errors."""


class InvalidMessage(InteractionError, Invalid):
    pass


class NotPermitted(InteractionError, Forbidden):
    pass


class CommentNotFound(InteractionError, NotFound):
    pass


class ModerationConflict(InteractionError, Conflict):
    pass


class SlowDown(InteractionError, RateLimited):
    def __init__(self, retry_after: float) -> None:
        super().__init__(
            f"too many comments; wait {retry_after:.1f} s before the next one",
            details={"retry_after": round(retry_after, 1)},
        )
        self.retry_after = retry_after


class PollNotFound(InteractionError, NotFound):
    pass


class PollConflict(InteractionError, Conflict):
    """The poll's state does not allow this (e.g. editing an open poll)."""


class PollClosed(InteractionError, Conflict):
    code = "poll_closed"


class AlreadyVoted(InteractionError, Conflict):
    code = "already_voted"
