"""The database itself refuses what must never happen, whatever the application does."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from recorder import events
from recorder.migrate import load_migrations, migrate

pytestmark = pytest.mark.asyncio(loop_scope="session")

T0 = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)


async def make_session(db: asyncpg.Pool, session_id: str = "s-1") -> str:
    await db.execute(
        """INSERT INTO sessions (id, kind, title, scheduled_start, scheduled_end, epoch, created_by)
           VALUES ($1, 'special_inquiry', 'Inquiry', $2, $3, 'e1', 'test')""",
        session_id,
        T0,
        T0 + timedelta(hours=2),
    )
    return session_id


async def test_concurrent_migrations_apply_once(services, template_db, database_url) -> None:  # type: ignore[no-untyped-def]
    # database_url is already migrated; start from an empty database instead.
    import secrets

    from tests.conftest import with_database

    name = "m_" + secrets.token_hex(4)
    admin = await asyncpg.connect(services.database_url)
    await admin.execute(f"CREATE DATABASE {name}")
    try:
        url = with_database(services.database_url, name)
        conns = [await asyncpg.connect(url) for _ in range(4)]
        results = await asyncio.gather(*(migrate(c) for c in conns))
        applied = sorted(v for r in results for v in r)
        assert applied == [m.version for m in load_migrations()]  # each version applied by exactly one
        assert await conns[0].fetchval("SELECT count(*) FROM schema_migrations") == len(load_migrations())
        assert await migrate(conns[0]) == []  # a later start applies nothing
        for c in conns:
            await c.close()
    finally:
        await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
        await admin.close()


async def test_an_edited_migration_is_refused(db: asyncpg.Pool) -> None:
    await db.execute("UPDATE schema_migrations SET checksum = 'edited' WHERE version = 1")
    async with db.acquire() as conn:
        with pytest.raises(Exception, match="changed after it was applied"):
            await migrate(conn)


async def test_one_vote_per_representative_per_question(db: asyncpg.Pool) -> None:
    sid = await make_session(db)
    poll = await db.fetchval(
        "INSERT INTO polls (session_id, kind, title, created_by) VALUES ($1, 'yes_no', 'Q', 'h') "
        "RETURNING id",
        sid,
    )
    question = await db.fetchval(
        "INSERT INTO poll_questions (poll_id, position, text) VALUES ($1, 0, 'Agree?') RETURNING id", poll
    )
    option = await db.fetchval(
        "INSERT INTO poll_options (question_id, position, label) VALUES ($1, 0, 'yes') RETURNING id", question
    )
    ballot = "INSERT INTO ballots (poll_id, question_id, rep_id, client_key) VALUES ($1, $2, $3, $4)"
    await db.execute(ballot, poll, question, "R1", "k1")
    with pytest.raises(asyncpg.UniqueViolationError):
        await db.execute(ballot, poll, question, "R1", "k2")
    await db.execute(ballot, poll, question, "R2", "k1")
    assert await db.fetchval("SELECT count(*) FROM ballots") == 2
    with pytest.raises(asyncpg.CheckViolationError, match="append-only"):
        await db.execute("DELETE FROM ballots WHERE rep_id = 'R1'")
    # A vote needs its ballot.
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await db.execute(
            "INSERT INTO votes (question_id, rep_id, poll_id, option_ids) VALUES ($1, 'R3', $2, $3)",
            question,
            poll,
            [option],
        )


async def test_poll_definition_is_fixed_once_open(db: asyncpg.Pool) -> None:
    sid = await make_session(db)
    poll = await db.fetchval(
        "INSERT INTO polls (session_id, kind, title, created_by) VALUES ($1, 'single', 'Q', 'h') "
        "RETURNING id",
        sid,
    )
    question = await db.fetchval(
        "INSERT INTO poll_questions (poll_id, position, text) VALUES ($1, 0, 'Which?') RETURNING id", poll
    )
    await db.execute("UPDATE polls SET state = 'open' WHERE id = $1", poll)
    with pytest.raises(asyncpg.CheckViolationError, match="fixed"):
        await db.execute(
            "INSERT INTO poll_options (question_id, position, label) VALUES ($1, 0, 'A')", question
        )
    with pytest.raises(asyncpg.CheckViolationError, match="cannot go from open to published"):
        await db.execute("UPDATE polls SET state = 'published' WHERE id = $1", poll)


async def test_attendance_intervals_never_overlap(db: asyncpg.Pool) -> None:
    sid = await make_session(db)
    add = """INSERT INTO attendance_intervals (session_id, rep_id, started_at, ended_at, lease_until, node_id)
             VALUES ($1, $2, $3, $4, $3, 'n1')"""
    await db.execute(add, sid, "R1", T0, T0 + timedelta(minutes=10))
    await db.execute(
        add, sid, "R1", T0 + timedelta(minutes=10), T0 + timedelta(minutes=20)
    )  # touching is fine
    await db.execute(add, sid, "R2", T0, None)  # another representative
    with pytest.raises(asyncpg.ExclusionViolationError):
        await db.execute(add, sid, "R1", T0 + timedelta(minutes=5), T0 + timedelta(minutes=6))
    await db.execute(add, sid, "R1", T0 + timedelta(minutes=30), None)  # an open interval …
    with pytest.raises(asyncpg.ExclusionViolationError):  # … runs to infinity
        await db.execute(add, sid, "R1", T0 + timedelta(hours=5), T0 + timedelta(hours=6))


async def test_event_log_is_gap_free_and_append_only(db: asyncpg.Pool) -> None:
    sid = await make_session(db)
    insert = "INSERT INTO events (session_id, seq, type) VALUES ($1, $2, 'session.note')"
    await db.execute(insert, sid, 1)
    with pytest.raises(asyncpg.CheckViolationError, match="not the next one"):
        await db.execute(insert, sid, 3)  # a gap
    with pytest.raises(asyncpg.CheckViolationError):
        await db.execute(insert, sid, 1)  # a repeat
    await db.execute(insert, sid, 2)
    with pytest.raises(asyncpg.CheckViolationError, match="append-only"):
        await db.execute("DELETE FROM events WHERE session_id = $1 AND seq = 1", sid)
    with pytest.raises(asyncpg.CheckViolationError, match="append-only"):
        await db.execute("UPDATE events SET type = 'session.other' WHERE session_id = $1", sid)
    with pytest.raises(asyncpg.CheckViolationError, match="cannot go back"):
        await db.execute("UPDATE sessions SET last_seq = 0 WHERE id = $1", sid)


async def test_concurrent_appends_get_consecutive_seqs(db: asyncpg.Pool) -> None:
    sid = await make_session(db)

    async def writer(n: int) -> list[int]:
        async with db.acquire() as conn, conn.transaction():
            written = await events.append(
                conn, sid, [events.NewEvent("comment.published", {"n": n, "i": i}) for i in range(3)]
            )
        return [e.seq for e in written]

    batches = await asyncio.gather(*(writer(n) for n in range(8)))
    for batch in batches:
        assert batch == list(range(batch[0], batch[0] + 3))  # each batch is contiguous
    assert sorted(s for b in batches for s in b) == list(range(1, 25))
    replay = await events.read_after(db, sid, 20)
    assert [e.seq for e in replay] == [21, 22, 23, 24]


async def test_session_state_machine_is_enforced(db: asyncpg.Pool) -> None:
    sid = await make_session(db)
    await db.execute("UPDATE sessions SET state = 'live' WHERE id = $1", sid)
    await db.execute("UPDATE sessions SET state = 'ended' WHERE id = $1", sid)
    with pytest.raises(asyncpg.CheckViolationError, match="cannot go from ended to live"):
        await db.execute("UPDATE sessions SET state = 'live' WHERE id = $1", sid)
