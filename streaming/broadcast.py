"""Encode once, fan out.

A `Broadcast` is one live feed on its ingest node. aiortc decodes the publisher's tracks
(once); the broadcast encodes video once with libx264 (constrained baseline, zerolatency)
and audio once with Opus, packetizes each encoded frame for RTP once, and offers the same
`Unit` to every sink — each WHEP viewer's tracks, and the HLS segmenter (streaming/hls.py),
which also listens to the decoded audio to encode it to AAC.

Keyframes: every `keyframe_interval`, and when a sink asks (a viewer's PLI/FIR, a late
joiner), at most once per `keyframe_debounce`; a request inside the window is kept and
served when the window ends, never lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Protocol

import av
from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.opus import OpusEncoder
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av.video.frame import PictureType

log = logging.getLogger("tribune.streaming")

VIDEO_CLOCK = 90_000
AUDIO_CLOCK = 48_000
OPUS_FRAME = 960  # 20 ms at 48 kHz
NOMINAL_FPS = 30  # the frame rate the encoder's rate control assumes


@dataclass(frozen=True, slots=True)
class Unit:
    """One encoded frame, with its RTP payloads made once for every viewer."""

    kind: str  # "audio" | "video"
    packet: av.Packet  # type: ignore[type-arg]
    payloads: list[bytes]
    timestamp: int  # in the RTP clock of its kind, from the feed's start
    keyframe: bool


class Sink(Protocol):
    def offer(self, unit: Unit) -> None: ...


class VideoEncoder:
    """libx264 once per feed. Frames are scaled to at most `max_height` (even sizes)."""

    def __init__(self, *, bitrate: int, max_height: int) -> None:
        self.bitrate = bitrate
        self.max_height = max_height
        self.context: av.VideoCodecContext | None = None
        self._last_pts = -1
        self._packer = H264Encoder()

    def _open(self, width: int, height: int) -> av.VideoCodecContext:
        context = av.CodecContext.create("libx264", "w")
        assert isinstance(context, av.VideoCodecContext)
        context.width, context.height = width, height
        context.pix_fmt = "yuv420p"
        context.time_base = Fraction(1, VIDEO_CLOCK)
        # x264's rate control budgets bits per frame from the frame rate; without it, it takes
        # the 90 kHz time base for one and starves every frame (23-byte P-frames).
        context.framerate = Fraction(NOMINAL_FPS, 1)
        context.bit_rate = self.bitrate
        context.gop_size = 100_000  # keyframes come when we ask for them
        context.options = {
            "preset": "veryfast",
            "tune": "zerolatency",
            "profile": "baseline",
            "forced-idr": "1",
            "x264-params": "scenecut=0:repeat-headers=1",
        }
        context.open()
        return context

    def _size(self, frame: av.VideoFrame) -> tuple[int, int]:
        width, height = frame.width, frame.height
        if height > self.max_height:
            width, height = round(width * self.max_height / height), self.max_height
        return width - width % 2, height - height % 2

    def encode(self, frame: av.VideoFrame, keyframe: bool) -> list[Unit]:
        width, height = self._size(frame)
        if self.context is not None and (self.context.width, self.context.height) != (width, height):
            self.context = None  # the publisher changed resolution: start a new stream
        if self.context is None:
            self.context = self._open(width, height)
            keyframe = True
        if (frame.width, frame.height, frame.format.name) != (width, height, "yuv420p"):
            frame = frame.reformat(width=width, height=height, format="yuv420p")
        pts = (
            int(frame.pts * frame.time_base * VIDEO_CLOCK) if frame.pts is not None and frame.time_base else 0
        )
        pts = max(pts, self._last_pts + 1)
        self._last_pts = pts
        frame.pts, frame.time_base = pts, Fraction(1, VIDEO_CLOCK)
        frame.pict_type = PictureType.I if keyframe else PictureType.NONE
        units = []
        for packet in self.context.encode(frame):
            packet.time_base = Fraction(1, VIDEO_CLOCK)
            payloads, timestamp = self._packer.pack(packet)
            units.append(Unit("video", packet, payloads, timestamp, bool(packet.is_keyframe)))
        return units


class AudioEncoder:
    """Opus once per feed: 48 kHz stereo, 20 ms frames."""

    def __init__(self, bitrate: int = 64_000) -> None:
        self.context = av.CodecContext.create("libopus", "w")
        assert isinstance(self.context, av.AudioCodecContext)
        self.context.sample_rate = AUDIO_CLOCK
        self.context.layout = "stereo"
        self.context.format = "s16"
        self.context.bit_rate = bitrate
        self.context.time_base = Fraction(1, AUDIO_CLOCK)
        self.context.open()
        self._resampler = av.AudioResampler(
            format="s16", layout="stereo", rate=AUDIO_CLOCK, frame_size=OPUS_FRAME
        )
        self._packer = OpusEncoder()
        self._next_pts: int | None = None

    def encode(self, frame: av.AudioFrame) -> list[Unit]:
        units = []
        for chunk in self._resampler.resample(frame):
            if self._next_pts is None:
                self._next_pts = 0
            chunk.pts, chunk.time_base = self._next_pts, Fraction(1, AUDIO_CLOCK)
            self._next_pts += chunk.samples
            for packet in self.context.encode(chunk):
                packet.time_base = Fraction(1, AUDIO_CLOCK)
                payloads, timestamp = self._packer.pack(packet)
                units.append(Unit("audio", packet, payloads, timestamp, True))
        return units


class Broadcast:
    """One feed's encoders and the sinks they feed."""

    def __init__(
        self,
        feed_id: str,
        *,
        bitrate: int,
        max_height: int,
        keyframe_interval: float,
        keyframe_debounce: float,
        on_frame: Callable[[], None] | None = None,
        on_keyframe: Callable[[str], None] | None = None,
    ) -> None:
        self.feed_id = feed_id
        self.video = VideoEncoder(bitrate=bitrate, max_height=max_height)
        self.audio: AudioEncoder | None = None
        self.keyframe_interval = keyframe_interval
        self.keyframe_debounce = keyframe_debounce
        self.sinks: set[Sink] = set()
        self.audio_listeners: set[Callable[[av.AudioFrame], None]] = set()  # decoded audio (HLS)
        self.frames_in = 0
        self.units_out = 0
        self.keyframe_requests = 0
        self.keyframes_forced = 0
        self._on_frame = on_frame
        self._on_keyframe = on_keyframe
        self._wanted = False
        self._last_keyframe = -1e9
        self._tasks: set[asyncio.Task[None]] = set()
        self.ended = asyncio.Event()

    # --- sinks --------------------------------------------------------------------------

    def add(self, sink: Sink) -> None:
        self.sinks.add(sink)

    def remove(self, sink: Sink) -> None:
        self.sinks.discard(sink)

    def request_keyframe(self) -> None:
        """A viewer's PLI/FIR, or a sink that starts now. Served once per debounce window."""
        self.keyframe_requests += 1
        self._wanted = True

    def _offer(self, units: list[Unit]) -> None:
        for unit in units:
            self.units_out += 1
            for sink in tuple(self.sinks):
                try:
                    sink.offer(unit)
                except Exception:  # one viewer's (or the segmenter's) fault ends only its share
                    log.exception("feed %s: a sink failed and is given nothing more: %r", self.feed_id, sink)
                    self.sinks.discard(sink)

    # --- the publisher's tracks ------------------------------------------------------------

    def consume(self, track: MediaStreamTrack) -> None:
        runner = self._run_video if track.kind == "video" else self._run_audio
        task = asyncio.create_task(runner(track), name=f"feed {self.feed_id} {track.kind}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _keyframe_due(self) -> bool:
        now = time.monotonic()
        since = now - self._last_keyframe
        due = since >= self.keyframe_interval or (self._wanted and since >= self.keyframe_debounce)
        if due:
            requested = self._wanted and since < self.keyframe_interval
            if requested:
                self.keyframes_forced += 1
            if self._on_keyframe is not None:
                self._on_keyframe("request" if requested else "interval")
            self._wanted = False
            self._last_keyframe = now
        return due

    async def _run_video(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                frame = await track.recv()
                assert isinstance(frame, av.VideoFrame)
                self.frames_in += 1
                if self._on_frame is not None:
                    self._on_frame()
                units = await asyncio.to_thread(self.video.encode, frame, self._keyframe_due())
                self._offer(units)
        except MediaStreamError:
            pass
        except Exception:
            log.exception("feed %s: video encoding stopped", self.feed_id)
        finally:
            self.ended.set()

    async def _run_audio(self, track: MediaStreamTrack) -> None:
        try:
            self.audio = AudioEncoder()
            while True:
                frame = await track.recv()
                assert isinstance(frame, av.AudioFrame)
                for listener in tuple(self.audio_listeners):
                    listener(frame)
                self._offer(self.audio.encode(frame))
        except MediaStreamError:
            pass
        except Exception:
            log.exception("feed %s: audio encoding stopped", self.feed_id)

    async def stop(self) -> None:
        for task in tuple(self._tasks):
            task.cancel()
        for task in tuple(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.ended.set()
