"""A small load balancer for a local cluster where Debian's nginx is not installed.

It does what deploy/nginx.conf does, so a cluster behaves the same behind either: a client
is kept on one node by the `tribune_node` cookie (set on its first response, then hashed
onto the live nodes), WebSockets are relayed both ways, `/metrics` is not exposed, request
bodies are capped per route (1 MB, 10 MB for roster imports, 64 KB for WHIP/WHEP), and a
node that refuses connections is skipped for five seconds while the others take its share.

    python -m config.balancer --port 8000 http://127.0.0.1:8001 http://127.0.0.1:8002
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import logging
import secrets
import time

import aiohttp
from aiohttp import web

log = logging.getLogger("tribune.balancer")

COOKIE = "tribune_node"
FAIL_TIMEOUT = 5.0  # as deploy/nginx.conf's max_fails=1 fail_timeout=5s
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
}


def body_limit(path: str) -> int:
    if path == "/api/roster/import":
        return 10 * 1024 * 1024
    if path.startswith(("/whip/", "/whep/")):
        return 64 * 1024
    return 1024 * 1024


class Balancer:
    def __init__(self, upstreams: list[str]) -> None:
        if not upstreams:
            raise ValueError("the balancer needs at least one node URL")
        self.upstreams = [u.rstrip("/") for u in upstreams]
        self.down_until: dict[str, float] = {}
        self.http: aiohttp.ClientSession | None = None

    def order(self, key: str) -> list[str]:
        """Nodes for a sticky key, best first (rendezvous hashing: a node leaving moves only
        its own clients); nodes that just refused connections go last."""
        now = time.monotonic()

        def rank(url: str) -> tuple[bool, bytes]:
            return (self.down_until.get(url, 0) <= now, hashlib.sha256(f"{key}|{url}".encode()).digest())

        return sorted(self.upstreams, key=rank, reverse=True)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=10 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        app.on_startup.append(self._open)
        app.on_cleanup.append(self._close)
        return app

    async def _open(self, app: web.Application) -> None:
        self.http = aiohttp.ClientSession(
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, connect=3, sock_read=120),
            connector=aiohttp.TCPConnector(limit=0, force_close=False),
        )

    async def _close(self, app: web.Application) -> None:
        if self.http is not None:
            await self.http.close()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.path == "/metrics":
            return web.Response(status=403, text="403 Forbidden")
        key = request.cookies.get(COOKIE) or secrets.token_hex(8)
        limit = body_limit(request.path)
        if (request.content_length or 0) > limit:
            return web.Response(status=413, text="413 Request Entity Too Large")
        body = bytearray()
        while request.body_exists and (chunk := await request.content.readany()):
            body += chunk
            if len(body) > limit:
                return web.Response(status=413, text="413 Request Entity Too Large")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        peer = request.remote or ""
        forwarded = request.headers.get("X-Forwarded-For")
        headers["X-Forwarded-For"] = f"{forwarded}, {peer}" if forwarded else peer
        headers["X-Forwarded-Proto"] = request.scheme
        upgrade = request.headers.get("Upgrade", "").lower() == "websocket"
        for upstream in self.order(key):
            try:
                if upgrade:
                    return await self._websocket(request, upstream, headers, key)
                return await self._forward(request, upstream, headers, body, key)
            except aiohttp.ClientConnectorError:
                self.down_until[upstream] = time.monotonic() + FAIL_TIMEOUT
                log.warning("node %s refused a connection; skipping it for %.0fs", upstream, FAIL_TIMEOUT)
        return web.Response(status=502, text="502 Bad Gateway: no node answered")

    async def _forward(
        self, request: web.Request, upstream: str, headers: dict[str, str], body: bytearray, key: str
    ) -> web.StreamResponse:
        assert self.http is not None
        async with self.http.request(
            request.method,
            upstream + request.rel_url.raw_path_qs,
            headers=headers,
            data=bytes(body) if body else None,
            allow_redirects=False,
        ) as answer:
            response = web.StreamResponse(status=answer.status, reason=answer.reason)
            for name, value in answer.headers.items():
                if name.lower() not in HOP_BY_HOP:
                    response.headers.add(name, value)
            response.set_cookie(COOKIE, key, path="/", httponly=True, samesite="Lax")
            if answer.headers.get("Content-Length") is not None:
                response.content_length = int(answer.headers["Content-Length"])
            await response.prepare(request)
            with contextlib.suppress(ConnectionResetError, aiohttp.ClientPayloadError):
                async for chunk in answer.content.iter_any():
                    await response.write(chunk)
            await response.write_eof()
            return response

    async def _websocket(
        self, request: web.Request, upstream: str, headers: dict[str, str], key: str
    ) -> web.StreamResponse:
        assert self.http is not None
        for name in ("Sec-WebSocket-Key", "Sec-WebSocket-Version", "Sec-WebSocket-Extensions"):
            headers.pop(name, None)
        async with self.http.ws_connect(
            upstream + request.rel_url.raw_path_qs, headers=headers, max_msg_size=0, autoping=False
        ) as up:
            down = web.WebSocketResponse(max_msg_size=0, autoping=False)
            down.set_cookie(COOKIE, key, path="/", httponly=True, samesite="Lax")
            await down.prepare(request)

            async def relay(
                src: web.WebSocketResponse | aiohttp.ClientWebSocketResponse, dst: object
            ) -> None:
                async for msg in src:
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        await dst.send_str(msg.data)  # type: ignore[attr-defined]
                    elif msg.type == aiohttp.WSMsgType.BINARY:
                        await dst.send_bytes(msg.data)  # type: ignore[attr-defined]
                    elif msg.type == aiohttp.WSMsgType.PING:
                        await dst.ping(msg.data)  # type: ignore[attr-defined]
                    elif msg.type == aiohttp.WSMsgType.PONG:
                        await dst.pong(msg.data)  # type: ignore[attr-defined]
                    else:
                        break

            tasks = [asyncio.ensure_future(relay(up, down)), asyncio.ensure_future(relay(down, up))]
            try:
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            except (ConnectionResetError, aiohttp.ClientError):
                pass
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                await up.close()
                await down.close()
            return down


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m config.balancer", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("upstreams", nargs="+", help="node URLs, e.g. http://127.0.0.1:8001")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    web.run_app(Balancer(args.upstreams).app(), host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
