"""A lean protocol-v1 client for load: thousands of viewers in one process.

It speaks the wire protocol directly and correctly — a WebSocket (RFC 6455, masked client
frames), Engine.IO v4 (open, ping/pong) and Socket.IO with the msgpack parser (connect with
auth, events) — on plain asyncio protocols, so one core can hold ten thousand of them.
Every client checks its own stream: each `events` seq must be the next one. Frames that
are byte-for-byte the same (a room's batch goes to many clients) are decoded once.
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import msgpack

CONNECT, EVENT, ACK, CONNECT_ERROR = 0, 2, 3, 4


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
    latencies: list[float] = field(default_factory=list)


class FrameCache:
    """Decoded Socket.IO packets by their bytes; a room's shared frame is decoded once."""

    def __init__(self, limit: int = 4096) -> None:
        self._cache: dict[bytes, Any] = {}
        self._limit = limit

    def decode(self, payload: bytes) -> Any:
        found = self._cache.get(payload)
        if found is None:
            found = msgpack.unpackb(payload, raw=False, strict_map_key=False)
            if len(self._cache) >= self._limit:
                self._cache.clear()
            self._cache[payload] = found
        return found


class ViewerProtocol(asyncio.Protocol):
    def __init__(
        self,
        host: str,
        auth: dict[str, Any],
        tally: Tally,
        cache: FrameCache,
        sent_at: dict[int, float] | None,
        on_ready: asyncio.Future[bool],
    ) -> None:
        self.host = host
        self.auth = auth
        self.tally = tally
        self.cache = cache
        self.sent_at = sent_at  # comment id → when it was approved; None: do not sample latency
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

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        request = (
            "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n"
            f"Host: {self.host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {self.key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        transport.write(request.encode())

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
        self._frames()

    def _frames(self) -> None:
        buf = self.buffer
        while len(buf) >= 2:
            opcode = buf[0] & 0x0F
            size = buf[1] & 0x7F
            offset = 2
            if size == 126:
                if len(buf) < 4:
                    return
                size = struct.unpack_from("!H", buf, 2)[0]
                offset = 4
            elif size == 127:
                if len(buf) < 10:
                    return
                size = struct.unpack_from("!Q", buf, 2)[0]
                offset = 10
            if len(buf) < offset + size:
                return
            payload = bytes(buf[offset : offset + size])
            del buf[: offset + size]
            if opcode == 0x1:
                self._engineio_text(payload)
            elif opcode == 0x2:
                self._socketio(payload)
            elif opcode == 0x8:
                self._close()
                return

    def _engineio_text(self, payload: bytes) -> None:
        kind = payload[:1]
        if kind == b"0":  # open: join the default namespace with our auth
            packet = {"type": CONNECT, "nsp": "/", "data": self.auth}
            self._send(msgpack.packb(packet), text=False)
        elif kind == b"2":  # ping
            self._send(b"3", text=True)

    def _socketio(self, payload: bytes) -> None:
        packet = self.cache.decode(payload)
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

    def _events(self, batch: list[dict[str, Any]]) -> None:
        tally = self.tally
        now = time.time()
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
            if self.sent_at is not None and event["type"] == "comment.published":
                sent = self.sent_at.get(event["data"]["id"])
                if sent is not None:
                    tally.latencies.append(now - sent)

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


async def connect_viewers(
    urls: list[str],
    auths: list[dict[str, Any]],
    tally: Tally,
    *,
    sample_every: int,
    sent_at: dict[int, float],
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
            protocol = ViewerProtocol(
                url.netloc, auth, tally, cache, sent_at if i % sample_every == 0 else None, ready
            )
            await loop.create_connection(lambda: protocol, url.hostname or "127.0.0.1", url.port or 80)
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
