"""`tribune bench hls`: N simulated HLS players of the test pattern spread over K nodes.

One node ingests the feed (the test pattern over WHIP); every node serves its HLS from the
Redis segment bus. Each player reloads the playlist as RFC 8216 (6.3.4) has a client do — a
target duration after a reload that found it changed, half of one after one that did not —
and fetches every new segment whole, as a player does, over a keep-alive connection of its
own (`Connection`). Everything stays on 127.0.0.1; the nodes run on CPU 0, the publisher
on the others, the players (generator processes of up to 2,500, on uvloop) on any CPU at
nice 10.

A *miss* is a segment request answered 404, or completed later than one segment duration
after the playlist first listed it to that player (the player would stall). `ttfb_ms` is
the time from sending a segment request to the response's first byte reaching the
player's socket (the kernel's receive time, as a player on its own machine would see it);
`ttfb_handled_ms` runs to the player's process handling that byte. Live latency is read
off the picture: the test pattern burns its wall clock into every frame, and one player in
100 (at most five per generator process; and one LL-HLS player in four, on each segment's
first part) decodes the first seven pictures of what it fetched, in a thread beside the
players (decoding is the heaviest thing a generator does), and compares that clock with
its own when the bytes arrived (`picture_age_ms`). A player shows that picture after its
hold-back behind the live edge — two segments for the viewer page's hls.js
(`liveSyncDurationCount: 2`), three for a default player, three parts (`PART-HOLD-BACK`) for
LL-HLS — so `live_latency_s` is the age plus the rest of the hold-back. The same figures by
the playlist's `EXT-X-PROGRAM-DATE-TIME` (stamped on the ingest node, so without the WHIP
leg) are under `by_playlist_clock`. A few LL-HLS players (one per 20, at most 20) run beside
the HLS ones: blocking reloads, each new part fetched.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import aiohttp
import av

from config.auth import Role, mint_token
from config.loop import run as run_loop
from config.services import EmbeddedServices
from config.settings import Settings
from interaction.bench import (
    cpu_seconds,
    percentiles,
    raise_fd_limit,
    start_nodes,
    stop_servers,
    wait_http,
)
from interaction.loadgen import connect_stamped
from streaming.bench import FEED, _start_publisher, _wait_until, create_feed
from streaming.testsrc import picture_clock

PER_GENERATOR = 2500  # players per generator process (one event loop each)


def _lower() -> None:
    """Generators may use every CPU but yield to the nodes and the publisher (nice 10): one
    event loop cannot play thousands of players, and the nodes use well under a core."""
    os.nice(10)


class Players:
    def __init__(self) -> None:
        self.segment_requests = 0
        self.playlist_requests = 0
        self.misses = 0
        self.errors = 0
        self.bytes = 0
        self.ttfb: list[float] = []  # to the kernel's receipt of the first byte
        self.ttfb_handled: list[float] = []  # to this process handling it
        self.availability: list[float] = []  # by the playlist's clock
        self.part_availability: list[float] = []
        self.picture_age: list[float] = []  # by the clock in the picture
        self.part_picture_age: list[float] = []
        self.target = 2.0
        self.part_target = 0.5


def _parse(text: str) -> list[tuple[str, float, datetime | None]]:
    """(uri, duration, program date time) of each segment in a playlist."""
    out, duration, at = [], 0.0, None
    for line in text.splitlines():
        if line.startswith("#EXTINF:"):
            duration = float(line[8:].split(",")[0])
        elif line.startswith("#EXT-X-PROGRAM-DATE-TIME:"):
            at = datetime.fromisoformat(line.split(":", 1)[1])
        elif line and not line.startswith("#"):
            out.append((line, duration, at))
    return out


def _picture_age(segment: bytes, arrived: datetime, frames: int = 7, fps: int = 30) -> float | None:
    """How old the segment's first picture is now, by the clock the test pattern burnt into
    it (the publisher's wall clock when the frame was made). Read off its first `frames`
    pictures, each put back by its place in the segment, and the median taken: compression
    can blur a digit in one picture, rarely the same in most."""
    starts = []
    try:
        with av.open(io.BytesIO(segment), "r") as container:
            for n, frame in enumerate(container.decode(video=0)):
                if n >= frames:
                    break
                if (shown := picture_clock(frame)) is not None:
                    starts.append(shown - n / fps)
    except av.FFmpegError:
        return None
    if len(starts) < 3:
        return None
    now = arrived
    age = now.hour * 3600 + now.minute * 60 + now.second + now.microsecond / 1e6 - statistics.median(starts)
    return age if -1 < age < 60 else None  # not across midnight


class Connection(asyncio.Protocol):
    """One player's keep-alive HTTP/1.1 connection, spoken directly on an asyncio protocol: a
    GET, then the response's status line and headers parsed and its body counted as it
    arrives (kept only when asked). Thousands of players per process cost what the bytes
    cost, not what a general HTTP client's per-chunk machinery does. The socket is read
    with the kernel's receive time (`StampedTransport`), so the time to the first byte is
    what a player on its own machine would see, not when this process, holding thousands
    of players, got round to it; when it did is kept too."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.transport: asyncio.Transport | None = None
        self.received_at = 0.0  # set by the transport around each read
        self._head = bytearray()
        self._body = bytearray()
        self._keep = False
        self._remaining = -1  # body bytes still to come; -1 while reading the head
        self._status = 0
        self._size = 0
        self._first = 0.0
        self._first_received = 0.0
        self._waiter: asyncio.Future[tuple[int, float, float, int, bytes]] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(ConnectionError("the connection closed mid-response"))

    async def get(self, path: str, *, keep: bool) -> tuple[int, float, float, int, bytes]:
        """(status, seconds to the first byte reaching the socket, to it being handled here,
        body size, the body if `keep` else b"")."""
        if self.transport is None or self.transport.is_closing():
            raise ConnectionError("not connected")
        self._waiter = asyncio.get_running_loop().create_future()
        self._head.clear()
        self._body.clear()
        self._keep, self._remaining, self._size, self._first = keep, -1, 0, 0.0
        sent, sent_at = time.monotonic(), time.time()
        self.transport.write(f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode())
        status, first, received, size, body = await self._waiter
        return status, received - sent_at, first - sent, size, body

    def data_received(self, data: bytes) -> None:
        if self._waiter is None or self._waiter.done():
            return  # nothing asked: a server does not speak first
        if self._remaining < 0:
            if not self._first:
                self._first = time.monotonic()
                self._first_received = self.received_at or time.time()
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = bytes(self._head[:end]).decode("latin-1").split("\r\n")
            data = bytes(self._head[end + 4 :])
            try:
                self._status = int(lines[0].split()[1])
                headers = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
                self._remaining = int(headers["content-length"])
            except (IndexError, KeyError, ValueError):
                self._waiter.set_exception(ConnectionError(f"unexpected response head {lines[:1]!r}"))
                return
        taken = data[: self._remaining] if len(data) > self._remaining else data
        self._remaining -= len(taken)
        self._size += len(taken)
        if self._keep:
            self._body += taken
        if self._remaining == 0:
            self._waiter.set_result(
                (self._status, self._first, self._first_received, self._size, bytes(self._body))
            )


async def _connect(base: str) -> Connection:
    parts = urlsplit(base)
    connection = Connection(parts.netloc)
    await connect_stamped(connection, parts.hostname or "127.0.0.1", parts.port or 80)
    return connection


async def _player(base: str, stats: Players, until: float, offset: float, sample: bool) -> None:
    await asyncio.sleep(offset)  # players arrive spread over the first seconds
    seen: set[str] = set()
    first = True
    last = ""
    connection: Connection | None = None

    async def get(path: str, keep: bool) -> tuple[int, float, float, int, bytes]:
        nonlocal connection
        if connection is None or connection.transport is None:
            connection = await _connect(base)
        try:
            async with asyncio.timeout(30):
                return await connection.get(path, keep=keep)
        except (OSError, TimeoutError):
            if connection.transport is not None:
                connection.transport.close()
            connection = None
            raise

    while time.monotonic() < until:
        started = time.monotonic()
        try:
            status, _, _, _, body = await get(f"/hls/{FEED}/index.m3u8", True)
            stats.playlist_requests += 1
            text = body.decode() if status == 200 else ""
        except (OSError, TimeoutError):
            stats.errors += 1
            text = ""
        segments = _parse(text)
        new = [s for s in segments if s[0] not in seen]
        if first:
            new = new[-1:]  # a player joining live starts near the end
            seen.update(s[0] for s in segments)
            first = False
        for uri, duration, at in new:
            seen.add(uri)
            listed = time.monotonic()
            stats.segment_requests += 1
            try:
                # Kept whole only by a sampling player, to read the clock in its first pictures.
                status, ttfb, handled, size, body = await get(uri, sample)
            except (OSError, TimeoutError):
                stats.errors += 1
                stats.misses += 1
                continue
            stats.ttfb.append(ttfb)
            stats.ttfb_handled.append(handled)
            if status != 200 or time.monotonic() - listed > duration:
                stats.misses += 1
            stats.bytes += size
            if at is not None and status == 200:
                stats.availability.append(time.time() - at.timestamp())
            if sample and status == 200:
                age = await asyncio.to_thread(_picture_age, body, datetime.now())
                if age is not None:
                    stats.picture_age.append(age)
        stats.target = max([stats.target] + [s[1] for s in segments])
        wait = stats.target if text != last else stats.target / 2
        last = text
        await asyncio.sleep(max(0.05, wait - (time.monotonic() - started)))
    if connection is not None and connection.transport is not None:
        connection.transport.close()


def _parse_ll(
    text: str,
) -> tuple[list[tuple[int, float, datetime | None]], list[tuple[str, float]], str | None]:
    """Complete segments (seq, duration, start), the open segment's parts (uri, duration) and
    the preload hint's URI of an LL-HLS playlist."""
    segments: list[tuple[int, float, datetime | None]] = []
    parts: list[tuple[str, float]] = []
    hint, at, seq = None, None, 0
    for line in text.splitlines():
        if line.startswith("#EXT-X-MEDIA-SEQUENCE:"):
            seq = int(line.split(":")[1])
        elif line.startswith("#EXT-X-PROGRAM-DATE-TIME:"):
            at = datetime.fromisoformat(line.split(":", 1)[1])
        elif line.startswith("#EXT-X-PART:"):
            duration = float(line.split("DURATION=")[1].split(",")[0])
            parts.append((line.split('URI="')[1].split('"')[0], duration))
        elif line.startswith("#EXTINF:"):
            segments.append((seq, float(line[8:].split(",")[0]), at))
            seq, parts = seq + 1, []
        elif line.startswith("#EXT-X-PRELOAD-HINT"):
            hint = line.split('URI="')[1].split('"')[0]
    return segments, parts, hint


async def _ll_player(
    http: aiohttp.ClientSession, base: str, stats: Players, until: float, sample: bool
) -> None:
    """An LL-HLS player: blocking reloads for the next part, which it fetches at once; a
    sampling one reads the clock in each segment's first part."""
    url = f"{base}/hls/{FEED}/index.m3u8"
    query = ""
    while time.monotonic() < until:
        try:
            async with http.get(url + query) as r:
                stats.playlist_requests += 1
                text = await r.text() if r.status == 200 else ""
        except aiohttp.ClientError:
            stats.errors += 1
            await asyncio.sleep(0.5)
            continue
        segments, parts, hint = _parse_ll(text)
        if hint is None or not segments:
            await asyncio.sleep(0.5)
            continue
        last_seq, last_duration, last_at = segments[-1]
        name = hint.rsplit("/", 1)[1]
        seq, index = (int(x) for x in name.split(".")[:2])
        if query and parts and seq == last_seq + 1 and index >= 1 and last_at is not None:
            # The part the previous reload waited for: it is the open segment's last listed.
            uri, duration = parts[-1]
            stats.segment_requests += 1
            listed = time.monotonic()
            try:
                async with http.get(base + uri) as r:
                    stats.ttfb.append(time.monotonic() - listed)
                    body = await r.read()
                    if r.status != 200 or time.monotonic() - listed > duration:
                        stats.misses += 1
                    stats.bytes += len(body)
                start = last_at.timestamp() + last_duration + sum(d for _, d in parts[:-1])
                stats.part_availability.append(time.time() - start)
                if sample and index == 1 and r.status == 200:  # the segment's first part: a keyframe
                    age = await asyncio.to_thread(_picture_age, body, datetime.now())
                    if age is not None:
                        stats.part_picture_age.append(age)
                stats.part_target = max(stats.part_target, duration)
            except aiohttp.ClientError:
                stats.errors += 1
                stats.misses += 1
        query = f"?_HLS_msn={seq}&_HLS_part={index}"


async def _generate(
    urls: list[str], players: int, ll_players: int, seconds: float, first: int
) -> dict[str, Any]:
    """One generator process's players; their raw figures."""
    stats, ll_stats = Players(), Players()
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=30)
    start = time.monotonic()
    ramp = min(5.0, seconds / 4)
    nodes = len(urls)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        await asyncio.gather(
            *(
                _player(
                    urls[(first + n) % nodes],
                    stats,
                    start + ramp + seconds,
                    ramp * n / players,
                    n % max(100, players // 5) == 0,
                )
                for n in range(players)
            ),
            *(
                _ll_player(http, urls[n % nodes], ll_stats, start + ramp + seconds, n % 4 == 0)
                for n in range(ll_players)
            ),
        )
    return {"hls": vars(stats), "ll": vars(ll_stats), "cpu_s": time.process_time()}


def _generator_main() -> None:
    """`python -m streaming.hlsbench URLS PLAYERS LL SECONDS FIRST`: prints its figures as JSON."""
    raise_fd_limit()
    urls, players, ll_players, seconds, first = sys.argv[1:6]
    result = run_loop(_generate(urls.split(","), int(players), int(ll_players), float(seconds), int(first)))
    print(json.dumps(result))


def _latency(age_ms: dict[str, float | None], hold_back: float) -> float | None:
    p50 = age_ms.get("p50")
    return round(p50 / 1000 + hold_back, 2) if p50 is not None else None


async def bench_hls(
    *, viewers: int, nodes: int, seconds: float, progress: Callable[[str], None]
) -> dict[str, Any]:
    raise_fd_limit()
    root = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="tribune-bench-hls-"))
    services = EmbeddedServices(root / "services", postgres=True, redis=True)
    database_url, redis_url = await asyncio.to_thread(services.start)
    secret = secrets.token_urlsafe(40)
    admin = {
        "Authorization": "Bearer " + mint_token(Settings(jwt_secret=secret), rep="A1", roles=[Role.ADMIN])
    }
    procs, urls = start_nodes(
        root,
        nodes,
        database_url=database_url,
        redis_url=redis_url,
        secret=secret,
        env={"TRIBUNE_WEBRTC_HOST_ADDRESSES": "127.0.0.1"},
        log_prefix="hls-",
    )
    publisher: subprocess.Popen[bytes] | None = None
    try:
        for url in urls:
            await wait_http(url + "/readyz")
        async with aiohttp.ClientSession() as http:
            key = await create_feed(http, urls[0], admin, kind="court_hearing")
            publisher = _start_publisher(f"{urls[0]}/whip/{FEED}", key, root / "hls-publisher.log")

            async def listed() -> bool:
                async with http.get(f"{urls[-1]}/hls/{FEED}/index.m3u8") as r:
                    return r.status == 200 and (await r.text()).count("#EXTINF") >= 2

            await _wait_until(listed, 60, "the first HLS segments")
        progress(f"{viewers} players over {nodes} nodes for {seconds:.0f} s")
        ll_players = min(20, max(1, viewers // 20))
        generators = max(1, -(-viewers // PER_GENERATOR))
        pids = [p.pid for p in procs]
        cpu_before = cpu_seconds(pids)
        start = time.monotonic()
        share = -(-viewers // generators)
        spawned = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "streaming.hlsbench",
                ",".join(urls),
                str(min(share, viewers - g * share)),
                str(ll_players if g == 0 else 0),
                str(seconds),
                str(g),
                stdout=asyncio.subprocess.PIPE,
                preexec_fn=_lower,
            )
            for g in range(generators)
        ]
        outputs = [json.loads((await p.communicate())[0]) for p in spawned]
        stats, ll_stats = Players(), Players()
        for out in outputs:
            for target, raw in ((stats, out["hls"]), (ll_stats, out["ll"])):
                for name, value in raw.items():
                    current = getattr(target, name)
                    if isinstance(current, list):
                        current.extend(value)
                    elif name in ("target", "part_target"):
                        setattr(target, name, max(current, value))
                    else:
                        setattr(target, name, current + value)
        elapsed = time.monotonic() - start
        server_cpu = cpu_seconds(pids) - cpu_before
        availability = percentiles(stats.availability)  # in ms
        return {
            "viewers": viewers,
            "nodes": nodes,
            "seconds": round(elapsed, 1),
            "segment_requests": stats.segment_requests,
            "playlist_requests": stats.playlist_requests,
            "misses": stats.misses,
            "errors": stats.errors,
            "ttfb_ms": percentiles(stats.ttfb),
            "ttfb_handled_ms": percentiles(stats.ttfb_handled),
            "bytes_per_s": round(stats.bytes / elapsed),
            "server_cpu_s": round(server_cpu, 2),
            "load_generator_cpu_s": round(sum(out["cpu_s"] for out in outputs), 2),
            "availability_ms": availability,
            "ll_hls": {
                "players": ll_players,
                "part_requests": ll_stats.segment_requests,
                "misses": ll_stats.misses,
                "ttfb_ms": percentiles(ll_stats.ttfb),
                "part_availability_ms": (part := percentiles(ll_stats.part_availability)),
                "part_picture_age_ms": (part_picture := percentiles(ll_stats.part_picture_age)),
            },
            "picture_age_ms": (picture := percentiles(stats.picture_age)),
            "live_latency_s": {
                # The clock in the picture against the wall clock, for a player holding back
                # what it does: hls.js on the viewer page plays two segments behind the edge
                # (the newest segment's first picture + one target duration), a default
                # player three; LL-HLS three parts (PART-HOLD-BACK).
                "hls": _latency(picture, stats.target),
                "hls_3_segments": _latency(picture, 2 * stats.target),
                "ll_hls": _latency(part_picture, 2 * ll_stats.part_target),
                "by_playlist_clock": {
                    "hls": _latency(availability, stats.target),
                    "ll_hls": _latency(part, 2 * ll_stats.part_target),
                },
            },
            "target_duration_s": stats.target,
        }
    finally:
        if publisher is not None:
            publisher.terminate()
            publisher.wait(30)
        stop_servers(procs)
        await asyncio.to_thread(services.stop)
        await asyncio.to_thread(shutil.rmtree, root, True)


if __name__ == "__main__":
    _generator_main()
