"""HLS from the encode-once stream: segments on a Redis bus, recordings on disk.

The ingest node's `Segmenter` is one more sink of the feed's `Broadcast`: it takes the H.264
units as they are (no second video encoder), encodes the audio once more to AAC, and cuts
an MPEG-TS segment at the first keyframe after about `hls_segment_seconds`. Each segment goes
to Redis with a TTL (`SegmentBus`), so every node serves every feed's live playlist from
memory, and to the data directory (`Recording`), which becomes the feed's VOD playlist
with `EXT-X-ENDLIST` when the feed ends.

Playlists of sessions that are not public carry short-lived signed segment URLs: an
HMAC over the feed, the path and the expiry (`sign` / `verify`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import hmac
import io
import json
import logging
import shutil
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlencode

import av
from redis.asyncio import Redis

from streaming.broadcast import VIDEO_CLOCK, Unit

log = logging.getLogger("tribune.streaming")

AAC_RATE = 48_000


@dataclass(frozen=True, slots=True)
class Segment:
    feed_id: str
    seq: int
    duration: float  # seconds
    started_at: datetime  # wall clock of its first frame
    data: bytes
    first_pts: int = 0  # 90 kHz, where its video starts
    size: tuple[int, int] = (0, 0)
    parts: tuple[tuple[float, bool], ...] = ()  # (duration, independent) of its parts
    numbered: bool = False  # made of parts already published: its bytes are final


def media_name(seq: int | str, part: int | str | None = None) -> str:
    """The bus's name of segment `seq`, or of its part `part`."""
    return f"seg:{seq}" if part is None else f"part:{seq}.{part}"


@dataclass(frozen=True, slots=True)
class Part:
    """A partial segment (LL-HLS): about `hls_part_seconds` of a segment, published as soon
    as it is cut; the segment is the concatenation of its parts."""

    feed_id: str
    seq: int  # the segment it belongs to
    index: int
    duration: float
    independent: bool  # starts with a keyframe
    data: bytes
    final: bool = False  # the segment ends with it: the next part is the next segment's first


@dataclass
class _Pending:
    video: list[av.Packet] = field(default_factory=list)  # type: ignore[type-arg]  # of the open part
    audio: list[av.Packet] = field(default_factory=list)  # type: ignore[type-arg]
    first_pts: int | None = None  # of the segment
    part_pts: int | None = None  # where the open part starts
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    parts: list[asyncio.Future[tuple[bytes, float, bool]]] = field(default_factory=list)


def aac_encoder(bit_rate: int) -> av.AudioCodecContext:
    """AAC-LC, 48 kHz stereo: the audio of every HLS segment."""
    aac = av.CodecContext.create("aac", "w")
    assert isinstance(aac, av.AudioCodecContext)
    aac.sample_rate, aac.layout, aac.format, aac.bit_rate = AAC_RATE, "stereo", "fltp", bit_rate
    aac.time_base = Fraction(1, AAC_RATE)
    aac.open()
    return aac


def _copy(packet: av.Packet, time_base: Fraction) -> av.Packet:  # type: ignore[type-arg]
    """A packet of our own: the broadcast's is shared with every other sink."""
    out = av.Packet(bytes(packet))
    out.pts = out.dts = packet.pts
    out.time_base = time_base
    out.is_keyframe = bool(packet.is_keyframe)
    return out


TS_PACKET = 188


def continue_counters(data: bytes, counters: dict[int, int]) -> bytes:
    """Renumbers the continuity counters of a segment's TS packets to follow the previous
    segment's (`counters`, per PID, updated), so the segments play as one stream with no
    discontinuity at their borders: each is muxed on its own, starting at 0."""
    out = bytearray(data)
    for at in range(0, len(out) - TS_PACKET + 1, TS_PACKET):
        if out[at] != 0x47:
            continue
        pid = ((out[at + 1] & 0x1F) << 8) | out[at + 2]
        if pid == 0x1FFF or not out[at + 3] & 0x10:  # null packet, or no payload: no count
            continue
        cc = (counters.get(pid, 15) + 1) & 0x0F
        counters[pid] = cc
        out[at + 3] = (out[at + 3] & 0xF0) | cc
    return bytes(out)


def mux_ts(video: list[Any], audio: list[Any], size: tuple[int, int], aac_extradata: bytes | None) -> bytes:
    """One self-contained MPEG-TS segment (PAT/PMT first, SPS/PPS in its first keyframe)."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mpegts") as out:
        vs = out.add_stream("h264", rate=30)
        vs.width, vs.height = size
        vs.time_base = Fraction(1, VIDEO_CLOCK)
        astream = None
        if audio and aac_extradata:
            astream = out.add_stream("aac", rate=AAC_RATE)
            astream.codec_context.extradata = aac_extradata
            astream.time_base = Fraction(1, AAC_RATE)
        for packet in video:
            packet.stream = vs
            out.mux(packet)
        if astream is not None:
            for packet in audio:
                packet.stream = astream
                out.mux(packet)
    return buffer.getvalue()


# The encoder makes its keyframes on its own clock, every `keyframe_interval`; by the frames'
# media time they land a little early or late as the node's load delays frames. A keyframe
# that lands early still ends the segment: waiting for the next one would make a segment of
# twice the target, and raise every player's reload interval and hold-back with it.
CUT_SLACK = 0.25  # seconds


class Segmenter:
    """A sink of a feed's broadcast that cuts MPEG-TS segments at keyframes, each made of
    parts of about `part_target` seconds published as they are cut (LL-HLS)."""

    def __init__(
        self,
        feed_id: str,
        *,
        target: float,
        part_target: float,
        size: Callable[[], tuple[int, int]],
        on_segment: Callable[[Segment], Awaitable[None]],
        on_part: Callable[[Part], Awaitable[None]],
    ) -> None:
        self.feed_id = feed_id
        self.target = target
        self.part_target = part_target
        self.size = size
        self.on_segment = on_segment
        self.on_part = on_part
        self.seq = 0
        self._pending = _Pending()
        self._aac: av.AudioCodecContext | None = None
        self._resampler: av.AudioResampler | None = None
        self._audio_pts = 0
        self._video_base: int | None = None  # the feed's first video pts: audio starts there
        self._tasks: set[asyncio.Future[None]] = set()
        self._chain: asyncio.Future[Any] | None = None

    # --- input ----------------------------------------------------------------------------

    def offer(self, unit: Unit) -> None:
        if unit.kind != "video":
            return  # audio arrives decoded (`audio_frame`) and is encoded to AAC here
        packet = unit.packet
        pts = int(packet.pts or 0)
        pending = self._pending
        if pending.first_pts is None:
            if not unit.keyframe:
                return  # a segment starts at a keyframe
            pending.first_pts = pending.part_pts = pts
            pending.started_at = datetime.now(UTC)
            if self._video_base is None:
                self._video_base = pts
        elif unit.keyframe and (pts - pending.first_pts) / VIDEO_CLOCK >= self.target - CUT_SLACK:
            self._close_part(end_pts=pts, final=True)
            self._cut()
            self._pending = pending = _Pending(first_pts=pts, part_pts=pts)
        elif pending.part_pts is not None and (pts - pending.part_pts) / VIDEO_CLOCK >= self.part_target:
            self._close_part(end_pts=pts)
            pending.part_pts = pts
        pending.video.append(_copy(packet, Fraction(1, VIDEO_CLOCK)))

    def audio_frame(self, frame: av.AudioFrame) -> None:
        if self._video_base is None:
            return  # no video yet: audio would start before the first segment
        if self._aac is None:
            self._aac = aac_encoder(96_000)
            self._resampler = av.AudioResampler(
                format="fltp", layout="stereo", rate=AAC_RATE, frame_size=self._aac.frame_size
            )
            self._audio_pts = self._video_base * AAC_RATE // VIDEO_CLOCK
        assert self._resampler is not None
        for chunk in self._resampler.resample(frame):
            chunk.pts, chunk.time_base = self._audio_pts, Fraction(1, AAC_RATE)
            self._audio_pts += chunk.samples
            for packet in self._aac.encode(chunk):
                packet.time_base = Fraction(1, AAC_RATE)
                self._pending.audio.append(packet)

    # --- output ---------------------------------------------------------------------------

    def _ordered(self, work: Callable[[], Awaitable[Any]]) -> asyncio.Future[Any]:
        """Runs `work` after everything scheduled before it (parts and segments stay in order)."""
        previous = self._chain

        async def run() -> Any:
            if previous is not None:
                with contextlib.suppress(Exception):
                    await previous
            return await work()

        task = asyncio.ensure_future(run())
        self._chain = task
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _close_part(self, end_pts: int | None, *, final: bool = False) -> None:
        pending = self._pending
        if not pending.video or pending.part_pts is None:
            return
        last = int(pending.video[-1].pts or 0)
        end = end_pts if end_pts is not None else last + VIDEO_CLOCK // 30
        duration = max(0.001, (end - pending.part_pts) / VIDEO_CLOCK)
        video, audio = pending.video, pending.audio
        pending.video, pending.audio = [], []
        index = len(pending.parts)
        independent = bool(video[0].is_keyframe)
        seq = self.seq
        extradata = self._aac.extradata if self._aac is not None else None
        size = self.size()

        async def publish() -> tuple[bytes, float, bool]:
            data = await asyncio.to_thread(mux_ts, video, audio, size, extradata)
            await self.on_part(Part(self.feed_id, seq, index, duration, independent, data, final))
            return data, duration, independent

        pending.parts.append(self._ordered(publish))

    def _cut(self) -> None:
        pending = self._pending
        if not pending.parts or pending.first_pts is None:
            return
        seq = self.seq
        self.seq += 1
        first, size = int(pending.first_pts), self.size()

        async def publish() -> None:
            parts = [await p for p in pending.parts]
            data = b"".join(d for d, _, _ in parts)
            duration = sum(d for _, d, _ in parts)
            meta = tuple((d, i) for _, d, i in parts)
            segment = Segment(self.feed_id, seq, duration, pending.started_at, data, first, size, parts=meta)
            await self.on_segment(segment)

        self._ordered(publish)

    def _done(self, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("feed %s: HLS output lost: %r", self.feed_id, task.exception())

    async def finish(self) -> None:
        """Cuts what is left and waits until every segment is published."""
        self._close_part(end_pts=None, final=True)
        self._cut()
        self._pending = _Pending()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


# --- what the public sees: delay and the kill switch -----------------------------------------


def _slate_frame(width: int, height: int) -> av.VideoFrame:
    """Dark grey with a white pause sign: the picture while a feed is cut."""
    y = bytearray([40]) * (width * height)
    bar_w, bar_h = max(2, width // 24), max(2, height // 4)
    top = (height - bar_h) // 2
    for left in (width // 2 - 2 * bar_w, width // 2 + bar_w):
        for row in range(top, top + bar_h):
            y[row * width + left : row * width + left + bar_w] = b"\xeb" * bar_w
    frame = av.VideoFrame(width, height, "yuv420p")
    _fill(frame, 0, y, width)
    chroma = bytearray([128]) * ((width // 2) * (height // 2))
    _fill(frame, 1, chroma, width // 2)
    _fill(frame, 2, chroma, width // 2)
    return frame


def _fill(frame: av.VideoFrame, plane: int, data: bytearray, width: int) -> None:
    stride = frame.planes[plane].line_size
    padded = bytearray(stride * (len(data) // width))
    for row in range(len(data) // width):
        padded[row * stride : row * stride + width] = data[row * width : (row + 1) * width]
    frame.planes[plane].update(bytes(padded))


def slate_segment(segment: Segment, fps: int = 10) -> Segment:
    """A segment of the same times and size as `segment` showing the slate, with silence."""
    width, height = segment.size if segment.size[0] else (640, 360)
    video = av.CodecContext.create("libx264", "w")
    assert isinstance(video, av.VideoCodecContext)
    video.width, video.height, video.pix_fmt = width, height, "yuv420p"
    video.time_base = Fraction(1, VIDEO_CLOCK)
    video.options = {"preset": "ultrafast", "tune": "zerolatency", "profile": "baseline",
                     "x264-params": "repeat-headers=1"}  # fmt: skip
    video.open()
    picture = _slate_frame(width, height)
    frames = max(1, round(segment.duration * fps))
    vpackets = []
    for n in range(frames + 1):
        frame = picture if n < frames else None
        if frame is not None:
            frame.pts = segment.first_pts + n * VIDEO_CLOCK // fps
            frame.time_base = Fraction(1, VIDEO_CLOCK)
        for packet in video.encode(frame):
            packet.time_base = Fraction(1, VIDEO_CLOCK)
            vpackets.append(packet)
    aac = aac_encoder(64_000)
    apackets = []
    start = segment.first_pts * AAC_RATE // VIDEO_CLOCK
    samples = int(segment.duration * AAC_RATE)
    for at in range(0, samples, aac.frame_size):
        silence = av.AudioFrame(format="fltp", layout="stereo", samples=aac.frame_size)
        silence.sample_rate = AAC_RATE
        for plane in silence.planes:
            plane.update(bytes(plane.buffer_size))
        silence.pts, silence.time_base = start + at, Fraction(1, AAC_RATE)
        for packet in aac.encode(silence):
            packet.time_base = Fraction(1, AAC_RATE)
            apackets.append(packet)
    data = mux_ts(vpackets, apackets, (width, height), aac.extradata)
    return Segment(
        segment.feed_id,
        segment.seq,
        segment.duration,
        segment.started_at,
        data,
        segment.first_pts,
        (width, height),
    )  # no parts: a slate is served whole


class Output:
    """The public output of a feed: its segments `delay` seconds late, and the slate instead
    of the picture while it is cut. What it emits is what the bus serves and the recording
    keeps, so a cut picture is in neither."""

    def __init__(
        self,
        feed_id: str,
        *,
        delay: float,
        emit: Callable[[Segment], Awaitable[None]],
        emit_part: Callable[[Part], Awaitable[None]],
    ) -> None:
        self.feed_id = feed_id
        self.delay = delay
        self.emit = emit
        self.emit_part = emit_part
        self._parts: dict[tuple[int, int], bytes] = {}  # published parts, until their segment
        self.cut = False
        self._queue: list[tuple[float, Segment]] = []
        self._wake = asyncio.Event()
        self._counters: dict[int, int] = {}  # TS continuity counters, carried across segments
        self._pump: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        self._pump = asyncio.create_task(self._run(), name=f"feed {self.feed_id} public output")

    def set_cut(self, cut: bool) -> None:
        """Takes effect at once, also on the segments still held back by the delay."""
        self.cut = cut

    async def add_part(self, part: Part) -> None:
        """Parts go out at once, and only while the feed is neither delayed nor cut."""
        if self.delay or self.cut:
            return
        data = continue_counters(part.data, self._counters)
        self._parts[(part.seq, part.index)] = data
        await self.emit_part(dataclasses.replace(part, data=data))

    async def add(self, segment: Segment) -> None:
        published = [self._parts.pop((segment.seq, i), None) for i in range(len(segment.parts))]
        if segment.parts and all(p is not None for p in published) and not self.cut:
            # The parts viewers already have, byte for byte: the segment is their concatenation.
            segment = dataclasses.replace(segment, data=b"".join(p for p in published if p), numbered=True)
        else:
            segment = dataclasses.replace(segment, parts=())
        self._queue.append((time.monotonic() + self.delay, segment))
        self._wake.set()

    async def _run(self) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            due, segment = self._queue[0]
            wait = 0.0 if self._closing else due - time.monotonic()
            if wait > 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait)
                continue
            self._queue.pop(0)
            try:
                if self.cut:
                    segment = await asyncio.to_thread(slate_segment, segment)
                if not segment.numbered:
                    segment = dataclasses.replace(
                        segment, data=continue_counters(segment.data, self._counters)
                    )
                await self.emit(segment)
            except Exception as exc:
                log.warning("feed %s: segment %d not published: %r", self.feed_id, segment.seq, exc)

    async def close(self) -> None:
        """Publishes what is held back (the delay no longer matters once the feed ended)."""
        self._closing = True
        self._wake.set()
        if self._pump is not None:
            await self._pump


# --- the bus ----------------------------------------------------------------------------


class _Watch:
    """Requests of one feed blocked on this node until the playlist changes (LL-HLS
    blocking reload, preload hints): one poll of Redis for all of them."""

    def __init__(self) -> None:
        self.waiters = 0
        self.changed = asyncio.Event()
        self.poller: asyncio.Task[None] | None = None


class SegmentBus:
    """Live playlists, segments and parts in Redis, with a small per-node cache in front."""

    POLL = 0.05  # seconds between index reads while requests wait for the next part

    def __init__(self, redis: Redis, prefix: str, *, window: int, ttl: float) -> None:
        self.redis = redis
        self.prefix = prefix
        self.window = window
        self.ttl_ms = int(ttl * 1000)
        self._index_cache: dict[str, tuple[float, dict[str, Any] | None]] = {}
        self._media: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        self._watches: dict[str, _Watch] = {}
        self._published: dict[str, dict[str, Any]] = {}  # indexes of the feeds this node writes
        self._reading: dict[tuple[str, str], asyncio.Future[Any]] = {}
        self.cache_limit = 256

    def _key(self, feed_id: str, what: str) -> str:
        return f"{self.prefix}hls:{feed_id}:{what}"

    async def _write(self, feed_id: str, index: dict[str, Any], name: str, data: bytes) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self._key(feed_id, name), data, px=self.ttl_ms)
            pipe.set(self._key(feed_id, "index"), json.dumps(index), px=self.ttl_ms)
            await pipe.execute()
        self._published[feed_id] = index
        self._index_cache[feed_id] = (time.monotonic(), index)

    def _current(self, feed_id: str, target: float, part_target: float | None) -> dict[str, Any]:
        """A copy of the index this node publishes for the feed (it is the only writer while
        it holds the feed), or a new one: a new run starts a new playlist."""
        index = dict(
            self._published.get(feed_id) or {"target": target, "segments": [], "ended": False, "open": None}
        )
        if part_target is not None:
            index["part_target"] = part_target
        return index

    async def publish_part(self, part: Part, target: float, part_target: float) -> None:
        index = self._current(part.feed_id, target, part_target)
        open_ = index.get("open")
        if not open_ or open_["seq"] != part.seq:
            open_ = {"seq": part.seq, "parts": []}
        open_["parts"] = [*open_["parts"], [round(part.duration, 4), part.independent]]
        if part.final:  # complete; its segment follows once muxed whole
            open_["closed"] = True
        index["open"] = open_
        await self._write(part.feed_id, index, media_name(part.seq, part.index), part.data)

    async def publish(self, segment: Segment, target: float) -> None:
        index = self._current(segment.feed_id, target, None)
        entry: dict[str, Any] = {
            "seq": segment.seq,
            "duration": segment.duration,
            "at": segment.started_at.isoformat(),
        }
        if segment.parts:
            entry["parts"] = [[round(d, 4), i] for d, i in segment.parts]
        index["segments"] = [*index["segments"], entry][-self.window :]
        index["target"] = max(index.get("target", target), segment.duration)
        if index.get("open") and index["open"]["seq"] <= segment.seq:
            index["open"] = None
        await self._write(segment.feed_id, index, media_name(segment.seq), segment.data)

    async def end(self, feed_id: str) -> None:
        index = self._published.pop(feed_id, None) or await self.index(feed_id, fresh=True)
        if index is not None:
            index["ended"] = True
            index["open"] = None
            await self.redis.set(self._key(feed_id, "index"), json.dumps(index), px=self.ttl_ms)
        self._index_cache.pop(feed_id, None)

    def cached_index(self, feed_id: str) -> tuple[bool, dict[str, Any] | None]:
        """(whether the node's copy of the feed's index is fresh, that copy)."""
        cached = self._index_cache.get(feed_id)
        if cached is None:
            return False, None
        max_age = self.POLL if feed_id in self._watches else 0.25
        return time.monotonic() - cached[0] < max_age, cached[1]

    async def index(self, feed_id: str, *, fresh: bool = False) -> dict[str, Any] | None:
        if fresh:  # a read begun now, not one already under way
            return await self._read_index(("index", feed_id))
        is_fresh, cached = self.cached_index(feed_id)
        if is_fresh:
            return cached
        return cast("dict[str, Any] | None", await self._once(("index", feed_id), self._read_index))

    async def _read_index(self, key: tuple[str, str]) -> dict[str, Any] | None:
        feed_id, started = key[1], time.monotonic()
        raw = await self.redis.get(self._key(feed_id, "index"))
        value = json.loads(raw) if raw else None
        cached = self._index_cache.get(feed_id)
        if cached is None or cached[0] <= started:  # not over one written since (publish, poll)
            self._index_cache[feed_id] = (started, value)
        return value

    async def _once(self, key: tuple[str, str], read: Callable[[tuple[str, str]], Awaitable[Any]]) -> Any:
        """`read(key)`, shared by every request asking for the same key while it runs: a new
        segment is asked for by every player at once, and read from Redis once. A request
        that joined a read begun before it reads again if that read found nothing: what was
        not there then may be now. A waiting request that goes away does not stop the read
        for the others."""
        if (running := self._reading.get(key)) is None:
            running = self._reading[key] = asyncio.ensure_future(self._shared(key, read))
            return await asyncio.shield(running)
        value = await asyncio.shield(running)
        return value if value is not None else await read(key)

    async def _shared(self, key: tuple[str, str], read: Callable[[tuple[str, str]], Awaitable[Any]]) -> Any:
        try:
            return await read(key)
        finally:
            self._reading.pop(key, None)  # done: later requests start their own read

    async def wait(
        self, feed_id: str, ready: Callable[[dict[str, Any]], bool], timeout: float
    ) -> dict[str, Any] | None:
        """The feed's index once `ready(index)` holds, or None after `timeout` seconds."""
        watch = self._watches.setdefault(feed_id, _Watch())
        watch.waiters += 1
        if watch.poller is None or watch.poller.done():
            watch.poller = asyncio.create_task(self._poll(feed_id, watch), name=f"hls {feed_id} waits")
        deadline = time.monotonic() + timeout
        try:
            while True:
                index = await self.index(feed_id)
                if index is not None and ready(index):
                    return index
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (index is not None and index.get("ended")):
                    return None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(watch.changed.wait(), remaining)
        finally:
            watch.waiters -= 1

    async def _poll(self, feed_id: str, watch: _Watch) -> None:
        last: str | None = None
        try:
            while watch.waiters > 0:
                raw = await self.redis.get(self._key(feed_id, "index"))
                text = raw.decode() if isinstance(raw, bytes) else None
                if text != last:
                    last = text
                    self._index_cache[feed_id] = (time.monotonic(), json.loads(text) if text else None)
                    changed, watch.changed = watch.changed, asyncio.Event()
                    changed.set()
                await asyncio.sleep(self.POLL)
        except Exception as exc:
            log.warning("feed %s: waiting requests lost their poll: %r", feed_id, exc)
        finally:
            if self._watches.get(feed_id) is watch and watch.waiters <= 0:
                del self._watches[feed_id]
            watch.changed.set()

    async def close(self) -> None:
        """Stops the polls of waiting requests (the node is stopping)."""
        pollers = [w.poller for w in self._watches.values() if w.poller is not None]
        for poller in pollers:
            poller.cancel()
        for poller in pollers:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await poller
        self._watches.clear()

    def cached_media(self, feed_id: str, name: str) -> bytes | None:
        """A segment or part if the node's cache holds it."""
        key = (feed_id, name)
        if (data := self._media.get(key)) is not None:
            self._media.move_to_end(key)
        return data

    async def media(self, feed_id: str, name: str) -> bytes | None:
        """A segment (`seg:N`) or part (`part:N.I`), from the node's cache or Redis."""
        if (data := self.cached_media(feed_id, name)) is not None:
            return data
        return cast("bytes | None", await self._once((feed_id, name), self._read_media))

    async def _read_media(self, key: tuple[str, str]) -> bytes | None:
        raw = await self.redis.get(self._key(*key))
        data = raw if isinstance(raw, bytes) else None
        if data is not None:
            self._media[key] = data
            while len(self._media) > self.cache_limit:
                self._media.popitem(last=False)
        return data


# --- playlists ------------------------------------------------------------------------------


PART_SEGMENTS = 3  # segments whose parts an LL-HLS playlist lists


def playlist(
    index: dict[str, Any],
    uri: Callable[[int], str],
    *,
    vod: bool = False,
    part_uri: Callable[[int, int], str] | None = None,
) -> str:
    """The media playlist; with `part_uri` and parts in the index, an LL-HLS one (parts of
    the last segments, the open segment's parts and a preload hint for the next part)."""
    segments = index["segments"]
    target = max([float(index.get("target", 2))] + [s["duration"] for s in segments])
    open_ = index.get("open")
    low_latency = part_uri is not None and "part_target" in index and not index.get("ended") and not vod
    part_target = float(index.get("part_target", 0.5))
    if low_latency:
        part_target = max([part_target] + [p[0] for s in segments for p in s.get("parts", [])])
    lines = ["#EXTM3U", f"#EXT-X-VERSION:{6 if low_latency else 3}"]
    lines.append(f"#EXT-X-TARGETDURATION:{int(target + 0.5)}")  # RFC 8216: ≥ each EXTINF rounded
    if low_latency:
        lines.append(f"#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK={3 * part_target:.3f}")
        lines.append(f"#EXT-X-PART-INF:PART-TARGET={part_target:.3f}")
    lines.append(f"#EXT-X-MEDIA-SEQUENCE:{segments[0]['seq'] if segments else (open_ or {}).get('seq', 0)}")
    lines.append("#EXT-X-INDEPENDENT-SEGMENTS")
    if vod:
        lines.append("#EXT-X-PLAYLIST-TYPE:VOD")

    def parts(seq: int, listed: list[list[Any]]) -> None:
        assert part_uri is not None
        for i, (duration, independent) in enumerate(listed):
            flag = ",INDEPENDENT=YES" if independent else ""
            lines.append(f'#EXT-X-PART:DURATION={duration:.3f},URI="{part_uri(seq, i)}"{flag}')

    for n, s in enumerate(segments):
        lines.append(f"#EXT-X-PROGRAM-DATE-TIME:{s['at']}")
        if low_latency and n >= len(segments) - PART_SEGMENTS and s.get("parts"):
            parts(int(s["seq"]), s["parts"])
        lines.append(f"#EXTINF:{s['duration']:.3f},")
        lines.append(uri(int(s["seq"])))
    if low_latency and part_uri is not None:
        if open_:
            parts(int(open_["seq"]), open_["parts"])
            if open_.get("closed"):  # its last part is out: the next is the next segment's first
                hint = part_uri(int(open_["seq"]) + 1, 0)
            else:
                hint = part_uri(int(open_["seq"]), len(open_["parts"]))
        else:
            hint = part_uri(int(segments[-1]["seq"]) + 1 if segments else 0, 0)
        lines.append(f'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="{hint}"')
    if index.get("ended") or vod:
        lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"


def has_reached(index: dict[str, Any], msn: int, part: int | None) -> bool:
    """Whether the playlist holds media sequence `msn` (and its part `part`): the condition
    a blocking playlist reload waits for."""
    segments = index.get("segments") or []
    last = int(segments[-1]["seq"]) if segments else -1
    if last >= msn and part is None:
        return True
    if last > msn or (last == msn and part is not None):
        return True
    open_ = index.get("open")
    return bool(open_ and int(open_["seq"]) == msn and part is not None and len(open_["parts"]) > part)


# --- signed URLs ----------------------------------------------------------------------------


def _mac(key: bytes, feed_id: str, path: str, expires: int) -> str:
    return hmac.new(key, f"{feed_id}\n{path}\n{expires}".encode(), hashlib.sha256).hexdigest()[:32]


def sign(key: bytes, feed_id: str, path: str, ttl: float) -> str:
    """`path?exp=…&sig=…`, valid for `ttl` seconds."""
    expires = int(time.time() + ttl)
    return f"{path}?{urlencode({'exp': expires, 'sig': _mac(key, feed_id, path, expires)})}"


def verify(key: bytes, feed_id: str, path: str, exp: str | None, sig: str | None) -> str | None:
    """None when the URL is good; else what is wrong with it."""
    if not exp or not sig:
        return "this feed's HLS needs a signed URL: get one from GET /api/feeds/{id}"
    try:
        expires = int(exp)
    except ValueError:
        return "exp is not a number"
    if not hmac.compare_digest(_mac(key, feed_id, path, expires), sig):
        return "the signature does not match this URL"
    if expires < time.time():
        return "the signed URL has expired: get a fresh one from GET /api/feeds/{id}"
    return None


# --- recordings ---------------------------------------------------------------------------


class Recording:
    """A feed's run archived under `root/{feed}/{run}/`: its segments and a playlist that
    is an EVENT playlist while live and a VOD playlist (`EXT-X-ENDLIST`) once ended."""

    def __init__(self, root: Path, feed_id: str) -> None:
        self.dir = root / feed_id / datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        self.segments: list[dict[str, Any]] = []

    def _write(self, ended: bool) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        index = {"segments": self.segments, "ended": ended, "target": 2}
        (self.dir / "index.json.tmp").write_text(json.dumps(index))
        (self.dir / "index.json.tmp").replace(self.dir / "index.json")

    async def add(self, segment: Segment) -> None:
        def write() -> None:
            self.dir.mkdir(parents=True, exist_ok=True)
            (self.dir / f"{segment.seq}.ts").write_bytes(segment.data)
            self.segments.append(
                {"seq": segment.seq, "duration": segment.duration, "at": segment.started_at.isoformat()}
            )
            self._write(ended=False)

        await asyncio.to_thread(write)

    async def close(self) -> None:
        if self.segments:
            await asyncio.to_thread(self._write, True)


def latest_recording(root: Path, feed_id: str) -> Path | None:
    """The newest run of the feed that has a playlist."""
    runs = sorted((p for p in (root / feed_id).glob("*/index.json")), reverse=True)
    return runs[0].parent if runs else None


def list_recordings(root: Path, feed_id: str) -> list[dict[str, Any]]:
    out = []
    for index_file in sorted((root / feed_id).glob("*/index.json")):
        index = json.loads(index_file.read_text())
        out.append(
            {
                "run": index_file.parent.name,
                "ended": bool(index.get("ended")),
                "segments": len(index["segments"]),
                "seconds": round(sum(s["duration"] for s in index["segments"]), 3),
            }
        )
    return out


def prune_recordings(root: Path, retention_days: float) -> int:
    """Removes runs older than the retention; returns how many."""
    if not root.exists():
        return 0
    cutoff = time.time() - retention_days * 86400
    removed = 0
    for run in root.glob("*/*"):
        if run.is_dir() and run.stat().st_mtime < cutoff:
            shutil.rmtree(run, ignore_errors=True)
            removed += 1
    return removed
