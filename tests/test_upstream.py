"""Feeds relayed from an upstream HLS URL: a local HLS origin started by the test is pulled
by a node and re-served through the bus; it stalls and resumes; and the requests a hostile
URL would make are refused before any connection."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer

from config.settings import Settings
from streaming import upstream
from streaming.api import STREAMING
from streaming.hls import Segment, slate_segment
from tests.test_polls import SESSION, live_session
from tests.test_whip import until

pytestmark = pytest.mark.asyncio(loop_scope="session")


class Origin:
    """A live HLS origin: a new 1-second segment every second while not paused."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.paused_at: float | None = None
        self.offset = 0.0
        base = Segment("o", 0, 1.0, datetime.now(UTC), b"", 0, (320, 180))
        self.segments = [
            slate_segment(Segment(**{**_fields(base), "first_pts": n * 90_000})).data for n in range(8)
        ]
        self.requests: list[str] = []

    def now(self) -> float:
        return (self.paused_at or time.monotonic()) - self.started - self.offset

    def pause(self) -> None:
        self.paused_at = time.monotonic()

    def resume(self) -> None:
        assert self.paused_at is not None
        self.offset += time.monotonic() - self.paused_at
        self.paused_at = None

    async def playlist(self, request: web.Request) -> web.Response:
        self.requests.append(request.path)
        last = int(self.now())
        first = max(0, last - 3)
        lines = ["#EXTM3U", "#EXT-X-VERSION:3", "#EXT-X-TARGETDURATION:1", f"#EXT-X-MEDIA-SEQUENCE:{first}"]
        for n in range(first, last + 1):
            lines += ["#EXTINF:1.000,", f"seg{n}.ts"]
        return web.Response(text="\n".join(lines) + "\n", content_type="application/vnd.apple.mpegurl")

    async def segment(self, request: web.Request) -> web.Response:
        self.requests.append(request.path)
        n = int(request.match_info["n"])
        return web.Response(body=self.segments[n % len(self.segments)], content_type="video/mp2t")

    async def redirect(self, request: web.Request) -> web.Response:
        self.requests.append(request.path)
        raise web.HTTPFound("http://169.254.169.254/latest/meta-data/")

    async def huge(self, request: web.Request) -> web.Response:
        return web.Response(text="#EXTM3U\n" + "#" * 5000)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/live/index.m3u8", self.playlist)
        app.router.add_get(r"/live/seg{n:\d+}.ts", self.segment)
        app.router.add_get("/redirect.m3u8", self.redirect)
        app.router.add_get("/huge.m3u8", self.huge)
        return app


def _fields(segment: Segment) -> dict[str, Any]:
    return {f: getattr(segment, f) for f in Segment.__dataclass_fields__}


@pytest_asyncio.fixture(loop_scope="session")
async def origin() -> AsyncIterator[tuple[Origin, str]]:
    source = Origin()
    server = TestServer(source.app(), host="127.0.0.1")
    await server.start_server()
    try:
        yield source, f"http://127.0.0.1:{server.port}"
    finally:
        await server.close()


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.replace(upstream_allowlist=("127.0.0.1", "court.example"))


async def test_an_upstream_is_relayed_stalls_and_resumes(
    client: Any, auth: Any, db: Any, origin: Any
) -> None:
    source, base = origin
    await live_session(client, auth, db)
    spec = {"id": "court", "session": SESSION, "upstream": f"{base}/live/index.m3u8"}
    r = await client.post("/api/feeds", json=spec, headers=auth.admin)
    assert r.status == 201, await r.text()
    body = await r.json()
    assert body["key"] is None and body["feed"]["source"] == "hls_relay"
    hub = client.server.app[STREAMING]
    await until(lambda: "court" in hub.relays, seconds=10)

    async def state() -> str:
        return str(await db.fetchval("SELECT state FROM feeds WHERE id = 'court'"))

    for _ in range(100):
        if await state() == "live":
            break
        await asyncio.sleep(0.1)
    assert await state() == "live"
    urls = await (await client.get("/api/feeds/court", headers=auth("R1"))).json()
    for _ in range(100):
        r = await client.get(urls["hls"])
        if r.status == 200 and (await r.text()).count("#EXTINF") >= 2:
            break
        await asyncio.sleep(0.1)
    playlist = await r.text()
    uri = [line for line in playlist.splitlines() if line.startswith("/hls/court/")][-1]
    data = await (await client.get(uri)).read()
    assert data[:1] == b"\x47" and len(data) > 1000  # an MPEG-TS segment from the origin

    # The origin stops sending: the feed is marked stalled, and live again when it resumes.
    source.pause()
    for _ in range(100):
        if await state() == "stalled":
            break
        await asyncio.sleep(0.1)
    assert await state() == "stalled"
    source.resume()
    for _ in range(100):
        if await state() == "live":
            break
        await asyncio.sleep(0.1)
    assert await state() == "live"
    types = [
        e["type"]
        for e in await db.fetch("SELECT type FROM events WHERE session_id = $1 ORDER BY seq", SESSION)
    ]
    assert types.count("feed.live") == 2 and types.count("feed.stalled") == 1

    # The session ends: the relay stops and the feed ends.
    r = await client.post(f"/api/sessions/{SESSION}/state", json={"state": "ended"}, headers=auth.admin)
    assert r.status == 200
    await until(lambda: "court" not in hub.relays, seconds=10)
    assert await state() == "ended"


@pytest.mark.security
async def test_hostile_upstreams_are_refused_before_connecting(
    client: Any, auth: Any, db: Any, origin: Any
) -> None:
    source, base = origin
    await live_session(client, auth, db)
    for url, why in (
        ("http://127.0.0.2:80/live.m3u8", "not on upstream_allowlist"),  # loopback, not listed
        ("http://169.254.169.254/latest/meta-data/", "not on upstream_allowlist"),
        ("http://localhost/live.m3u8", "not on upstream_allowlist"),
        ("file:///etc/passwd", "http or https"),
        ("http://user:pw@court.example/live.m3u8", "no user name"),
    ):
        r = await client.post(
            "/api/feeds", json={"id": "bad", "session": SESSION, "upstream": url}, headers=auth.admin
        )
        assert r.status == 422 and why in (await r.json())["error"]["message"], url
    assert await db.fetchval("SELECT count(*) FROM feeds") == 0  # nothing half-written
    r = await client.post(
        "/api/feeds", json={"id": "bad", "session": SESSION, "upstream": f"{base}/x.m3u8"}, headers=auth("H1")
    )
    assert r.status == 403  # only admins set upstream URLs

    policy = upstream.Policy.parse(("127.0.0.1", "court.example"))

    async def private(host: str, port: int) -> list[str]:
        return ["10.0.0.5"]

    async def metadata(host: str, port: int) -> list[str]:
        return ["169.254.169.254"]

    # A listed name that resolves to a private or metadata address: refused, no connection.
    for resolver in (private, metadata):
        with pytest.raises(upstream.UpstreamRefused, match="resolves to"):
            await upstream.fetch(
                policy, "http://court.example/live.m3u8", limit=1000, timeout=2, resolve=resolver
            )
    # A redirect to another host is not followed; a body over the cap is refused.
    before = len(source.requests)
    with pytest.raises(upstream.UpstreamRefused, match="not followed"):
        await upstream.fetch(
            policy, f"{base}/redirect.m3u8", limit=1000, timeout=2, resolve=upstream.system_resolve
        )
    assert source.requests[before:] == ["/redirect.m3u8"]
    with pytest.raises(upstream.UpstreamRefused, match="over 1000 bytes"):
        await upstream.fetch(
            policy, f"{base}/huge.m3u8", limit=1000, timeout=2, resolve=upstream.system_resolve
        )
