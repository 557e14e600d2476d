"""The node's HTTP front: the few GETs a node answers thousands of times a second (live HLS
playlists and segments) answered straight from memory; every other connection handed to
aiohttp.

A connection starts on `Front`. While each request on it is a plain `GET` of a path a
registered `Quick` route answers, the front writes the response itself: a head and the
body, no request or response objects. At the first request that is anything else (another
path, another method, a body, an upgrade, a header it does not read plainly, an error to
report) the connection is handed, with every byte not yet answered, to aiohttp's own
protocol for good; aiohttp then parses and answers that request as if it had had the
connection from the start. The front only ever answers `200`: errors, redirects and
refusals stay aiohttp's, in one place.

`NodeRunner` is aiohttp's `AppRunner` with the front in front; `tribune serve` and the
tests' nodes run it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

from aiohttp import web
from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http import SERVER_SOFTWARE

from config import keys
from config.web import EDGE_HEADERS

log = logging.getLogger("tribune.http")

MAX_QUEUED = 64 * 1024  # bytes of pipelined requests read ahead while one waits
MAX_HEAD = 8190  # bytes of request line and headers; more goes to aiohttp, which refuses it
IDLE_SECONDS = 75.0  # a keep-alive connection with no request for this long is closed
SWEEP_SECONDS = 5.0

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_TARGET = re.compile(r"/[\x21-\x7e]*")  # origin-form, visible ASCII only
_HANDED_TO_AIOHTTP = frozenset(
    {"content-length", "transfer-encoding", "upgrade", "expect", "proxy-connection"}
)
MAX_HEADERS = 128  # as aiohttp's parser


@dataclass(frozen=True, slots=True)
class Answer:
    """A `200` the front writes: the route (for metrics), the body and its two headers."""

    route: str
    content_type: str
    cache_control: str
    body: bytes


# A quick route: (path, query string) → an Answer now, None (not the front's: aiohttp
# answers it), or an awaitable of either when it must first read something (Redis, the
# database) into memory.
Quick = Callable[[str, str], "Answer | Awaitable[Answer | None] | None"]


@dataclass(slots=True)
class QuickRoutes:
    """Path prefixes the front answers, each with its route; set up by the packages."""

    routes: dict[str, Quick]

    def add(self, prefix: str, quick: Quick) -> None:
        self.routes[prefix] = quick


QUICK_ROUTES: web.AppKey[QuickRoutes] = web.AppKey("quick_routes")


def quick_routes(app: web.Application) -> QuickRoutes:
    if QUICK_ROUTES not in app:
        app[QUICK_ROUTES] = QuickRoutes({})
    return app[QUICK_ROUTES]


@dataclass(frozen=True, slots=True)
class _Request:
    path: str
    query: str
    close: bool  # `Connection: close`: the connection ends after this response


def parse_head(head: bytes) -> _Request | None:
    """A plain `GET` over HTTP/1.1 without a body, with its one `Host`, or None: anything
    else (a body, an upgrade, folded or malformed headers, no or two `Host`, another method
    or version) is aiohttp's."""
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        return None
    lines = text.split("\r\n")
    if len(lines) > MAX_HEADERS + 1:
        return None
    request_line = lines[0].split(" ")
    if len(request_line) != 3 or request_line[0] != "GET" or request_line[2] != "HTTP/1.1":
        return None
    close = False
    hosts = 0
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or _TOKEN.fullmatch(name) is None or not value.isprintable():
            return None
        lowered = name.lower()
        if lowered in _HANDED_TO_AIOHTTP:
            return None
        if lowered == "host":
            hosts += 1
        elif lowered == "connection":
            tokens = {t.strip().lower() for t in value.split(",")}
            if "upgrade" in tokens:
                return None
            close = close or "close" in tokens
    target = request_line[1]
    if hosts != 1 or _TARGET.fullmatch(target) is None or "#" in target:
        return None
    path, _, query = target.partition("?")
    return _Request(path, query, close)


class FrontServer:
    """The protocol factory sites listen with: a `Front` per connection, over aiohttp's
    `web.Server` (which makes the protocol a handed-over connection continues on)."""

    def __init__(self, handler: web.Server, app: web.Application) -> None:
        self.handler = handler
        self.routes = quick_routes(app)
        self.metrics = app[keys.METRICS]
        self.connections: set[Front] = set()
        self.idle_seconds = IDLE_SECONDS
        self.sweep_seconds = SWEEP_SECONDS
        self.closing = False
        self.extra_headers = "".join(f"{k}: {v}\r\n" for k, v in EDGE_HEADERS.items())
        self._sweeper: asyncio.Task[None] | None = None

    def __call__(self) -> Front:
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep(), name="http front sweep")
        return Front(self)

    def quick(self, path: str) -> Quick | None:
        for prefix, quick in self.routes.routes.items():
            if path.startswith(prefix):
                return quick
        return None

    async def _sweep(self) -> None:
        """Closes connections with no answer for `idle_seconds`: counted from the last answer,
        or from a request's first byte while its head is incomplete (trickling a head byte by
        byte does not keep a connection). Keep-alive does not mean forever."""
        while True:
            await asyncio.sleep(self.sweep_seconds)
            limit = time.monotonic() - self.idle_seconds
            idle = [f for f in self.connections if f.since < limit and f.pending is None and not f.paused]
            for front in idle:
                front.close()

    async def close(self, timeout: float = 5.0) -> None:
        """The node is stopping: answers being read finish (for up to `timeout` seconds),
        then the front's connections are closed; aiohttp closes its own."""
        self.closing = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        pending = [f.pending for f in self.connections if f.pending is not None]
        if pending:
            await asyncio.wait(pending, timeout=timeout)
        for front in list(self.connections):
            front.close()


class Front(asyncio.Protocol):
    """One connection while the front answers it (see the module's description)."""

    __slots__ = ("buffer", "paused", "pending", "server", "since", "transport")

    def __init__(self, server: FrontServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.paused = False
        self.pending: asyncio.Future[Any] | None = None  # an answer waiting for I/O
        self.since = time.monotonic()  # idle since: the last answer, or a head's first byte

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.transport = None  # an answer still being read is dropped when it comes

    def data_received(self, data: bytes) -> None:
        if self.buffer:
            self.buffer += data
        else:
            self.buffer, self.since = data, time.monotonic()
        if self.pending is None and not self.paused:
            self._serve()
        elif len(self.buffer) > MAX_QUEUED and self.transport is not None:
            self.transport.pause_reading()  # resumed once what is queued is answered

    def eof_received(self) -> bool | None:
        return None  # the client is done sending: close once it is answered (asyncio does)

    def pause_writing(self) -> None:
        # The client reads slower than it asks: stop reading its requests until it catches up.
        self.paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.paused = False
        if self.transport is not None:
            self.transport.resume_reading()
            if self.pending is None:
                self._serve()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _serve(self) -> None:
        """Answers the complete requests in the buffer, in order, while they are the front's."""
        while self.buffer and self.transport is not None and not self.paused:
            buffer = self.buffer
            if not buffer.startswith(b"GET /"[: len(buffer)]):
                return self._hand_over()
            end = buffer.find(b"\r\n\r\n", 0, MAX_HEAD + 4)
            if end < 0:
                if len(buffer) > MAX_HEAD or buffer.count(b"\n") != buffer.count(b"\r\n"):
                    return self._hand_over()  # too long, or lines ended by a bare LF
                return None
            request = parse_head(buffer[:end])
            quick = self.server.quick(request.path) if request is not None else None
            if request is None or quick is None:
                return self._hand_over()
            started = time.perf_counter()
            answer = quick(request.path, request.query)
            if answer is None:
                return self._hand_over()
            if not isinstance(answer, Answer):
                self.pending = asyncio.ensure_future(self._later(answer, request, end + 4, started))
                return None
            self._answer(answer, request, end + 4, started)
        return None

    async def _later(
        self, awaitable: Awaitable[Answer | None], request: _Request, length: int, started: float
    ) -> None:
        try:
            answer = await awaitable
        except Exception:  # whatever went wrong, aiohttp's handler meets it again and says so
            log.debug("a quick route failed; aiohttp answers %s", request.path, exc_info=True)
            answer = None
        finally:
            self.pending = None
        if self.transport is None:
            return
        if self.paused:
            return  # the request is still in the buffer: asked again once the client reads
        if answer is None:
            self._hand_over()
            return
        self._answer(answer, request, length, started)
        if self.transport is not None and not self.paused:
            self.transport.resume_reading()
            self._serve()

    def _answer(self, answer: Answer, request: _Request, length: int, started: float) -> None:
        transport = self.transport
        assert transport is not None
        self.buffer = self.buffer[length:]
        self.since = time.monotonic()
        server = self.server
        close = "Connection: close\r\n" if request.close else ""
        head = (
            f"HTTP/1.1 200 OK\r\nContent-Type: {answer.content_type}\r\n"
            f"Cache-Control: {answer.cache_control}\r\n{server.extra_headers}"
            f"Content-Length: {len(answer.body)}\r\nDate: {rfc822_formatted_time()}\r\n"
            f"Server: {SERVER_SOFTWARE}\r\n{close}\r\n"
        )
        transport.writelines((head.encode(), answer.body))
        server.metrics.served("GET", answer.route, 200, time.perf_counter() - started)
        if request.close:
            transport.close()
            self.transport = None

    def _hand_over(self) -> None:
        """aiohttp's protocol takes the connection, and the bytes not yet answered."""
        transport = self.transport
        if transport is None:
            return
        if transport.is_closing() or self.server.closing:
            transport.close()  # the node is stopping: nothing new starts
            return
        self.server.connections.discard(self)
        self.transport = None
        handler = self.server.handler()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        transport.resume_reading()  # aiohttp's protocol pauses it when it wants to
        buffer, self.buffer = self.buffer, b""
        if buffer:
            handler.data_received(buffer)


class NodeRunner(web.AppRunner):
    """aiohttp's runner, listening through the front."""

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._front: FrontServer | None = None

    async def setup(self) -> None:
        await super().setup()
        handler = super().server
        assert handler is not None
        self._front = FrontServer(handler, self.app)

    @property
    def server(self) -> Any:  # what sites listen with: the front (aiohttp's server behind it)
        return self._front if super().server is not None else None

    async def shutdown(self) -> None:
        if self._front is not None:
            await self._front.close()
        await super().shutdown()
