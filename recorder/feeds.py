"""Video feeds in the ledger: which session a feed belongs to, its stream key (stored as a
digest only), and when it went live or ended — each change with its event in the
session's log, so viewers' pages switch without polling."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from typing import Annotated, Any

import asyncpg
import msgspec

from config.errors import Conflict, NotFound, Unauthorized
from recorder import events
from recorder.errors import RecorderError, SessionNotFound
from recorder.sessions import SESSION_ID

FEED_ID = r"[a-z0-9][a-z0-9-]{1,62}"
KEY_PREFIX = "tsk_"


class FeedNotFound(RecorderError, NotFound):
    pass


class FeedExists(RecorderError, Conflict):
    pass


class WrongKey(RecorderError, Unauthorized):
    pass


class FeedSpec(msgspec.Struct, forbid_unknown_fields=True):
    id: Annotated[str, msgspec.Meta(pattern=f"^{FEED_ID}$")]
    session: Annotated[str, msgspec.Meta(pattern=f"^{SESSION_ID}$")]
    delay: Annotated[int, msgspec.Meta(ge=0, le=300)] = 0  # seconds the public output trails live
    upstream: Annotated[str, msgspec.Meta(min_length=8, max_length=2048)] | None = None  # an HLS URL


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def view(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": row["id"],
        "session": row["session_id"],
        "state": row["state"],
        "live_since": row["live_since"].isoformat() if row["live_since"] else None,
        "key_version": row["key_version"],
        "rotated_at": row["rotated_at"].isoformat() if row["rotated_at"] else None,
        "delay": row["delay_seconds"],
        "cut": row["cut"],
        "source": row["source"],
        "upstream": row["upstream_url"],
    }


def check_id(feed_id: str) -> str:
    if not re.fullmatch(FEED_ID, feed_id):
        raise FeedNotFound(f"no feed {feed_id!r}: feed ids are 2..63 lower-case letters, digits and -")
    return feed_id


async def create(pool: asyncpg.Pool, spec: FeedSpec, actor: str) -> tuple[dict[str, Any], str | None]:
    """A new feed for a session: published over WHIP (returns its stream key, shown only
    now) or relayed from `spec.upstream` (no key)."""
    key = new_key() if spec.upstream is None else None
    async with pool.acquire() as conn, conn.transaction():
        if not await conn.fetchval("SELECT true FROM sessions WHERE id = $1", spec.session):
            raise SessionNotFound(f"no session {spec.session!r}; create the session first")
        row = await conn.fetchrow(
            """INSERT INTO feeds (id, session_id, source, stream_key_hash, created_by, delay_seconds,
                                  upstream_url)
               VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO NOTHING RETURNING *""",
            spec.id,
            spec.session,
            "whip" if key else "hls_relay",
            digest(key) if key else None,
            actor,
            spec.delay,
            spec.upstream,
        )
        if row is None:
            raise FeedExists(f"feed {spec.id!r} exists; rotate its key with POST /api/feeds/{spec.id}/key")
        await conn.execute(
            "INSERT INTO audit_log (actor, action, target, detail) VALUES ($1, 'feed.create', $2, $3)",
            actor,
            spec.id,
            {"session": spec.session, "delay": spec.delay, "upstream": spec.upstream},
        )
    return view(row), key


async def rotate(pool: asyncpg.Pool, feed_id: str, actor: str) -> tuple[dict[str, Any], str]:
    """A new stream key; the old one stops working at once (a publisher already live stays)."""
    key = new_key()
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            """UPDATE feeds SET stream_key_hash = $2, key_version = key_version + 1, rotated_at = now()
                WHERE id = $1 AND source = 'whip' RETURNING *""",
            check_id(feed_id),
            digest(key),
        )
        if row is None:
            raise FeedNotFound(f"no WHIP feed {feed_id!r}")
        await conn.execute(
            "INSERT INTO audit_log (actor, action, target, detail) VALUES ($1, 'feed.rotate_key', $2, $3)",
            actor,
            feed_id,
            {"key_version": row["key_version"]},
        )
    return view(row), key


async def get(pool: asyncpg.Pool | asyncpg.Connection, feed_id: str) -> asyncpg.Record:
    row = await pool.fetchrow("SELECT * FROM feeds WHERE id = $1", check_id(feed_id))
    if row is None:
        raise FeedNotFound(f"no feed {feed_id!r}; an admin creates feeds with POST /api/feeds")
    return row


async def authorize(pool: asyncpg.Pool, feed_id: str, key: str) -> asyncpg.Record:
    """The feed a stream key opens; WrongKey if the key is not this feed's current one."""
    row = await get(pool, feed_id)
    stored = row["stream_key_hash"]
    if row["source"] != "whip" or stored is None or not hmac.compare_digest(stored, digest(key)):
        raise WrongKey(f"that is not the stream key of feed {feed_id!r}; ask an admin for the current one")
    return row


async def list_for_session(pool: asyncpg.Pool, session_id: str) -> list[dict[str, Any]]:
    rows = await pool.fetch("SELECT * FROM feeds WHERE session_id = $1 ORDER BY id", session_id)
    return [view(r) for r in rows]


async def set_cut(
    pool: asyncpg.Pool, feed_id: str, cut: bool, actor: str
) -> tuple[dict[str, Any], list[events.Event]]:
    """The kill switch: the public output shows the slate from now until released. Audited,
    with a `feed.cut` event in the session's log."""
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            """UPDATE feeds SET cut = $2, cut_at = CASE WHEN $2 THEN now() ELSE cut_at END
                WHERE id = $1 RETURNING *""",
            feed_id,
            cut,
        )
        if row is None:
            raise FeedNotFound(f"no feed {feed_id!r}")
        await conn.execute(
            "INSERT INTO audit_log (actor, action, target, detail) VALUES ($1, $2, $3, $4)",
            actor,
            "feed.cut" if cut else "feed.restore",
            feed_id,
            {"session": row["session_id"]},
        )
        data = {"feed": feed_id, "cut": cut}
        appended = await events.append(conn, row["session_id"], [events.NewEvent("feed.cut", data)])
    return view(row), appended


async def mark_live(pool: asyncpg.Pool, feed_id: str, node: str) -> tuple[str, list[events.Event]]:
    """Record that `node` ingests the feed now, with a `feed.live` event."""
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            """UPDATE feeds SET state = 'live', node = $2, live_since = now()
                WHERE id = $1 RETURNING session_id, live_since""",
            feed_id,
            node,
        )
        if row is None:
            raise FeedNotFound(f"no feed {feed_id!r}")
        data = {"feed": feed_id, "since": row["live_since"].isoformat()}
        appended = await events.append(conn, row["session_id"], [events.NewEvent("feed.live", data)])
    return row["session_id"], appended


async def mark_stalled(pool: asyncpg.Pool, feed_id: str, node: str) -> tuple[str, list[events.Event]] | None:
    """A relayed feed whose upstream stopped sending, with a `feed.stalled` event."""
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            """UPDATE feeds SET state = 'stalled' WHERE id = $1 AND state = 'live' AND node = $2
            RETURNING session_id""",
            feed_id,
            node,
        )
        if row is None:
            return None
        data = {"feed": feed_id}
        appended = await events.append(conn, row["session_id"], [events.NewEvent("feed.stalled", data)])
    return row["session_id"], appended


async def mark_ended(
    pool: asyncpg.Pool, feed_id: str, node: str | None, reason: str
) -> tuple[str, list[events.Event]] | None:
    """Record that the feed ended (if `node` still had it; any node if None), with a
    `feed.ended` event; None if it was not live there."""
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            """UPDATE feeds SET state = 'ended', node = NULL
                WHERE id = $1 AND state IN ('live', 'stalled') AND ($2::text IS NULL OR node = $2)
            RETURNING session_id""",
            feed_id,
            node,
        )
        if row is None:
            return None
        data = {"feed": feed_id, "reason": reason}
        appended = await events.append(conn, row["session_id"], [events.NewEvent("feed.ended", data)])
    return row["session_id"], appended


async def end_all_of(pool: asyncpg.Pool, node: str, reason: str) -> list[tuple[str, list[events.Event]]]:
    """End every feed still recorded as live on `node` (it stopped or died)."""
    ids = await pool.fetch("SELECT id FROM feeds WHERE state IN ('live', 'stalled') AND node = $1", node)
    done = []
    for row in ids:
        if (ended := await mark_ended(pool, row["id"], node, reason)) is not None:
            done.append(ended)
    return done
