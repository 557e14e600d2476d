"""WHIP and WHEP clients on aiortc: the test source publishes with `WhipPublisher`; tests
and the benchmark watch with `WhepViewer`."""

from __future__ import annotations

import asyncio
import contextlib
import queue
from typing import Any

import aiohttp
import pylibsrtp
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpReceiver, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcrtpsender import RTCRtpSender
from yarl import URL

_DELETE_TIMEOUT = aiohttp.ClientTimeout(total=3)


class WhipError(Exception):
    """The server refused an offer; the message carries its status and error."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"{status}: {body}")
        self.status = status
        self.body = body


def _h264(transceiver: Any) -> None:
    codecs = RTCRtpSender.getCapabilities("video").codecs
    transceiver.setCodecPreferences([c for c in codecs if c.mimeType in ("video/H264", "video/rtx")])


class WhipPublisher:
    """A WHIP client: offer, POST, answer; DELETE the resource to stop."""

    def __init__(self, url: str, key: str, tracks: list[MediaStreamTrack]) -> None:
        self.url = url
        self.key = key
        self.tracks = tracks
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.location: str | None = None

    async def start(self, http: aiohttp.ClientSession) -> None:
        for track in self.tracks:
            transceiver = self.pc.addTransceiver(track, direction="sendonly")
            if track.kind == "video":  # what the node re-encodes to anyway, and cheap to make
                _h264(transceiver)
        await self.pc.setLocalDescription(await self.pc.createOffer())
        headers = {"Authorization": f"Bearer {self.key}", "Content-Type": "application/sdp"}
        async with http.post(self.url, data=self.pc.localDescription.sdp, headers=headers) as response:
            body = await response.text()
            if response.status != 201:
                await self.pc.close()
                raise WhipError(response.status, body)
            self.location = str(response.url.join(URL(response.headers["Location"])))
        await self.pc.setRemoteDescription(RTCSessionDescription(body, "answer"))

    async def stop(self, http: aiohttp.ClientSession | None = None) -> None:
        if http is not None and self.location is not None:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with http.delete(
                    self.location, headers={"Authorization": f"Bearer {self.key}"}, timeout=_DELETE_TIMEOUT
                ):
                    pass
        await self.pc.close()
        for track in self.tracks:
            track.stop()


def is_keyframe(annexb: bytes) -> bool:
    """An H.264 access unit holding an IDR slice (NAL type 5)."""
    for start in (i + 3 for i in range(len(annexb) - 3) if annexb[i : i + 3] == b"\x00\x00\x01"):
        if start < len(annexb) and annexb[start] & 0x1F == 5:
            return True
    return False


class _FrameTap:
    """Stands in for a receiver's decoder queue: counts the encoded frames it is given and
    notes whether the first was a keyframe, then passes them on to the decoder."""

    def __init__(self, inner: queue.Queue[Any]) -> None:
        self.inner = inner
        self.frames = 0
        self.first_keyframe: bool | None = None

    def put(self, item: Any) -> None:
        if item is not None:
            codec, frame = item
            if codec.mimeType == "video/H264":
                if self.first_keyframe is None:
                    self.first_keyframe = is_keyframe(frame.data)
                self.frames += 1
        self.inner.put(item)

    def get(self) -> Any:  # the decoder thread reads through the tap
        return self.inner.get()


def _nal_types(payload: bytes) -> set[int]:
    """The H.264 NAL unit types an RTP payload (RFC 6184: one NAL unit, STAP-A or FU-A)
    starts; a FU-A fragment other than the first starts none."""
    if not payload:
        return set()
    kind = payload[0] & 0x1F
    if kind == 28:  # FU-A: the fragment's own type is in the second byte, S bit first
        return {payload[1] & 0x1F} if len(payload) > 1 and payload[1] & 0x80 else set()
    if kind == 24:  # STAP-A: 16-bit sizes, each followed by a NAL unit
        kinds, at = set(), 1
        while at + 2 < len(payload):
            kinds.add(payload[at + 2] & 0x1F)
            at += 2 + int.from_bytes(payload[at : at + 2], "big")
        return kinds
    return {kind}


IDR, SPS, AUD = 5, 7, 9


class _PacketCounter:
    """Stands in for a receiver's packet handling when nothing is decoded: counts the video
    frames that arrive whole, straight from the RTP headers — no depacketizing, jitter buffer
    or statistics, which cost a load generator more than the node spends sending. A frame
    counts when every packet from the one after the previous frame's last (marker) packet
    up to its own marker arrived; any gap spoils the frame it falls in. The very first packet
    begins a whole frame only if it opens an access unit (SPS or delimiter), as a stream
    that starts at a keyframe does."""

    def __init__(self, codecs: dict[int, Any]) -> None:
        self.codecs = codecs  # the receiver's, by payload type: filled once it starts
        self.frames = 0
        self.first_keyframe: bool | None = None
        self._next_seq: int | None = None
        self._whole = False  # the frame being received has lost nothing (unknown at first)
        self._idr = False

    async def handle(self, packet: Any, arrival_time_ms: int) -> None:
        """In place of the receiver's `_handle_rtp_packet` (packets aiortc parsed)."""
        self.count(packet.payload_type, packet.sequence_number, packet.marker, packet.payload)

    def count(self, payload_type: int, seq: int, marker: int, payload: bytes) -> None:
        codec = self.codecs.get(payload_type)
        if codec is None or codec.mimeType != "video/H264":
            return
        if self._next_seq is None:
            self._whole = bool(_nal_types(payload) & {SPS, AUD})
        elif seq != self._next_seq:
            self._whole = False
        self._next_seq = (seq + 1) & 0xFFFF
        if self.first_keyframe is None and not self._idr:
            self._idr = IDR in _nal_types(payload)
        if marker:
            if self._whole:
                self.frames += 1
                if self.first_keyframe is None:
                    self.first_keyframe = self._idr
            self._whole, self._idr = True, False

    def take_socket(self, pc: RTCPeerConnection) -> None:
        """Once connected, read the viewer's RTP off its socket directly: each datagram is
        SRTP-checked and decrypted with the session DTLS made, as aiortc would, and counted
        from its header, without aiortc's queue, task switch and packet object per datagram.
        Everything else (STUN consent checks, DTLS, RTCP) still goes to aiortc."""
        dtls: Any = next(t.receiver for t in pc.getTransceivers() if t.kind == "video").transport
        pair = dtls.transport._connection._nominated.get(1)
        if pair is None or dtls._rx_srtp is None:
            return
        protocol, unprotect, count = pair.protocol, dtls._rx_srtp.unprotect, self.count
        aiortc_receives = protocol.datagram_received

        def received(data: bytes, addr: tuple[Any, ...]) -> None:
            if len(data) < 12 or not 127 < data[0] < 192 or 63 < data[1] & 0x7F < 96:
                aiortc_receives(data, addr)  # not RTP (RFC 7983, RFC 5761): STUN, DTLS, RTCP
                return
            try:
                packet = unprotect(data)
            except pylibsrtp.Error:
                return
            start = 12 + 4 * (packet[0] & 0x0F)
            if packet[0] & 0x10:  # a header extension
                start += 4 + 4 * int.from_bytes(packet[start + 2 : start + 4], "big")
            end = len(packet) - packet[-1] if packet[0] & 0x20 else len(packet)  # padding
            count(packet[1] & 0x7F, int.from_bytes(packet[2:4], "big"), packet[1] >> 7, packet[start:end])

        protocol.datagram_received = received


async def _ignore(packet: Any, arrival_time_ms: int) -> None:
    return None


class WhepViewer:
    """A WHEP client. `decode=False` counts the video frames that arrive whole, from the RTP
    headers, and ignores the audio (the benchmark's thousands of frames a second); with
    `decode=True` aiortc receives, reassembles and decodes as usual, and `decoded` counts
    decoded pictures."""

    def __init__(self, url: str, token: str, *, audio: bool = True, decode: bool = True) -> None:
        self.url = url
        self.token = token
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.audio = audio
        self.decode = decode
        self.location: str | None = None
        self.redirected_from: str | None = None
        self.decoded = 0
        self._tap: _FrameTap | _PacketCounter | None = None
        self._readers: list[asyncio.Task[None]] = []

    @property
    def frames(self) -> int:
        return self._tap.frames if self._tap else 0

    @property
    def first_keyframe(self) -> bool | None:
        return self._tap.first_keyframe if self._tap else None

    @property
    def receiver(self) -> RTCRtpReceiver:
        return next(t.receiver for t in self.pc.getTransceivers() if t.kind == "video")

    async def start(self, http: aiohttp.ClientSession) -> None:
        video = self.pc.addTransceiver("video", direction="recvonly")
        _h264(video)
        if self.decode:
            inner = video.receiver._RTCRtpReceiver__decoder_queue  # type: ignore[attr-defined]
            self._tap = _FrameTap(inner)
            video.receiver._RTCRtpReceiver__decoder_queue = self._tap  # type: ignore[attr-defined]
        else:
            counter = _PacketCounter(video.receiver._RTCRtpReceiver__codecs)  # type: ignore[attr-defined]
            self._tap = counter
            video.receiver._handle_rtp_packet = counter.handle  # type: ignore[method-assign]

            @self.pc.on("connectionstatechange")
            def connected() -> None:
                if self.pc.connectionState == "connected":
                    counter.take_socket(self.pc)

        if self.audio:
            audio = self.pc.addTransceiver("audio", direction="recvonly")
            if not self.decode:
                audio.receiver._handle_rtp_packet = _ignore  # type: ignore[method-assign]

        @self.pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            self._readers.append(asyncio.create_task(self._read(track)))

        await self.pc.setLocalDescription(await self.pc.createOffer())
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/sdp"}
        url = self.url
        for _ in range(3):
            async with http.post(
                url, data=self.pc.localDescription.sdp, headers=headers, allow_redirects=False
            ) as response:
                body = await response.text()
                if response.status == 307:  # the feed's owner is another node
                    self.redirected_from = url
                    url = str(response.url.join(URL(response.headers["Location"])))
                    continue
                if response.status != 201:
                    await self.pc.close()
                    raise WhipError(response.status, body)
                self.location = str(response.url.join(URL(response.headers["Location"])))
                break
        else:
            await self.pc.close()
            raise WhipError(508, "too many redirects")
        await self.pc.setRemoteDescription(RTCSessionDescription(body, "answer"))

    async def _read(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError, asyncio.CancelledError):
            while True:
                await track.recv()
                if track.kind == "video":
                    self.decoded += 1

    async def request_keyframe(self) -> None:
        """Send a PLI, as a browser does when it lost a picture."""
        ssrc = next(iter(self.receiver._RTCRtpReceiver__remote_streams))  # type: ignore[attr-defined]
        await self.receiver._send_rtcp_pli(ssrc)

    async def stop(self, http: aiohttp.ClientSession | None = None) -> None:
        if http is not None and self.location is not None:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with http.delete(
                    self.location, headers={"Authorization": f"Bearer {self.token}"}, timeout=_DELETE_TIMEOUT
                ):
                    pass
        for reader in self._readers:
            reader.cancel()
        await self.pc.close()
