"""Leaves of absence (请假): staff record that a representative is excused from a session.
Reports and reminders count an excused absence apart from an unexcused one."""

from __future__ import annotations

import re
from typing import Annotated, Any

import asyncpg
import msgspec

from config.text import clean_text
from recorder.errors import InvalidInput, SessionNotFound
from recorder.sessions import REP_ID, SESSION_ID


class LeaveBody(msgspec.Struct, forbid_unknown_fields=True):
    reason: Annotated[str, msgspec.Meta(max_length=500)] = ""


class NotOnRoster(InvalidInput):
    pass


def _view(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "session": row["session_id"],
        "rep": row["rep_id"],
        "name": row["name"],
        "reason": row["reason"],
        "recorded_by": row["recorded_by"],
        "recorded_at": row["recorded_at"].isoformat(),
    }


async def _check(conn: asyncpg.Connection | asyncpg.Pool, session_id: str, rep: str) -> None:
    if not re.fullmatch(SESSION_ID, session_id) or not await conn.fetchval(
        "SELECT true FROM sessions WHERE id = $1", session_id
    ):
        raise SessionNotFound(f"no session {session_id!r}")
    if not re.fullmatch(REP_ID, rep) or not await conn.fetchval(
        "SELECT true FROM representatives WHERE id = $1", rep
    ):
        raise NotOnRoster(f"representative {rep!r} is not on the roster; import the roster first")


async def record(pool: asyncpg.Pool, session_id: str, rep: str, reason: str, actor: str) -> dict[str, Any]:
    """Record (or amend the reason of) a leave of absence."""
    async with pool.acquire() as conn, conn.transaction():
        await _check(conn, session_id, rep)
        await conn.execute(
            """INSERT INTO leaves_of_absence (session_id, rep_id, reason, recorded_by) VALUES ($1, $2, $3, $4)
               ON CONFLICT (session_id, rep_id) DO UPDATE
                  SET reason = excluded.reason, recorded_by = excluded.recorded_by, recorded_at = now()""",
            session_id,
            rep,
            clean_text(reason, multiline=True),
            actor,
        )
        await conn.execute(
            "INSERT INTO audit_log (actor, action, target, detail) VALUES ($1, 'leave.record', $2, $3)",
            actor,
            session_id,
            {"rep": rep, "reason": reason[:500]},
        )
        row = await conn.fetchrow(
            """SELECT l.*, coalesce(r.name, l.rep_id) AS name FROM leaves_of_absence l
                 LEFT JOIN representatives r ON r.id = l.rep_id WHERE session_id = $1 AND rep_id = $2""",
            session_id,
            rep,
        )
    return _view(row)


async def withdraw(pool: asyncpg.Pool, session_id: str, rep: str, actor: str) -> bool:
    """Withdraw a leave recorded in error; False if there was none."""
    async with pool.acquire() as conn, conn.transaction():
        await _check(conn, session_id, rep)
        done = await conn.execute(
            "DELETE FROM leaves_of_absence WHERE session_id = $1 AND rep_id = $2", session_id, rep
        )
        if done.endswith(" 0"):
            return False
        await conn.execute(
            "INSERT INTO audit_log (actor, action, target, detail) VALUES ($1, 'leave.withdraw', $2, $3)",
            actor,
            session_id,
            {"rep": rep},
        )
    return True


async def list_for(pool: asyncpg.Pool, session_id: str) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        """SELECT l.*, coalesce(r.name, l.rep_id) AS name FROM leaves_of_absence l
             LEFT JOIN representatives r ON r.id = l.rep_id WHERE session_id = $1 ORDER BY rep_id""",
        session_id,
    )
    return [_view(r) for r in rows]
