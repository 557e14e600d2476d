"""Delivery to this node's clients: batched, encoded once, written without a task per client.

Each tick (`tick_interval`, 100 ms by default) a room's new events become one Socket.IO
`events` packet, encoded once, and one WebSocket frame that is written straight to every
up-to-date client's transport. The pass over a room's clients lets the loop run every
`SLICE_CLIENTS` clients, and the clients it has not reached yet get what arrived meanwhile.
Room-wide messages where only the latest counts (presence, a live-results tally) ride the
next pass too, in the same write as each client's events, rather than a write of their own
to every client at once.
A client that has anything still queued in Engine.IO (its hello, a snapshot, an ack) or is
on long-polling gets the packet through that queue instead, so nothing overtakes what was
sent before it. A client whose socket buffer passes `client_buffer_bytes` is a slow reader
and is dropped; it resumes from its last seq.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import engineio.packet
from socketio import packet as sio_packet
from socketio.msgpack_packet import MsgPackPacket

from interaction.rooms import Client, Room, Rooms
from interaction.transport import Server, websocket_frame

log = logging.getLogger("tribune.fanout")

MAX_EVENTS_PER_FRAME = 500
MAX_QUEUED_PACKETS = 256
SLICE_CLIENTS = 500  # clients a pass writes between two looks at the loop (5-10 ms of writes)
SLOW_READER_SECONDS = 10.0


def socketio_event(name: str, data: Any) -> bytes:
    """One Socket.IO EVENT packet in the msgpack parser's encoding."""
    return bytes(MsgPackPacket(sio_packet.EVENT, data=[name, data], namespace="/").encode())


class Frame:
    """Packets encoded once: their Socket.IO bytes, and the raw WebSocket frames around them
    that go to a client in one write."""

    __slots__ = ("payloads", "ws")

    def __init__(self, *payloads: bytes) -> None:
        self.payloads = payloads
        self.ws = b"".join(websocket_frame(p) for p in payloads)

    def __add__(self, other: Frame) -> Frame:
        return Frame(*self.payloads, *other.payloads)


class _Counted(engineio.packet.Packet):  # type: ignore[misc]
    """An Engine.IO message that tells its client when it is written. Engine.IO's writer
    takes every queued packet at once and may wait for the socket between them, so an empty
    queue does not mean nothing is pending: `in_flight` does. The writer encodes a packet
    right before writing it, with no pause in between."""

    def __init__(self, client: Client, payload: bytes) -> None:
        super().__init__(engineio.packet.MESSAGE, data=payload)
        self._client: Client | None = client

    def encode(self, b64: bool = False) -> Any:
        if self._client is not None:
            self._client.in_flight -= 1
            self._client = None
        return super().encode(b64)


class Fanout:
    def __init__(
        self,
        sio: Server,
        rooms: Rooms,
        *,
        tick: float,
        replay: Callable[[Client], None],
        on_drop: Callable[[], None],
        on_deliver: Callable[[int], None],
        on_flush: Callable[[float | None, float, int], None] = lambda delay, took, frames: None,
    ) -> None:
        self._sio = sio
        self._rooms = rooms
        self._tick = tick
        self._buffer_limit = sio.write_limit  # a socket holding more unsent is a slow reader
        self._replay = replay
        self._on_drop = on_drop
        self._on_deliver = on_deliver
        self._on_flush = on_flush
        self._transports = sio.transports  # websocket clients' sockets, by Engine.IO sid
        self._sockets: dict[str, Any] = sio.eio.sockets
        self._dropping: set[asyncio.Task[Any]] = set()
        self.gone: list[Client] = []  # clients whose socket vanished, for the owner to forget
        self._task: asyncio.Task[None] | None = None

    def deliver(self, client: Client, frame: Frame) -> bool:
        """Write one frame to one client; False when the client is gone or was dropped.

        This runs once per client per tick: kept to a few lookups and one write."""
        sock = self._sockets.get(client.eio_sid)
        if sock is None or sock.closed or sock.closing:
            self.gone.append(client)
            return False
        transport = self._transports.get(client.eio_sid)
        if transport is not None and client.in_flight == 0 and sock.upgraded and not sock.upgrading:
            if transport.is_closing():
                return False
            if transport.get_write_buffer_size() > self._buffer_limit:
                self.drop(client, "write buffer full")
                return False
            transport.write(frame.ws)
            return True
        return self.enqueue(client, frame.payloads, sock)

    def enqueue(self, client: Client, payloads: tuple[bytes, ...], sock: Any = None) -> bool:
        """Send through Engine.IO's queue, in order with everything queued before."""
        sock = sock if sock is not None else self._sockets.get(client.eio_sid)
        if sock is None or sock.closed or sock.closing:
            return False
        if sock.queue.qsize() > MAX_QUEUED_PACKETS:
            self.drop(client, "queue full")
            return False
        for payload in payloads:
            client.in_flight += 1
            sock.queue.put_nowait(_Counted(client, payload))
        return True

    def send(self, client: Client, name: str, data: Any) -> bool:
        """One event to one client, ordered with the frames it gets from the fan-out."""
        return self.enqueue(client, (socketio_event(name, data),))

    async def writable(self, client: Client, seconds: float = SLOW_READER_SECONDS) -> bool:
        """Wait until the client has taken what it was sent (nothing queued in Engine.IO,
        its socket buffer under the limit). A client that does not within `seconds` is
        dropped: False."""
        deadline = time.monotonic() + seconds
        while True:
            sock = self._sockets.get(client.eio_sid)
            if sock is None or sock.closed or sock.closing:
                return False
            transport = self._transports.get(client.eio_sid)
            buffered = transport.get_write_buffer_size() if transport is not None else 0
            if sock.queue.empty() and buffered <= self._buffer_limit:
                return True
            if time.monotonic() > deadline:
                self.drop(client, f"took nothing for {seconds:.0f}s")
                return False
            await asyncio.sleep(0.05)

    def drop(self, client: Client, why: str) -> None:
        log.info("dropping slow client %s (%s): %s", client.sid, client.who.rep, why)
        self._on_drop()
        client.ready = False
        transport = self._transports.pop(client.eio_sid, None)
        if transport is not None:
            transport.abort()  # a slow reader gets no more bytes, not even a close frame
        task = asyncio.get_running_loop().create_task(self._sio.disconnect(client.sid))
        self._dropping.add(task)
        task.add_done_callback(self._dropping.discard)

    def to_staff(self, room: Room, name: str, data: Any) -> None:
        """One event to the room's ready moderators and hosts (a few clients), now."""
        frame = Frame(socketio_event(name, data))
        for client in list(room.staff.values()):
            if client.ready:
                self.deliver(client, frame)

    def notify(
        self, room: Room, about: tuple[str, int], name: str, data: Any, *, spacing: float = 0.0
    ) -> None:
        """A message to everyone in the room where only the latest counts: presence, a
        live-results poll's tally. It goes with the next pass, in the same write as each
        client's events; a newer one `about` the same thing before then replaces it. No
        client gets two `about` the same thing less than `spacing` seconds apart: one that
        comes sooner waits. (Written at once to ten thousand clients, such a message held the
        loop for 80-120 ms and cost each client a write of its own.)"""
        room.notices[about] = (name, data, spacing)

    async def flush(self, room: Room) -> tuple[int, int, float]:
        """Send every ready client of `room` the events it has not had, and the room's
        notices (to every ready client, in the same write); returns deliveries (events),
        frames written and the seconds spent writing them. Clients at the same position
        share one encoded frame.

        The pass looks at the loop every `SLICE_CLIENTS` clients, so approvals and doorbells
        are handled while it runs, and the clients it has not reached yet get what arrived
        meanwhile in the same frame: an event waits at most about one pass for any client,
        where a pass that only took what was there when it began made the last clients wait
        for the next pass as well."""
        target = room.last_seq
        due = room.take_notices(time.monotonic())  # what arrives meanwhile waits for the next pass
        if room.flushed_seq == target and not due:  # nothing new for anyone
            return 0, 0, 0.0
        notice: Frame | None = None  # the room's notices, for every ready client this pass
        if due:
            notice = Frame(*(socketio_event(name, data) for name, data, _ in due.values()))
        behind = room.behind_count
        clients = list(room.clients.values())
        frames: dict[int, tuple[Frame, int, int]] = {}  # from seq → (frame, last seq, events)
        delivered = written = 0
        busy = 0.0
        everyone = True  # every ready client reached `target`
        deliver = self.deliver
        for first in range(0, len(clients), SLICE_CLIENTS):
            if first:
                await asyncio.sleep(0)
                if room.last_seq != target:  # the clients already written are behind it now
                    target, everyone = room.last_seq, False
                    frames.clear()
            began = time.monotonic()
            for client in clients[first : first + SLICE_CLIENTS]:
                if not client.ready:  # not ready: it also left
                    continue
                if client.last_seq >= target:
                    if notice is not None and deliver(client, notice):
                        written += 1
                    continue
                entry = frames.get(client.last_seq)
                if entry is None:
                    batch = room.after(client.last_seq, MAX_EVENTS_PER_FRAME)
                    if batch is None:  # too far behind for memory: replay from the ledger
                        client.ready = False
                        self._replay(client)
                        continue
                    frame = Frame(socketio_event("events", batch))
                    entry = (frame if notice is None else notice + frame, int(batch[-1]["seq"]), len(batch))
                    frames[client.last_seq] = entry
                frame, last, count = entry
                if deliver(client, frame):
                    client.last_seq = last
                    delivered += count
                    written += 1
                    everyone = everyone and last >= target
                else:
                    everyone = False
            busy += time.monotonic() - began
        if everyone and room.behind_count == behind:
            room.flushed_seq = target
        if due:
            room.notices_sent(due, time.monotonic())  # the pass's end: its last client had them
        return delivered, written, busy

    async def run(self) -> None:
        """One tick every `tick` seconds: each room's new events go out as one frame per client.

        A pass that overruns the tick is followed at once by the next, so an overloaded node
        sends each client a frame per pass with more events in it: it sheds frames, never
        events. (Measured: pausing longer after an overrunning tick cost more CPU per delivery
        than it saved, and flushing each room in slices spread over the tick kept every client
        at ten frames a second under load: 35 % more CPU at 10,000 clients and a worse tail.)"""
        while True:
            started = time.monotonic()
            try:
                await self._tick_once()
            except Exception:  # one bad tick must not end delivery on this node
                log.exception("fan-out tick failed")
            elapsed = time.monotonic() - started
            await asyncio.sleep(max(0.0, self._tick - elapsed))

    async def _tick_once(self) -> None:
        delivered = 0
        for room in list(self._rooms.by_session.values()):
            waiting, room.waiting_since = room.waiting_since, None  # what arrives meanwhile sets it anew
            events, frames, busy = await self.flush(room)
            delivered += events
            if waiting is not None or frames:
                self._on_flush(None if waiting is None else time.monotonic() - waiting, busy, frames)
        if delivered:
            self._on_deliver(delivered)
        while self.gone:
            self._rooms.leave(self.gone.pop().sid)

    def abort_all(self) -> None:
        """At shutdown, after clients were told: close every socket now rather than wait for
        Engine.IO's ping timeout to notice."""
        for transport in list(self._transports.values()):
            transport.abort()

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="fanout")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
