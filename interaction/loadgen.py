"""A lean protocol-v1 client for load: thousands of viewers in one process.

It speaks the wire protocol directly and correctly — a WebSocket (RFC 6455, masked client
frames), Engine.IO v4 (open, ping/pong) and Socket.IO with the msgpack parser (connect with
auth, events) — on plain asyncio protocols, so one core can hold ten thousand of them.
Every client checks its own stream: each `events` seq must be the next one. Frames that
are byte-for-byte the same (a room's batch goes to many clients) are decoded once.

Sampled viewers (those that time comments) read their socket with `recvmsg` and the
kernel's receive timestamp, so a comment's arrival is when it reached the viewer's socket,
as it would on the viewer's own machine, not when this one process, holding thousands of
viewers on one core, got round to it. When it got round to it is kept too ("handled").
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
import sys
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, cast
from urllib.parse import urlsplit

import msgpack

CONNECT, EVENT, ACK, CONNECT_ERROR = 0, 2, 3, 4
# Linux (asm-generic/socket.h): recvmsg then carries the receive time as a struct timespec.
SO_TIMESTAMPNS = 35
STAMPED = sys.platform == "linux"


def client_frame(payload: bytes, *, text: bool) -> bytes:
    """A masked, final WebSocket frame, as RFC 6455 requires of clients."""
    opcode = 0x81 if text else 0x82
    size = len(payload)
    if size < 126:
        header = struct.pack("!BB", opcode, 0x80 | size)
    elif size < 1 << 16:
        header = struct.pack("!BBH", opcode, 0x80 | 126, size)
    else:
        header = struct.pack("!BBQ", opcode, 0x80 | 127, size)
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return header + mask + masked


@dataclass
class Tally:
    """What all clients of one generator saw."""

    connected: int = 0
    refused: int = 0
    closed: int = 0
    events: int = 0
    duplicated: int = 0
    out_of_order: int = 0
    lost: int = 0  # seqs skipped (counted when a later one arrives)
    # On sampled viewers: each comment.published event's comment id, when it reached the
    # viewer's socket and when this process handled it.
    arrived_ids: array[int] = field(default_factory=lambda: array("q"))
    arrived_at: array[float] = field(default_factory=lambda: array("d"))
    handled_at: array[float] = field(default_factory=lambda: array("d"))

    def arrived(self, comment: int, at: float, handled: float) -> None:
        self.arrived_ids.append(comment)
        self.arrived_at.append(at)
        self.handled_at.append(handled)

    def latencies(self, sent: dict[int, float], *, handled: bool = False) -> list[float]:
        """Seconds from each comment's approval (`sent`: id → when) to its arrivals (or to
        this process handling them)."""
        times = self.handled_at if handled else self.arrived_at
        return [at - sent[i] for i, at in zip(self.arrived_ids, times, strict=True) if i in sent]


@dataclass(frozen=True, slots=True)
class Decoded:
    """A Socket.IO packet decoded once for every client that gets the same bytes. For an
    `events` batch whose seqs run without a gap: the first and last seq and the ids of the
    published comments, so each client checks its place in one step."""

    packet: Any
    run: tuple[int, int, list[int]] | None = None


class FrameCache:
    """Decoded Socket.IO packets by their bytes; a room's shared frame is decoded once.

    Looked up by length and last bytes, then compared whole: comparing is a memcmp, where
    hashing every frame's bytes for a dict would cost more than the rest of handling it."""

    TAIL = 48

    def __init__(self, limit: int = 4096) -> None:
        self._cache: dict[tuple[int, bytes], tuple[bytes, Decoded]] = {}
        self._limit = limit

    def decode(self, payload: bytes) -> Decoded:
        key = (len(payload), payload[-self.TAIL :])
        entry = self._cache.get(key)
        if entry is not None and entry[0] == payload:
            return entry[1]
        found = Decoded(packet := msgpack.unpackb(payload, raw=False, strict_map_key=False), _run(packet))
        if len(self._cache) >= self._limit:
            self._cache.clear()
        self._cache[key] = (payload, found)
        return found


def _run(packet: Any) -> tuple[int, int, list[int]] | None:
    """(first seq, last seq, published comment ids) of a gap-free `events` batch, else None."""
    try:
        if packet.get("type") != EVENT or packet["data"][0] != "events":
            return None
        batch = packet["data"][1]
        seqs = [int(event["seq"]) for event in batch]
        if not seqs or seqs != list(range(seqs[0], seqs[0] + len(seqs))):
            return None
        ids = [int(e["data"]["id"]) for e in batch if e["type"] == "comment.published"]
    except (AttributeError, IndexError, KeyError, TypeError, ValueError):
        return None
    return seqs[0], seqs[-1], ids


class ViewerProtocol(asyncio.Protocol):
    def __init__(
        self,
        host: str,
        auth: dict[str, Any],
        tally: Tally,
        cache: FrameCache,
        sample: bool,
        on_ready: asyncio.Future[bool],
    ) -> None:
        self.host = host
        self.auth = auth
        self.tally = tally
        self.cache = cache
        self.sample = sample  # record when each published comment arrives, for latency
        self.on_ready = on_ready
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.upgraded = False
        self.seq = -1
        self.key = base64.b64encode(os.urandom(16)).decode()
        self.acks: dict[int, asyncio.Future[Any]] = {}
        self.last_ack_id = 0
        self.epoch = ""
        self.on_lost: Callable[[], None] | None = None  # called once the connection is gone
        self.received_at = 0.0  # the kernel's receive time of the data being handled (sampled)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        request = (
            "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n"
            f"Host: {self.host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {self.key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        self.transport.write(request.encode())

    def connection_lost(self, exc: Exception | None) -> None:
        self.tally.closed += 1
        for fut in self.acks.values():
            if not fut.done():
                fut.set_exception(ConnectionError("the connection closed before the answer"))
        self.acks.clear()
        if not self.on_ready.done():
            self.on_ready.set_result(False)
        if self.on_lost is not None:
            self.on_lost()

    def data_received(self, data: bytes) -> None:
        if self.buffer or not self.upgraded:
            self.buffer += data
            if not self.upgraded:
                end = self.buffer.find(b"\r\n\r\n")
                if end < 0:
                    return
                status = bytes(self.buffer[:end]).split(b"\r\n", 1)[0]
                del self.buffer[: end + 4]
                if b" 101 " not in status:
                    self._fail()
                    return
                self.upgraded = True
            data = bytes(self.buffer)
            self.buffer.clear()
        used = self._frames(data)
        if used < len(data):
            self.buffer += memoryview(data)[used:]

    def _frames(self, buf: bytes) -> int:
        """Handle the whole frames in `buf`; returns where the first incomplete one starts."""
        pos, end = 0, len(buf)
        while end - pos >= 2:
            opcode = buf[pos] & 0x0F
            size = buf[pos + 1] & 0x7F
            offset = pos + 2
            if size == 126:
                if end - pos < 4:
                    break
                size = struct.unpack_from("!H", buf, pos + 2)[0]
                offset = pos + 4
            elif size == 127:
                if end - pos < 10:
                    break
                size = struct.unpack_from("!Q", buf, pos + 2)[0]
                offset = pos + 10
            if end < offset + size:
                break
            payload = buf[offset : offset + size]
            pos = offset + size
            if opcode == 0x1:
                self._engineio_text(payload)
            elif opcode == 0x2:
                self._socketio(payload)
            elif opcode == 0x8:
                self._close()
                return end
        return pos

    def _engineio_text(self, payload: bytes) -> None:
        kind = payload[:1]
        if kind == b"0":  # open: join the default namespace with our auth
            packet = {"type": CONNECT, "nsp": "/", "data": self.auth}
            self._send(msgpack.packb(packet), text=False)
        elif kind == b"2":  # ping
            self._send(b"3", text=True)

    def _socketio(self, payload: bytes) -> None:
        decoded = self.cache.decode(payload)
        run = decoded.run
        if run is not None and run[0] == self.seq + 1:  # the next events, without a gap
            self._next(run)
            return
        packet = decoded.packet
        kind = packet.get("type")
        if kind == EVENT:
            name, data = packet["data"][0], packet["data"][1]
            if name == "events":
                self._events(data)
            elif name == "hello":
                self.seq = int(data["seq"]) if self.seq < 0 else self.seq
                self.epoch = str(data.get("epoch", ""))
                if self.auth.get("since") and not self.on_ready.done():
                    self.tally.connected += 1  # resumed: the missed events follow, no snapshot
                    self.on_ready.set_result(True)
            elif name == "snapshot":
                self.seq = int(data["seq"])
                if not self.on_ready.done():
                    self.tally.connected += 1
                    self.on_ready.set_result(True)
        elif kind == ACK:
            fut = self.acks.pop(packet.get("id", -1), None)
            if fut is not None and not fut.done():
                fut.set_result(packet["data"][0] if packet.get("data") else None)
        elif kind == CONNECT_ERROR:
            self.tally.refused += 1
            self._fail()

    def _next(self, run: tuple[int, int, list[int]]) -> None:
        first, last, ids = run
        self.seq = last
        self.tally.events += last - first + 1
        if self.sample and ids:
            tally, now = self.tally, time.time()
            arrived = self.received_at or now
            for comment in ids:
                tally.arrived(comment, arrived, now)

    def _events(self, batch: list[dict[str, Any]]) -> None:
        """Any other batch, event by event: duplicates, gaps and disorder are counted."""
        tally = self.tally
        now = time.time()
        arrived = self.received_at or now
        for event in batch:
            seq = event["seq"]
            if seq <= self.seq:
                tally.duplicated += 1
                continue
            if seq != self.seq + 1:
                tally.out_of_order += 1
                tally.lost += seq - self.seq - 1
            self.seq = seq
            tally.events += 1
            if self.sample and event["type"] == "comment.published":
                tally.arrived(int(event["data"]["id"]), arrived, now)

    def call(self, name: str, data: Any) -> asyncio.Future[Any]:
        """Emit an event that asks for an acknowledgement; the future gets the answer."""
        self.last_ack_id += 1
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.transport is None or self.transport.is_closing():
            fut.set_exception(ConnectionError("not connected"))
            return fut
        self.acks[self.last_ack_id] = fut
        packet = {"type": EVENT, "nsp": "/", "data": [name, data], "id": self.last_ack_id}
        self._send(msgpack.packb(packet), text=False)
        return fut

    def _send(self, payload: bytes, *, text: bool) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(client_frame(payload, text=text))

    def _fail(self) -> None:
        if not self.on_ready.done():
            self.on_ready.set_result(False)
        self._close()

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class Stamped(Protocol):
    """A protocol told when the kernel received what it is handed (wall clock, seconds)."""

    received_at: float

    def connection_made(self, transport: asyncio.BaseTransport) -> None: ...
    def data_received(self, data: bytes) -> None: ...
    def connection_lost(self, exc: Exception | None) -> None: ...


class StampedTransport(asyncio.Transport):
    """A client socket read with `recvmsg` and SO_TIMESTAMPNS: before each read's data goes to
    the protocol, `protocol.received_at` is set to when the kernel received it."""

    def __init__(self, sock: socket.socket, protocol: Stamped) -> None:
        super().__init__()
        self._loop = asyncio.get_running_loop()
        self._sock = sock
        self._protocol = protocol
        self._out = bytearray()
        self._closing = False
        self._loop.add_reader(sock.fileno(), self._readable)
        protocol.connection_made(self)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing:
            return
        if not self._out:
            try:
                sent = self._sock.send(data)
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                self._lost(exc)
                return
            data = memoryview(data)[sent:]
            if not data:
                return
            self._loop.add_writer(self._sock.fileno(), self._writable)
        self._out += data

    def _writable(self) -> None:
        try:
            sent = self._sock.send(self._out)
        except BlockingIOError:
            return
        except OSError as exc:
            self._lost(exc)
            return
        del self._out[:sent]
        if not self._out:
            self._loop.remove_writer(self._sock.fileno())

    def _readable(self) -> None:
        try:
            data, ancillary, _, _ = self._sock.recvmsg(256 * 1024, socket.CMSG_SPACE(16))
        except BlockingIOError:
            return
        except OSError as exc:
            self._lost(exc)
            return
        if not data:
            self._lost(None)
            return
        received = 0.0
        for level, kind, value in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(value) >= 16:
                seconds, nanoseconds = struct.unpack_from("qq", value)
                received = seconds + nanoseconds / 1e9
        self._protocol.received_at = received
        self._protocol.data_received(data)
        self._protocol.received_at = 0.0

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        self._lost(None)

    def abort(self) -> None:
        self._lost(None)

    def _lost(self, exc: Exception | None) -> None:
        if self._closing:
            return
        self._closing = True
        self._loop.remove_reader(self._sock.fileno())
        self._loop.remove_writer(self._sock.fileno())
        self._sock.close()
        self._protocol.connection_lost(exc)


async def connect_stamped(protocol: Stamped, host: str, port: int) -> StampedTransport:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
    except BaseException:
        sock.close()
        raise
    return StampedTransport(sock, protocol)


async def connect_viewers(
    urls: list[str],
    auths: list[dict[str, Any]],
    tally: Tally,
    *,
    sample_every: int,
    concurrency: int = 100,
    progress: Callable[[int], None] | None = None,
) -> list[ViewerProtocol]:
    """Connect one viewer per auth payload, spread over `urls`, `concurrency` at a time."""
    loop = asyncio.get_running_loop()
    cache = FrameCache()
    viewers: list[ViewerProtocol] = []
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int, auth: dict[str, Any]) -> None:
        url = urlsplit(urls[i % len(urls)])
        async with gate:
            ready: asyncio.Future[bool] = loop.create_future()
            sample = i % sample_every == 0
            protocol = ViewerProtocol(url.netloc, auth, tally, cache, sample, ready)
            host, port = url.hostname or "127.0.0.1", url.port or 80
            if sample and STAMPED:
                await connect_stamped(protocol, host, port)
            else:
                await loop.create_connection(lambda: protocol, host, port)
            viewers.append(protocol)
            await asyncio.wait_for(ready, 60)
        if progress is not None:
            progress(len(viewers))

    await asyncio.gather(*(one(i, auth) for i, auth in enumerate(auths)))
    return viewers


async def close_client(client: Any) -> None:
    """Disconnect a python-socketio client and close the HTTP session Engine.IO keeps even
    after a refused connect (otherwise it is reported unclosed at exit)."""
    await client.disconnect()
    http = getattr(client.eio, "http", None)
    if http is not None and not http.closed:
        await http.close()
