"""The HTTP edge: JSON errors, security headers, metrics, callers and request bodies.

Every package's errors derive from `config.errors.TribuneError`; this is the one place
they become HTTP statuses and `{"error": {"code", "message"}}` bodies.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
import msgspec
import redis.exceptions
from aiohttp import web

from config import keys
from config.auth import AuthError, Principal
from config.errors import BadRequest, Invalid, TooLarge, TribuneError, Unsupported

log = logging.getLogger("tribune.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
T = TypeVar("T")

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "media-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'self'"
)

# Headers every response carries (pages add their own policy on top).
EDGE_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
}

# Errors that mean PostgreSQL or Redis is unreachable, not that the request is wrong.
UNAVAILABLE = (
    OSError,
    TimeoutError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid",
    429: "rate_limited",
    503: "unavailable",
}


def error_response(status: int, code: str, message: str, details: object = None) -> web.Response:
    body: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        body["details"] = details
    return web.json_response({"error": body}, status=status)


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=msgspec.json.encode(data), status=status, content_type="application/json")


@web.middleware
async def edge_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    metrics = request.app[keys.METRICS]
    route = request.match_info.route.resource
    route_name = route.canonical if route is not None else "unmatched"
    started = time.perf_counter()
    try:
        response = await handler(request)
    except Exception as exc:
        if request.writer.output_size:
            # A response is on the wire already (a websocket's upgrade): no error response can
            # follow it. aiohttp logs the error and drops the connection.
            raise
        response = _response_for(request, exc)
    metrics.served(request.method, route_name, response.status, time.perf_counter() - started)
    headers = response.headers
    for name, value in EDGE_HEADERS.items():
        headers.setdefault(name, value)
    if request.path.startswith("/api/"):
        headers.setdefault("Cache-Control", "no-store")
    return response


def _response_for(request: web.Request, exc: Exception) -> web.Response:
    """The JSON error for what a handler raised; a redirect is raised again."""
    if isinstance(exc, TribuneError):
        if exc.status >= 500:
            log.warning("%s %s: %s", request.method, request.path, exc.message)
        return error_response(exc.status, exc.code, exc.message, exc.details)
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            raise exc
        message = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
        if exc.status == 413:
            message = "the request body is too large"
        elif exc.status == 404:
            message = f"nothing here: {request.path}"
        return error_response(exc.status, _HTTP_CODES.get(exc.status, "error"), message)
    if isinstance(exc, UNAVAILABLE):
        log.warning("%s %s: dependency unavailable: %r", request.method, request.path, exc)
        return error_response(503, "unavailable", "a backing service is unreachable; try again shortly")
    log.error("%s %s failed", request.method, request.path, exc_info=exc)
    return error_response(500, "internal", "internal error; the incident is logged")


def caller(request: web.Request) -> Principal:
    """The verified caller of a REST request (`Authorization: Bearer <token>`)."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if header and scheme.lower() != "bearer":
        raise AuthError("use `Authorization: Bearer <token>`")
    return request.app[keys.VERIFIER].verify(token.strip() or None)


async def read_body(request: web.Request, *, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise TooLarge(f"the body is {request.content_length} bytes; the limit is {limit}")
    body = await request.content.read(limit + 1)
    if len(body) > limit:
        raise TooLarge(f"the body is over the limit of {limit} bytes")
    return body


async def read_json(request: web.Request, into: type[T], *, limit: int = 256 * 1024) -> T:
    """Parse and validate a JSON body into a typed struct, or say exactly what is wrong."""
    if request.content_type != "application/json":
        raise Unsupported("send the body as application/json")
    body = await read_body(request, limit=limit)
    try:
        return msgspec.json.decode(body, type=into)
    except msgspec.ValidationError as exc:
        raise Invalid(f"invalid request: {exc}") from None
    except msgspec.DecodeError as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from None
