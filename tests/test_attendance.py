"""Attendance intervals recorded by the live channel."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from config.app import create_app
from config.auth import Role, mint_token
from tests.live import Viewer
from tests.test_live import SESSION, schedule

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def intervals(db: Any, rep: str) -> list[dict[str, Any]]:
    rows = await db.fetch(
        """SELECT id, started_at, ended_at, close_reason FROM attendance_intervals
            WHERE rep_id = $1 ORDER BY id""",
        rep,
    )
    return [dict(r) for r in rows]


async def wait_until(check: Any, seconds: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.1)


async def test_attendance_follows_connections(client, auth, db, settings) -> None:  # type: ignore[no-untyped-def]
    await schedule(client, auth, db)
    quick = settings.replace(node_id="att", attendance_lease=1.0, attendance_grace=1.0)
    async with TestClient(TestServer(create_app(quick))) as node:
        url = str(node.make_url("/"))
        early = Viewer(url, mint_token(quick, rep="R1"), SESSION)
        await early.connect()
        await asyncio.sleep(0.5)
        assert await intervals(db, "R1") == []  # not live yet: watching is not attending
        host = auth("H1", Role.HOST)
        assert (
            await client.post(f"/api/sessions/{SESSION}/state", json={"state": "live"}, headers=host)
        ).status == 200

        async def opened() -> bool:
            return len(await intervals(db, "R1")) == 1

        await wait_until(opened)  # going live opens intervals for those already watching
        tab2 = Viewer(url, mint_token(quick, rep="R1"), SESSION)
        await tab2.connect()
        await early.close()  # one tab left: still attending
        await asyncio.sleep(2.5)
        (only,) = await intervals(db, "R1")
        assert only["ended_at"] is None
        await tab2.close()  # the last tab leaves …
        await asyncio.sleep(0.3)
        back = Viewer(url, mint_token(quick, rep="R1"), SESSION)
        await back.connect()  # … and comes back within the grace: the same interval goes on
        await asyncio.sleep(2.5)
        (still,) = await intervals(db, "R1")
        assert still["ended_at"] is None and still["id"] == only["id"]
        await back.close()

        async def closed() -> bool:
            rows = await intervals(db, "R1")
            return len(rows) == 1 and rows[0]["ended_at"] is not None

        await wait_until(closed)  # gone past the grace: closed at the time it left
        (done,) = await intervals(db, "R1")
        assert done["close_reason"] == "left"
        assert (done["ended_at"] - done["started_at"]).total_seconds() < 10


async def test_session_end_and_shutdown_close_intervals(client, auth, db, settings) -> None:  # type: ignore[no-untyped-def]
    await schedule(client, auth, db)
    await db.execute("UPDATE sessions SET state = 'live' WHERE id = $1", SESSION)
    quick = settings.replace(node_id="att2", attendance_lease=1.0, attendance_grace=1.0)
    async with TestClient(TestServer(create_app(quick))) as node:
        url = str(node.make_url("/"))
        a = Viewer(url, mint_token(quick, rep="R1"), SESSION)
        b = Viewer(url, mint_token(quick, rep="R2"), SESSION)
        await a.connect()
        await b.connect()

        async def both_open() -> bool:
            return len(await intervals(db, "R1")) == 1 and len(await intervals(db, "R2")) == 1

        await wait_until(both_open)
        host = auth("H1", Role.HOST)
        assert (
            await client.post(f"/api/sessions/{SESSION}/state", json={"state": "ended"}, headers=host)
        ).status == 200
        (r1,) = await intervals(db, "R1")
        assert r1["close_reason"] == "session_ended" and r1["ended_at"] is not None
    # A node stopping gracefully closes what it holds (here nothing is left open).
    assert await db.fetchval("SELECT count(*) FROM attendance_intervals WHERE ended_at IS NULL") == 0


async def test_graceful_shutdown_closes_what_the_node_holds(client, auth, db, settings) -> None:  # type: ignore[no-untyped-def]
    await schedule(client, auth, db)
    await db.execute("UPDATE sessions SET state = 'live' WHERE id = $1", SESSION)
    quick = settings.replace(node_id="att3", attendance_lease=30.0, attendance_grace=60.0)
    async with TestClient(TestServer(create_app(quick))) as node:
        viewer = Viewer(str(node.make_url("/")), mint_token(quick, rep="R1"), SESSION)
        await viewer.connect()

        async def opened() -> bool:
            return len(await intervals(db, "R1")) == 1

        await wait_until(opened)
    (closed,) = await intervals(db, "R1")
    assert closed["ended_at"] is not None and closed["close_reason"] == "left"
    await viewer.close()
