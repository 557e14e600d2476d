"""Attendance when a node dies: 500 representatives on two node processes, one killed with -9."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest

from config.auth import Role, mint_token
from config.settings import Settings
from interaction.loadgen import FrameCache, Tally, ViewerProtocol
from tests.conftest import TEST_SECRET
from tests.test_node import Node, clean_env

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.slow, pytest.mark.faults]

SESSION = "att-fault"
REPS = 500
LEASE = 3.0
GRACE = 3.0


class Watcher(ViewerProtocol):
    """A load-generator viewer that notes when its connection really ended."""

    def __init__(self, person: Attendee, *args: Any) -> None:
        super().__init__(*args)
        self.person = person

    def connection_lost(self, exc: Exception | None) -> None:
        self.person.gone(time.time())
        super().connection_lost(exc)


class Attendee:
    """One representative's connection, with the times it was really connected."""

    def __init__(self, rep: str, token: str) -> None:
        self.rep = rep
        self.token = token
        self.protocol: Watcher | None = None
        self.spans: list[list[float]] = []  # [connected, gone] in wall-clock seconds

    async def connect(self, url: str, tally: Tally, cache: FrameCache) -> None:
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[bool] = loop.create_future()
        parts = urlsplit(url)
        auth = {"token": self.token, "session": SESSION, "since": None}
        protocol = Watcher(self, parts.netloc, auth, tally, cache, None, ready)
        await loop.create_connection(lambda: protocol, parts.hostname, parts.port)
        assert await asyncio.wait_for(ready, 30), f"{self.rep} was refused"
        self.protocol = protocol
        self.spans.append([time.time(), 0.0])

    def gone(self, at: float) -> None:
        if self.spans and not self.spans[-1][1]:
            self.spans[-1][1] = at

    def close(self) -> None:
        if self.protocol is not None and self.protocol.transport is not None:
            self.protocol.transport.close()
        self.gone(time.time())

    def truth(self) -> float:
        return sum(end - start for start, end in self.spans)


async def intervals(conn: asyncpg.Connection) -> dict[str, list[asyncpg.Record]]:
    by_rep: dict[str, list[asyncpg.Record]] = {}
    for row in await conn.fetch(
        """SELECT rep_id, started_at, ended_at, close_reason, node_id FROM attendance_intervals
            WHERE session_id = $1 ORDER BY rep_id, started_at""",
        SESSION,
    ):
        by_rep.setdefault(row["rep_id"], []).append(row)
    return by_rep


async def wait_for(check: Any, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


async def connect_all(people: list[Attendee], url: str, tally: Tally, cache: FrameCache) -> None:
    gate = asyncio.Semaphore(50)

    async def one(person: Attendee) -> None:
        async with gate:
            await person.connect(url, tally, cache)

    await asyncio.gather(*(one(p) for p in people))


async def test_kill_minus_9_closes_at_lease_end_and_reconnects_continue_or_reopen(  # type: ignore[no-untyped-def]
    services, database_url, tmp_path: Path
) -> None:
    conn = await asyncpg.connect(database_url)
    await conn.execute(
        """INSERT INTO sessions (id, kind, title, scheduled_start, scheduled_end, epoch, created_by,
                                 audience, state, started_at)
           VALUES ($1, 'lecture', 'T', now(), now() + interval '2 hours', 'e1', 't',
                   'roster', 'live', now())""",
        SESSION,
    )
    await conn.executemany(
        "INSERT INTO representatives (id, name, level) VALUES ($1, $1, 'city')",
        [(f"P{i:03d}",) for i in range(REPS)],
    )
    env = clean_env(
        TRIBUNE_DATABASE_URL=database_url,
        TRIBUNE_REDIS_URL=services.redis_url,
        TRIBUNE_JWT_SECRET=TEST_SECRET,
        TRIBUNE_REDIS_PREFIX=f"a{secrets.token_hex(3)}:",
        TRIBUNE_HEALTH_INTERVAL="0.5",
        TRIBUNE_ATTENDANCE_LEASE=str(LEASE),
        TRIBUNE_ATTENDANCE_GRACE=str(GRACE),
    )
    a = Node(tmp_path / "a", {**env, "TRIBUNE_NODE_ID": "a"})
    b = Node(tmp_path / "b", {**env, "TRIBUNE_NODE_ID": "b"})
    settings = Settings(jwt_secret=TEST_SECRET)
    people = [
        Attendee(f"P{i:03d}", mint_token(settings, rep=f"P{i:03d}", roles=[Role.REPRESENTATIVE], ttl=3600))
        for i in range(REPS)
    ]
    on_a, on_b = people[: REPS // 2], people[REPS // 2 :]
    back_soon, back_late = on_a[: len(on_a) // 2], on_a[len(on_a) // 2 :]
    tally, cache = Tally(), FrameCache()
    try:
        await asyncio.to_thread(a.wait_ready)
        await asyncio.to_thread(b.wait_ready)
        await connect_all(on_a, a.url, tally, cache)
        await connect_all(on_b, b.url, tally, cache)

        async def all_open() -> bool:
            found = await intervals(conn)
            return len(found) == REPS and all(rows[-1]["ended_at"] is None for rows in found.values())

        await wait_for(all_open, 30, "an open interval for everyone")
        await asyncio.sleep(LEASE)  # a few renewals on both nodes

        os.kill(a.proc.pid, signal.SIGKILL)
        killed_at = time.time()
        await asyncio.to_thread(a.proc.wait)
        # Half come back at once, on the other node: their interval goes on.
        await connect_all(back_soon, b.url, tally, cache)

        async def late_closed() -> bool:
            found = await intervals(conn)
            return all(found[p.rep][-1]["ended_at"] is not None for p in back_late)

        await wait_for(late_closed, LEASE + GRACE + 20, "the dead node's intervals to close")
        found = await intervals(conn)
        for person in back_late:
            (only,) = found[person.rep]
            assert only["close_reason"] == "lease_expired"
            # Closed when the lease the dead node last renewed ran out: within one lease of the kill.
            ended = only["ended_at"].timestamp()
            assert killed_at - 0.5 <= ended <= killed_at + LEASE + 0.5, (person.rep, ended - killed_at)
        for person in back_soon:
            (only,) = found[person.rep]
            assert only["ended_at"] is None and only["node_id"] == "b"  # continued, now held by b

        # The other half come back after the grace: a new interval, after the first one.
        await connect_all(back_late, b.url, tally, cache)

        async def reopened() -> bool:
            found = await intervals(conn)
            return all(len(found[p.rep]) == 2 and found[p.rep][1]["ended_at"] is None for p in back_late)

        await wait_for(reopened, 30, "new intervals for those who came back late")
        await asyncio.sleep(1)

        assert b.stop() == 0  # graceful: the node closes every interval it holds
        assert await conn.fetchval("SELECT count(*) FROM attendance_intervals WHERE ended_at IS NULL") == 0
        overlaps = await conn.fetchval(
            """SELECT count(*) FROM attendance_intervals x JOIN attendance_intervals y
                 ON x.session_id = y.session_id AND x.rep_id = y.rep_id AND x.id < y.id
                AND tstzrange(x.started_at, x.ended_at) && tstzrange(y.started_at, y.ended_at)"""
        )
        assert overlaps == 0
        found = await intervals(conn)
        counts = {p.rep: len(found[p.rep]) for p in people}
        assert {counts[p.rep] for p in on_b} == {1}
        assert {counts[p.rep] for p in back_soon} == {1}
        assert {counts[p.rep] for p in back_late} == {2}
        for person in people:
            recorded = sum((row["ended_at"] - row["started_at"]).total_seconds() for row in found[person.rep])
            assert abs(recorded - person.truth()) <= LEASE, (person.rep, recorded, person.truth())
        assert tally.refused == 0
    finally:
        for person in people:
            person.close()
        a.stop()
        b.stop()
        await conn.close()
