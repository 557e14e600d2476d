"""Polls and votes over a real node: lifecycle, results, refusals, duplicates, outages."""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import AsyncIterator
from typing import Any, cast

import asyncpg
import openpyxl
import pytest
import pytest_asyncio
import socketio
from aiohttp.test_utils import TestClient, TestServer
from redis import asyncio as aioredis

from config.app import create_app
from config.auth import Role, mint_token
from config.services import EmbeddedServices
from config.settings import Settings
from interaction.rooms import Rooms
from interaction.tallies import Tallies
from tests.faults import FaultProxy, redis_target
from tests.live import Viewer

pytestmark = pytest.mark.asyncio(loop_scope="session")

SESSION = "inquiry-1"
REPS = [("R1", "王伟"), ("R2", "李娜"), ("R3", "张强"), ("R4", "赵敏")]


async def live_session(client: Any, auth: Any, db: Any, sid: str = SESSION, reps: Any = REPS) -> None:
    await db.executemany(
        "INSERT INTO representatives (id, name, level, delegation) VALUES ($1, $2, 'city', '东港区代表团')"
        " ON CONFLICT DO NOTHING",
        reps,
    )
    spec = {
        "id": sid,
        "kind": "special_inquiry",
        "title": "专题询问",
        "audience": "roster",
        "default_tier": "voting",
        "scheduled_start": "2026-12-01T09:00:00+08:00",
        "scheduled_end": "2026-12-01T11:00:00+08:00",
        "participants": [{"rep": "R3", "tier": "viewer"}],
    }
    r = await client.post("/api/sessions", json=spec, headers=auth.admin)
    assert r.status == 201, await r.text()
    r = await client.post(f"/api/sessions/{sid}/state", json={"state": "live"}, headers=auth.admin)
    assert r.status == 200, await r.text()


async def make_poll(
    client: Any, auth: Any, spec: dict[str, Any], sid: str = SESSION, *, open_: bool = True
) -> Any:
    r = await client.post(f"/api/sessions/{sid}/polls", json=spec, headers=auth("H1", Role.HOST))
    assert r.status == 201, await r.text()
    poll = (await r.json())["poll"]
    if open_:
        r = await client.post(
            f"/api/polls/{poll['id']}/state", json={"state": "open"}, headers=auth("H1", Role.HOST)
        )
        assert r.status == 200, await r.text()
        poll = (await r.json())["poll"]
    return poll


@pytest_asyncio.fixture(loop_scope="session")
async def people(client: TestClient[Any, Any], settings: Settings) -> AsyncIterator[Any]:
    made: list[Viewer] = []

    def make(rep: str, *roles: Role, session: str = SESSION, url: str | None = None) -> Viewer:
        token = mint_token(settings, rep=rep, roles=roles or (Role.REPRESENTATIVE,))
        viewer = Viewer(url or str(client.make_url("/")), token, session)
        made.append(viewer)
        return viewer

    yield make
    for viewer in made:
        await viewer.close()


SATISFACTION = {
    "template": "satisfaction_per_department",
    "title": "专题询问满意度测评",
    "units": ["市教育局", "市卫健委"],
}


async def test_satisfaction_poll_from_open_to_published(client, auth, db, people) -> None:  # type: ignore[no-untyped-def]
    await live_session(client, auth, db)
    host = people("H1", Role.HOST)
    r1, r2, r4 = people("R1"), people("R2"), people("R4")
    for p in (host, r1, r2, r4):
        await p.connect()
    poll = await make_poll(client, auth, SATISFACTION)
    assert poll["kind"] == "satisfaction" and poll["visibility"] == "anonymous" and poll["state"] == "open"
    (edu, health) = poll["questions"]
    assert [o["label"] for o in edu["options"]] == ["满意", "基本满意", "不满意"]
    satisfied, basic, unsatisfied = (o["id"] for o in edu["options"])
    h_sat, h_basic, h_unsat = (o["id"] for o in health["options"])
    # Everyone in the session sees the poll open, in the event stream.
    await r1.wait(lambda: bool(r1.of_type("poll.opened")))
    assert r1.of_type("poll.opened")[0]["data"]["poll"]["id"] == poll["id"]

    votes = [
        (r1, {str(edu["id"]): satisfied, str(health["id"]): h_unsat}),
        (r2, {str(edu["id"]): basic, str(health["id"]): h_sat}),
        (r4, {str(edu["id"]): unsatisfied, str(health["id"]): h_basic}),
    ]
    for who, answers in votes:
        ack = await who.call("vote.cast", {"poll": poll["id"], "answers": answers, "key": "v1"})
        assert ack == {"ok": True, "status": "recorded"}, ack
    # The host sees the live tally (pushed, not per vote); representatives do not.
    await host.wait(
        lambda: any(t["questions"].get(str(edu["id"]), {}).get("votes") == 3 for t in host.tallies)
    )
    tally = next(t for t in reversed(host.tallies) if t["poll"] == poll["id"])
    assert tally["questions"][str(edu["id"])]["options"] == {
        str(satisfied): 1,
        str(basic): 1,
        str(unsatisfied): 1,
    }
    assert not r1.tallies
    # Results are hidden from representatives until published.
    hidden = await client.get(f"/api/polls/{poll['id']}/results", headers=auth("R1"))
    assert hidden.status == 403 and (await hidden.json())["error"]["code"] == "forbidden"

    host_call = await host.call("poll.state", {"poll": poll["id"], "state": "closed"})
    assert host_call["ok"] and host_call["results"]["participation"]["voted"] == 3
    late = await r1.call(
        "vote.cast", {"poll": poll["id"], "answers": {str(edu["id"]): satisfied}, "key": "v2"}
    )
    assert late["ok"] is False and late["error"]["code"] == "poll_closed"
    # The hall's paper ballots, then publication.
    onsite = {str(edu["id"]): {str(satisfied): 10, str(basic): 5, str(unsatisfied): 1}}
    r = await client.put(
        f"/api/polls/{poll['id']}/onsite", json={"counts": onsite}, headers=auth("H1", Role.HOST)
    )
    assert r.status == 200, await r.text()
    published = await host.call("poll.state", {"poll": poll["id"], "state": "published"})
    assert published["ok"], published
    await r2.wait(lambda: bool(r2.of_type("poll.results")))
    results = r2.of_type("poll.results")[0]["data"]["results"]
    q_edu = next(q for q in results["questions"] if q["id"] == edu["id"])
    assert [(o["online"], o["onsite"], o["combined"]) for o in q_edu["options"]] == [
        (1, 10, 11),
        (1, 5, 6),
        (1, 1, 2),
    ]
    assert q_edu["votes"] == {"online": 3, "onsite": 16, "combined": 19}
    assert q_edu["satisfaction_rate"] == {
        "online": round(2 / 3, 4),
        "onsite": round(15 / 16, 4),
        "combined": round(17 / 19, 4),
    }
    q_health = next(q for q in results["questions"] if q["id"] == health["id"])
    assert q_health["satisfaction_rate"]["online"] == round(2 / 3, 4) and q_health["votes"]["onsite"] == 0
    assert results["participation"]["voted"] == 3
    # The projector shows the published results; representatives may read them now.
    proj = await (
        await client.get(f"/api/sessions/{SESSION}/projector", headers=auth("H1", Role.HOST))
    ).json()
    assert proj["results"] == results
    assert (await client.get(f"/api/polls/{poll['id']}/results", headers=auth("R1"))).status == 200
    # Anonymous: no per-vote rows, nothing that links a choice to a voter.
    assert await db.fetchval("SELECT count(*) FROM votes") == 0
    assert await db.fetchval("SELECT count(*) FROM ballots WHERE poll_id = $1", poll["id"]) == 6
    refused = await client.get(f"/api/polls/{poll['id']}/votes", headers=auth("H1", Role.HOST))
    assert refused.status == 409
    # Exports carry 满意率, participation and validity.
    xlsx = await client.get(
        f"/api/polls/{poll['id']}/results/export?format=xlsx", headers=auth("H1", Role.HOST)
    )
    assert xlsx.status == 200
    sheet = openpyxl.load_workbook(io.BytesIO(await xlsx.read())).active
    rows = list(sheet.iter_rows(values_only=True))
    assert "满意率 Satisfaction rate" in rows[0][7]
    assert rows[1][1:8] == ("市教育局", "满意", 1, 10, 11, 1, round(17 / 19, 4))
    text = (
        await (
            await client.get(
                f"/api/polls/{poll['id']}/results/export?format=csv", headers=auth("H1", Role.HOST)
            )
        ).read()
    ).decode("utf-8-sig")
    assert list(csv.reader(io.StringIO(text)))[4][1:3] == ["市卫健委", "满意"]
    # A late joiner's snapshot carries the poll, its results, and what it answered.
    late_joiner = people("R1")
    await late_joiner.connect()
    assert late_joiner.snapshot is not None
    (snap,) = late_joiner.snapshot["polls"]
    assert snap["state"] == "published" and snap["results"] == results
    assert snap["mine"] == {str(edu["id"]): True, str(health["id"]): True}  # anonymous: answered, not what


async def test_same_key_already_recorded_and_second_vote_refused(client, auth, db, people) -> None:  # type: ignore[no-untyped-def]
    await live_session(client, auth, db)
    poll = await make_poll(
        client,
        auth,
        {
            "kind": "multiple",
            "title": "民生实事项目票决",
            "question": "选择项目",
            "options": ["A", "B", "C", "D"],
            "max_choices": 2,
        },
    )
    (q,) = poll["questions"]
    a, b, c, d = (o["id"] for o in q["options"])
    r1 = people("R1")
    await r1.connect()
    first = await r1.call("vote.cast", {"poll": poll["id"], "answers": {str(q["id"]): [a, c]}, "key": "k1"})
    assert first == {"ok": True, "status": "recorded"}
    again = await r1.call("vote.cast", {"poll": poll["id"], "answers": {str(q["id"]): [a, c]}, "key": "k1"})
    assert again == {"ok": True, "status": "already_recorded"}
    other = await r1.call("vote.cast", {"poll": poll["id"], "answers": {str(q["id"]): [b]}, "key": "k2"})
    assert other["ok"] is False and other["error"]["code"] == "already_voted"
    assert "already voted" in other["error"]["message"]
    assert await db.fetchval("SELECT option_ids FROM votes WHERE rep_id = 'R1'") == [a, c]
    # Named: staff see who voted what. The ranked result after publishing.
    votes = await (
        await client.get(f"/api/polls/{poll['id']}/votes", headers=auth("M1", Role.MODERATOR))
    ).json()
    assert votes["votes"][0]["rep"] == "R1" and votes["votes"][0]["options"] == [a, c]
    r2 = people("R2")
    await r2.connect()
    assert (await r2.call("vote.cast", {"poll": poll["id"], "answers": {str(q["id"]): [c, d]}, "key": "x"}))[
        "ok"
    ]
    for state in ("closed", "published"):
        r = await client.post(
            f"/api/polls/{poll['id']}/state", json={"state": state}, headers=auth("H1", Role.HOST)
        )
        assert r.status == 200, await r.text()
    results = await (await client.get(f"/api/polls/{poll['id']}/results", headers=auth("R1"))).json()
    ranks = {o["label"]: (o["combined"], o["rank"]) for o in results["results"]["questions"][0]["options"]}
    assert ranks == {"C": (2, 1), "A": (1, 2), "D": (1, 2), "B": (0, 4)}


async def test_changing_a_vote_where_the_poll_allows_it(client, auth, db, people) -> None:  # type: ignore[no-untyped-def]
    await live_session(client, auth, db)
    poll = await make_poll(
        client, auth, {"kind": "yes_no", "title": "表决", "question": "是否同意？", "allow_change": True}
    )
    (q,) = poll["questions"]
    yes, no, _ = (o["id"] for o in q["options"])
    r1 = people("R1")
    await r1.connect()
    assert (await r1.call("vote.cast", {"poll": poll["id"], "answers": {str(q["id"]): yes}, "key": "k1"}))[
        "status"
    ] == "recorded"
    assert (await r1.call("vote.cast", {"poll": poll["id"], "answers": {str(q["id"]): no}, "key": "k2"}))[
        "status"
    ] == "changed"
    # A late retry of the first cast must not turn the vote back.
    assert (await r1.call("vote.cast", {"poll": poll["id"], "answers": {str(q["id"]): yes}, "key": "k1"}))[
        "status"
    ] == "already_recorded"
    assert await db.fetchval("SELECT option_ids FROM votes WHERE rep_id = 'R1'") == [no]
    assert await db.fetchval("SELECT option_ids FROM ballot_changes WHERE rep_id = 'R1'") == [yes]
    results = await (
        await client.get(f"/api/polls/{poll['id']}/results", headers=auth("H1", Role.HOST))
    ).json()
    counts = {o["label"]: o["online"] for o in results["results"]["questions"][0]["options"]}
    assert (
        counts == {"赞成": 0, "反对": 1, "弃权": 0}
        and results["results"]["questions"][0]["votes"]["online"] == 1
    )


@pytest.mark.security
async def test_bad_votes_are_refused_and_nothing_is_recorded(client, auth, db, people) -> None:  # type: ignore[no-untyped-def]
    await live_session(client, auth, db)
    await live_session(client, auth, db, sid="other-1")
    poll = await make_poll(
        client,
        auth,
        {"kind": "multiple", "title": "票决", "question": "选", "options": ["A", "B", "C"], "max_choices": 2},
    )
    elsewhere = await make_poll(
        client, auth, {"kind": "yes_no", "title": "别处", "question": "?"}, sid="other-1"
    )
    draft = await make_poll(client, auth, {"kind": "yes_no", "title": "草稿", "question": "?"}, open_=False)
    closed = await make_poll(client, auth, {"kind": "yes_no", "title": "已结束", "question": "?"})
    r = await client.post(
        f"/api/polls/{closed['id']}/state", json={"state": "closed"}, headers=auth("H1", Role.HOST)
    )
    assert r.status == 200
    (q,) = poll["questions"]
    a, b, c = (o["id"] for o in q["options"])
    r1, viewer_tier = people("R1"), people("R3")
    await r1.connect()
    await viewer_tier.connect()
    cases = [
        (
            r1,
            {
                "poll": closed["id"],
                "answers": {str(closed["questions"][0]["id"]): closed["questions"][0]["options"][0]["id"]},
            },
            "poll_closed",
        ),
        (
            r1,
            {
                "poll": draft["id"],
                "answers": {str(draft["questions"][0]["id"]): draft["questions"][0]["options"][0]["id"]},
            },
            "poll_closed",
        ),
        (r1, {"poll": 999999, "answers": {"1": 1}}, "not_found"),
        (r1, {"poll": poll["id"], "answers": {str(q["id"]): 999999}}, "invalid"),
        (r1, {"poll": poll["id"], "answers": {"999999": a}}, "invalid"),
        (r1, {"poll": poll["id"], "answers": {str(q["id"]): [a, b, c]}}, "invalid"),
        (r1, {"poll": poll["id"], "answers": {str(q["id"]): [a, a]}}, "invalid"),
        (r1, {"poll": poll["id"], "answers": {}}, "invalid"),
        (r1, {"poll": poll["id"], "answers": {str(q["id"]): "A"}}, "invalid"),
        (
            r1,
            {
                "poll": elsewhere["id"],
                "answers": {
                    str(elsewhere["questions"][0]["id"]): elsewhere["questions"][0]["options"][0]["id"]
                },
            },
            "forbidden",
        ),
        (viewer_tier, {"poll": poll["id"], "answers": {str(q["id"]): a}}, "forbidden"),
    ]
    for n, (who, payload, code) in enumerate(cases):
        ack = await who.call("vote.cast", {**payload, "key": f"bad{n}"})
        assert ack["ok"] is False and ack["error"]["code"] == code, (n, ack)
        assert ack["error"]["message"]
    assert await db.fetchval("SELECT count(*) FROM ballots") == 0
    refused = await db.fetch("SELECT actor FROM audit_log WHERE action = 'vote.refused' ORDER BY id")
    assert [r["actor"] for r in refused] == ["R1", "R3"]  # the other session's poll, the viewer tier
    # Creating: bad specs say what to change; nothing is written.
    bad_specs = [
        ({"kind": "satisfaction", "title": "x"}, "units"),
        ({"kind": "single", "title": "x", "question": "q", "options": ["A", "A"]}, "twice"),
        (
            {"kind": "multiple", "title": "x", "question": "q", "options": ["A", "B"], "max_choices": 3},
            "allows 3",
        ),
        (
            {
                "kind": "yes_no",
                "title": "x",
                "question": "q",
                "visibility": "anonymous",
                "allow_change": True,
            },
            "anonymous",
        ),
        ({"template": "nope", "title": "x"}, "unknown template"),
        (
            {"kind": "single", "title": "x", "question": "q", "options": ["A", "B"], "threshold": 1.5},
            "threshold",
        ),
    ]
    before = await db.fetchval("SELECT count(*) FROM polls")
    for spec, words in bad_specs:
        r = await client.post(f"/api/sessions/{SESSION}/polls", json=spec, headers=auth("H1", Role.HOST))
        assert r.status in (400, 422), (spec, await r.text())
        assert words in (await r.json())["error"]["message"], (spec, await r.text())
    assert await db.fetchval("SELECT count(*) FROM polls") == before
    # Only hosts manage polls; an open poll cannot be edited.
    r = await client.post(
        f"/api/sessions/{SESSION}/polls",
        json={"kind": "yes_no", "title": "x", "question": "q"},
        headers=auth("R1"),
    )
    assert r.status == 403
    r = await client.put(
        f"/api/polls/{poll['id']}",
        json={"kind": "yes_no", "title": "x", "question": "q"},
        headers=auth("H1", Role.HOST),
    )
    assert r.status == 409 and "only a draft" in (await r.json())["error"]["message"]
    denied = await r1.call("poll.state", {"poll": poll["id"], "state": "closed"})
    assert denied["ok"] is False and denied["error"]["code"] == "forbidden"


async def test_who_has_not_voted_and_a_nudge(client, auth, db, people) -> None:  # type: ignore[no-untyped-def]
    await live_session(client, auth, db)
    host, r1, r2, r3 = people("H1", Role.HOST), people("R1"), people("R2"), people("R3")
    for p in (host, r1, r2, r3):
        await p.connect()
    poll = await make_poll(
        client, auth, {"kind": "yes_no", "title": "表决", "question": "是否同意？", "threshold": 0.5}
    )
    (q,) = poll["questions"]
    deadline = asyncio.get_running_loop().time() + 10  # attendance opens once each has joined
    while await db.fetchval("SELECT count(*) FROM attendance_intervals WHERE ended_at IS NULL") < 3:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.05)
    assert (
        await r1.call(
            "vote.cast", {"poll": poll["id"], "answers": {str(q["id"]): q["options"][0]["id"]}, "key": "k"}
        )
    )["ok"]
    missing = await host.call("poll.missing", {"poll": poll["id"]})
    assert [m["rep"] for m in missing["missing"]] == ["R2"]  # R3 attends as a viewer: not eligible
    assert missing["missing"][0]["name"] == "李娜"
    nudged = await host.call("poll.nudge", {"poll": poll["id"]})
    assert nudged == {"ok": True, "nudged": 1}
    await r2.wait(lambda: bool(r2.nudges))
    assert r2.nudges[0] == {"poll": poll["id"], "title": "表决"}
    assert not r1.nudges and not r3.nudges
    closed = await host.call("poll.state", {"poll": poll["id"], "state": "closed"})
    part = closed["results"]["participation"]
    assert part == {"voted": 1, "eligible_present": 2, "rate": 0.5} and closed["results"]["valid"] is True


async def open_yes_no(client: Any, auth: Any, db: Any, *people: Viewer) -> tuple[Any, Any, dict[str, Any]]:
    """A live session with `people` connected and an open yes/no poll: the poll, its
    question and a cast of "yes" (key "k")."""
    await live_session(client, auth, db)
    for p in people:
        await p.connect()
    poll = await make_poll(client, auth, {"kind": "yes_no", "title": "表决", "question": "是否同意？"})
    (q,) = poll["questions"]
    return poll, q, {"poll": poll["id"], "answers": {str(q["id"]): q["options"][0]["id"]}, "key": "k"}


async def tally_check(client: Any) -> str:
    """The outcome of the node's (first) check of live tallies against the ledger at close."""
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        for line in (await (await client.get("/metrics")).text()).splitlines():
            if line.startswith("tribune_tally_checks_total{") and not line.endswith(" 0.0"):
                return line.split('"')[1]
        assert asyncio.get_running_loop().time() < deadline, "no tally check after the close"
        await asyncio.sleep(0.05)


async def test_live_tallies_are_checked_against_the_ledger_after_the_close(  # type: ignore[no-untyped-def]
    client, auth, db, people, settings, caplog
) -> None:
    host, r1, r2 = people("H1", Role.HOST), people("R1"), people("R2")
    poll, _, cast = await open_yes_no(client, auth, db, host, r1, r2)
    assert (await r1.call("vote.cast", cast))["ok"]
    # A vote acknowledged a moment before the close is not yet in the counters (they are
    # updated a round later); the check waits for that and finds them right.
    assert (await r2.call("vote.cast", cast))["ok"]
    closed = await host.call("poll.state", {"poll": poll["id"], "state": "closed"})
    assert closed["results"]["questions"][0]["votes"]["online"] == 2
    assert await tally_check(client) == "agreed"
    assert "disagreed" not in caplog.text

    # Counters that went wrong (here: edited behind the node's back) are reported; the
    # results stay the ledger's.
    second = await make_poll(client, auth, {"kind": "yes_no", "title": "再表决", "question": "？"})
    (q2,) = second["questions"]
    again = {"poll": second["id"], "answers": {str(q2["id"]): q2["options"][0]["id"]}, "key": "k2"}
    assert (await r1.call("vote.cast", again))["ok"]
    await host.wait(lambda: any(t["poll"] == second["id"] for t in host.tallies))  # counters set up
    redis = aioredis.from_url(settings.redis_url)
    try:
        await redis.hincrby(f"{settings.redis_prefix}tally:{second['id']}", f"{q2['id']}:0", 5)
    finally:
        await redis.aclose()
    closed = await host.call("poll.state", {"poll": second["id"], "state": "closed"})
    assert closed["results"]["questions"][0]["votes"]["online"] == 1
    deadline = asyncio.get_running_loop().time() + 10
    while (
        'tribune_tally_checks_total{outcome="disagreed"} 1.0'
        not in await (await client.get("/metrics")).text()
    ):
        assert asyncio.get_running_loop().time() < deadline, "the disagreement was not reported"
        await asyncio.sleep(0.05)
    assert f"question {q2['id']}: 6 ballots counted live, 1 in the ledger" in caplog.text


async def test_counters_lost_from_redis_are_rebuilt_from_the_ledger(  # type: ignore[no-untyped-def]
    client, auth, db, people, settings
) -> None:
    host, r1 = people("H1", Role.HOST), people("R1")
    poll, q, cast = await open_yes_no(client, auth, db, host, r1)
    yes = cast["answers"][str(q["id"])]
    assert (await r1.call("vote.cast", cast))["ok"]

    def counted() -> bool:
        return bool(host.tallies) and host.tallies[-1]["questions"].get(str(q["id"]), {}).get("votes") == 1

    await host.wait(counted)
    redis = aioredis.from_url(settings.redis_url)
    try:
        await redis.delete(f"{settings.redis_prefix}tally:{poll['id']}")
        host.tallies.clear()
        await host.wait(counted)  # a new version, set from the ledger
        rebuilt = await redis.hgetall(f"{settings.redis_prefix}tally:{poll['id']}")
    finally:
        await redis.aclose()
    assert rebuilt[f"{q['id']}:{yes}".encode()] == b"1" and b"_base" in rebuilt


@pytest.mark.faults
async def test_a_tally_round_whose_answer_was_lost_is_counted_once(settings) -> None:  # type: ignore[no-untyped-def]
    """Redis applied a round of counts but its answer never came: the node cannot tell, sends
    the round again, and Redis counts it once."""
    proxy = await FaultProxy(redis_target(settings.redis_url)).start()
    through = aioredis.from_url(proxy.redis_url(settings.redis_url), socket_timeout=0.5)
    direct = aioredis.from_url(settings.redis_url)
    tallies = Tallies(
        through, cast(Any, None), Rooms(), cast(Any, None), prefix=settings.redis_prefix, interval=0.25
    )
    try:
        await tallies.begin(7)
        tallies.add(7, {(1, 0): 1, (1, 11): 1})
        await proxy.delay(1.5)  # the round is applied at once; its answer comes after the timeout
        with pytest.raises(aioredis.RedisError):
            await tallies.tick()
        await proxy.heal()
        assert (await direct.hgetall(tallies.key(7)))[b"1:0"] == b"1"  # it was applied
        tallies.add(7, {(1, 0): 1, (1, 12): 1})
        await tallies.tick()
        counts = await direct.hgetall(tallies.key(7))
        assert (counts[b"1:0"], counts[b"1:11"], counts[b"1:12"]) == (b"2", b"1", b"1")
    finally:
        await through.aclose()
        await direct.aclose()
        await proxy.stop()


@pytest.mark.faults
async def test_lost_acknowledgement_retry_answers_already_recorded(client, auth, db, people) -> None:  # type: ignore[no-untyped-def]
    await live_session(client, auth, db)
    poll = await make_poll(client, auth, {"kind": "yes_no", "title": "表决", "question": "?"})
    (q,) = poll["questions"]
    cast = {"poll": poll["id"], "answers": {str(q["id"]): q["options"][0]["id"]}, "key": "lost-1"}
    r1 = people("R1")
    await r1.connect()
    # Hold the poll's row so the cast waits in the database; drop the connection meanwhile;
    # then let the commit through: its acknowledgement has nowhere to go.
    async with db.acquire() as holder, holder.transaction():
        await holder.execute("SELECT 1 FROM polls WHERE id = $1 FOR UPDATE", poll["id"])
        await r1.sio.emit("vote.cast", cast)
        deadline = asyncio.get_running_loop().time() + 10
        while not await db.fetchval(
            """SELECT count(*) FROM pg_stat_activity
                WHERE query LIKE '%cast_ballots%' AND wait_event_type = 'Lock'"""
        ):
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.02)
        await r1.close()
    deadline = asyncio.get_running_loop().time() + 10
    while not await db.fetchval("SELECT count(*) FROM ballots"):
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.02)
    again = people("R1")
    await again.connect()
    assert await again.call("vote.cast", cast) == {"ok": True, "status": "already_recorded"}
    assert await db.fetchval("SELECT count(*) FROM ballots") == 1


@pytest.mark.faults
async def test_duplicate_storm_across_two_nodes(client, auth, db, people, settings) -> None:  # type: ignore[no-untyped-def]
    reps = [(f"S{i:03d}", f"代表{i}") for i in range(200)]
    await live_session(client, auth, db, reps=reps)
    poll = await make_poll(client, auth, {"kind": "yes_no", "title": "表决", "question": "?"})
    (q,) = poll["questions"]
    async with TestClient(TestServer(create_app(settings.replace(node_id="node-b")))) as node_b:
        urls = [str(client.make_url("/")), str(node_b.make_url("/"))]
        statuses: dict[str, list[str]] = {rep: [] for rep, _ in reps}

        async def storm(i: int, rep: str) -> None:
            voters = [people(rep, url=urls[(i + k) % 2]) for k in range(2)]
            await asyncio.gather(*(v.connect() for v in voters))
            cast = {
                "poll": poll["id"],
                "answers": {str(q["id"]): q["options"][i % 3]["id"]},
                "key": f"{rep}-k",
            }
            acks = await asyncio.gather(*(voters[k % 2].call("vote.cast", cast) for k in range(4)))
            await voters[0].close()  # a reconnect, then the fifth submission
            await voters[0].connect()
            acks.append(await voters[0].call("vote.cast", cast))
            for ack in acks:
                assert ack["ok"], ack
                statuses[rep].append(ack["status"])
            for v in voters:
                await v.close()

        for start in range(0, 200, 50):
            await asyncio.gather(
                *(storm(i, rep) for i, (rep, _) in list(enumerate(reps))[start : start + 50])
            )
    assert await db.fetchval("SELECT count(*) FROM ballots WHERE poll_id = $1", poll["id"]) == 200
    assert await db.fetchval("SELECT count(*) FROM votes WHERE poll_id = $1", poll["id"]) == 200
    for rep, seen in statuses.items():
        assert sorted(seen) == ["already_recorded"] * 4 + ["recorded"], (rep, seen)


@pytest.mark.faults
async def test_votes_survive_a_database_outage(
    own_services: EmbeddedServices, own_settings: Settings
) -> None:
    """PostgreSQL gone for 30 s while votes arrive: nothing is acknowledged without a commit;
    clients retrying with the same key all succeed once it is back; the count equals the
    distinct acknowledged keys."""
    assert own_services.postgres is not None
    settings = own_settings
    reps = [f"P{i:02d}" for i in range(40)]
    conn = await asyncpg.connect(settings.database_url)
    async with TestClient(TestServer(create_app(settings))) as node:
        await conn.executemany(
            "INSERT INTO representatives (id, name, level) VALUES ($1, $1, 'city')", [(r,) for r in reps]
        )
        await conn.execute(
            """INSERT INTO sessions (id, kind, title, scheduled_start, scheduled_end, epoch, created_by,
                                     audience, default_tier, state)
               VALUES ($1, 'special_inquiry', 't', now(), now() + interval '1 hour', 'e1', 't', 'roster',
                       'voting', 'live')""",
            SESSION,
        )
        host_headers = {"Authorization": "Bearer " + mint_token(settings, rep="H1", roles=(Role.HOST,))}
        r = await node.post(
            f"/api/sessions/{SESSION}/polls",
            json={"kind": "yes_no", "title": "表决", "question": "?"},
            headers=host_headers,
        )
        poll = (await r.json())["poll"]
        assert (
            await node.post(f"/api/polls/{poll['id']}/state", json={"state": "open"}, headers=host_headers)
        ).status == 200
        q = poll["questions"][0]
        voters = [Viewer(str(node.make_url("/")), mint_token(settings, rep=rep), SESSION) for rep in reps]
        for v in voters:
            await v.connect()
        await conn.close()
        acked: set[str] = set()
        refused_while_down = 0

        async def vote_until_acked(v: Viewer, key: str, delay: float) -> None:
            nonlocal refused_while_down
            await asyncio.sleep(delay)
            cast = {"poll": poll["id"], "answers": {str(q["id"]): q["options"][0]["id"]}, "key": key}
            while True:
                try:
                    ack = await v.call("vote.cast", cast)
                except socketio.exceptions.TimeoutError:
                    continue
                if ack["ok"]:
                    acked.add(key)
                    return
                assert ack["error"]["code"] in ("unavailable", "internal"), ack
                refused_while_down += 1
                await asyncio.sleep(0.5)

        # Half vote before the outage, the rest during it (and retry until it is back).
        first = [vote_until_acked(v, f"{reps[i]}-k", 0) for i, v in enumerate(voters[:20])]
        await asyncio.gather(*first)
        await asyncio.to_thread(own_services.postgres.stop)
        during = asyncio.gather(
            *(vote_until_acked(v, f"{reps[i]}-k", 0.1 * (i % 10)) for i, v in enumerate(voters[20:], 20))
        )
        await asyncio.sleep(30)
        assert not during.done() and len(acked) == 20  # nothing acknowledged without the database
        await asyncio.to_thread(own_services.postgres.start)
        await asyncio.wait_for(during, 60)
        assert refused_while_down > 0
        for v in voters:
            await v.close()
    conn = await asyncpg.connect(settings.database_url)
    assert await conn.fetchval("SELECT count(*) FROM ballots") == len(acked) == 40
    await conn.close()
