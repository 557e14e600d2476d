"""The Socket.IO server under the live channel: python-socketio's, on aiohttp, with the
msgpack parser, its own WebSocket driver, and a connection that sends what it cannot decode
ended at once.

The driver turns compression off (permessage-deflate costs 2–6× CPU per message on
broadcast sockets) and records each socket's transport, so the fan-out can write pre-built
frames to it.

Holding many idle clients is made cheap. Engine.IO pings each client every `ping_interval`
from a task of its own per ping, through the client's queue and writer task, and its read
loop starts a task and a timer for every frame it waits for. Here, once a websocket client
has answered a ping, its next one is due in a slot of one wheel, whose task writes the due
pings each second straight to the sockets and ends those that left a ping unanswered past
`ping_timeout`; the read loop waits for frames without a timer, and pongs and Socket.IO
messages are handled as they are read.

Left alone, python-engineio raises a text frame it cannot read out of the websocket into
the HTTP middleware, and python-socketio logs an undecodable packet with a traceback and
leaves the socket open without an answer. Here the sender is disconnected (it leaves its
room), its websocket gets a close frame, and the node logs one warning.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from typing import Any

import engineio
import socketio
from aiohttp import WSCloseCode, web
from engineio import async_socket as eio_socket
from engineio import exceptions as eio_exceptions
from engineio import packet as eio_packet
from engineio.async_drivers import aiohttp as eio_aiohttp
from socketio import packet as sio_packet
from socketio.msgpack_packet import MsgPackPacket

from interaction.errors import InvalidMessage

log = logging.getLogger("tribune.live")


class UndecodablePacket(InvalidMessage):
    pass


class Packet(MsgPackPacket):  # type: ignore[misc]
    """The msgpack parser, refusing as socket.io-msgpack-parser does what the stock one
    passes on to fail later: a packet needs a known type and a namespace, an event a name."""

    def __init__(self, *args: Any, encoded_packet: Any = None, **kwargs: Any) -> None:
        if encoded_packet is not None and not encoded_packet:  # the stock one takes it for an EVENT
            raise UndecodablePacket("an empty message")
        super().__init__(*args, encoded_packet=encoded_packet, **kwargs)

    def decode(self, encoded_packet: Any) -> None:
        try:
            super().decode(encoded_packet)
        except Exception as exc:  # not msgpack, too deep, not a map, no type or nsp, a text message
            raise UndecodablePacket(f"not a msgpack Socket.IO packet: {exc!r:.80}") from None
        kind, data = self.packet_type, self.data
        if kind not in (sio_packet.CONNECT, sio_packet.DISCONNECT, sio_packet.EVENT, sio_packet.ACK):
            raise UndecodablePacket(f"packet type {kind!r:.20} is not one a client sends")
        if not isinstance(self.namespace, str):
            raise UndecodablePacket("the namespace is not a string")
        if kind == sio_packet.EVENT and not (
            isinstance(data, list)
            and data
            and isinstance(data[0], str | int | float)
            and data[0] not in socketio.AsyncServer.reserved_events
        ):
            raise UndecodablePacket("an event is a list starting with its name")
        if kind == sio_packet.ACK and not isinstance(data, list):
            raise UndecodablePacket("an ack's data is a list")


def _readable(frame: str) -> bool:
    """Whether Engine.IO can take a text frame: its decoder raises on some, and its read loop
    fails on a packet type it does not know."""
    try:
        kind: int = eio_packet.Packet(encoded_packet=frame).packet_type
    except (ValueError, RecursionError):  # empty, no type digit, bad base64, JSON nested too deep
        return False
    return 0 <= kind < len(eio_packet.packet_names)


def websocket_frame(payload: bytes, *, text: bool = False) -> bytes:
    """An unmasked, final WebSocket frame (RFC 6455 §5.2), binary or text, as a server sends it."""
    size = len(payload)
    first = 0x81 if text else 0x82
    if size < 126:
        header = struct.pack("!BB", first, size)
    elif size < 1 << 16:
        header = struct.pack("!BBH", first, 126, size)
    else:
        header = struct.pack("!BBQ", first, 127, size)
    return header + payload


class _Engine(engineio.AsyncServer):  # type: ignore[misc]
    """python-engineio's server with a cheaper sweep of its sockets."""

    async def _service_task(self) -> None:
        """Forget closed sockets and close those whose ping went unanswered past
        `ping_timeout`, as Engine.IO's sweep does, seeing each socket once per `ping_timeout`
        seconds: a slice of them every second. Engine.IO's waits for its stop event between
        every two sockets with a task and a timer each time, which at 10,000 clients was a
        quarter of what an idle node spent."""
        self.service_task_event = stop = self.create_event()
        rounds = max(1, int(self.ping_timeout))
        while not stop.is_set():
            sockets = list(self.sockets.values())
            size = max(1, -(-len(sockets) // rounds))
            for first in range(0, max(1, len(sockets)), size):
                try:
                    for socket in sockets[first : first + size]:
                        if socket.closed:
                            if self.sockets.get(socket.sid) is socket:
                                del self.sockets[socket.sid]
                        elif not socket.closing:
                            await socket.check_ping_timeout()
                except Exception:  # as Engine.IO's: log it, keep sweeping
                    log.exception("sweep of live connections failed")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)
                    return


class Server(socketio.AsyncServer):  # type: ignore[misc]
    """python-socketio's server with `Packet` and `WebSocket`, writing acknowledgements
    straight to the socket when it can."""

    def __init__(self, *, write_limit: int = 1 << 20, **options: Any) -> None:
        super().__init__(async_mode="aiohttp", serializer=Packet, **options)
        self.websockets: dict[str, WebSocket] = {}  # by Engine.IO sid
        self.transports: dict[str, asyncio.Transport] = {}  # theirs, for the fan-out's writes
        self.write_limit = write_limit  # bytes a socket may hold unsent and still be written to
        self._due: dict[int, list[tuple[_Socket, int]]] = {}  # monotonic second → PING/CHECK due then
        self.pinging = False
        # The driver table is a module's dict, shared by every server: replace it on this one.
        self.eio._async = {**self.eio._async, "websocket": self._websocket}

    def _engineio_server_class(self) -> type[_Engine]:
        return _Engine

    def _websocket(self, handler: Any, eio: Any) -> WebSocket:
        return WebSocket(handler, eio, self)

    async def _send_packet(self, eio_sid: str, pkt: Any) -> None:
        # An acknowledgement has no order to keep with anything but what is already queued:
        # with nothing queued it skips Engine.IO's queue and writer task.
        if pkt.packet_type == sio_packet.ACK and self.write_now(eio_sid, pkt.encode()):
            return
        await super()._send_packet(eio_sid, pkt)

    def write_now(self, eio_sid: str, payload: bytes, *, text: bool = False) -> bool:
        """Write one message straight to a websocket client's transport when nothing of its
        waits in Engine.IO's queue and its socket buffer is under `write_limit`; False, with
        nothing written, otherwise."""
        transport = self.transports.get(eio_sid)
        socket = self.eio.sockets.get(eio_sid)
        if (
            transport is None
            or not self.takes(transport)
            or socket is None
            or socket.closing
            or socket.closed
            or not socket.upgraded
            or socket.upgrading
            or not socket.queue.empty()
        ):
            return False
        transport.write(websocket_frame(payload, text=text))
        return True

    def takes(self, transport: asyncio.Transport) -> bool:
        """Whether a frame may be written to `transport` now: open, and under `write_limit`."""
        return not transport.is_closing() and transport.get_write_buffer_size() <= self.write_limit

    def watch(self, socket: _Socket) -> None:
        """A websocket client's read loop started: if no ping of it is answered from now on,
        the socket is ended within `ping_interval + ping_timeout` (and a second)."""
        if self.pinging:
            self._at(time.monotonic() + self.eio.ping_interval + self.eio.ping_timeout + 1, socket, CHECK)

    def answered(self, socket: _Socket) -> None:
        """A websocket client answered a ping: its next one goes on the wheel, in the slot of
        the whole second before it is due (never late: a client waits for it at most
        `ping_interval + ping_timeout`). Engine.IO's own rescheduling then finds no ping
        outstanding and does nothing."""
        if self.pinging and socket.last_ping:
            socket.last_ping = None
            if socket.ping_due is None:
                socket.ping_due = self._at(time.monotonic() + self.eio.ping_interval, socket, PING)

    def _at(self, when: float, socket: _Socket, what: int) -> int:
        slot = int(when)
        self._due.setdefault(slot, []).append((socket, what))
        return slot

    async def run_pings(self) -> None:
        """Write the pings that fall due and end the sockets that did not answer theirs, at
        each whole second, until cancelled."""
        self.pinging = True
        slot = int(time.monotonic()) + 1  # the next slot to run
        try:
            while True:
                await asyncio.sleep(slot - time.monotonic())
                now = int(time.monotonic())
                while slot <= now:
                    for socket, what in self._due.pop(slot, ()):
                        if what == PING:
                            socket.ping_due = None
                            self._ping(socket)
                        else:
                            self._check(socket)
                    slot += 1
        finally:
            self.pinging = False
            for entries in self._due.values():  # back to Engine.IO's own pings
                for socket, what in entries:
                    if what == PING:
                        socket.ping_due = None
                        socket.last_ping = time.time()
                        socket.schedule_ping()
            self._due.clear()

    def _ping(self, socket: _Socket) -> None:
        if socket.closing or socket.closed:  # its websocket ends soon, or the check ends it
            self._at(time.monotonic() + self.eio.ping_timeout + 1, socket, CHECK)
            return
        if self.manager.sid_from_eio_sid(socket.sid, "/") is None:
            # It answers pings but is not in the live channel: it never joined in a whole ping
            # interval, or the node disconnected it and it did not go. It holds a socket for
            # nothing; stock clients close the connection themselves.
            self._end(socket, "is in no channel")
            return
        socket.last_ping = time.time()
        if not self.write_now(socket.sid, b"2", text=True):
            socket.queue.put_nowait(eio_packet.Packet(eio_packet.PING))
        self._at(time.monotonic() + self.eio.ping_timeout + 1, socket, CHECK)

    def _check(self, socket: _Socket) -> None:
        """End a websocket whose client left a ping unanswered past `ping_timeout` (or whose
        Engine.IO socket was closed meanwhile): its read loop then ends and cleans up."""
        late = socket.last_ping and time.time() - socket.last_ping > self.eio.ping_timeout
        if late:
            self._end(socket, "left its ping unanswered")
        elif socket.closed:
            self._end(socket, "kept its websocket open after it was closed")

    def _end(self, socket: _Socket, why: str) -> None:
        """Abort a websocket client's connection: its read loop ends and cleans up."""
        transport = self.transports.get(socket.sid)
        if transport is not None and not transport.is_closing():
            log.info("live connection %s %s; ending it", socket.sid, why)
            transport.abort()

    async def _handle_eio_message(self, eio_sid: str, data: Any) -> None:
        try:
            await super()._handle_eio_message(eio_sid, data)
        except UndecodablePacket as exc:
            await self.refuse(eio_sid, exc.message)

    async def refuse(self, eio_sid: str, why: str) -> None:
        """End a connection that sent what cannot be decoded: disconnected now, and over a
        websocket with a close frame (protocol error) instead of Engine.IO's CLOSE packet."""
        request = self.environ.get(eio_sid, {}).get("aiohttp.request")
        log.warning("closing live connection %s from %s: %s", eio_sid, request and request.remote, why)
        socket, websocket = self.eio.sockets.get(eio_sid), self.websockets.get(eio_sid)
        if socket is not None:
            await socket.close(wait=False, abort=websocket is not None, reason=self.reason.TRANSPORT_ERROR)
        if websocket is not None:
            await websocket.end()


PING, CHECK = 0, 1  # what the ping wheel does with a socket in a slot


class _Socket(eio_socket.AsyncSocket):  # type: ignore[misc]
    """Engine.IO's socket, with its websocket loops (python-engineio 4's
    `AsyncSocket._websocket_handler`) made cheap for many idle clients:

    - the read loop waits for frames without a task and a timer per frame; the server's
      ping wheel ends a client that leaves a ping unanswered (or, with no wheel running, a
      timeout as Engine.IO's: no frame in `ping_interval + ping_timeout`);
    - the writer waits for packets without a timeout: Engine.IO's ends the socket when
      nothing was queued for that long, and pings written from the wheel are not queued.
    """

    ping_due: int | None = None  # the wheel slot of this socket's next ping
    connected: bool
    upgrading: bool
    upgraded: bool

    async def _websocket_handler(self, ws: WebSocket) -> None:
        if self.connected:  # an upgrade from long-polling: the probe, then UPGRADE
            self.upgrading = True
            probe = await ws.wait()
            decoded = eio_packet.Packet(encoded_packet=probe) if isinstance(probe, str) else None
            if decoded is None or decoded.packet_type != eio_packet.PING or decoded.data != "probe":
                self.upgrading = False
                return
            await ws.send(eio_packet.Packet(eio_packet.PONG, data="probe").encode())
            await self.queue.put(eio_packet.Packet(eio_packet.NOOP))  # ends the pending poll
            upgrade = await ws.wait()
            decoded = eio_packet.Packet(encoded_packet=upgrade) if isinstance(upgrade, str) else None
            if decoded is None or decoded.packet_type != eio_packet.UPGRADE:
                self.upgraded = False
                self.upgrading = False
                return
            self.upgraded = True
            self.upgrading = False
        else:
            self.connected = True
            self.upgraded = True

        async def writer() -> None:
            while True:
                try:
                    packets = await self.poll()
                except eio_exceptions.QueueEmpty:
                    break
                if not packets:
                    break
                try:
                    for pkt in packets:
                        await ws.send(pkt.encode())
                except Exception:  # the connection is gone: so is the writer
                    break
            with contextlib.suppress(Exception):  # kept by the response, seen when it ends
                await ws.close()

        writer_task = asyncio.ensure_future(writer())
        owner = ws.owner
        owner.watch(self)
        silence = self.server.ping_interval + self.server.ping_timeout
        try:
            while True:
                try:
                    frame = await (ws.wait() if owner.pinging else asyncio.wait_for(ws.wait(), silence))
                except (TimeoutError, asyncio.CancelledError):
                    # aiohttp cancels the handler of a connection that was lost; as Engine.IO's
                    # loop, end it normally so the response is closed and cleaned below.
                    break
                if frame is None:
                    break
                try:
                    await self.receive(eio_packet.Packet(encoded_packet=frame))
                except eio_exceptions.UnknownPacketError:
                    pass
                except eio_exceptions.SocketIsClosedError:
                    break
                except Exception:  # as Engine.IO's: log it, end the connection properly
                    log.exception("live packet from %s failed", self.sid)
        finally:
            self.queue.put_nowait(None)  # ends the writer
            await writer_task
            await self.close(wait=False, abort=True, reason=self.server.reason.TRANSPORT_CLOSE)

    async def poll(self) -> list[Any]:
        if not self.upgraded:
            return list(await super().poll())
        try:
            first = await self.queue.get()
        except asyncio.CancelledError:  # as Engine.IO's: the writer stops
            raise eio_exceptions.QueueEmpty() from None
        self.queue.task_done()
        if first is None:
            return []
        packets = [first]
        while not self.queue.empty():
            pkt = self.queue.get_nowait()
            self.queue.task_done()
            if pkt is None:
                self.queue.put_nowait(None)
                break
            packets.append(pkt)
        return packets


class WebSocket(eio_aiohttp.WebSocket):  # type: ignore[misc]
    """Engine.IO's aiohttp WebSocket driver without compression, its transport recorded,
    refusing text frames Engine.IO cannot read, and which the server can end."""

    def __init__(self, handler: Any, eio: Any, server: Server) -> None:
        super().__init__(handler, eio)
        self.owner = server
        socket = handler.__self__  # the handler is the Engine.IO socket's read loop
        self.sid: str = socket.sid
        if type(socket) is eio_socket.AsyncSocket:
            socket.__class__ = _Socket

    async def __call__(self, environ: dict[str, Any]) -> web.WebSocketResponse:
        request: web.Request = environ["aiohttp.request"]
        self._sock = web.WebSocketResponse(max_msg_size=self.server.max_http_buffer_size, compress=False)
        await self._sock.prepare(request)
        self.environ = environ
        owner, sid = self.owner, self.sid
        owner.websockets[sid] = self
        if request.transport is not None:
            owner.transports[sid] = request.transport
        try:
            socket = self.handler.__self__
            await (socket._websocket_handler(self) if isinstance(socket, _Socket) else self.handler(self))
        finally:
            owner.transports.pop(sid, None)
            if owner.websockets.get(sid) is self:
                del owner.websockets[sid]
        # aiohttp keeps the error of a close that found the peer gone (the usual way a
        # connection ends), and that error's traceback, like that of the EOF it may have been
        # raised in handling, holds the response: a cycle per connection, freed only by a
        # full collection, which a node with many long-lived objects seldom runs. Close here
        # and drop the tracebacks, not the error.
        await self._sock.close()
        failure: BaseException | None = self._sock.exception()
        while failure is not None:
            failure.with_traceback(None)
            failure = failure.__context__
        return self._sock

    async def wait(self) -> str | bytes | None:
        """The next frame for the read loop. Binary frames on an upgraded socket are Socket.IO
        messages: they are handed to the server here, as that loop would. Pongs go to the ping
        wheel while it runs. The loop gets the other text frames, and None at the end."""
        # None ends the read loop as an exception would, but an exception would stay in the
        # read task with its frames, which hold that task: a cycle per connection.
        socket, receive, owner = self.handler.__self__, self._sock.receive, self.owner
        while True:
            frame = (await receive()).data
            if isinstance(frame, bytes) and socket.upgraded and not socket.closed:
                try:
                    await owner._handle_eio_message(self.sid, frame)
                except Exception:  # as Engine.IO's loop does: log it, keep reading
                    log.exception("live message from %s failed", self.sid)
                continue
            if not isinstance(frame, str | bytes):  # closed, or failed
                return None
            if isinstance(frame, str) and not _readable(frame):
                await owner.refuse(self.sid, f"not an Engine.IO packet: {frame[:20]!r}")
                return None
            text: str | bytes = frame
            if text == "3" and socket.upgraded and owner.pinging and isinstance(socket, _Socket):
                owner.answered(socket)  # a pong
                continue
            return text

    async def send(self, message: str | bytes) -> None:
        """Engine.IO's writer task sends through here: each frame is written to the transport
        at once, as the fan-out writes, unless the socket holds more than `write_limit`
        unsent; then aiohttp's writer takes it and waits for the socket to drain."""
        transport = self.owner.transports.get(self.sid)
        if transport is not None and not self._sock.closed and self.owner.takes(transport):
            if isinstance(message, str):
                transport.write(websocket_frame(message.encode(), text=True))
            else:
                transport.write(websocket_frame(message))
            return
        await super().send(message)

    async def end(self) -> None:
        if self._sock is not None:
            await self._sock.close(code=WSCloseCode.PROTOCOL_ERROR, message=b"undecodable packet")
