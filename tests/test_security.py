"""Abuse cases against a real node: what an attacker tries, and what they and the others notice."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import jwt
import msgpack
import pytest
import pytest_asyncio
import redis.asyncio as aioredis
import redis.exceptions
import socketio
from aiohttp.test_utils import TestClient, TestServer

from config.app import create_app
from config.auth import Role, mint_token
from config.settings import Settings
from streaming.api import STREAMING
from streaming.clients import WhipPublisher
from streaming.testsrc import PatternVideo
from tests.live import Viewer
from tests.test_polls import make_poll
from tests.test_whip import make_feed, offer_from, until

pytestmark = [pytest.mark.security, pytest.mark.asyncio(loop_scope="session")]

SESSION = "sec-1"
REPS = [("R1", "王伟"), ("R2", "李娜"), ("R3", "张强"), ("R4", "赵敏")]
SOCKET = "/socket.io/?EIO=4&transport=websocket"
CONNECT, DISCONNECT, EVENT, ACK, CONNECT_ERROR = 0, 1, 2, 3, 4


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.replace(webrtc_host_addresses=("127.0.0.1",))


async def open_session(client: Any, auth: Any, db: Any, sid: str = SESSION, audience: str = "roster") -> None:
    await db.executemany(
        "INSERT INTO representatives (id, name, level) VALUES ($1, $2, 'city') ON CONFLICT DO NOTHING", REPS
    )
    spec = {
        "id": sid,
        "kind": "special_inquiry",
        "title": "专题询问",
        "audience": audience,
        "default_tier": "voting",
        "moderation": "post",
        "scheduled_start": "2026-12-01T09:00:00+08:00",
        "scheduled_end": "2026-12-01T11:00:00+08:00",
    }
    r = await client.post("/api/sessions", json=spec, headers=auth.admin)
    assert r.status == 201, await r.text()
    r = await client.post(f"/api/sessions/{sid}/state", json={"state": "live"}, headers=auth.admin)
    assert r.status == 200, await r.text()


@pytest_asyncio.fixture(loop_scope="session")
async def people(client: TestClient[Any, Any], settings: Settings) -> AsyncIterator[Callable[..., Viewer]]:
    made: list[Viewer] = []

    def make(rep: str, session: str = SESSION, token: str = "") -> Viewer:
        viewer = Viewer(str(client.make_url("/")), token or mint_token(settings, rep=rep), session)
        made.append(viewer)
        return viewer

    yield make
    for viewer in made:
        await viewer.close()


def packet(kind: int, data: Any = None, *, id: Any = None, nsp: str = "/") -> bytes:
    body: dict[str, Any] = {"type": kind, "nsp": nsp, "data": data}
    if id is not None:
        body["id"] = id
    return bytes(msgpack.packb(body))


def nested(depth: int, inner: Any = 1) -> Any:
    for _ in range(depth):
        inner = [inner]
    return inner


async def receive(
    ws: aiohttp.ClientWebSocketResponse, wanted: Callable[[dict[str, Any]], bool], seconds: float = 5
) -> dict[str, Any]:
    """The next packet from the node that `wanted` picks, or `{"closed": frame type}` once the
    node ends the socket; pings are answered meanwhile."""
    async with asyncio.timeout(seconds):
        while True:
            message = await ws.receive()
            if message.type == aiohttp.WSMsgType.TEXT and message.data == "2":
                await ws.send_str("3")
            elif message.type != aiohttp.WSMsgType.BINARY:
                return {"closed": message.type}
            elif wanted(got := msgpack.unpackb(message.data, strict_map_key=False)):
                return dict(got)


async def joined(http: aiohttp.ClientSession, client: Any, token: str) -> aiohttp.ClientWebSocketResponse:
    """A bare Engine.IO websocket that joined the session as a page does."""
    ws = await http.ws_connect(str(client.make_url(SOCKET)))
    opening = await ws.receive(timeout=5)
    assert opening.type == aiohttp.WSMsgType.TEXT and opening.data.startswith("0")
    await ws.send_bytes(packet(CONNECT, {"token": token, "session": SESSION}))
    await receive(ws, lambda p: p["type"] == EVENT and p["data"][0] == "hello")
    return ws


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_token_opens_only_sessions_its_holder_may_attend(
    client: Any, auth: Any, db: Any, settings: Settings, people: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """An outsider's valid token opens a public session but not a roster one, which answers
    as if it did not exist; no refused token ever shows up in the node's logs."""
    caplog.set_level(logging.DEBUG)
    await open_session(client, auth, db)
    await open_session(client, auth, db, "open-1", audience="public")
    outsider = mint_token(settings, rep="X9")
    public = people("X9", session="open-1", token=outsider)
    await public.connect()
    assert public.hello is not None and public.hello["you"]["tier"] == "viewer"
    refused = [
        outsider,
        mint_token(settings, rep="R1", ttl=-60),
        mint_token(settings.replace(jwt_secret="f" * 40), rep="R1", roles=(Role.ADMIN,)),
        jwt.encode({"sub": "R1", "aud": "tribune", "exp": int(time.time()) + 60}, "", algorithm="none"),
        mint_token(settings.replace(jwt_audience="elsewhere"), rep="R1"),
    ]
    codes = []
    for token in refused:
        viewer = people("X9", token=token)
        with pytest.raises(socketio.exceptions.ConnectionError):
            await viewer.connect()
        codes.append(viewer.refused["code"])
        r = await client.get(f"/api/sessions/{SESSION}", headers={"Authorization": f"Bearer {token}"})
        assert r.status in (401, 404)
    assert codes == ["not_found"] + ["unauthorized"] * 4
    assert caplog.text.count(f"GET /api/sessions/{SESSION} ") == len(refused)
    for token in refused:
        for part in (token, *(p for p in token.split(".") if len(p) >= 16)):
            assert part not in caplog.text


async def test_a_vote_counts_only_for_the_caller(client: Any, auth: Any, db: Any, people: Any) -> None:
    """A cast that names another representative is refused whole; a plain cast is the
    caller's alone, and the representative it tried to name still votes freely."""
    await open_session(client, auth, db)
    poll = await make_poll(client, auth, {"kind": "yes_no", "title": "表决", "question": "?"}, sid=SESSION)
    (q,) = poll["questions"]
    yes, no, _ = (o["id"] for o in q["options"])
    r1, r2 = people("R1"), people("R2")
    await r1.connect()
    await r2.connect()
    cast = {"poll": poll["id"], "answers": {str(q["id"]): yes}}
    extras: list[dict[str, Any]] = [{"rep": "R2"}, {"voter": "R2", "sub": "R2"}, {"on_behalf_of": ["R2"]}]
    for n, extra in enumerate(extras):
        ack = await r1.call("vote.cast", {**cast, "key": f"as-other-{n}", **extra})
        assert ack["ok"] is False and ack["error"]["code"] == "invalid", ack
    ack = await r1.call("vote.cast", {"poll": poll["id"], "answers": {"R2": yes}, "key": "keyed-by-rep"})
    assert ack["ok"] is False and ack["error"]["code"] == "invalid", ack
    assert await db.fetchval("SELECT count(*) FROM ballots") == 0
    assert await r1.call("vote.cast", {**cast, "key": "mine"}) == {"ok": True, "status": "recorded"}
    theirs = {"poll": poll["id"], "answers": {str(q["id"]): no}, "key": "mine"}
    assert await r2.call("vote.cast", theirs) == {"ok": True, "status": "recorded"}
    rows = await db.fetch(
        "SELECT rep_id, option_ids FROM votes WHERE poll_id = $1 ORDER BY rep_id", poll["id"]
    )
    assert [(r["rep_id"], r["option_ids"]) for r in rows] == [("R1", [yes]), ("R2", [no])]


async def test_a_refused_moderation_is_audited_whatever_its_payload(
    client: Any, auth: Any, db: Any, people: Any
) -> None:
    """A representative who wraps an approve in a deeply nested payload is refused and
    still recorded in the audit log."""
    await open_session(client, auth, db)
    rep = people("R1")
    await rep.connect()
    sent = await rep.call("comment.send", {"text": "留言", "key": "k"})
    ack = await rep.call("moderate", {"comment": nested(1000, sent["comment"]["id"]), "action": "remove"})
    assert ack["ok"] is False and ack["error"]["code"] == "forbidden"
    audit = "SELECT count(*) FROM audit_log WHERE action = 'moderate.refused' AND actor = 'R1'"
    assert await db.fetchval(audit) == 1


async def test_a_foreign_page_cannot_open_the_live_channel_with_a_valid_token(
    client: Any, auth: Any, db: Any, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """A page on another origin holding a valid token is refused on both transports and
    the refusal is logged; the same token from the allowed origin connects."""
    await open_session(client, auth, db)
    strict = settings.replace(node_id="strict", allowed_origins=("https://tribune.example.org",))
    token = mint_token(strict, rep="R1")
    async with TestClient(TestServer(create_app(strict))) as node:
        url = str(node.make_url("/"))
        for transport in ("websocket", "polling"):
            foreign = Viewer(url, token, SESSION)
            try:
                with pytest.raises(socketio.exceptions.ConnectionError):
                    await foreign.connect(headers={"Origin": "https://evil.example"}, transports=[transport])
            finally:
                await foreign.close()
        assert "https://evil.example is not an accepted origin" in caplog.text
        allowed = Viewer(url, token, SESSION)
        try:
            await allowed.connect(headers={"Origin": "https://tribune.example.org"})
            assert allowed.hello is not None and allowed.hello["you"]["rep"] == "R1"
        finally:
            await allowed.close()


async def test_a_malformed_protocol_barrage_gets_documented_answers(
    client: Any, auth: Any, db: Any, settings: Settings, people: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Bad namespaces, odd ack ids, unknown or non-string event names and deep nesting each
    get an error answer; the node logs no error, and the sender and a bystander carry on."""
    caplog.set_level(logging.INFO)
    await open_session(client, auth, db)
    bystander = people("R2")
    await bystander.connect()

    def ack(id: Any) -> Callable[[dict[str, Any]], bool]:
        return lambda p: p["type"] == ACK and p.get("id") == id

    async with aiohttp.ClientSession() as http:
        ws = await joined(http, client, mint_token(settings, rep="R1"))
        await ws.send_bytes(packet(CONNECT, {}, nsp="/admin"))
        refused = await receive(ws, lambda p: p["type"] == CONNECT_ERROR)
        assert refused["nsp"] == "/admin"
        cases = [
            (packet(EVENT, ["no.such.event", {"x": 1}], id=7), 7),
            (packet(EVENT, ["no.such.event"], id="abc"), "abc"),
            (packet(EVENT, ["no.such.event"], id=-5), -5),
            (packet(EVENT, ["no.such.event"], id={"a": [1]}), {"a": [1]}),
            (packet(EVENT, [12, "x"], id=8), 8),
            (packet(EVENT, ["comment.send", nested(1000)], id=9), 9),
            (packet(EVENT, ["resync", {"since": nested(1000)}], id=10), 10),
            (packet(EVENT, ["comment.send", {"text": nested(1000), "key": "k"}], id=11), 11),
        ]
        for frame, id in cases:
            await ws.send_bytes(frame)
            answer = await receive(ws, ack(id))
            assert answer["data"][0]["ok"] is False, (id, answer)
            assert answer["data"][0]["error"]["code"] == "invalid", (id, answer)
        await ws.send_bytes(packet(EVENT, ["comment.send", {"text": "还在", "key": "k1"}], id=12))
        assert (await receive(ws, ack(12)))["data"][0]["ok"] is True
        assert (await bystander.call("comment.send", {"text": "我也在", "key": "k2"}))["ok"]
        await bystander.wait(lambda: len(bystander.events) == 2)
        assert [e["data"]["text"] for e in bystander.events] == ["还在", "我也在"]
        await ws.close()
    assert await db.fetchval("SELECT count(*) FROM comments") == 2
    assert errors(caplog) == []


async def test_a_garbage_text_frame_ends_only_that_socket_cleanly(
    client: Any, auth: Any, db: Any, settings: Settings, people: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Garbage text on the live channel closes that socket with a close frame, the sender
    leaves the room at once and the node logs no error."""
    await open_session(client, auth, db)
    bystander = people("R2")
    await bystander.connect()
    async with aiohttp.ClientSession() as http:
        for frame in ("hello garbage", ""):
            ws = await joined(http, client, mint_token(settings, rep="R1"))
            await bystander.wait(lambda: bystander.presence[-1] == 2)
            await ws.send_str(frame)
            assert await receive(ws, lambda p: False, 3) == {"closed": aiohttp.WSMsgType.CLOSE}
            await bystander.wait(lambda: bystander.presence[-1] == 1, 5)
    assert errors(caplog) == []


async def test_a_client_that_stops_answering_pings_is_let_go(
    auth: Any, db: Any, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """A half-open client cannot hold its place: pings keep coming to a client that answers
    them, and one that stops answering is closed within the ping interval and timeout and
    leaves the room, while the one that answers stays."""
    settings = settings.replace(ping_interval=1, ping_timeout=1)
    async with TestClient(TestServer(create_app(settings))) as client, aiohttp.ClientSession() as http:
        await open_session(client, auth, db)
        live = await joined(http, client, mint_token(settings, rep="R1"))
        silent = await joined(http, client, mint_token(settings, rep="R2"))
        pings, online = 0, []

        async def answer(seconds: float) -> None:
            nonlocal pings
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    while True:
                        message = await live.receive()
                        assert message.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY), message
                        if message.data == "2":
                            pings += 1
                            await live.send_str("3")
                        elif message.type == aiohttp.WSMsgType.BINARY:
                            got = msgpack.unpackb(message.data, strict_map_key=False)
                            if got["type"] == EVENT and got["data"][0] == "presence":
                                online.append(got["data"][1]["online"])

        answering = asyncio.create_task(answer(6))
        started = time.monotonic()
        while (message := await silent.receive(timeout=10)).type == aiohttp.WSMsgType.TEXT or (
            message.type == aiohttp.WSMsgType.BINARY
        ):
            pass  # reads, but never answers a ping
        silent_for = time.monotonic() - started
        await answering
        assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), message
        assert silent_for < 5, silent_for  # interval 1 s + timeout 1 s, with room for a slow machine
        assert pings >= 4, pings  # about one a second for 6 s
        assert not live.closed
        assert online[-1:] == [1], online  # the silent one left the room
    assert errors(caplog) == []


async def test_a_connection_outside_the_live_channel_does_not_keep_its_socket(
    auth: Any, db: Any, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """A websocket that answers pings but never joins the channel, and one the node
    disconnected (its token expired) that ignores it and stays, are both ended at their next
    ping: nobody holds a socket on a node without being in a session."""
    settings = settings.replace(ping_interval=1, ping_timeout=1, jwt_leeway=0)
    async with TestClient(TestServer(create_app(settings))) as client, aiohttp.ClientSession() as http:
        await open_session(client, auth, db)

        async def held(ws: aiohttp.ClientWebSocketResponse) -> tuple[float, list[Any]]:
            """How long the node keeps the socket of a client that answers every ping and
            ignores everything else, and what it was sent."""
            started, got = time.monotonic(), []
            data = (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY)
            async with asyncio.timeout(15):
                while (message := await ws.receive()).type in data:
                    if message.data == "2":
                        await ws.send_str("3")
                    elif message.type == aiohttp.WSMsgType.BINARY:
                        got.append(msgpack.unpackb(message.data, strict_map_key=False))
            return time.monotonic() - started, got

        silent = await http.ws_connect(str(client.make_url(SOCKET)))
        assert (await silent.receive(timeout=5)).data.startswith("0")  # open, and never a CONNECT
        expiring = await joined(http, client, mint_token(settings, rep="R1", ttl=2))
        (never_joined, _), (expired, sent) = await asyncio.gather(held(silent), held(expiring))
        assert never_joined < 6, never_joined  # a ping interval to join, then the next ping
        assert any(p["type"] == DISCONNECT for p in sent), sent  # the node disconnected it first
        assert expired < 9, expired  # the token's 2 s, then a ping interval or two
    assert errors(caplog) == []


async def test_undecodable_packets_close_the_socket(
    client: Any, auth: Any, db: Any, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """Binary junk, a packet with no or an unknown type, an event that is not a list and
    nesting past the decoder's depth each close the sender's socket, without a traceback."""
    await open_session(client, auth, db)
    header = b"\x84" + b"".join(msgpack.packb(x) for x in ("type", EVENT, "nsp", "/", "id", 3, "data"))
    frames = [
        b"\xc1\xff\x00junk",
        msgpack.packb({"nsp": "/", "data": ["comment.send"]}),
        packet(99),
        packet(EVENT, 12, id=3),
        header + b"\x91" * 2000 + b"\xc0",
    ]
    async with aiohttp.ClientSession() as http:
        for frame in frames:
            ws = await joined(http, client, mint_token(settings, rep="R1"))
            await ws.send_bytes(frame)
            assert await receive(ws, lambda p: p["type"] == ACK, 3) == {"closed": aiohttp.WSMsgType.CLOSE}
    assert errors(caplog) == []


async def test_redis_refuses_publishers_without_the_password(
    client: Any, auth: Any, db: Any, settings: Settings, people: Any
) -> None:
    """Someone who reaches Valkey without the password cannot ring the nodes' doorbell:
    every PUBLISH is refused, and viewers see nothing."""
    await open_session(client, auth, db)
    watcher = people("R2")
    await watcher.connect()
    event = {"seq": 3, "type": "comment.published", "at": "2026-12-01T01:00:00+00:00", "data": {"text": "假"}}
    forged = msgpack.packb({"k": "ev", "n": "elsewhere", "s": SESSION, "e": [event]})
    address = urlsplit(settings.redis_url)
    for password in (None, "wrong-password"):
        intruder = aioredis.Redis(
            host=address.hostname or "", port=address.port or 6379, password=password, protocol=2
        )
        try:
            for channel in (f"{settings.redis_prefix}bus", "socketio"):
                with pytest.raises(redis.exceptions.AuthenticationError):
                    await intruder.publish(channel, forged)
        finally:
            await intruder.aclose()
    await asyncio.sleep(1)
    assert watcher.events == []


class Boom(str):
    """A pickle that makes a directory if anything ever unpickles it."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self),))


async def test_a_pickle_on_the_bus_is_never_unpickled(
    client: Any,
    auth: Any,
    db: Any,
    settings: Settings,
    people: Any,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Even with the password, a pickle sent on the node's channels is dropped as a malformed
    message: nothing runs, no viewer gets anything, and the node keeps serving."""
    await open_session(client, auth, db)
    watcher = people("R2")
    await watcher.connect()
    marker = tmp_path / "unpickled"
    payload = pickle.dumps(Boom(marker))
    bus = f"{settings.redis_prefix}bus"
    wrapped = msgpack.packb({"k": "ev", "n": "elsewhere", "s": SESSION, "e": [msgpack.ExtType(1, payload)]})
    insider = aioredis.from_url(settings.redis_url)
    try:
        assert await insider.publish(bus, payload) >= 1  # the node is listening
        await insider.publish("socketio", payload)
        await insider.publish(bus, wrapped)
    finally:
        await insider.aclose()
    await asyncio.sleep(1)
    assert not marker.exists()
    assert "ignored a malformed bus message" in caplog.text
    assert watcher.events == [] and watcher.sio.connected
    assert (await client.get("/readyz")).status == 200
    assert (await watcher.call("comment.send", {"text": "照常", "key": "after"}))["ok"]
    await watcher.wait(lambda: len(watcher.events) == 1)
    assert watcher.events[0]["seq"] == 3 and watcher.gaps == 0


@pytest.mark.usefixtures("loopback_only")
async def test_bad_whep_offers_leave_no_viewer(client: Any, auth: Any, db: Any) -> None:
    """Against a live feed, offers that are missing, garbage, oversized, overlong or for an
    unknown feed are refused with a JSON error, and no viewer is ever created."""
    await open_session(client, auth, db)
    key = await make_feed(client, auth, session=SESSION)
    hub = client.server.app[STREAMING]
    good = await offer_from()
    sdp = {"Content-Type": "application/sdp", **auth("R1")}
    line = good[good.index("m=video") :].split("\r\n", 1)[0]
    extra = [*range(35, 72), *range(103, 128)]
    many_codecs = good.replace(line, line + "".join(f" {pt}" for pt in extra))
    many_codecs += "".join(f"a=rtpmap:{pt} VP8/90000\r\n" for pt in extra)
    cases: list[tuple[str, Any, dict[str, str], int, str]] = [
        ("/whep/main", None, auth("R1"), 400, "Content-Type: application/sdp"),
        ("/whep/main", b"", sdp, 400, "must start with v=0"),
        ("/whep/main", "v=0\r\nthis is not SDP at all\r\n", sdp, 400, "no m-lines"),
        ("/whep/main", b"\xff\xfe" * 1000, sdp, 400, "not UTF-8"),
        ("/whep/main", "v=0\r\n" + "a=x\r\n" * 200_000, sdp, 413, "limit"),
        ("/whep/main", good + "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n" * 500, sdp, 400, "501 m-lines"),
        ("/whep/main", many_codecs, sdp, 400, "68 codecs"),
        ("/whep/nope", good, sdp, 404, "no feed 'nope'"),
        ("/whep/main", good, {**sdp, "Authorization": "Bearer forged.token.here"}, 401, "token"),
    ]
    async with aiohttp.ClientSession() as http:
        publisher = WhipPublisher(f"{client.make_url('')}/whip/main", key, [PatternVideo()])
        try:
            await publisher.start(http)
            await until(lambda: hub.live_here("main") is not None)
            for path, body, headers, status, says in cases:
                r = await client.post(path, data=body, headers=headers)
                error = (await r.json())["error"]
                assert r.status == status and says in error["message"], (path, says, r.status, error)
            r = await client.delete("/whep/main/not-a-viewer", headers=auth("R1"))
            assert r.status == 404 and (await r.json())["error"]["code"] == "not_found"
            assert not hub.viewers and hub.live_here("main") is not None
            metrics = await (await client.get("/metrics")).text()
            assert "\ntribune_whep_viewers 0.0\n" in metrics
        finally:
            await publisher.stop(http)
