"""Sessions: scheduling, who may attend in which tier, and the state machine."""

from __future__ import annotations

import re
import secrets
from datetime import datetime
from typing import Annotated, Any, Literal

import asyncpg
import msgspec
from msgspec import Meta

from config.auth import Principal, Role
from config.text import clean_text
from recorder import attendance, events
from recorder.errors import InvalidInput, SessionConflict, SessionNotFound

Kind = Literal[
    "committee_meeting",
    "special_inquiry",
    "court_hearing",
    "procuratorate_open_day",
    "lecture",
    "consultation",
]
Audience = Literal["public", "roster", "invited"]
Tier = Literal["voting", "observer", "viewer"]
State = Literal["scheduled", "live", "ended"]

SESSION_ID = r"^[a-z0-9][a-z0-9-]{1,62}$"
REP_ID = r"^[A-Za-z0-9_.:-]{1,64}$"


class Participant(msgspec.Struct, forbid_unknown_fields=True):
    rep: Annotated[str, Meta(pattern=REP_ID)]
    tier: Tier


class SessionSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    kind: Kind
    title: Annotated[str, Meta(min_length=1, max_length=200)]
    scheduled_start: Annotated[datetime, Meta(tz=True)]
    scheduled_end: Annotated[datetime, Meta(tz=True)]
    announcement: Annotated[str, Meta(max_length=5000)] = ""
    audience: Audience = "roster"
    default_tier: Tier = "viewer"
    moderation: Literal["pre", "post"] = "pre"
    id: Annotated[str, Meta(pattern=SESSION_ID)] | None = None
    participants: Annotated[list[Participant], Meta(max_length=100_000)] = msgspec.field(default_factory=list)


class StateChange(msgspec.Struct, forbid_unknown_fields=True):
    state: Literal["live", "ended"]


_COLUMNS = """s.id, s.kind, s.title, s.announcement, s.scheduled_start, s.scheduled_end, s.state,
              s.audience, s.default_tier, s.moderation, s.epoch, s.last_seq, s.started_at, s.ended_at"""


def tier_for(row: asyncpg.Record | dict[str, Any], principal: Principal) -> str | None:
    """The caller's tier in a session, or None if they may not attend it.

    `row` carries the session plus `p_tier` (the caller's participant tier, if listed) and
    `in_roster` (the caller is an active representative on the roster).
    """
    if row["p_tier"] is not None:
        return str(row["p_tier"])
    staff = principal.has(Role.ADMIN, Role.HOST, Role.MODERATOR)
    audience = row["audience"]
    if audience == "invited":
        return "viewer" if principal.has(Role.ADMIN) else None
    if row["in_roster"]:
        return str(row["default_tier"])
    if audience == "public" or staff:
        return "viewer"  # voting and observing need a place on the roster
    return None


def view(row: asyncpg.Record | dict[str, Any], tier: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": row["id"],
        "kind": row["kind"],
        "title": row["title"],
        "announcement": row["announcement"],
        "scheduled_start": row["scheduled_start"].isoformat(),
        "scheduled_end": row["scheduled_end"].isoformat(),
        "state": row["state"],
        "audience": row["audience"],
        "default_tier": row["default_tier"],
        "moderation": row["moderation"],
        "epoch": row["epoch"],
        "seq": row["last_seq"],
        "started_at": row["started_at"].isoformat() if row["started_at"] else None,
        "ended_at": row["ended_at"].isoformat() if row["ended_at"] else None,
    }
    if tier is not None:
        out["your_tier"] = tier
    return out


def _new_id() -> str:
    return "s-" + secrets.token_hex(5)


def _check_spec(spec: SessionSpec) -> SessionSpec:
    title = clean_text(spec.title)
    if not title:
        raise InvalidInput("title must not be empty")
    if spec.scheduled_end <= spec.scheduled_start:
        raise InvalidInput("scheduled_end must be after scheduled_start")
    reps = [p.rep for p in spec.participants]
    if len(set(reps)) != len(reps):
        raise InvalidInput("participants lists a representative twice")
    if spec.audience == "invited" and not spec.participants:
        raise InvalidInput("an invited session needs participants")
    return msgspec.structs.replace(
        spec, title=title, announcement=clean_text(spec.announcement, multiline=True)
    )


async def create(pool: asyncpg.Pool, spec: SessionSpec, actor: str) -> dict[str, Any]:
    spec = _check_spec(spec)
    session_id = spec.id or _new_id()
    async with pool.acquire() as conn, conn.transaction():
        try:
            row = await conn.fetchrow(
                f"""INSERT INTO sessions AS s (id, kind, title, announcement, scheduled_start, scheduled_end,
                                       audience, default_tier, epoch, created_by, moderation)
                    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING {_COLUMNS}""",
                session_id,
                spec.kind,
                spec.title,
                spec.announcement,
                spec.scheduled_start,
                spec.scheduled_end,
                spec.audience,
                spec.default_tier,
                secrets.token_hex(4),
                actor,
                spec.moderation,
            )
        except asyncpg.UniqueViolationError:
            raise SessionConflict(f"a session with id {session_id!r} already exists") from None
        if spec.participants:
            await conn.executemany(
                "INSERT INTO session_participants (session_id, rep_id, tier) VALUES ($1, $2, $3)",
                [(session_id, p.rep, p.tier) for p in spec.participants],
            )
        await events.append(conn, session_id, [events.NewEvent("session.scheduled", view(row), actor)])
        row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM sessions s WHERE id = $1", session_id)
    return view(row)


async def _fetch_for(conn: asyncpg.Connection | asyncpg.Pool, session_id: str, rep: str) -> asyncpg.Record:
    if not re.fullmatch(SESSION_ID, session_id):
        raise SessionNotFound(f"no session {session_id!r}: session ids are lower-case letters, digits and -")
    row = await conn.fetchrow(
        f"""SELECT {_COLUMNS}, p.tier AS p_tier, (r.id IS NOT NULL) AS in_roster
              FROM sessions s
              LEFT JOIN session_participants p ON p.session_id = s.id AND p.rep_id = $2
              LEFT JOIN representatives r ON r.id = $2 AND r.active
             WHERE s.id = $1""",
        session_id,
        rep,
    )
    if row is None:
        raise SessionNotFound(f"no session {session_id!r}; list sessions with GET /api/sessions")
    return row


async def get_for(pool: asyncpg.Pool, session_id: str, principal: Principal) -> dict[str, Any]:
    row = await _fetch_for(pool, session_id, principal.rep)
    tier = tier_for(row, principal)
    if tier is None:
        # Same answer as for a session that does not exist: do not reveal invitations.
        raise SessionNotFound(f"no session {session_id!r} that you may attend")
    return view(row, tier)


async def list_for(
    pool: asyncpg.Pool, principal: Principal, *, state: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    # The WHERE clause is `tier_for(...) is not None` in SQL, so a page is never short.
    rows = await pool.fetch(
        f"""SELECT {_COLUMNS}, p.tier AS p_tier, (r.id IS NOT NULL) AS in_roster
              FROM sessions s
              LEFT JOIN session_participants p ON p.session_id = s.id AND p.rep_id = $1
              LEFT JOIN representatives r ON r.id = $1 AND r.active
             WHERE ($2::text IS NULL OR s.state = $2)
               AND (p.tier IS NOT NULL OR $4
                    OR (s.audience <> 'invited' AND (r.id IS NOT NULL OR s.audience = 'public' OR $5)))
             ORDER BY s.scheduled_start DESC
             LIMIT $3""",
        principal.rep,
        state,
        limit,
        principal.has(Role.ADMIN),
        principal.has(Role.ADMIN, Role.HOST, Role.MODERATOR),
    )
    return [view(row, tier_for(row, principal)) for row in rows]


_ALLOWED = {"scheduled": {"live", "ended"}, "live": {"ended"}, "ended": set()}


async def change_state(
    pool: asyncpg.Pool, session_id: str, new_state: str, principal: Principal
) -> tuple[dict[str, Any], events.Event]:
    async with pool.acquire() as conn, conn.transaction():
        row = await _fetch_for(conn, session_id, principal.rep)
        if tier_for(row, principal) is None:
            raise SessionNotFound(f"no session {session_id!r} that you may attend")
        current = row["state"]
        if new_state not in _ALLOWED[current]:
            raise SessionConflict(f"session {session_id!r} is {current} and cannot become {new_state}")
        stamp = "started_at" if new_state == "live" else "ended_at"
        await conn.execute(
            f"UPDATE sessions SET state = $2, {stamp} = now() WHERE id = $1", session_id, new_state
        )
        if new_state == "ended":
            await attendance.close_session(conn, session_id)
        (event,) = await events.append(
            conn, session_id, [events.NewEvent("session.state", {"state": new_state}, principal.rep)]
        )
        updated = await conn.fetchrow(f"SELECT {_COLUMNS} FROM sessions s WHERE id = $1", session_id)
    return view(updated), event
