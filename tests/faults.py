"""The fault toolkit: a TCP proxy on loopback that passes, refuses, blackholes or delays
what goes through it (no root needed), a client that stops reading, and a node's metrics.
Nodes are killed and started through config.cluster.Cluster.

    proxy = await FaultProxy(("127.0.0.1", 6379)).start()   # or FaultProxy("/path/.s.PGSQL.5432")
    url = proxy.redis_url(redis_url)                        # the same server, through the proxy
    await proxy.refuse(); await proxy.heal()
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

Target = tuple[str, int] | str  # (host, port) or a unix socket path


class FaultProxy:
    """Modes: `pass` (default); `refuse` — connections are reset and new ones refused;
    `blackhole` — connections stay open and new ones are accepted, but nothing gets through
    either way and nothing is closed (half-open); `delay` — every answer from the server
    arrives `seconds` late (so each round trip takes that much longer)."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.port = 0
        self.mode = "pass"
        self.seconds = 0.0
        self.server: asyncio.Server | None = None
        self.links: set[asyncio.StreamWriter] = set()
        self.tasks: set[asyncio.Task[None]] = set()  # one per connection, stopped by stop()
        self.open = asyncio.Event()  # set while anything gets through
        self.open.set()

    async def start(self) -> FaultProxy:
        self.server = await asyncio.start_server(self._link, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if isinstance(self.target, str):
            return await asyncio.open_unix_connection(self.target)
        return await asyncio.open_connection(*self.target)

    async def _link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.links.add(writer)
        task = asyncio.current_task()
        if task is not None:
            self.tasks.add(task)
        try:
            await self.open.wait()  # blackholed: accepted, then silence
            try:
                up_reader, up_writer = await self._open()
            except OSError:
                writer.transport.abort()
                return
            self.links.add(up_writer)
            await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer, answers=True))
        finally:
            self.links.discard(writer)
            if task is not None:
                self.tasks.discard(task)

    async def _pump(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, answers: bool = False
    ) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                if due > loop.time():
                    await asyncio.sleep(due - loop.time())
                if self.mode == "blackhole":
                    queue.task_done()
                    continue  # lost on the way, and nobody is told
                dst.write(data)
                await dst.drain()
                queue.task_done()

        sender = asyncio.ensure_future(deliver())
        try:
            while data := await src.read(65536):
                delay = self.seconds if self.mode == "delay" and answers else 0.0
                queue.put_nowait((loop.time() + delay, data))
            joined = asyncio.ensure_future(queue.join())  # what was read is delivered first
            await asyncio.wait([joined, sender], return_when=asyncio.FIRST_COMPLETED)
            joined.cancel()
        except (ConnectionError, OSError):
            pass
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError, OSError):
                await sender
            if self.mode != "blackhole":
                dst.close()
            self.links.discard(dst)

    async def refuse(self) -> None:
        """Reset every connection and refuse new ones (the server is gone)."""
        self.mode = "refuse"
        if self.server is not None:
            self.server.close()
            self.server = None
        self._reset()

    async def blackhole(self) -> None:
        """Keep every connection open but let nothing through (a network that lost its way)."""
        self.mode = "blackhole"
        self.open.clear()

    async def delay(self, seconds: float) -> None:
        self.mode, self.seconds = "delay", seconds

    async def heal(self) -> None:
        """Back to passing. Connections that were blackholed are reset, as the kernel would
        after its retransmissions ran out; clients connect again."""
        was = self.mode
        self.mode, self.seconds = "pass", 0.0
        self.open.set()
        if was == "blackhole":
            self._reset()
        if self.server is None:
            await self.start()

    def _reset(self) -> None:
        for writer in list(self.links):
            writer.transport.abort()
        self.links.clear()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        self._reset()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    def redis_url(self, url: str) -> str:
        """`url` (redis://…) pointed at this proxy."""
        parts = urlsplit(url)
        auth = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
        return urlunsplit(parts._replace(netloc=f"{auth}127.0.0.1:{self.port}"))

    def postgres_url(self, url: str) -> str:
        """`url` (postgresql://…, host or ?host=/socket/dir) pointed at this proxy over TCP."""
        parts = urlsplit(url)
        auth = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
        query = "&".join(f"{k}={v[0]}" for k, v in parse_qs(parts.query).items() if k not in ("host", "port"))
        return urlunsplit(parts._replace(netloc=f"{auth}127.0.0.1:{self.port}", query=query))


def postgres_target(url: str) -> Target:
    """Where a PostgreSQL URL points: a unix socket file or (host, port)."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    port = int(query.get("port", [parts.port or 5432])[0])
    host = query.get("host", [parts.hostname or "127.0.0.1"])[0]
    if host.startswith("/"):
        return f"{host}/.s.PGSQL.{port}"
    return (host, port)


def redis_target(url: str) -> Target:
    parts = urlsplit(url)
    return (parts.hostname or "127.0.0.1", parts.port or 6379)


async def stalled_reader(host: str, port: int, auth: dict[str, Any]) -> tuple[asyncio.Transport, Any, Any]:
    """A protocol-v1 client on a small receive buffer (a phone on a bad link) that joins its
    session and then stops reading: (its transport, its protocol, its tally)."""
    import socket

    from interaction.loadgen import FrameCache, Tally, ViewerProtocol

    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, (host, port))
    ready: asyncio.Future[bool] = loop.create_future()
    tally = Tally()
    transport, protocol = await loop.create_connection(
        lambda: ViewerProtocol(f"{host}:{port}", auth, tally, FrameCache(), False, ready), sock=sock
    )
    if not await asyncio.wait_for(ready, 10):
        raise ConnectionError("the stalled reader was refused")
    transport.pause_reading()
    return transport, protocol, tally


async def metric(http: Any, node_url: str, name: str) -> float:
    """The sum of a metric's samples on one node's /metrics (0 when it has none yet)."""
    async with http.get(node_url + "/metrics") as r:
        text = await r.text()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and (line[len(name)] in " {"):
            total += float(line.rsplit(" ", 1)[1])
    return total
