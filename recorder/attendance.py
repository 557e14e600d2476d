"""Attendance intervals: opened on a representative's first connection to a live session,
kept alive by a lease the nodes renew, closed when nobody vouches for it any more.

Several tabs, devices and nodes merge into one interval: a node renews the open interval if
there is one, reopens the last one if it ended within the grace period (a reconnect
continues it), and only otherwise opens a new one. The database refuses overlaps, so two
nodes opening at once cannot both win; the loser renews the winner's interval.
"""

from __future__ import annotations

import asyncpg

RENEW = """UPDATE attendance_intervals SET lease_until = now() + make_interval(secs => $3),
                  node_id = $4, close_reason = NULL
            WHERE session_id = $1 AND rep_id = ANY($2::text[]) AND ended_at IS NULL
        RETURNING rep_id"""
REOPEN = """UPDATE attendance_intervals SET ended_at = NULL, close_reason = NULL,
                   lease_until = now() + make_interval(secs => $3), node_id = $4
             WHERE id IN (SELECT DISTINCT ON (rep_id) id FROM attendance_intervals
                           WHERE session_id = $1 AND rep_id = ANY($2::text[])
                             AND ended_at >= now() - make_interval(secs => $5)
                           ORDER BY rep_id, ended_at DESC)
         RETURNING rep_id"""
OPEN = """INSERT INTO attendance_intervals (session_id, rep_id, started_at, lease_until, node_id)
          SELECT $1, r, now(), now() + make_interval(secs => $3), $4 FROM unnest($2::text[]) AS r"""


async def touch(
    pool: asyncpg.Pool, session_id: str, reps: list[str], *, node: str, lease: float, grace: float
) -> None:
    """Make sure each of `reps` has an open interval in the session, leased for `lease` s."""
    for attempt in (1, 2):
        try:
            async with pool.acquire() as conn, conn.transaction():
                renewed = {r["rep_id"] for r in await conn.fetch(RENEW, session_id, reps, lease, node)}
                rest = [r for r in reps if r not in renewed]
                if rest:
                    reopened = {
                        r["rep_id"] for r in await conn.fetch(REOPEN, session_id, rest, lease, node, grace)
                    }
                    rest = [r for r in rest if r not in reopened]
                if rest:
                    await conn.execute(OPEN, session_id, rest, lease, node)
            return
        except asyncpg.ExclusionViolationError:
            if attempt == 2:
                raise  # another node opened it twice in a row: give up until the next renewal


async def release(pool: asyncpg.Pool, session_id: str, reps: list[str]) -> None:
    """This node no longer vouches for `reps`: the lease ends now. If another node holds them
    it renews within the grace period; otherwise the sweep closes the interval at this time."""
    await pool.execute(
        """UPDATE attendance_intervals SET lease_until = now(), close_reason = 'left'
            WHERE session_id = $1 AND rep_id = ANY($2::text[]) AND ended_at IS NULL""",
        session_id,
        reps,
    )


async def sweep(pool: asyncpg.Pool, *, grace: float) -> int:
    """Close intervals nobody renewed for `grace` seconds past their lease; they end when
    their lease did. Returns how many were closed."""
    result = await pool.execute(
        """UPDATE attendance_intervals
              SET ended_at = greatest(started_at, lease_until),
                  close_reason = coalesce(close_reason, 'lease_expired')
            WHERE ended_at IS NULL AND lease_until < now() - make_interval(secs => $1)""",
        grace,
    )
    return int(result.split()[-1])


async def close_owned(pool: asyncpg.Pool, node: str) -> None:
    """Graceful shutdown: close every open interval this node renewed last, at the time its
    representative left (released while the node disconnected its clients) or now."""
    await pool.execute(
        """UPDATE attendance_intervals
              SET ended_at = greatest(started_at, least(lease_until, now())), close_reason = 'left'
            WHERE ended_at IS NULL AND node_id = $1""",
        node,
    )


async def close_session(conn: asyncpg.Connection, session_id: str) -> None:
    """The session ended: every open interval ends with it (in the caller's transaction)."""
    await conn.execute(
        """UPDATE attendance_intervals SET ended_at = now(), close_reason = 'session_ended'
            WHERE session_id = $1 AND ended_at IS NULL""",
        session_id,
    )
