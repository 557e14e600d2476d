"""HTTP edge of the video paths: WHIP (RFC 9725) and WHEP ingest/egress, and the admin API
of feeds and their stream keys (see docs/protocol.md)."""

from __future__ import annotations

import asyncio
import enum
import hashlib
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import asyncpg
import msgspec
from aiohttp import web

from config import keys
from config.auth import AuthError, Principal, Role, local_secret, require_role
from config.errors import BadRequest, Forbidden, NotFound, Unauthorized
from config.front import Answer, Quick, quick_routes
from config.settings import Settings
from config.web import caller, json_response, read_body, read_json
from recorder import feeds as ledger
from recorder import sessions
from streaming import hls, rtc, upstream
from streaming.errors import FeedNotLive
from streaming.hub import Streaming

STREAMING: web.AppKey[Streaming] = web.AppKey("streaming")
HLS_KEY: web.AppKey[bytes] = web.AppKey("hls_key")
PUBLIC_FEEDS: web.AppKey[dict[str, tuple[float, bool]]] = web.AppKey("public_feeds")
# The live playlist as last rendered, by (feed, public): reused while the bus hands out the
# same index (it refreshes it every quarter second), since every player reloads it.
PLAYLISTS: web.AppKey[dict[tuple[str, bool], tuple[dict[str, Any], bytes]]] = web.AppKey("playlists")

_METHODS = "POST, DELETE, PATCH, OPTIONS"
_HEADERS = "Authorization, Content-Type, If-Match"
_EXPOSED = "Location, Link, ETag, Accept-Patch"


def _cors(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
    """WHIP/WHEP clients on other origins (a page on the platform, a player) may call us
    when the origin is allowed; OBS and other native clients send no Origin."""
    origin = request.headers.get("Origin")
    allowed = request.app[keys.SETTINGS].allowed_origins
    if origin and ("*" in allowed or origin in allowed):
        response.headers["Access-Control-Allow-Origin"] = "*" if "*" in allowed else origin
        response.headers["Access-Control-Expose-Headers"] = _EXPOSED
        if "*" not in allowed:
            response.headers["Vary"] = "Origin"
    return response


async def preflight(request: web.Request) -> web.StreamResponse:
    response = web.Response(status=204, headers={"Allow": _METHODS, "Accept-Post": rtc.SDP_TYPE})
    if request.headers.get("Origin"):
        response.headers["Access-Control-Allow-Methods"] = _METHODS
        response.headers["Access-Control-Allow-Headers"] = _HEADERS
        response.headers["Access-Control-Max-Age"] = "86400"
    return _cors(request, response)


def _bearer(request: web.Request, what: str) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise Unauthorized(f"send the {what} as `Authorization: Bearer <{what}>`")
    return value.strip()


def _answer(request: web.Request, kind: str, feed_id: str, resource: str, sdp: str) -> web.StreamResponse:
    response = web.Response(
        status=201,
        text=sdp,
        content_type=rtc.SDP_TYPE,
        headers={"Location": f"/{kind}/{feed_id}/{resource}", "ETag": f'"{resource}"'},
    )
    return _cors(request, response)


async def _offer(request: web.Request, *, want_video: bool) -> tuple[str, set[str]]:
    body = await read_body(request, limit=rtc.MAX_SDP_BYTES)
    return rtc.read_offer(body, request.content_type, want_video=want_video)


async def _publisher(request: web.Request, feed_id: str, credential: str) -> asyncpg.Record:
    """The feed, if `credential` may publish it: its stream key (OBS, an encoder), or the
    token of a host or admin who may attend the feed's session (the host page in a browser)."""
    pool = request.app[keys.DB]
    if "." not in credential:  # stream keys are `tsk_` and URL-safe base64; tokens are JWTs
        return await ledger.authorize(pool, feed_id, credential)
    try:
        who = request.app[keys.VERIFIER].verify(credential)
    except AuthError as exc:
        raise Unauthorized(f"{exc.message}; WHIP takes the feed's stream key or a host's token") from None
    require_role(who, Role.HOST, action="publishing a feed from the host page")
    feed = await ledger.get(pool, feed_id)
    await sessions.get_for(pool, feed["session_id"], who)
    if feed["source"] != "whip":
        raise ledger.WrongKey(f"feed {feed_id!r} is not published over WHIP")
    return feed


async def whip_publish(request: web.Request) -> web.StreamResponse:
    feed_id = ledger.check_id(request.match_info["feed"])
    credential = _bearer(request, "stream key")  # before the body: a missing one fails fast
    offer, _ = await _offer(request, want_video=False)
    feed = await _publisher(request, feed_id, credential)
    ingest, answer = await request.app[STREAMING].publish(feed, offer)
    return _answer(request, "whip", feed_id, ingest.resource, answer)


async def whip_end(request: web.Request) -> web.StreamResponse:
    feed_id = ledger.check_id(request.match_info["feed"])
    await _publisher(request, feed_id, _bearer(request, "stream key"))
    hub = request.app[STREAMING]
    ingest = hub.ingests.get(feed_id)
    if ingest is None or ingest.resource != request.match_info["resource"]:
        raise FeedNotLive(f"no live WHIP session {request.match_info['resource']!r} for feed {feed_id!r}")
    await hub.end_ingest(ingest, "publisher_ended")
    return _cors(request, web.Response(status=200))


async def _viewer(
    request: web.Request, feed_id: str, *, whep: bool = True
) -> tuple[Principal, asyncpg.Record]:
    """The caller and the feed, if they may watch it (its session's access and tier checked)."""
    try:
        who = caller(request)
    except AuthError as exc:
        if not whep:
            raise
        raise Unauthorized(f"{exc.message}; WHEP needs the viewer's token as a bearer") from None
    feed = await ledger.get(request.app[keys.DB], feed_id)
    await sessions.get_for(request.app[keys.DB], feed["session_id"], who)
    return who, feed


async def whep_view(request: web.Request) -> web.StreamResponse:
    feed_id = ledger.check_id(request.match_info["feed"])
    who, _ = await _viewer(request, feed_id)
    offer, kinds = await _offer(request, want_video=True)
    hub = request.app[STREAMING]
    if hub.live_here(feed_id) is None:
        owner = await hub.owner(feed_id)
        if owner is None or owner["node"] == hub.node:
            raise FeedNotLive(f"feed {feed_id!r} is not live; its page switches when it goes live")
        location = f"{owner['url']}/whep/{feed_id}"
        return _cors(request, web.Response(status=307, headers={"Location": location}))
    staff = who.has(Role.HOST, Role.MODERATOR, Role.ADMIN)
    viewer, answer = await hub.view(feed_id, who.rep, offer, "audio" in kinds, staff=staff)
    return _answer(request, "whep", feed_id, viewer.resource, answer)


async def whep_end(request: web.Request) -> web.StreamResponse:
    feed_id = ledger.check_id(request.match_info["feed"])
    who, _ = await _viewer(request, feed_id)
    hub = request.app[STREAMING]
    viewer = hub.viewers.get(request.match_info["resource"])
    if viewer is None or viewer.feed_id != feed_id or viewer.rep != who.rep:
        raise FeedNotLive(f"no WHEP session {request.match_info['resource']!r} of yours on feed {feed_id!r}")
    await hub.close_viewer(viewer)
    return _cors(request, web.Response(status=200))


async def no_trickle(request: web.Request) -> web.StreamResponse:
    """Trickle ICE and ICE restarts are not supported: candidates travel in the offer."""
    response = web.json_response(
        {"error": {"code": "method_not_allowed", "message": "send all ICE candidates in the offer"}},
        status=405,
        headers={"Allow": "DELETE, OPTIONS"},
    )
    return _cors(request, response)


# --- feeds and keys (admin) ---------------------------------------------------------------


async def create_feed(request: web.Request) -> web.Response:
    who = caller(request)
    require_role(who, action="creating a feed")
    spec = await read_json(request, ledger.FeedSpec, limit=4096)
    if spec.upstream is not None:  # refused before anything is stored or fetched
        upstream.Policy.parse(request.app[keys.SETTINGS].upstream_allowlist).check_url(spec.upstream)
    feed, key = await ledger.create(request.app[keys.DB], spec, who.rep)
    whip = f"/whip/{feed['id']}" if key else None
    return json_response({"feed": feed, "key": key, "whip": whip}, status=201)


async def rotate_key(request: web.Request) -> web.Response:
    who = caller(request)
    require_role(who, action="rotating a stream key")
    feed, key = await ledger.rotate(request.app[keys.DB], request.match_info["feed"], who.rep)
    return json_response({"feed": feed, "key": key})


async def get_feed(request: web.Request) -> web.Response:
    feed_id = ledger.check_id(request.match_info["feed"])
    _, row = await _viewer(request, feed_id, whep=False)
    public = await _is_public(request.app, feed_id)
    urls = {
        kind: _media_url(request.app, feed_id, f"/{kind}/{feed_id}/index.m3u8", public)
        for kind in ("hls", "vod")
    }
    return json_response({"feed": ledger.view(row), "whep": f"/whep/{feed_id}", **urls})


# --- HLS: live from the segment bus, recordings from disk ----------------------------------


def signing_key(settings: Settings) -> bytes:
    """The key of signed HLS URLs: `hls_signing_key`, else the token secret (one per cluster),
    else the data directory's own secret (a single development node)."""
    secret = settings.hls_signing_key or settings.jwt_secret or local_secret(settings.data_dir)
    return hashlib.sha256(b"tribune hls\n" + secret.encode()).digest()


def _known_public(app: web.Application, feed_id: str) -> bool | None:
    """Whether the feed's session is public, if known in the last 10 s; else None."""
    hit = app[PUBLIC_FEEDS].get(feed_id)
    if hit is not None and time.monotonic() - hit[0] < 10:
        return hit[1]
    return None


async def _is_public(app: web.Application, feed_id: str) -> bool:
    """Whether the feed's session is public (no signature needed); cached for 10 s."""
    if (known := _known_public(app, feed_id)) is not None:
        return known
    audience = await app[keys.DB].fetchval(
        "SELECT s.audience FROM feeds f JOIN sessions s ON s.id = f.session_id WHERE f.id = $1", feed_id
    )
    if audience is None:
        raise NotFound(f"no feed {feed_id!r}")
    public = bool(audience == "public")
    app[PUBLIC_FEEDS][feed_id] = (time.monotonic(), public)
    return public


async def _hls_access(request: web.Request, feed_id: str) -> bool:
    """Raises Forbidden for a URL that needs a signature and lacks a good one; returns
    whether the feed is public."""
    if await _is_public(request.app, feed_id):
        return True
    q = request.query
    problem = hls.verify(request.app[HLS_KEY], feed_id, request.path, q.get("exp"), q.get("sig"))
    if problem is not None:
        raise Forbidden(problem)
    return False


def _media_url(app: web.Application, feed_id: str, path: str, public: bool) -> str:
    """`path` as a viewer requests it: as is for a public session, else signed."""
    if public:
        return path
    return hls.sign(app[HLS_KEY], feed_id, path, app[keys.SETTINGS].hls_url_ttl)


def _segment_uri(app: web.Application, feed_id: str, kind: str, public: bool) -> Callable[[int], str]:
    return lambda seq: _media_url(app, feed_id, f"/{kind}/{feed_id}/{seq}.ts", public)


PLAYLIST = "application/vnd.apple.mpegurl"
SEGMENT = "video/mp2t"


def _live_playlist_cache(public: bool) -> str:
    return "public, max-age=1" if public else "private, max-age=1"


def _segment_cache(public: bool) -> str:
    return f"{'public' if public else 'private'}, max-age=86400, immutable"


def _media(body: bytes | str, content_type: str, cache: str) -> web.Response:
    data = body.encode() if isinstance(body, str) else body
    return web.Response(body=data, content_type=content_type, headers={"Cache-Control": cache})


def _query_int(request: web.Request, name: str) -> int | None:
    value = request.query.get(name)
    if value is None:
        return None
    if not value.isdigit() or len(value) > 9:
        raise BadRequest(f"{name} must be a whole number")
    return int(value)


def _has_live_hls(index: dict[str, Any] | None) -> bool:
    return bool(index and (index.get("segments") or index.get("open")))


def _playlist_body(app: web.Application, feed_id: str, public: bool, index: dict[str, Any]) -> bytes:
    """The live playlist of `index`; rendered once per index the bus hands out."""
    rendered = app[PLAYLISTS]
    hit = rendered.get((feed_id, public))
    if hit is not None and hit[0] is index:
        return hit[1]

    def part_uri(seq: int, i: int) -> str:
        return _media_url(app, feed_id, f"/hls/{feed_id}/{seq}.{i}.ts", public)

    body = hls.playlist(index, _segment_uri(app, feed_id, "hls", public), part_uri=part_uri).encode()
    rendered[(feed_id, public)] = (index, body)
    return body


async def hls_playlist(request: web.Request) -> web.Response:
    """The live playlist; `_HLS_msn` (and `_HLS_part`) hold the request until the playlist
    has that segment (part): LL-HLS blocking reload."""
    feed_id = ledger.check_id(request.match_info["feed"])
    public = await _hls_access(request, feed_id)
    bus = request.app[STREAMING].bus
    assert bus is not None
    msn, part = _query_int(request, "_HLS_msn"), _query_int(request, "_HLS_part")
    if part is not None and msn is None:
        raise BadRequest("_HLS_part needs _HLS_msn")
    index = await bus.index(feed_id)
    if msn is not None and index and not hls.has_reached(index, msn, part):
        segments = index.get("segments") or []
        last = int(segments[-1]["seq"]) if segments else -1
        if msn > last + 2:
            raise BadRequest(f"_HLS_msn={msn} is too far ahead of the playlist (last segment {last})")
        timeout = 3 * request.app[keys.SETTINGS].hls_segment_seconds
        index = await bus.wait(feed_id, lambda i: hls.has_reached(i, msn, part), timeout) or index
    if index is None or not _has_live_hls(index):
        raise NotFound(
            f"feed {feed_id!r} has no live HLS now; it starts a few seconds after the feed goes live"
        )
    body = _playlist_body(request.app, feed_id, public, index)
    return _media(body, PLAYLIST, _live_playlist_cache(public))


async def hls_part(request: web.Request) -> web.Response:
    """A part; the next one (the playlist's preload hint) is held until it is cut."""
    feed_id = ledger.check_id(request.match_info["feed"])
    public = await _hls_access(request, feed_id)
    bus = request.app[STREAMING].bus
    assert bus is not None
    seq, i = int(request.match_info["seq"]), int(request.match_info["part"])
    name = hls.media_name(seq, i)
    data = await bus.media(feed_id, name)
    if data is None:
        timeout = 3 * request.app[keys.SETTINGS].hls_part_seconds
        if await bus.wait(feed_id, lambda index: hls.has_reached(index, seq, i), timeout) is not None:
            data = await bus.media(feed_id, name)
    if data is None:
        raise NotFound("no such part (parts stay on the bus for hls_ttl seconds)")
    return _media(data, SEGMENT, _segment_cache(public))


async def hls_segment(request: web.Request) -> web.Response:
    feed_id = ledger.check_id(request.match_info["feed"])
    public = await _hls_access(request, feed_id)
    bus = request.app[STREAMING].bus
    name = hls.media_name(int(request.match_info["seq"]))
    data = await bus.media(feed_id, name) if bus is not None else None
    if data is None:
        raise NotFound("no such segment (segments stay on the bus for hls_ttl seconds)")
    return _media(data, SEGMENT, _segment_cache(public))


# --- the same three answered by the HTTP front, from memory -----------------------------

_QUICK_HLS = re.compile(rf"/hls/({ledger.FEED_ID})/(?:(index)\.m3u8|(\d{{1,9}})(?:\.(\d{{1,3}}))?\.ts)")


def _quick_target(path: str) -> tuple[str, str | None, str] | None:
    """(feed, the bus's name of the segment or part or None for the playlist, the route) of
    a live HLS path; None for any other path."""
    match = _QUICK_HLS.fullmatch(path)
    if match is None:
        return None
    feed_id, playlist, seq, part = match.groups()
    if playlist:
        return feed_id, None, "/hls/{feed}/index.m3u8"
    route = "/hls/{feed}/{seq}.ts" if part is None else "/hls/{feed}/{seq}.{part}.ts"
    return feed_id, hls.media_name(seq, part), route


class _Cold(enum.Enum):
    """Something the answer needs is not in the node's memory yet."""

    COLD = 0


def _quick_hls(app: web.Application) -> Quick:
    """Live HLS answered by the front (config/front.py) when all it takes is in memory: the
    session's audience, the bus's index or the media. A blocking reload, a missing or
    not yet cut segment, a refused signature, anything to report is left to the handlers
    above."""

    def look(path: str, query: str, fetched: Any = _Cold.COLD) -> Answer | _Cold | None:
        """The answer from memory; with `fetched`, from the index or media just read."""
        target = _quick_target(path)
        bus = app[STREAMING].bus
        if target is None or bus is None:
            return None
        # As aiohttp reads a query: decoded, the first of a repeated name.
        fields = parse_qsl(query, keep_blank_values=True) if query else []
        if any(name.startswith("_HLS_") for name, _ in fields):
            return None  # a blocking reload: the handler above waits for it
        feed_id, name, route = target
        public = _known_public(app, feed_id)
        if public is None:
            return _Cold.COLD
        if not public:
            exp = next((value for name, value in fields if name == "exp"), None)
            sig = next((value for name, value in fields if name == "sig"), None)
            if hls.verify(app[HLS_KEY], feed_id, path, exp, sig) is not None:
                return None
        if name is None:
            if fetched is _Cold.COLD:
                fresh, fetched = bus.cached_index(feed_id)
                if not fresh:
                    return _Cold.COLD
            if fetched is None or not _has_live_hls(fetched):
                return None
            body = _playlist_body(app, feed_id, public, fetched)
            return Answer(route, PLAYLIST, _live_playlist_cache(public), body)
        if fetched is _Cold.COLD:
            fetched = bus.cached_media(feed_id, name)
            if fetched is None:
                return _Cold.COLD
        if fetched is None:
            return None
        return Answer(route, SEGMENT, _segment_cache(public), fetched)

    async def warm(path: str, query: str) -> Answer | None:
        target = _quick_target(path)
        bus = app[STREAMING].bus
        assert target is not None and bus is not None
        feed_id, name, _ = target
        await _is_public(app, feed_id)
        fetched: Any = await (bus.index(feed_id) if name is None else bus.media(feed_id, name))
        answer = look(path, query, fetched)
        return answer if isinstance(answer, Answer) else None

    def quick(path: str, query: str) -> Answer | Awaitable[Answer | None] | None:
        answer = look(path, query)
        return warm(path, query) if answer is _Cold.COLD else answer

    return quick


def _recording(request: web.Request, feed_id: str) -> Path:
    run = hls.latest_recording(request.app[STREAMING].recordings, feed_id)
    if run is None:
        raise NotFound(f"no recording of feed {feed_id!r} on this node")
    return run


async def vod_playlist(request: web.Request) -> web.Response:
    feed_id = ledger.check_id(request.match_info["feed"])
    public = await _hls_access(request, feed_id)
    run = _recording(request, feed_id)
    index = json.loads(await asyncio.to_thread((run / "index.json").read_text))
    text = hls.playlist(index, _segment_uri(request.app, feed_id, "vod", public), vod=bool(index["ended"]))
    return _media(text, PLAYLIST, "private, max-age=2")


async def vod_segment(request: web.Request) -> web.Response:
    feed_id = ledger.check_id(request.match_info["feed"])
    public = await _hls_access(request, feed_id)
    path = _recording(request, feed_id) / f"{int(request.match_info['seq'])}.ts"
    try:
        data = await asyncio.to_thread(path.read_bytes)
    except FileNotFoundError:
        raise NotFound("no such segment in the recording") from None
    return _media(data, SEGMENT, _segment_cache(public))


class CutSpec(msgspec.Struct, forbid_unknown_fields=True):
    cut: bool


async def cut_feed(request: web.Request) -> web.Response:
    """The host's kill switch: `{"cut": true}` shows the slate to the public until
    `{"cut": false}`."""
    feed_id = ledger.check_id(request.match_info["feed"])
    who = caller(request)
    require_role(who, Role.HOST, action="cutting a feed's public output")
    pool = request.app[keys.DB]
    feed = await ledger.get(pool, feed_id)
    await sessions.get_for(pool, feed["session_id"], who)
    spec = await read_json(request, CutSpec, limit=1024)
    view, appended = await ledger.set_cut(pool, feed_id, spec.cut, who.rep)
    hub = request.app[STREAMING]
    await hub.apply_cut(feed_id, spec.cut)
    await hub.committed(feed["session_id"], appended)
    return json_response({"feed": view})


async def session_feeds(request: web.Request) -> web.Response:
    who = caller(request)
    session = await sessions.get_for(request.app[keys.DB], request.match_info["session"], who)
    return json_response({"feeds": await ledger.list_for_session(request.app[keys.DB], session["id"])})


async def session_recordings(request: web.Request) -> web.Response:
    """The session's recordings kept on this node, newest run of each feed first."""
    who = caller(request)
    pool = request.app[keys.DB]
    session = await sessions.get_for(pool, request.match_info["session"], who)
    root = request.app[STREAMING].recordings
    out = []
    for feed in await ledger.list_for_session(pool, session["id"]):
        runs = await asyncio.to_thread(hls.list_recordings, root, feed["id"])
        out += [{"feed": feed["id"], **run} for run in reversed(runs)]
    return json_response({"recordings": out})


def attach(app: web.Application) -> Streaming:
    """Add WHIP/WHEP and the feed API to an app; the hub starts once PostgreSQL and Redis are up."""
    hub = Streaming(app[keys.SETTINGS], app[keys.METRICS])
    app[STREAMING] = hub
    app[HLS_KEY] = signing_key(app[keys.SETTINGS])
    app[PUBLIC_FEEDS] = {}
    app[PLAYLISTS] = {}

    async def streaming_ctx(app: web.Application) -> AsyncIterator[None]:
        await hub.start(app[keys.DB], app[keys.REDIS], app.get(keys.EVENT_SINK))
        try:
            yield
        finally:
            await hub.stop()

    app.cleanup_ctx.append(streaming_ctx)
    r = app.router
    for kind, post, end in (("whip", whip_publish, whip_end), ("whep", whep_view, whep_end)):
        r.add_post(f"/{kind}/{{feed}}", post)
        r.add_route("OPTIONS", f"/{kind}/{{feed}}", preflight)
        r.add_delete(f"/{kind}/{{feed}}/{{resource}}", end)
        r.add_patch(f"/{kind}/{{feed}}/{{resource}}", no_trickle)
        r.add_route("OPTIONS", f"/{kind}/{{feed}}/{{resource}}", preflight)
    r.add_post("/api/feeds", create_feed)
    r.add_get("/api/feeds/{feed}", get_feed)
    r.add_post("/api/feeds/{feed}/key", rotate_key)
    r.add_post("/api/feeds/{feed}/cut", cut_feed)
    r.add_get("/api/sessions/{session}/feeds", session_feeds)
    r.add_get("/api/sessions/{session}/recordings", session_recordings)
    r.add_get("/hls/{feed}/index.m3u8", hls_playlist)
    r.add_get(r"/hls/{feed}/{seq:\d{1,9}}.ts", hls_segment)
    r.add_get(r"/hls/{feed}/{seq:\d{1,9}}.{part:\d{1,3}}.ts", hls_part)
    quick_routes(app).add("/hls/", _quick_hls(app))
    r.add_get("/vod/{feed}/index.m3u8", vod_playlist)
    r.add_get(r"/vod/{feed}/{seq:\d{1,9}}.ts", vod_segment)
    return hub
