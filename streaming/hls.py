"""HLS from the encode-once stream: segments on a Redis bus, recordings on disk.

The ingest node's `Segmenter` is one more sink of the feed's `Broadcast`: it takes the H.264
units as they are (no second video encoder), encodes the audio once more to AAC, and cuts
an MPEG-TS segment at the first keyframe after `hls_segment_seconds`. Each segment goes
to Redis with a TTL (`SegmentBus`), so every node serves every feed's live playlist from
memory, and to the data directory (`Recording`), which becomes the feed's VOD playlist
with `EXT-X-ENDLIST` when the feed ends.

Playlists of sessions that are not public carry short-lived signed segment URLs: an
HMAC over the feed, the path and the expiry (`sign` / `verify`).
"""

from __future__ import annotations

import asyncio
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
from typing import Any
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


@dataclass
class _Pending:
    video: list[av.Packet] = field(default_factory=list)  # type: ignore[type-arg]
    audio: list[av.Packet] = field(default_factory=list)  # type: ignore[type-arg]
    first_pts: int | None = None
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))


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


class Segmenter:
    """A sink of a feed's broadcast that cuts MPEG-TS segments at keyframes."""

    def __init__(
        self,
        feed_id: str,
        *,
        target: float,
        size: Callable[[], tuple[int, int]],
        on_segment: Callable[[Segment], Awaitable[None]],
    ) -> None:
        self.feed_id = feed_id
        self.target = target
        self.size = size
        self.on_segment = on_segment
        self.seq = 0
        self._pending = _Pending()
        self._aac: av.AudioCodecContext | None = None
        self._resampler: av.AudioResampler | None = None
        self._audio_pts = 0
        self._video_base: int | None = None  # the feed's first video pts: audio starts there
        self._tasks: set[asyncio.Future[None]] = set()
        self._chain: asyncio.Future[None] | None = None
        self._counters: dict[int, int] = {}  # TS continuity counters, carried across segments

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
            pending.first_pts = pts
            pending.started_at = datetime.now(UTC)
            if self._video_base is None:
                self._video_base = pts
        elif unit.keyframe and (pts - pending.first_pts) / VIDEO_CLOCK >= self.target:
            self._cut(end_pts=pts)
            self._pending = pending = _Pending(first_pts=pts)
        pending.video.append(_copy(packet, Fraction(1, VIDEO_CLOCK)))

    def audio_frame(self, frame: av.AudioFrame) -> None:
        if self._video_base is None:
            return  # no video yet: audio would start before the first segment
        if self._aac is None:
            aac = av.CodecContext.create("aac", "w")
            assert isinstance(aac, av.AudioCodecContext)
            self._aac = aac
            self._aac.sample_rate = AAC_RATE
            self._aac.layout = "stereo"
            self._aac.format = "fltp"
            self._aac.bit_rate = 96_000
            self._aac.time_base = Fraction(1, AAC_RATE)
            self._aac.open()
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

    def _cut(self, end_pts: int | None) -> None:
        pending = self._pending
        if not pending.video or pending.first_pts is None:
            return
        last = int(pending.video[-1].pts or 0)
        end = end_pts if end_pts is not None else last + VIDEO_CLOCK // 30
        duration = max(0.001, (end - pending.first_pts) / VIDEO_CLOCK)
        seq = self.seq
        self.seq += 1
        extradata = self._aac.extradata if self._aac is not None else None
        size = self.size()
        previous = self._chain

        async def publish() -> None:
            data = await asyncio.to_thread(mux_ts, pending.video, pending.audio, size, extradata)
            if previous is not None:
                await previous  # segments reach the bus in order
            data = continue_counters(data, self._counters)
            await self.on_segment(Segment(self.feed_id, seq, duration, pending.started_at, data))

        task = asyncio.ensure_future(publish())
        self._chain = task
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Future[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("feed %s: an HLS segment was lost: %r", self.feed_id, task.exception())

    async def finish(self) -> None:
        """Cuts what is left and waits until every segment is published."""
        self._cut(end_pts=None)
        self._pending = _Pending()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


# --- the bus ----------------------------------------------------------------------------


class SegmentBus:
    """Live playlists and segments in Redis, with a small per-node cache in front."""

    def __init__(self, redis: Redis, prefix: str, *, window: int, ttl: float) -> None:
        self.redis = redis
        self.prefix = prefix
        self.window = window
        self.ttl_ms = int(ttl * 1000)
        self._index_cache: dict[str, tuple[float, dict[str, Any] | None]] = {}
        self._segments: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self.cache_limit = 64

    def _key(self, feed_id: str, what: str) -> str:
        return f"{self.prefix}hls:{feed_id}:{what}"

    async def publish(self, segment: Segment, target: float) -> None:
        index = await self.index(feed_id=segment.feed_id, fresh=True) or {}
        if index.get("ended") or "segments" not in index:
            index = {"target": target, "segments": [], "ended": False}
        entry = {"seq": segment.seq, "duration": segment.duration, "at": segment.started_at.isoformat()}
        index["segments"] = [*index["segments"], entry][-self.window :]
        index["target"] = max(index.get("target", target), segment.duration)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self._key(segment.feed_id, f"seg:{segment.seq}"), segment.data, px=self.ttl_ms)
            pipe.set(self._key(segment.feed_id, "index"), json.dumps(index), px=self.ttl_ms)
            await pipe.execute()
        self._index_cache.pop(segment.feed_id, None)

    async def end(self, feed_id: str) -> None:
        index = await self.index(feed_id, fresh=True)
        if index is not None:
            index["ended"] = True
            await self.redis.set(self._key(feed_id, "index"), json.dumps(index), px=self.ttl_ms)
        self._index_cache.pop(feed_id, None)

    async def index(self, feed_id: str, *, fresh: bool = False) -> dict[str, Any] | None:
        now = time.monotonic()
        cached = self._index_cache.get(feed_id)
        if cached is not None and not fresh and now - cached[0] < 0.25:
            return cached[1]
        raw = await self.redis.get(self._key(feed_id, "index"))
        value = json.loads(raw) if raw else None
        self._index_cache[feed_id] = (now, value)
        return value

    async def segment(self, feed_id: str, seq: int) -> bytes | None:
        key = (feed_id, seq)
        if (data := self._segments.get(key)) is not None:
            self._segments.move_to_end(key)
            return data
        raw = await self.redis.get(self._key(feed_id, f"seg:{seq}"))
        data = raw if isinstance(raw, bytes) else None
        if data is not None:
            self._segments[key] = data
            while len(self._segments) > self.cache_limit:
                self._segments.popitem(last=False)
        return data


# --- playlists ------------------------------------------------------------------------------


def playlist(index: dict[str, Any], uri: Callable[[int], str], *, vod: bool = False) -> str:
    segments = index["segments"]
    target = max([float(index.get("target", 2))] + [s["duration"] for s in segments])
    lines = [
        "#EXTM3U",
        "#EXT-X-VERSION:3",
        f"#EXT-X-TARGETDURATION:{int(target + 0.5)}",  # RFC 8216: ≥ each EXTINF rounded
        f"#EXT-X-MEDIA-SEQUENCE:{segments[0]['seq'] if segments else 0}",
        "#EXT-X-INDEPENDENT-SEGMENTS",
    ]
    if vod:
        lines.append("#EXT-X-PLAYLIST-TYPE:VOD")
    for s in segments:
        lines.append(f"#EXT-X-PROGRAM-DATE-TIME:{s['at']}")
        lines.append(f"#EXTINF:{s['duration']:.3f},")
        lines.append(uri(int(s["seq"])))
    if index.get("ended") or vod:
        lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"


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
