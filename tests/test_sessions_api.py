from __future__ import annotations

from typing import Any

import pytest

from config.auth import Role

pytestmark = pytest.mark.asyncio(loop_scope="session")

INQUIRY = {
    "id": "inq-1",
    "kind": "special_inquiry",
    "title": "  关于营商环境的专题询问\u202e  ",
    "announcement": "请准时参加。\n<script>alert(1)</script>",
    "scheduled_start": "2026-12-01T09:00:00+08:00",
    "scheduled_end": "2026-12-01T11:00:00+08:00",
    "audience": "roster",
    "default_tier": "voting",
}


async def add_reps(db: Any, *ids: str) -> None:
    await db.executemany(
        "INSERT INTO representatives (id, name, level) VALUES ($1, $1, 'city')", [(i,) for i in ids]
    )


async def test_admin_schedules_a_session_and_a_representative_sees_it(client, auth, db) -> None:  # type: ignore[no-untyped-def]
    await add_reps(db, "R1")
    created = await client.post("/api/sessions", json=INQUIRY, headers=auth.admin)
    assert created.status == 201, await created.text()
    session = (await created.json())["session"]
    assert session["title"] == "关于营商环境的专题询问"  # trimmed, bidi override removed
    assert session["announcement"].endswith("<script>alert(1)</script>")  # stored as text, escaped when shown
    assert session["state"] == "scheduled" and session["seq"] == 1

    got = await client.get("/api/sessions/inq-1", headers=auth("R1"))
    assert got.status == 200
    assert (await got.json())["session"]["your_tier"] == "voting"
    listed = await client.get("/api/sessions", headers=auth("R1"))
    assert [s["id"] for s in (await listed.json())["sessions"]] == ["inq-1"]


@pytest.mark.security
async def test_who_may_see_which_session(client, auth, db) -> None:  # type: ignore[no-untyped-def]
    await add_reps(db, "R1", "R2")
    base = {k: v for k, v in INQUIRY.items() if k != "id"}
    for sid, extra in [
        ("pub", {"audience": "public", "kind": "court_hearing"}),
        ("ros", {"audience": "roster"}),
        ("inv", {"audience": "invited", "participants": [{"rep": "R2", "tier": "observer"}]}),
    ]:
        r = await client.post("/api/sessions", json={**base, "id": sid, **extra}, headers=auth.admin)
        assert r.status == 201, await r.text()

    async def visible(headers: dict[str, str]) -> set[str]:
        r = await client.get("/api/sessions", headers=headers)
        return {s["id"] for s in (await r.json())["sessions"]}

    assert await visible(auth("R1")) == {"pub", "ros"}
    assert await visible(auth("R2")) == {"pub", "ros", "inv"}
    assert await visible(auth("OUTSIDER")) == {"pub"}  # not on the roster
    assert await visible(auth("M9", Role.MODERATOR)) == {"pub", "ros"}
    assert await visible(auth.admin) == {"pub", "ros", "inv"}
    # A session one may not attend looks the same as one that does not exist.
    hidden = await client.get("/api/sessions/inv", headers=auth("R1"))
    missing = await client.get("/api/sessions/nope", headers=auth("R1"))
    assert hidden.status == missing.status == 404
    assert (await hidden.json())["error"]["code"] == "not_found"
    r2 = await client.get("/api/sessions/inv", headers=auth("R2"))
    assert (await r2.json())["session"]["your_tier"] == "observer"
    public = await client.get("/api/sessions/pub", headers=auth("OUTSIDER"))
    assert (await public.json())["session"]["your_tier"] == "viewer"  # voting needs the roster


async def test_state_changes_are_events_with_seq(client, auth, db) -> None:  # type: ignore[no-untyped-def]
    await client.post("/api/sessions", json=INQUIRY, headers=auth.admin)
    host = auth("H1", Role.HOST)
    live = await client.post("/api/sessions/inq-1/state", json={"state": "live"}, headers=host)
    assert live.status == 200, await live.text()
    body = await live.json()
    assert body["session"]["state"] == "live" and body["session"]["started_at"]
    assert body["event"]["seq"] == 2 and body["event"]["type"] == "session.state"
    again = await client.post("/api/sessions/inq-1/state", json={"state": "live"}, headers=host)
    assert again.status == 409
    assert "is live and cannot become live" in (await again.json())["error"]["message"]
    ended = await client.post("/api/sessions/inq-1/state", json={"state": "ended"}, headers=host)
    assert (await ended.json())["event"]["seq"] == 3
    rows = await db.fetch("SELECT seq, type, data FROM events WHERE session_id = 'inq-1' ORDER BY seq")
    assert [(r["seq"], r["type"]) for r in rows] == [
        (1, "session.scheduled"),
        (2, "session.state"),
        (3, "session.state"),
    ]
    assert rows[2]["data"] == {"state": "ended"}


@pytest.mark.security
async def test_roles_are_checked_per_endpoint(client, auth, db) -> None:  # type: ignore[no-untyped-def]
    await add_reps(db, "R1")
    rep = auth("R1")
    create = await client.post("/api/sessions", json=INQUIRY, headers=rep)
    assert create.status == 403
    assert "admin" in (await create.json())["error"]["message"]
    await client.post("/api/sessions", json=INQUIRY, headers=auth.admin)
    start = await client.post("/api/sessions/inq-1/state", json={"state": "live"}, headers=rep)
    assert start.status == 403
    assert (await client.get("/api/roster", headers=rep)).status == 403
    assert await db.fetchval("SELECT state FROM sessions WHERE id = 'inq-1'") == "scheduled"


@pytest.mark.parametrize(
    ("change", "status", "says"),
    [
        ({"kind": "party"}, 422, "$.kind"),
        ({"title": ""}, 422, "$.title"),
        ({"title": "\u200b \u200b"}, 422, "title must not be empty"),
        ({"scheduled_start": "2026-12-01T09:00:00"}, 422, "timezone"),
        ({"scheduled_end": "2026-12-01T08:00:00+08:00"}, 422, "scheduled_end must be after"),
        ({"id": "Bad ID!"}, 422, "$.id"),
        ({"surprise": 1}, 422, "unknown field `surprise`"),
        ({"audience": "invited"}, 422, "needs participants"),
        ({"participants": [{"rep": "R1", "tier": "voting"}, {"rep": "R1", "tier": "viewer"}]}, 422, "twice"),
    ],
)
async def test_bad_session_input_says_what_is_wrong(client, auth, db, change, status, says) -> None:  # type: ignore[no-untyped-def]
    r = await client.post("/api/sessions", json={**INQUIRY, **change}, headers=auth.admin)
    assert r.status == status
    assert says in (await r.json())["error"]["message"]
    assert await db.fetchval("SELECT count(*) FROM sessions") == 0
    assert await db.fetchval("SELECT count(*) FROM events") == 0


@pytest.mark.security
async def test_malformed_requests(client, auth) -> None:  # type: ignore[no-untyped-def]
    r = await client.post(
        "/api/sessions", data=b"{not json", headers={**auth.admin, "Content-Type": "application/json"}
    )
    assert r.status == 400 and "not valid JSON" in (await r.json())["error"]["message"]
    r = await client.post(
        "/api/sessions", data=b"kind=x", headers={**auth.admin, "Content-Type": "text/plain"}
    )
    assert r.status == 415
    r = await client.post("/api/sessions", json=INQUIRY, headers={"Authorization": "Basic abc"})
    assert r.status == 401 and "Bearer" in (await r.json())["error"]["message"]
    r = await client.post("/api/sessions", json=INQUIRY, headers=auth("A1", Role.ADMIN, ttl=-100))
    assert r.status == 401 and "expired" in (await r.json())["error"]["message"]
    r = await client.get("/api/nothing-here", headers=auth.admin)
    assert r.status == 404 and (await r.json())["error"]["code"] == "not_found"
    r = await client.delete("/api/sessions", headers=auth.admin)
    assert r.status == 405
    r = await client.get("/api/sessions?limit=many", headers=auth.admin)
    assert r.status == 422 and "limit" in (await r.json())["error"]["message"]
    await client.post("/api/sessions", json=INQUIRY, headers=auth.admin)
    dup = await client.post("/api/sessions", json=INQUIRY, headers=auth.admin)
    assert dup.status == 409 and "already exists" in (await dup.json())["error"]["message"]


@pytest.mark.security
async def test_security_headers_and_session_page(client, auth) -> None:  # type: ignore[no-untyped-def]
    page = await client.get("/watch/inq-1")
    assert page.status == 200
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert "/static/js/watch.js" in await page.text()
    script = await client.get("/static/js/watch.js")
    assert script.status == 200 and "textContent" in await script.text()
    api = await client.get("/api/sessions", headers=auth.admin)
    assert api.headers["Cache-Control"] == "no-store"
