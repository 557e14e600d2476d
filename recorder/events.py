"""The per-session event log: gap-free `seq`, written in the caller's transaction."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from recorder.errors import SessionNotFound


@dataclass(frozen=True, slots=True)
class Event:
    seq: int
    type: str
    at: datetime
    data: dict[str, Any]

    def wire(self) -> dict[str, Any]:
        return {"seq": self.seq, "type": self.type, "at": self.at.isoformat(), "data": self.data}


@dataclass(frozen=True, slots=True)
class NewEvent:
    type: str
    data: dict[str, Any]
    actor: str | None = None


async def append(conn: asyncpg.Connection, session_id: str, items: Sequence[NewEvent]) -> list[Event]:
    """Append events to a session's log; must run inside a transaction.

    The session row is locked, so concurrent writers queue and each batch gets the next
    seqs in one round trip; the database refuses anything but the next seq anyway.
    """
    if not conn.is_in_transaction():
        raise RuntimeError("events.append must run inside a transaction")
    # NO KEY UPDATE: it queues writers of the log, yet does not conflict with the KEY SHARE
    # lock that inserting a row referencing the session (a comment, a vote) already holds.
    last = await conn.fetchval("SELECT last_seq FROM sessions WHERE id = $1 FOR NO KEY UPDATE", session_id)
    if last is None:
        raise SessionNotFound(f"no session {session_id!r}")
    if not items:
        return []
    rows = await conn.fetch(
        """INSERT INTO events (session_id, seq, type, actor, data)
           SELECT $1, $2 + x.n, x.type, x.actor, x.data
             FROM unnest($3::text[], $4::text[], $5::jsonb[]) WITH ORDINALITY AS x(type, actor, data, n)
            ORDER BY x.n
        RETURNING seq, type, at, data""",
        session_id,
        last,
        [i.type for i in items],
        [i.actor for i in items],
        [i.data for i in items],
    )
    return [Event(r["seq"], r["type"], r["at"], r["data"]) for r in sorted(rows, key=lambda r: r["seq"])]


async def read_after(
    conn: asyncpg.Connection | asyncpg.Pool, session_id: str, after: int, limit: int = 1000
) -> list[Event]:
    rows = await conn.fetch(
        "SELECT seq, type, at, data FROM events WHERE session_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        session_id,
        after,
        limit,
    )
    return [Event(r["seq"], r["type"], r["at"], r["data"]) for r in rows]
