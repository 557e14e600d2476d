"""The live channel, protocol v1, against a real node."""

from __future__ import annotations

import asyncio
import gc
import io
import weakref
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openpyxl
import pytest
import pytest_asyncio
import socketio
from aiohttp.test_utils import TestClient, TestServer

from config.app import create_app
from config.auth import Role, mint_token
from config.settings import Settings
from interaction import fanout
from interaction.loadgen import Tally, connect_viewers
from interaction.server import LIVE
from tests.live import Viewer, close_client

pytestmark = pytest.mark.asyncio(loop_scope="session")

SESSION = "live-1"


async def schedule(client: Any, auth: Any, db: Any, *, moderation: str = "post", sid: str = SESSION) -> None:
    await db.executemany(
        "INSERT INTO representatives (id, name, level, delegation) VALUES ($1, $2, 'city', '东港区代表团')"
        " ON CONFLICT DO NOTHING",
        [("R1", "王伟"), ("R2", "李娜"), ("R3", "张强"), ("R4", "赵敏")],
    )
    spec = {
        "id": sid,
        "kind": "special_inquiry",
        "title": "专题询问",
        "audience": "roster",
        "default_tier": "voting",
        "moderation": moderation,
        "scheduled_start": "2026-12-01T09:00:00+08:00",
        "scheduled_end": "2026-12-01T11:00:00+08:00",
        "participants": [{"rep": "R3", "tier": "viewer"}],
    }
    r = await client.post("/api/sessions", json=spec, headers=auth.admin)
    assert r.status == 201, await r.text()


@pytest_asyncio.fixture(loop_scope="session")
async def viewers(client: TestClient[Any, Any], settings: Settings) -> AsyncIterator[Any]:
    made: list[Viewer] = []

    def make(rep: str, *roles: Role, session: str = SESSION, name: str = "") -> Viewer:
        token = mint_token(settings, rep=rep, name=name or rep, roles=roles or (Role.REPRESENTATIVE,))
        viewer = Viewer(str(client.make_url("/")), token, session)
        made.append(viewer)
        return viewer

    yield make
    for viewer in made:
        await viewer.close()


@pytest.mark.security
async def test_refusals_say_why(client, auth, db, viewers, settings) -> None:  # type: ignore[no-untyped-def]
    await schedule(client, auth, db)
    cases = [
        ({"token": "garbage", "session": SESSION}, "unauthorized"),
        ({"token": mint_token(settings, rep="R1", ttl=-60), "session": SESSION}, "unauthorized"),
        ({"token": mint_token(settings, rep="R1"), "session": "no-such-session"}, "not_found"),
        ({"session": SESSION}, "unauthorized"),
        (
            {"token": mint_token(settings.replace(jwt_audience="elsewhere"), rep="R1"), "session": SESSION},
            "unauthorized",
        ),
    ]
    for auth_payload, code in cases:
        sio = socketio.AsyncClient(serializer="msgpack", reconnection=False)
        refused: list[Any] = []
        sio.on("connect_error", refused.append)
        with pytest.raises(socketio.exceptions.ConnectionError):
            await sio.connect(str(client.make_url("/")), auth=auth_payload, transports=["websocket"])
        await close_client(sio)
        assert refused and refused[0].get("code") == code, (auth_payload, refused)
        assert refused[0]["message"]
    # An outsider (not on the roster) may not attend a roster session: not found, like a missing one.
    outsider = viewers("X9")
    with pytest.raises(socketio.exceptions.ConnectionError):
        await outsider.connect()
    assert outsider.refused["code"] == "not_found"


async def test_hello_snapshot_and_published_comments(client, auth, db, viewers) -> None:  # type: ignore[no-untyped-def]
    await schedule(client, auth, db)
    alice, bob = viewers("R1", name="王伟"), viewers("R2")
    await alice.connect()
    await bob.connect()
    assert alice.hello is not None
    assert alice.hello["you"] == {"rep": "R1", "name": "王伟", "roles": ["representative"], "tier": "voting"}
    assert alice.hello["session"] == SESSION and alice.hello["seq"] == 1
    assert alice.snapshot == {
        "epoch": alice.hello["epoch"],
        "seq": 1,
        "comments": [],
        "pinned": [],
        "polls": [],
    }

    ack = await alice.call("comment.send", {"text": "  请问<b>营商环境</b>\u202e如何改善？ ", "key": "k1"})
    assert ack["ok"] is True and ack["comment"]["status"] == "published"
    await bob.wait(lambda: len(bob.of_type("comment.published")) == 1)
    event = bob.of_type("comment.published")[0]
    assert event["seq"] == 2
    assert (
        event["data"]["text"] == "请问<b>营商环境</b>如何改善？"
    )  # trimmed, control chars gone, stored as text
    assert event["data"]["name"] == "王伟" and event["data"]["delegation"] == "东港区代表团"
    await alice.wait(lambda: len(alice.events) == 1)  # the author sees it through the same stream

    # The same key again: the first result, no second comment, no second event.
    again = await alice.call("comment.send", {"text": "something else", "key": "k1"})
    assert again["comment"] == ack["comment"] and again["repeated"] is True
    assert await db.fetchval("SELECT count(*) FROM comments") == 1

    late = viewers("R1")
    await late.connect()
    assert late.snapshot is not None and [c["id"] for c in late.snapshot["comments"]] == [
        ack["comment"]["id"]
    ]
    assert late.snapshot["seq"] == 2
    for viewer in (alice, bob):
        assert viewer.gaps == viewer.duplicates == 0


async def test_pre_moderation_flow(client, auth, db, viewers) -> None:  # type: ignore[no-untyped-def]
    await schedule(client, auth, db, moderation="pre")
    rep, mod, other = viewers("R1"), viewers("M1", Role.MODERATOR), viewers("R2")
    for v in (rep, mod, other):
        await v.connect()
    assert mod.queue == [{"full": True, "pending": []}]
    sent = await rep.call("comment.send", {"text": "第一条", "key": "a"})
    assert sent["comment"]["status"] == "pending"
    await mod.wait(lambda: len(mod.queue) == 2)
    assert [c["text"] for c in mod.queue[1]["added"]] == ["第一条"]
    assert rep.queue == [] and other.queue == []  # pending comments reach moderators only
    comment = sent["comment"]["id"]

    approved = await mod.call("moderate", {"comment": comment, "action": "approve"})
    assert approved == {"ok": True, "comment": {"id": comment, "status": "published"}}
    await other.wait(lambda: len(other.of_type("comment.published")) == 1)
    await mod.wait(lambda: any(q.get("removed") == [comment] for q in mod.queue))

    for action in ("pin", "highlight", "answered"):
        assert (await mod.call("moderate", {"comment": comment, "action": action}))["ok"]
    adopted = await mod.call("moderate", {"comment": comment, "action": "adopt", "note": "转交市发改委"})
    assert adopted["ok"]
    await other.wait(lambda: len(other.of_type("comment.updated")) == 4)
    last = other.of_type("comment.updated")[-1]["data"]
    assert last == {
        "id": comment,
        "pinned": True,
        "highlighted": True,
        "answered": True,
        "adopted": True,
        "note": "转交市发改委",
    }
    twice = await mod.call("moderate", {"comment": comment, "action": "approve"})
    assert twice["ok"] is False and twice["error"]["code"] == "conflict"

    assert (await mod.call("moderate", {"comment": comment, "action": "remove"}))["ok"]
    await other.wait(lambda: len(other.of_type("comment.removed")) == 1)
    trail = await db.fetch("SELECT action, moderator_id FROM moderation_actions ORDER BY id")
    assert [r["action"] for r in trail] == ["approve", "pin", "highlight", "answered", "adopt", "remove"]
    assert {r["moderator_id"] for r in trail} == {"M1"}
    seqs = [e["seq"] for e in other.events]
    assert seqs == list(range(2, 2 + len(seqs)))

    rejected = await rep.call("comment.send", {"text": "第二条", "key": "b"})
    assert (await mod.call("moderate", {"comment": rejected["comment"]["id"], "action": "reject"}))["ok"]
    await asyncio.sleep(0.3)
    assert not any(e["data"].get("text") == "第二条" for e in other.events)


@pytest.mark.security
async def test_who_may_do_what(client, auth, db, viewers) -> None:  # type: ignore[no-untyped-def]
    await schedule(client, auth, db, moderation="pre")
    rep, watcher = viewers("R1"), viewers("R3")  # R3 is listed with the viewer tier
    await rep.connect()
    await watcher.connect()
    assert watcher.hello is not None and watcher.hello["you"]["tier"] == "viewer"
    refused = await watcher.call("comment.send", {"text": "hi", "key": "x"})
    assert refused["ok"] is False and refused["error"]["code"] == "forbidden"
    sent = await rep.call("comment.send", {"text": "待审", "key": "y"})
    self_approve = await rep.call("moderate", {"comment": sent["comment"]["id"], "action": "approve"})
    assert self_approve["ok"] is False and self_approve["error"]["code"] == "forbidden"
    assert await db.fetchval("SELECT status FROM comments WHERE id = $1", sent["comment"]["id"]) == "pending"
    audit = await db.fetchval(
        "SELECT count(*) FROM audit_log WHERE action = 'moderate.refused' AND actor = 'R1'"
    )
    assert audit == 1


@pytest.mark.security
async def test_bad_messages_get_error_acks(client, auth, db, viewers, settings) -> None:  # type: ignore[no-untyped-def]
    await schedule(client, auth, db)
    rep, bystander = viewers("R1"), viewers("R2")
    await rep.connect()
    await bystander.connect()
    cases = [
        ("comment.send", {"text": "x"}, "invalid"),
        ("comment.send", "just a string", "invalid"),
        ("comment.send", {"text": "   \u200b  ", "key": "e"}, "invalid"),
        ("comment.send", {"text": "字" * (settings.comment_max_chars + 1), "key": "long"}, "invalid"),
        ("moderate", {"comment": "one", "action": "approve"}, "forbidden"),
        ("no.such.event", {"x": 1}, "invalid"),
        ("resync", {"since": {"epoch": "other", "seq": 0}}, "invalid"),
    ]
    for event, payload, code in cases:
        ack = await rep.call(event, payload)
        assert ack["ok"] is False and ack["error"]["code"] == code, (event, payload, ack)
    assert (
        "at most 500 characters"
        in (await rep.call("comment.send", {"text": "字" * 501, "key": "long2"}))["error"]["message"]
    )
    # The connection and the others are unaffected.
    ok = await rep.call("comment.send", {"text": "still here", "key": "ok"})
    assert ok["ok"]
    await bystander.wait(lambda: len(bystander.events) == 1)


@pytest.mark.security
async def test_oversized_frame_closes_only_that_connection(client, auth, db, viewers) -> None:  # type: ignore[no-untyped-def]
    await schedule(client, auth, db)
    rep, bystander = viewers("R1"), viewers("R2")
    await rep.connect()
    await bystander.connect()
    await rep.sio.emit("comment.send", {"text": "x" * 100_000, "key": "big"})
    await rep.wait(lambda: not rep.sio.connected)
    assert bystander.sio.connected
    assert await db.fetchval("SELECT count(*) FROM comments") == 0
    other = viewers("R1")
    await other.connect()
    assert (await other.call("comment.send", {"text": "fine", "key": "f"}))["ok"]
    await bystander.wait(lambda: len(bystander.events) == 1)


@pytest.mark.security
async def test_flood_is_rate_limited(client, auth, db, viewers, settings) -> None:  # type: ignore[no-untyped-def]
    await schedule(client, auth, db)
    rep = viewers("R1")
    await rep.connect()
    acks = [await rep.call("comment.send", {"text": f"c{i}", "key": f"k{i}"}) for i in range(6)]
    assert [a["ok"] for a in acks] == [True] * settings.comment_burst + [False] * (6 - settings.comment_burst)
    limited = acks[-1]["error"]
    assert (
        limited["code"] == "rate_limited"
        and 0 < limited["details"]["retry_after"] <= settings.comment_interval
    )
    assert "wait" in limited["message"]
    assert await db.fetchval("SELECT count(*) FROM comments") == settings.comment_burst
    # A retry of an accepted key is not limited: it returns the first result.
    assert (await rep.call("comment.send", {"text": "c0", "key": "k0"}))["ok"]


async def test_sensitive_words_send_comments_to_review(client, auth, db, viewers) -> None:  # type: ignore[no-untyped-def]
    await schedule(client, auth, db, moderation="post")
    r = await client.put("/api/sensitive-words", json={"words": ["敏感词", "ＢＡＤ"]}, headers=auth.admin)
    assert r.status == 200, await r.text()
    assert (await r.json())["added"] == ["bad", "敏感词"]
    assert (await client.put("/api/sensitive-words", json={"words": []}, headers=auth("R1"))).status == 403
    rep, mod = viewers("R1"), viewers("M1", Role.MODERATOR)
    await rep.connect()
    await mod.connect()
    held = await rep.call("comment.send", {"text": "这是一个敏 感-词测试", "key": "w1"})
    assert held["comment"]["status"] == "pending"
    clean = await rep.call("comment.send", {"text": "正常留言", "key": "w2"})
    assert clean["comment"]["status"] == "published"
    await mod.wait(lambda: any(q.get("added") for q in mod.queue))
    flagged = next(q for q in mod.queue if q.get("added"))["added"][0]
    assert flagged["flagged"] == ["敏感词"]
    audit = await db.fetchrow("SELECT actor, detail FROM audit_log WHERE action = 'sensitive_words.replace'")
    assert audit["actor"] == "A001" and audit["detail"]["added"] == ["bad", "敏感词"]


async def test_reconnect_resumes_without_gaps_or_repeats(client, auth, db, viewers) -> None:  # type: ignore[no-untyped-def]
    await schedule(client, auth, db)
    writer, reader = viewers("R1"), viewers("R2")
    await writer.connect()
    await reader.connect()
    for i in range(2):
        await writer.call("comment.send", {"text": f"before {i}", "key": f"b{i}"})
    await reader.wait(lambda: len(reader.events) == 2)
    await reader.close()
    second = viewers("R4")
    await second.connect()
    for i in range(3):
        assert (await second.call("comment.send", {"text": f"away {i}", "key": f"a{i}"}))["ok"]
    await reader.connect(resume=True)
    assert reader.snapshot is not None and reader.snapshot["seq"] == 1  # the first connect's snapshot only
    await reader.wait(lambda: len(reader.events) == 5)
    assert [e["data"]["text"] for e in reader.events] == [
        "before 0",
        "before 1",
        "away 0",
        "away 1",
        "away 2",
    ]
    assert reader.gaps == 0 and reader.duplicates == 0
    missing = await reader.call("resync", {"since": {"epoch": reader.epoch, "seq": 3}})
    assert [e["seq"] for e in missing["events"]] == [4, 5, 6]


async def test_session_state_reaches_viewers(client, auth, db, viewers) -> None:  # type: ignore[no-untyped-def]
    await schedule(client, auth, db)
    rep = viewers("R1")
    await rep.connect()
    r = await client.post(
        f"/api/sessions/{SESSION}/state", json={"state": "live"}, headers=auth("H1", Role.HOST)
    )
    assert r.status == 200
    await rep.wait(lambda: len(rep.of_type("session.state")) == 1)
    assert rep.of_type("session.state")[0]["data"] == {"state": "live"}


async def test_two_nodes_share_comments_and_presence(client, auth, db, settings, viewers) -> None:  # type: ignore[no-untyped-def]
    await schedule(client, auth, db)
    async with TestClient(TestServer(create_app(settings.replace(node_id="node-b")))) as other_node:
        on_a, on_b = viewers("R1"), viewers("R2")
        await on_a.connect()
        await on_b.connect(url=str(other_node.make_url("/")))
        assert on_b.hello is not None and on_b.hello["node"] == "node-b"
        await on_a.call("comment.send", {"text": "跨节点", "key": "n1"})
        await on_b.wait(lambda: len(on_b.events) == 1)
        await on_b.call("comment.send", {"text": "回到A", "key": "n2"})
        await on_a.wait(lambda: len(on_a.events) == 2)
        await on_a.wait(lambda: bool(on_a.presence) and on_a.presence[-1] == 2, seconds=5)
        await on_b.wait(lambda: bool(on_b.presence) and on_b.presence[-1] == 2, seconds=5)
        await on_b.close()


@pytest.mark.security
async def test_origin_allowlist(client, auth, db, settings) -> None:  # type: ignore[no-untyped-def]
    await schedule(client, auth, db)
    strict = settings.replace(node_id="strict", allowed_origins=("https://tribune.example.org",))
    async with TestClient(TestServer(create_app(strict))) as node, aiohttp.ClientSession() as http:
        url = str(node.make_url("/socket.io/?EIO=4&transport=polling"))
        async with http.get(url, headers={"Origin": "https://evil.example"}) as evil:
            assert evil.status == 400
        async with http.get(url, headers={"Origin": "https://tribune.example.org"}) as good:
            assert good.status == 200


async def test_comment_export(client, auth, db, viewers) -> None:  # type: ignore[no-untyped-def]
    await schedule(client, auth, db, moderation="pre")
    rep, mod = viewers("R1", name="王伟"), viewers("M1", Role.MODERATOR)
    await rep.connect()
    await mod.connect()
    a = await rep.call("comment.send", {"text": '=HYPERLINK("http://x")', "key": "1"})
    b = await rep.call("comment.send", {"text": "建议增设公交线路", "key": "2"})
    await mod.call("moderate", {"comment": a["comment"]["id"], "action": "reject"})
    await mod.call("moderate", {"comment": b["comment"]["id"], "action": "approve"})
    await mod.call("moderate", {"comment": b["comment"]["id"], "action": "adopt", "note": "转交交通局"})
    r = await client.get(
        f"/api/sessions/{SESSION}/comments/export?format=csv", headers=auth("M1", Role.MODERATOR)
    )
    assert r.status == 200 and r.headers["Content-Disposition"].endswith('.csv"')
    text = (await r.read()).decode("utf-8-sig")
    lines = text.splitlines()
    assert len(lines) == 3
    assert "'=HYPERLINK" in lines[1] and "rejected" in lines[1]
    assert "建议增设公交线路" in lines[2] and "adopt by M1 (转交交通局)" in lines[2] and "是" in lines[2]
    r = await client.get(f"/api/sessions/{SESSION}/comments/export?format=xlsx", headers=auth.admin)
    sheet = openpyxl.load_workbook(io.BytesIO(await r.read())).active
    assert sheet is not None
    rows = list(sheet.iter_rows(values_only=True))
    assert rows[1][4] == '\'=HYPERLINK("http://x")' and rows[2][8] == "转交交通局"
    assert (await client.get(f"/api/sessions/{SESSION}/comments/export", headers=auth("R1"))).status == 403


@pytest.mark.security
async def test_expired_token_is_disconnected(client, auth, db, settings) -> None:  # type: ignore[no-untyped-def]
    await schedule(client, auth, db)
    strict = settings.replace(node_id="expiry", jwt_leeway=0.0, presence_interval=0.2)
    async with TestClient(TestServer(create_app(strict))) as node:
        token = mint_token(strict, rep="R1", ttl=2)
        viewer = Viewer(str(node.make_url("/")), token, SESSION)
        await viewer.connect()
        assert (await viewer.call("comment.send", {"text": "in time", "key": "t1"}))["ok"]
        await viewer.wait(lambda: not viewer.sio.connected, seconds=10)  # closed once the token expired
        fresh = Viewer(str(node.make_url("/")), token, SESSION)
        with pytest.raises(socketio.exceptions.ConnectionError):
            await fresh.connect()
        assert fresh.refused["code"] == "unauthorized" and "expired" in fresh.refused["message"]
        await viewer.close()
        await fresh.close()


async def test_concurrent_comments_do_not_deadlock(client, auth, db, settings) -> None:  # type: ignore[no-untyped-def]
    """Inserting a comment holds a key-share lock on its session; taking the next seq must
    not need more, or two concurrent senders deadlock (found by the kill -9 test)."""
    await schedule(client, auth, db)
    reps = [f"C{i}" for i in range(12)]
    await db.executemany(
        "INSERT INTO representatives (id, name, level) VALUES ($1, $1, 'city')", [(r,) for r in reps]
    )
    viewers_ = [Viewer(str(client.make_url("/")), mint_token(settings, rep=r), SESSION) for r in reps]
    for v in viewers_:
        await v.connect()
    acks = await asyncio.gather(
        *(v.call("comment.send", {"text": f"from {v.token[-6:]}", "key": "k"}) for v in viewers_)
    )
    assert all(a["ok"] for a in acks), acks
    seqs = [
        r["seq"] for r in await db.fetch("SELECT seq FROM events WHERE session_id = $1 ORDER BY seq", SESSION)
    ]
    assert seqs == list(range(1, 14))
    for v in viewers_:
        await v.close()


async def test_a_dropped_connection_is_freed_at_once(client, auth, db, settings) -> None:  # type: ignore[no-untyped-def]
    """A representative whose network drops leaves nothing that only the cyclic collector
    can free (a node runs full collections seldom, so such leftovers grow its memory with
    every join; the soak found it)."""
    await schedule(client, auth, db)
    live = client.app[LIVE]
    reps = [f"D{i}" for i in range(10)]
    await db.executemany(
        "INSERT INTO representatives (id, name, level) VALUES ($1, $1, 'city')", [(r,) for r in reps]
    )
    auths = [{"token": mint_token(settings, rep=r), "session": SESSION, "since": None} for r in reps]
    gc.disable()
    try:
        dropped = await connect_viewers([str(client.make_url("/"))], auths, Tally(), sample_every=10**6)
        responses = [weakref.ref(ws._sock) for ws in live.sio.websockets.values()]
        assert len(responses) == len(reps)
        for i, protocol in enumerate(dropped):  # reset, or closed without a close frame
            assert protocol.transport is not None
            if i % 2:
                protocol.transport.abort()
            else:
                protocol.transport.close()
        del dropped
        for _ in range(200):  # the node notices each drop within moments
            if not live.sio.websockets:
                break
            await asyncio.sleep(0.05)
        assert not live.sio.websockets
        await asyncio.sleep(0.2)
        assert [r() for r in responses if r() is not None] == []
    finally:
        gc.enable()


async def test_events_arriving_during_a_pass(client, auth, db, viewers, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A pass over a room's clients lets the node handle other work between slices of them
    (here, one client a slice), so events arrive in the middle of it. The clients the pass
    has not reached get them in the same frame; the ones it wrote before get them from the
    next pass, which must not take the room for up to date."""
    monkeypatch.setattr(fanout, "SLICE_CLIENTS", 1)
    await schedule(client, auth, db)
    live = client.app[LIVE]
    await live.fanout.stop()  # the test runs the passes
    reps = [viewers(r) for r in ("R1", "R2", "R4")]
    for v in reps:
        await v.connect()
    room = live.rooms.by_session[SESSION]
    await reps[0].wait(lambda: len(room.clients) == 3 and all(c.ready for c in room.clients.values()))

    def comment(text: str) -> dict[str, Any]:
        return {"seq": room.last_seq + 1, "type": "comment.published", "at": "", "data": {"text": text}}

    room.accept([comment("before the pass")])
    first = room.last_seq
    written = live.fanout.deliver

    def deliver(c: Any, frame: Any) -> bool:
        if room.last_seq == first and written(c, frame):
            room.accept([comment("during the pass")])  # handled between this slice and the next
            return True
        return written(c, frame)

    monkeypatch.setattr(live.fanout, "deliver", deliver)
    events, frames, _ = await live.fanout.flush(room)
    assert (events, frames) == (5, 3)  # the first client got one event, the other two both
    events, frames, _ = await live.fanout.flush(room)
    assert (events, frames) == (1, 1)  # the first client's second event
    assert await live.fanout.flush(room) == (0, 0, 0.0)  # now everyone is up to date

    # A client made ready behind the room while a pass runs (a replay ending, a join) is not
    # in that pass; the pass must not leave the room marked up to date without it.
    room.accept([comment("the last")])
    late = next(iter(room.clients.values()))
    late.ready = False  # its replay is still being sent

    def catch_up(c: Any, frame: Any) -> bool:
        if not late.ready:
            late.ready = True
            room.behind()
        return written(c, frame)

    monkeypatch.setattr(live.fanout, "deliver", catch_up)
    assert (await live.fanout.flush(room))[:2] == (2, 2)
    assert (await live.fanout.flush(room))[:2] == (1, 1)  # the one that caught up
    assert await live.fanout.flush(room) == (0, 0, 0.0)
    for v in reps:
        await v.wait(lambda v=v: v.seq == first + 2)
        texts = [e["data"].get("text") for e in v.events if e["seq"] >= first]
        assert texts == ["before the pass", "during the pass", "the last"]
        assert v.gaps == 0 and v.duplicates == 0


async def test_room_notices_ride_the_pass(client, auth, db, viewers, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Presence and a live tally go to everyone with the fan-out's next pass: one write per
    client beside its events (or alone for a client with no events), only the latest of each,
    never two to a client closer than their spacing, and a tally of a poll that closed before
    the pass is not sent."""
    await schedule(client, auth, db)
    live = client.app[LIVE]
    await live.fanout.stop()  # the test runs the passes

    async def quiet() -> None:  # the node's own presence rounds would race the test's
        return None

    monkeypatch.setattr(live.presence, "tick", quiet)
    reps = [viewers(r) for r in ("R1", "R2", "R4")]
    for v in reps:
        await v.connect()
    room = live.rooms.by_session[SESSION]
    await reps[0].wait(lambda: len(room.clients) == 3 and all(c.ready for c in room.clients.values()))
    await live.fanout.flush(room)  # whatever the joins left for the pass
    await asyncio.gather(*(v.wait(lambda v=v: v.seq == room.last_seq and bool(v.presence)) for v in reps))
    for v in reps:
        v.presence.clear()
    writes: list[str] = []
    deliver = live.fanout.deliver

    def counted(c: Any, frame: Any) -> bool:
        writes.append(c.sid)
        return deliver(c, frame)

    monkeypatch.setattr(live.fanout, "deliver", counted)

    live.fanout.notify(room, ("presence", 0), "presence", {"online": 41})
    live.fanout.notify(room, ("presence", 0), "presence", {"online": 42})  # replaces 41
    room.accept([{"seq": room.last_seq + 1, "type": "comment.published", "at": "", "data": {"text": "hi"}}])
    assert (await live.fanout.flush(room))[:2] == (3, 3)
    assert sorted(writes) == sorted(room.clients)  # one write each, events and presence in it
    for v in reps:
        await v.wait(lambda v=v: v.presence == [42] and v.of_type("comment.published") != [])

    writes.clear()
    live.fanout.notify(room, ("presence", 0), "presence", {"online": 43})
    assert (await live.fanout.flush(room))[:2] == (0, 3)  # nobody has events: presence alone
    assert sorted(writes) == sorted(room.clients)
    assert await live.fanout.flush(room) == (0, 0, 0.0)

    # With a spacing, one that comes sooner after the last pass carrying one waits for it.
    live.fanout.notify(room, ("presence", 0), "presence", {"online": 44}, spacing=1.0)
    assert (await live.fanout.flush(room))[:2] == (0, 3)
    live.fanout.notify(room, ("presence", 0), "presence", {"online": 45}, spacing=1.0)
    assert await live.fanout.flush(room) == (0, 0, 0.0)  # too soon: it waits
    await asyncio.sleep(1.0)
    assert (await live.fanout.flush(room))[:2] == (0, 3)

    live.fanout.notify(room, ("tally", 7), "tally", {"poll": 7, "questions": {}})
    room.accept(
        [{"seq": room.last_seq + 1, "type": "poll.closed", "at": "", "data": {"poll": 7, "state": "closed"}}]
    )
    assert (await live.fanout.flush(room))[:2] == (3, 3)
    for v in reps:
        await v.wait(lambda v=v: v.presence == [42, 43, 44, 45] and v.of_type("poll.closed") != [])
        assert v.tallies == [] and v.gaps == 0 and v.duplicates == 0
