"""HLS from the encode-once stream: ffprobe/ffmpeg read the live playlist and the recording,
a node that does not ingest the feed serves the same bytes, and URLs of a session that is
not public must be signed."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient

from config.app import create_app
from config.auth import Role
from config.settings import Settings
from streaming import hls
from streaming.api import STREAMING
from streaming.clients import WhepViewer, WhipError, WhipPublisher
from streaming.testsrc import PatternVideo, Tone
from tests.browser import needs_chromium, open_page
from tests.nodes import NodeServer
from tests.test_polls import SESSION, live_session
from tests.test_whip import bearer, make_feed, until

pytestmark = [pytest.mark.usefixtures("loopback_only"), pytest.mark.slow]

FFPROBE = shutil.which("ffprobe")
FFMPEG = shutil.which("ffmpeg")
needs_ffmpeg = pytest.mark.skipif(FFPROBE is None or FFMPEG is None, reason="needs Debian's ffmpeg")


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.replace(webrtc_host_addresses=("127.0.0.1",), whep_max_viewers=1)


@pytest_asyncio.fixture(loop_scope="session")
async def other_node(settings: Settings) -> AsyncIterator[TestClient[Any, Any]]:
    """A second node on the same PostgreSQL and Redis that ingests nothing."""
    app = create_app(settings.replace(node_id="other-node", data_dir=settings.data_dir / "other"))
    async with TestClient(NodeServer(app)) as client:
        yield client


async def run(*cmd: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), err.decode()


async def probe(url: str) -> dict[str, Any]:
    assert FFPROBE is not None
    code, out, err = await run(
        FFPROBE, "-v", "error", "-show_entries", "stream=codec_name,width,height", "-of", "json", url
    )
    assert code == 0, err
    return dict(json.loads(out))


async def decoded_frames(url: str) -> int:
    """Video frames ffmpeg decodes from the playlist, failing on any decoding error."""
    assert FFMPEG is not None
    code, _, err = await run(
        FFMPEG, "-v", "error", "-xerror", "-i", url, "-map", "0:v", "-f", "null", "-stats_period", "60", "-"
    )
    assert code == 0, err
    code, out, err = await run(
        FFPROBE, "-v", "error", "-count_frames", "-select_streams", "v", "-show_entries",
        "stream=nb_read_frames", "-of", "csv=p=0", url,
    )  # fmt: skip
    assert code == 0, err
    return int(next(line for line in out.splitlines() if line.strip()).split(",")[0])


async def publish(client: Any, key: str) -> WhipPublisher:
    publisher = WhipPublisher(str(client.make_url("/whip/main")), key, [PatternVideo(), Tone()])
    async with aiohttp.ClientSession() as http:
        await publisher.start(http)
    return publisher


def extinf(playlist: str) -> list[float]:
    """The segment durations a playlist lists."""
    return [float(line[8:].rstrip(",")) for line in playlist.splitlines() if line.startswith("#EXTINF:")]


@pytest.mark.security
@needs_ffmpeg
async def test_live_hls_any_node_signed_urls_and_the_recording(
    client: Any, other_node: Any, auth: Any, db: Any
) -> None:
    await live_session(client, auth, db)
    key = await make_feed(client, auth)
    hub = client.server.app[STREAMING]
    publisher = await publish(client, key)
    try:
        await until(lambda: hub.live_here("main") is not None, seconds=20)
        await until(
            lambda: hub.ingests["main"].segmenter is not None and hub.ingests["main"].segmenter.seq >= 3, 30
        )

        r = await client.get("/api/feeds/main", headers=auth("R1"))
        urls = await r.json()
        live_url = urls["hls"]
        assert urlsplit(live_url).path == "/hls/main/index.m3u8" and "sig=" in live_url

        # The playlist and the segments, identical from the node that does not ingest.
        r = await client.get(live_url)
        assert r.status == 200 and r.content_type == "application/vnd.apple.mpegurl"
        text = await r.text()
        # 2 s segments, cut at keyframes: one may run a frame long when the encoder's keyframe
        # lands a frame late, but none may round above the target duration (RFC 8216 §4.3.3.1).
        durations = extinf(text)
        assert "#EXT-X-TARGETDURATION:2" in text and durations, text
        assert all(1.9 <= d < 2.5 for d in durations), text
        assert "#EXT-X-ENDLIST" not in text
        segment = [line for line in text.splitlines() if line.startswith("/hls/main/")][-1]
        mine = await client.get(segment)
        theirs = await other_node.get(segment)
        assert mine.status == theirs.status == 200
        assert await mine.read() == await theirs.read()
        assert "immutable" in mine.headers["Cache-Control"]
        assert "max-age=1" in r.headers["Cache-Control"]
        other_text = await (await other_node.get(live_url)).text()
        assert other_text.splitlines()[:6] == text.splitlines()[:6]

        # ffprobe reads the live playlist through the other node: H.264 and AAC.
        streams = (await probe(str(other_node.make_url(live_url))))["streams"]
        assert {s["codec_name"] for s in streams} == {"h264", "aac"}
        assert any(s.get("width") == 640 and s.get("height") == 360 for s in streams)

        # Unsigned, tampered and expired URLs are refused.
        assert (await client.get("/hls/main/index.m3u8")).status == 403
        tampered = live_url.replace("sig=", "sig=0")
        assert (await client.get(tampered)).status == 403
        query = parse_qs(urlsplit(segment).query)
        other_seg = f"/hls/main/0.ts?exp={query['exp'][0]}&sig={query['sig'][0]}"
        assert other_seg != segment and (await client.get(other_seg)).status == 403  # the path is signed
        expired = await client.get(
            f"/hls/main/index.m3u8?exp=1&sig={parse_qs(urlsplit(live_url).query)['sig'][0]}"
        )
        assert expired.status == 403
        body = await expired.json()
        assert "signature" in body["error"]["message"] or "expired" in body["error"]["message"]
    finally:
        async with aiohttp.ClientSession() as http:
            await publisher.stop(http)
    await until(lambda: not hub.ingests, seconds=20)

    # The live playlist ends; the recording plays as VOD and decodes whole.
    text = await (await client.get(live_url)).text()
    assert text.rstrip().endswith("#EXT-X-ENDLIST")
    vod_url = urls["vod"]
    r = await client.get(vod_url)
    assert r.status == 200
    vod = await r.text()
    assert "#EXT-X-PLAYLIST-TYPE:VOD" in vod and vod.rstrip().endswith("#EXT-X-ENDLIST")
    listed = sum(extinf(vod))
    frames = await decoded_frames(str(client.make_url(vod_url)))
    assert abs(frames / 30 - listed) < 1.0, (frames, listed)  # every listed second is there
    r = await client.get(f"/api/sessions/{SESSION}/recordings", headers=auth("R1"))
    recordings = (await r.json())["recordings"]
    assert recordings[0]["feed"] == "main" and recordings[0]["ended"] is True
    assert abs(recordings[0]["seconds"] - listed) < 0.01


async def test_public_sessions_need_no_signature(client: Any, auth: Any, db: Any) -> None:
    await live_session(client, auth, db)
    await db.execute("UPDATE sessions SET audience = 'public' WHERE id = $1", SESSION)
    await make_feed(client, auth)
    urls = await (await client.get("/api/feeds/main", headers=auth("R1"))).json()
    assert urls["hls"] == "/hls/main/index.m3u8" and urls["vod"] == "/vod/main/index.m3u8"
    r = await client.get(urls["hls"])
    assert r.status == 404  # not live yet: not a refusal
    assert (
        "not live" in (await r.json())["error"]["message"]
        or "no live HLS" in (await r.json())["error"]["message"]
    )
    assert (await client.get("/hls/nope/index.m3u8")).status == 404


@needs_chromium
async def test_the_viewer_page_falls_back_to_hls_and_plays_the_recording(
    client: Any, auth: Any, db: Any, browser: Any
) -> None:
    """The node is full (one WHEP viewer at most here): the page plays HLS with hls.js; when
    the session ends it plays the recording."""
    await live_session(client, auth, db)
    key = await make_feed(client, auth)
    hub = client.server.app[STREAMING]
    publisher = await publish(client, key)
    taken = WhepViewer(str(client.make_url("/whep/main")), bearer(auth("R4")), decode=False)
    try:
        await until(lambda: hub.live_here("main") is not None, seconds=20)
        async with aiohttp.ClientSession() as http:
            await taken.start(http)
        page = await open_page(browser, f"{client.make_url(f'/watch/{SESSION}')}#token={bearer(auth('R1'))}")
        await until_page(page, "window.tribune?.page.player?.mode === 'hls'")
        start = await page.page.evaluate("document.getElementById('video').currentTime")
        await until_page(page, f"document.getElementById('video').currentTime > {start} + 2")
        assert await page.page.inner_text("#video-mode") == "HLS"
        await page.shot("hls-fallback")
    finally:
        await taken.stop()
        async with aiohttp.ClientSession() as http:
            await publisher.stop(http)
    await until(lambda: not hub.ingests, seconds=20)
    r = await client.post(f"/api/sessions/{SESSION}/state", json={"state": "ended"}, headers=auth.admin)
    assert r.status == 200
    await until_page(page, "window.tribune?.page.player?.mode === 'vod'", seconds=30)
    await until_page(page, "document.getElementById('video').currentTime > 2", seconds=30)
    assert await page.page.inner_text("#video-mode") == "录像"
    await page.shot("hls-recording")
    # Expected: the node's 503 that sent the page to HLS, and a 404 if it asked before the
    # first segment was cut.
    expected = ("status of 503 (Service Unavailable) (http", "status of 404 (Not Found) (http")
    unexpected = [
        e
        for e in page.errors
        if not (
            e.startswith("console: Failed to load resource")
            and any(x in e for x in expected)
            and ("/whep/main" in e or "/hls/main/index.m3u8" in e)
        )
    ]
    assert unexpected == [], unexpected


async def until_page(page: Any, condition: str, seconds: float = 30) -> None:
    """Polls a JavaScript condition (the pages' CSP forbids `wait_for_function`'s eval)."""
    for _ in range(int(seconds * 5)):
        if await page.page.evaluate(f"() => Boolean({condition})"):
            return
        await page.page.wait_for_timeout(200)
    raise AssertionError(f"timed out waiting for {condition}")


def first_picture_is_slate(segment: bytes) -> bool:
    """Decodes the segment's first picture: the slate is dark grey with a white pause sign,
    the test pattern is colour bars and a moving picture."""
    import io

    import av

    with av.open(io.BytesIO(segment)) as container:
        frame = next(container.decode(video=0))
        plane = frame.planes[0]
        luma = bytes(plane)
        w, h, stride = frame.width, frame.height, plane.line_size

        def y(x: int, row: int) -> int:
            return luma[row * stride + x]

        bar_x = w // 2 - 2 * max(2, w // 24) + 2
        return abs(y(8, 8) - 40) < 12 and abs(y(w - 8, h - 8) - 40) < 12 and y(bar_x, h // 2) > 200


async def test_delay_and_kill_switch(client: Any, auth: Any, db: Any) -> None:
    await live_session(client, auth, db)
    r = await client.post(
        "/api/feeds", json={"id": "main", "session": SESSION, "delay": 4}, headers=auth.admin
    )
    assert r.status == 201 and (await r.json())["feed"]["delay"] == 4
    key = (await r.json())["key"]
    hub = client.server.app[STREAMING]
    host = auth("H1", Role.HOST)
    publisher = await publish(client, key)
    try:
        await until(lambda: hub.live_here("main") is not None, seconds=20)
        # The public does not get the real-time picture of a delayed feed.
        viewer = WhepViewer(str(client.make_url("/whep/main")), bearer(auth("R1")), decode=False)
        async with aiohttp.ClientSession() as http:
            with pytest.raises(WhipError) as refused:
                await viewer.start(http)
        assert refused.value.status == 409 and "HLS" in refused.value.body
        await until(lambda: hub.ingests["main"].segmenter.seq >= 3, seconds=30)
        urls = await (await client.get("/api/feeds/main", headers=auth("R1"))).json()

        async def public() -> list[tuple[int, datetime]]:
            r = await client.get(urls["hls"])
            if r.status == 404:
                return []
            lines = (await r.text()).splitlines()
            times = [
                datetime.fromisoformat(x.split(":", 1)[1]) for x in lines if x.startswith("#EXT-X-PROGRAM")
            ]
            seqs = [int(x.split("/")[3].split(".")[0]) for x in lines if x.startswith("/hls/")]
            return list(zip(seqs, times, strict=True))

        async def wait_public(condition: Any) -> list[tuple[int, datetime]]:
            for _ in range(150):
                if condition(shown := await public()):
                    return shown
                await asyncio.sleep(0.1)
            raise AssertionError("timed out")

        # The public output trails live: its newest segment began at least 4 s ago.
        shown = await wait_public(lambda s: len(s) >= 1)
        newest = shown[-1][1]
        assert (datetime.now(UTC) - newest).total_seconds() >= 4 - 0.5, shown
        before_cut = shown[-1][0]
        for seq, _ in shown:
            assert not first_picture_is_slate(await (await client.get(segment_url(client, seq))).read())

        # The kill switch: every segment published from now on is the slate, including those
        # held back by the delay when it was pressed; the recording keeps the slate too.
        r = await client.post("/api/feeds/main/cut", json={"cut": True}, headers=host)
        assert r.status == 200 and (await r.json())["feed"]["cut"] is True
        cut_at_seq = hub.ingests["main"].segmenter.seq  # segments cut before the press
        assert cut_at_seq > before_cut + 1  # some were still held back by the delay
        shown = await wait_public(lambda s: s and s[-1][0] >= cut_at_seq + 1)
        for seq in range(before_cut + 1, shown[-1][0] + 1):
            data = await (await client.get(segment_url(client, seq))).read()
            assert first_picture_is_slate(data), seq
            recorded = hub.ingests["main"].recording.dir / f"{seq}.ts"
            assert first_picture_is_slate(recorded.read_bytes()), seq
        assert (
            await client.post("/api/feeds/main/cut", json={"cut": True}, headers=auth("R1"))
        ).status == 403

        # Released: the picture returns once the delay has passed.
        r = await client.post("/api/feeds/main/cut", json={"cut": False}, headers=host)
        assert r.status == 200
        released_at = hub.ingests["main"].segmenter.seq
        shown = await wait_public(lambda s: s and s[-1][0] > released_at)
        data = await (await client.get(segment_url(client, shown[-1][0]))).read()
        assert not first_picture_is_slate(data)
    finally:
        async with aiohttp.ClientSession() as http:
            await publisher.stop(http)
    actions = [
        r["action"] for r in await db.fetch("SELECT action FROM audit_log WHERE target = 'main' ORDER BY id")
    ]
    assert actions == ["feed.create", "feed.cut", "feed.restore"]
    events = await db.fetch(
        "SELECT data FROM events WHERE session_id = $1 AND type = 'feed.cut' ORDER BY seq", SESSION
    )
    assert [
        json.loads(e["data"])["cut"] if isinstance(e["data"], str) else e["data"]["cut"] for e in events
    ] == [True, False]


def segment_url(client: Any, seq: int) -> str:
    """A signed URL of a live segment, also of one no longer in the playlist's window."""
    from streaming.api import HLS_KEY
    from streaming.hls import sign

    return sign(client.server.app[HLS_KEY], "main", f"/hls/main/{seq}.ts", 600)


PIXEL = """() => {
  const v = document.getElementById('video');
  const c = document.createElement('canvas');
  c.width = v.videoWidth; c.height = v.videoHeight;
  const g = c.getContext('2d');
  g.drawImage(v, 0, 0);
  return Array.from(g.getImageData(8, 8, 1, 1).data.slice(0, 3));
}"""


@needs_chromium
async def test_the_host_cuts_the_public_output_from_the_host_page(
    client: Any, auth: Any, db: Any, browser: Any
) -> None:
    await live_session(client, auth, db)
    key = await make_feed(client, auth)
    hub = client.server.app[STREAMING]
    publisher = await publish(client, key)
    try:
        await until(lambda: hub.live_here("main") is not None, seconds=20)
        base = client.make_url("")
        viewer = await open_page(browser, f"{base}/watch/{SESSION}#token={bearer(auth('R1'))}")
        await until_page(viewer, "window.tribune?.page.player?.mode === 'webrtc'")
        await until_page(viewer, "document.getElementById('video').videoWidth > 0")
        host = await open_page(browser, f"{base}/host/{SESSION}#token={bearer(auth('H1', Role.HOST))}")
        await host.page.locator("#cut:not([disabled])", has_text="切断公开画面").wait_for()
        await host.page.click("#cut")
        await host.page.locator("#cut-state", has_text="已切断").wait_for()
        # The representative's page leaves WebRTC for the HLS output, which shows the slate.
        await until_page(viewer, "window.tribune?.page.player?.mode === 'hls'", seconds=30)
        for _ in range(100):
            r, g, b = await viewer.page.evaluate(PIXEL)
            if max(r, g, b) < 50 and max(r, g, b) - min(r, g, b) < 8:
                break
            await viewer.page.wait_for_timeout(300)
        assert max(r, g, b) < 50 and max(r, g, b) - min(r, g, b) < 8, (r, g, b)
        await viewer.shot("kill-switch-viewer")
        await host.shot("kill-switch-host")
        assert await db.fetchval("SELECT cut FROM feeds WHERE id = 'main'") is True
        await host.page.click("#cut")
        await host.page.locator("#cut-state", has_text="公开画面正常").wait_for()
        assert host.errors == []
    finally:
        async with aiohttp.ClientSession() as http:
            await publisher.stop(http)


async def test_low_latency_parts_and_blocking_reload(
    client: Any, other_node: Any, auth: Any, db: Any
) -> None:
    await live_session(client, auth, db)
    await db.execute("UPDATE sessions SET audience = 'public' WHERE id = $1", SESSION)
    key = await make_feed(client, auth)
    hub = client.server.app[STREAMING]
    publisher = await publish(client, key)
    try:
        await until(lambda: hub.live_here("main") is not None, seconds=20)
        await until(lambda: hub.ingests["main"].segmenter.seq >= 2, seconds=30)
        text = await (await other_node.get("/hls/main/index.m3u8")).text()
        assert "#EXT-X-VERSION:6" in text and "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES" in text, text
        assert "#EXT-X-PART-INF:PART-TARGET=0.5" in text
        parts = [line for line in text.splitlines() if line.startswith("#EXT-X-PART:")]
        assert parts and all(float(p.split("DURATION=")[1].split(",")[0]) <= 0.55 for p in parts)
        hint = next(line for line in text.splitlines() if line.startswith("#EXT-X-PRELOAD-HINT"))
        hint_uri = hint.split('URI="')[1].rstrip('"')
        seq, part = (int(x) for x in hint_uri.split("/")[-1].split(".")[:2])

        # Blocking reload: asking for the hinted part waits until it is cut, then lists it.
        blocked = asyncio.create_task(other_node.get(f"/hls/main/index.m3u8?_HLS_msn={seq}&_HLS_part={part}"))
        preload = asyncio.create_task(other_node.get(hint_uri))  # the preload hint, held too
        r = await blocked
        assert r.status == 200 and hint_uri in await r.text()
        p = await preload
        assert p.status == 200 and (data := await p.read())[:1] == b"\x47"  # an MPEG-TS packet
        assert (await other_node.get("/hls/main/index.m3u8?_HLS_msn=999999")).status == 400

        # A segment is exactly its parts, byte for byte.
        await until(lambda: hub.ingests["main"].segmenter.seq > seq + 1, seconds=30)
        index = await hub.bus.index("main", fresh=True)
        entry = next(s for s in index["segments"] if s["seq"] == seq)
        pieces = [
            await (await client.get(f"/hls/main/{seq}.{i}.ts")).read() for i in range(len(entry["parts"]))
        ]
        whole = await (await client.get(f"/hls/main/{seq}.ts")).read()
        assert pieces[part] == data and b"".join(pieces) == whole
        assert (
            entry["parts"][0][1] is True and abs(sum(d for d, _ in entry["parts"]) - entry["duration"]) < 0.01
        )
    finally:
        async with aiohttp.ClientSession() as http:
            await publisher.stop(http)


def test_the_preload_hint_moves_to_the_next_segment_once_a_segment_has_its_last_part() -> None:
    """Between a segment's last part going out and the whole segment being muxed, the
    playlist must not hint a part of it that will never exist."""
    index: dict[str, Any] = {
        "target": 2.0,
        "part_target": 0.5,
        "segments": [{"seq": 0, "duration": 2.0, "at": datetime.now(UTC).isoformat()}],
        "open": {"seq": 1, "parts": [[0.5, True], [0.5, False], [0.5, False]]},
        "ended": False,
    }

    def hint(index: dict[str, Any]) -> str:
        text = hls.playlist(index, lambda seq: f"/{seq}.ts", part_uri=lambda seq, i: f"/{seq}.{i}.ts")
        return next(line for line in text.splitlines() if line.startswith("#EXT-X-PRELOAD-HINT"))

    assert hint(index).endswith('URI="/1.3.ts"')  # the open segment goes on
    index["open"] = {**index["open"], "parts": [*index["open"]["parts"], [0.5, False]], "closed": True}
    assert hint(index).endswith('URI="/2.0.ts"')  # it ended with its fourth part
    assert not hls.has_reached(index, 2, 0) and hls.has_reached(index, 1, 3)
