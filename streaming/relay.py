"""A viewer's side of the fan-out: each unit's RTP packets written straight to the viewer.

aiortc's `RTCRtpSender` runs one task per viewer and track that awaits the next frame,
builds an `RtpPacket` object per packet, serializes it and awaits three coroutines down
to the socket. With the payloads already made once by the broadcast, that per-viewer
Python was most of what a viewer cost. A `ViewerStream` takes the sender's place for
sending: the broadcast calls `offer()` for every unit, and for each packet it packs the
12-byte header (this viewer's SSRC, sequence number and timestamp offset) in front of the
shared payload, protects it with the viewer's SRTP session and hands the datagram to the
socket of the viewer's ICE pair — no task, no queue, no awaits.

The sender still does everything else: SDP, RTCP (sender reports from the counts kept
here, receiver reports, PLI/FIR routed to the feed's encoder), and NACK, answered from
the packets kept here through aiortc's own RTX wrapping. This module is the only place
the node touches private parts of aiortc and aioice (the sender's state, the DTLS
transport's SRTP session, the ICE pair's socket); the tests pin their behaviour.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Callable
from typing import Any

from aiortc import RTCRtpSender
from aiortc.rtcdtlstransport import State
from aiortc.rtp import HeaderExtensions, RtpPacket, wrap_rtx
from aiortc.utils import random16, random32, uint16_add

from streaming.broadcast import Unit

HISTORY = 256  # packets kept for NACK: about 2 s of video at 1 Mbit/s
BACKLOG_BYTES = 256 * 1024  # unsent datagrams at which a viewer is backed up
DRAINED_BYTES = 32 * 1024  # and the backlog it must get down to before it is sent more
NTP_OFFSET = 2_208_988_800  # seconds from 1900 (NTP) to 1970 (Unix)
_header = struct.Struct("!BBHLL")
_extension_header = struct.Struct("!HH")


def ntp_now() -> int:
    """The wall clock as a 64-bit NTP timestamp (32.32 fixed point)."""
    return int((time.time() + NTP_OFFSET) * 4_294_967_296)


class ViewerStream:
    """One viewer's audio or video. Units offered before the viewer is connected are
    dropped, not kept; video starts at a keyframe. A viewer whose socket stops taking
    datagrams (a backlog over `BACKLOG_BYTES`) is sent nothing more until the backlog is
    down to `DRAINED_BYTES`, then resumes at a fresh keyframe; `full_since` marks it
    meanwhile, and the hub closes a viewer that stays backed up (a link slower than the
    feed)."""

    def __init__(self, sender: RTCRtpSender, request_keyframe: Callable[[], None]) -> None:
        self.kind = sender.kind
        self._sender: Any = sender
        self._request_keyframe = request_keyframe
        self.started = False  # negotiated and connected: units are sent
        self.stopped = False
        self._need_keyframe = self.kind == "video"
        self.full_since: float | None = None
        self._history: list[tuple[bytes, bytes] | None] = [None] * HISTORY  # header, shared payload
        self._done: asyncio.Future[None] | None = None
        # Filled when the sender starts (`_run`).
        self._dtls: Any = None
        self._socket: Any = None
        self._address: tuple[str, int] = ("", 0)
        self._extensions: Any = None
        self._mid: str | None = None
        self._payload_type = 0
        self._ssrc = 0
        self._sequence = 0
        self._origin = 0
        self._rtx_payload_type: int | None = None
        self._rtx_sequence = 0
        sender._run_rtp = self._run  # type: ignore[method-assign]
        sender._send_keyframe = request_keyframe  # type: ignore[method-assign]
        sender._retransmit = self._retransmit  # type: ignore[method-assign]

    async def _run(self, codec: Any) -> None:
        """In place of the sender's RTP task: note what was negotiated and the viewer's
        socket, then wait until the sender stops; `offer()` does the sending."""
        sender = self._sender
        try:
            self._dtls = sender.transport
            pair = self._dtls.transport._connection._nominated.get(1)
            self._socket, self._address = pair.protocol.transport, pair.remote_addr
            self._extensions = sender._RTCRtpSender__rtp_header_extensions_map
            self._mid = sender._RTCRtpSender__mid
            self._payload_type = codec.payloadType
            self._ssrc = sender._ssrc
            self._sequence = random16()
            self._origin = random32()
            self._rtx_payload_type = sender._RTCRtpSender__rtx_payload_type
            self._rtx_sequence = random16()
            self._done = asyncio.get_running_loop().create_future()
            sender._RTCRtpSender__rtp_started.set()
            self.started = not self.stopped
            if self.started and self.kind == "video":
                self._request_keyframe()
            await self._done
        except asyncio.CancelledError:
            pass
        finally:
            self.started = False
            self.stopped = True
            sender._RTCRtpSender__rtp_started.set()  # set even when starting failed: stop() waits for it
            sender._RTCRtpSender__rtp_exited.set()

    def stop(self) -> None:
        self.stopped = True
        self.started = False
        if self._done is not None and not self._done.done():
            self._done.set_result(None)

    def offer(self, unit: Unit) -> None:
        if unit.kind != self.kind or not self.started:
            return
        if self._dtls._state != State.CONNECTED or self._socket.is_closing():
            return
        backlog = self._socket.get_write_buffer_size()
        if self.full_since is not None:  # backed up: nothing more until the backlog drains
            if backlog > DRAINED_BYTES:
                return
            self.full_since = None
            if self.kind == "video":
                self._request_keyframe()  # what was dropped broke the picture: a fresh one
        elif backlog > BACKLOG_BYTES:
            self.full_since = time.monotonic()
            self._need_keyframe = self.kind == "video"
            return
        if self._need_keyframe:
            if not unit.keyframe:
                return
            self._need_keyframe = False

        extensions = HeaderExtensions()
        extensions.mid = self._mid
        now = ntp_now()
        extensions.abs_send_time = (now >> 14) & 0xFFFFFF
        profile, value = self._extensions.set(extensions)
        tail = _extension_header.pack(profile, len(value) >> 2) + value if value else b""
        first = 0x90 if value else 0x80
        timestamp = (self._origin + unit.timestamp) & 0xFFFFFFFF
        protect = self._dtls._tx_srtp.protect
        sendto, address = self._socket.sendto, self._address
        history, sequence, ssrc, payload_type = self._history, self._sequence, self._ssrc, self._payload_type
        last = len(unit.payloads) - 1
        octets = sent = 0
        for i, payload in enumerate(unit.payloads):
            second = payload_type | 0x80 if i == last else payload_type
            header = _header.pack(first, second, sequence, timestamp, ssrc) + tail
            history[sequence % HISTORY] = (header, payload)
            datagram = protect(header + payload)
            sendto(datagram, address)
            octets += len(payload)
            sent += len(datagram)
            sequence = (sequence + 1) & 0xFFFF
        self._sequence = sequence
        # What the sender's reports and statistics read, kept as its own loop would.
        sender, dtls = self._sender, self._dtls
        sender._RTCRtpSender__ntp_timestamp = now
        sender._RTCRtpSender__rtp_timestamp = timestamp
        sender._RTCRtpSender__octet_count += octets
        sender._RTCRtpSender__packet_count += last + 1
        dtls._RTCDtlsTransport__tx_bytes += sent
        dtls._RTCDtlsTransport__tx_packets += last + 1

    async def _retransmit(self, sequence_number: int) -> None:
        """A NACK: the packet again, wrapped in RTX when the viewer negotiated it."""
        kept = self._history[sequence_number % HISTORY]
        if kept is None or not self.started:
            return
        packet = RtpPacket.parse(kept[0] + kept[1], self._extensions)
        if packet.sequence_number != sequence_number:
            return  # too old: its place holds a newer one
        if self._rtx_payload_type is not None:
            packet = wrap_rtx(
                packet,
                payload_type=self._rtx_payload_type,
                sequence_number=self._rtx_sequence,
                ssrc=self._sender._rtx_ssrc,
            )
            self._rtx_sequence = uint16_add(self._rtx_sequence, 1)
        await self._dtls._send_rtp(packet.serialize(self._extensions))
