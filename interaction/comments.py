"""Comments and their moderation, as ledger writes.

Every change viewers must see is written with its event (and seq) in one transaction,
before anyone is told; pending comments never enter the viewers' event log.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import asyncpg

from config.auth import Principal, Role
from config.text import clean_text
from interaction.errors import CommentNotFound, InvalidMessage, ModerationConflict, NotPermitted
from interaction.words import WordList

Action = Literal[
    "approve", "reject", "remove", "pin", "unpin", "highlight", "unhighlight", "answered", "adopt"
]
COMMENTING_TIERS = frozenset({"voting", "observer"})
STAFF = (Role.MODERATOR, Role.HOST, Role.ADMIN)

_COLUMNS = """id, session_id, rep_id, author_name, delegation, body, status, pinned, highlighted,
              answered, adopted, adopted_note, flagged_words, created_at"""


def public_view(row: asyncpg.Record | dict[str, Any]) -> dict[str, Any]:
    """What viewers see of a comment."""
    return {
        "id": row["id"],
        "rep": row["rep_id"],
        "name": row["author_name"],
        "delegation": row["delegation"],
        "text": row["body"],
        "at": row["created_at"].isoformat(),
        "pinned": row["pinned"],
        "highlighted": row["highlighted"],
        "answered": row["answered"],
        "adopted": row["adopted"],
        "note": row["adopted_note"],
    }


def queue_view(row: asyncpg.Record | dict[str, Any]) -> dict[str, Any]:
    """What moderators see of a pending comment: also the words that held it."""
    return {**public_view(row), "status": row["status"], "flagged": list(row["flagged_words"])}


@dataclass(frozen=True, slots=True)
class SessionInfo:
    id: str
    state: str
    moderation: str


@dataclass(slots=True)
class Outcome:
    """What a write changed: the ack, the events to fan out, the moderators' queue change."""

    ack: dict[str, Any]
    events: list[dict[str, Any]] = field(default_factory=list)  # in wire form: seq, type, at, data
    queue_added: list[dict[str, Any]] = field(default_factory=list)
    queue_removed: list[int] = field(default_factory=list)


def check_tier(tier: str) -> None:
    if tier not in COMMENTING_TIERS:
        raise NotPermitted("viewers may watch but not comment; commenting needs the observer or voting tier")


def check_text(raw: str, max_chars: int) -> str:
    text = clean_text(raw, multiline=True)
    if not text:
        raise InvalidMessage("the comment is empty")
    if len(text) > max_chars:
        raise InvalidMessage(f"a comment is at most {max_chars} characters; this one has {len(text)}")
    return text


async def send(
    pool: asyncpg.Pool,
    session: SessionInfo,
    who: Principal,
    tier: str,
    *,
    text: str,
    key: str,
    words: WordList,
    max_chars: int,
) -> Outcome:
    check_tier(tier)
    if session.state == "ended":
        raise NotPermitted("the session has ended; comments are closed")
    body = check_text(text, max_chars)
    flagged = words.hits(body)
    status = "published" if session.moderation == "post" and not flagged else "pending"
    result = await pool.fetchval(
        "SELECT send_comment($1, $2, $3, $4, $5, $6, $7)",
        session.id,
        who.rep,
        who.name,
        body,
        status,
        flagged,
        key,
    )
    ack = {"comment": {"id": result["id"], "status": result["status"]}}
    if result["repeated"]:  # the same key again: the first result, and nothing new
        return Outcome(ack={**ack, "repeated": True})
    outcome = Outcome(ack=ack)
    if result["event"] is not None:
        outcome.events = [result["event"]]
    else:
        outcome.queue_added = [{**result["comment"], "status": result["status"], "flagged": list(flagged)}]
    return outcome


async def moderate(
    pool: asyncpg.Pool, session_id: str, who: Principal, *, comment_id: int, action: str, note: str
) -> Outcome:
    """One moderation action, done by the ledger's `moderate_comment` in one round trip."""
    if not who.has(*STAFF):
        raise NotPermitted("moderating comments needs the moderator, host or admin role")
    note = clean_text(note, multiline=True)
    if len(note) > 1000:
        raise InvalidMessage("a moderation note is at most 1000 characters")
    try:
        result = await pool.fetchval(
            "SELECT moderate_comment($1, $2, $3, $4, $5)", comment_id, session_id, who.rep, action, note
        )
    except asyncpg.InvalidParameterValueError:
        raise InvalidMessage(f"unknown moderation action {action!r}") from None
    if result.get("error") == "not_found":
        raise CommentNotFound(f"no comment {comment_id} in this session")
    if result.get("error") == "conflict":
        raise ModerationConflict(
            f"comment {comment_id} is {result['status']}; it cannot be {action}ed now"
            if action in ("approve", "reject")
            else f"comment {comment_id} is {result['status']}; {action} does not apply"
        )
    outcome = Outcome(ack={"comment": {"id": comment_id, "status": result["status"]}})
    if result["event"] is not None:
        outcome.events = [result["event"]]
    if action in ("approve", "reject") or (action == "remove" and result["event"] is None):
        outcome.queue_removed = [comment_id]
    return outcome


async def snapshot(pool: asyncpg.Pool, session_id: str, *, recent: int = 50) -> dict[str, Any]:
    """Recent and pinned published comments, consistent with the returned seq."""
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        head = await conn.fetchrow("SELECT epoch, last_seq FROM sessions WHERE id = $1", session_id)
        latest = await conn.fetch(
            f"""SELECT {_COLUMNS} FROM comments WHERE session_id = $1 AND status = 'published'
                ORDER BY id DESC LIMIT $2""",
            session_id,
            recent,
        )
        pinned = await conn.fetch(
            f"""SELECT {_COLUMNS} FROM comments WHERE session_id = $1 AND status = 'published' AND pinned
                ORDER BY id""",
            session_id,
        )
    return {
        "epoch": head["epoch"],
        "seq": head["last_seq"],
        "comments": [public_view(r) for r in reversed(latest)],
        "pinned": [public_view(r) for r in pinned],
    }


async def pending(pool: asyncpg.Pool, session_id: str, limit: int = 500) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        f"SELECT {_COLUMNS} FROM comments WHERE session_id = $1 AND status = 'pending' ORDER BY id LIMIT $2",
        session_id,
        limit,
    )
    return [queue_view(r) for r in rows]


@dataclass(frozen=True, slots=True)
class ExportRow:
    at: datetime
    rep: str
    name: str
    delegation: str
    text: str
    status: str
    trail: str
    adopted: bool
    note: str


async def export_rows(pool: asyncpg.Pool, session_id: str) -> list[ExportRow]:
    rows = await pool.fetch(
        """SELECT c.created_at, c.rep_id, c.author_name, c.delegation, c.body, c.status, c.adopted,
                  c.adopted_note,
                  coalesce(string_agg(to_char(m.at AT TIME ZONE 'Asia/Shanghai', 'YYYY-MM-DD HH24:MI:SS')
                                      || ' ' || m.action || ' by ' || m.moderator_id
                                      || CASE WHEN m.note <> '' THEN ' (' || m.note || ')' ELSE '' END,
                                      '; ' ORDER BY m.id), '') AS trail
             FROM comments c LEFT JOIN moderation_actions m ON m.comment_id = c.id
            WHERE c.session_id = $1
            GROUP BY c.id ORDER BY c.id""",
        session_id,
    )
    return [
        ExportRow(
            r["created_at"],
            r["rep_id"],
            r["author_name"],
            r["delegation"],
            r["body"],
            r["status"],
            r["trail"],
            r["adopted"],
            r["adopted_note"],
        )
        for r in rows
    ]
