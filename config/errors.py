"""The error kinds every package's exceptions derive from, so the edges (HTTP, Socket.IO)
can map any of them to a status and a wire payload `{"code", "message"}` in one place."""

from __future__ import annotations


class TribuneError(Exception):
    """Root of every error the project raises on purpose; the message is for the user."""

    code = "error"
    status = 500

    def __init__(self, message: str, *, details: object = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def payload(self) -> dict[str, object]:
        body: dict[str, object] = {"code": self.code, "message": self.message}
        if self.details is not None:
            body["details"] = self.details
        return body


class BadRequest(TribuneError):
    code, status = "bad_request", 400


class Unauthorized(TribuneError):
    code, status = "unauthorized", 401


class Forbidden(TribuneError):
    code, status = "forbidden", 403


class NotFound(TribuneError):
    code, status = "not_found", 404


class Conflict(TribuneError):
    code, status = "conflict", 409


class TooLarge(TribuneError):
    code, status = "too_large", 413


class Unsupported(TribuneError):
    code, status = "unsupported_media_type", 415


class Invalid(TribuneError):
    code, status = "invalid", 422


class RateLimited(TribuneError):
    code, status = "rate_limited", 429


class Unavailable(TribuneError):
    code, status = "unavailable", 503
