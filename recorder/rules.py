"""Scoring rules: a TOML document, validated whole, stored as numbered versions.

A version is never changed; loading a file adds the next one and makes it current. A file
with any error is refused with a message naming the key, and the current version stays.
The shipped defaults (`config/scoring.toml`) become version 1 the first time rules are needed.
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from dataclasses import asdict, dataclass, field
from importlib import resources
from typing import Any, get_args

import asyncpg

from recorder.errors import InvalidInput
from recorder.periods import PeriodError, parse_period
from recorder.sessions import SESSION_ID, Kind

KINDS: tuple[str, ...] = get_args(Kind)
# What each activity may be given: points, points by session kind, a cap per session.
ACTIVITIES: dict[str, frozenset[str]] = {
    "attendance": frozenset({"points", "by_kind"}),
    "absence": frozenset({"points", "by_kind"}),
    "leave": frozenset({"points", "by_kind"}),
    "comment": frozenset({"points", "by_kind", "cap_per_session"}),
    "adopted_comment": frozenset({"points", "by_kind", "cap_per_session"}),
    "poll": frozenset({"points", "by_kind", "cap_per_session"}),
    "lecture_minute": frozenset({"points", "cap_per_session"}),
}
MAX_RULES_BYTES = 256 * 1024


class RulesError(InvalidInput):
    """A rules file that cannot be used; the message names the key."""


@dataclass(frozen=True, slots=True)
class Threshold:
    """When an attendance counts: every threshold given must be met (none: any attendance)."""

    min_share: float | None = None  # of the session's live time
    min_minutes: float | None = None

    def met(self, dwell_s: float, live_s: float) -> bool:
        share_ok = self.min_share is None or dwell_s >= self.min_share * live_s
        return share_ok and (self.min_minutes is None or dwell_s >= self.min_minutes * 60)


@dataclass(frozen=True, slots=True)
class Activity:
    points: float = 0.0
    by_kind: dict[str, float] = field(default_factory=dict)
    cap_per_session: int | None = None

    def priced(self, name: str, kind: str) -> tuple[float, str]:
        """(points, the rule key that set them) for a session of `kind`."""
        if kind in self.by_kind:
            return self.by_kind[kind], f"activities.{name}.by_kind.{kind}"
        return self.points, f"activities.{name}.points"


@dataclass(frozen=True, slots=True)
class Reminders:
    period: str = "quarter"
    below: float | None = None  # points in the period under which a representative is reminded
    inactive_days: int | None = None  # days without any fact (attendance, comment, ballot)
    max_absences: int | None = None  # unexcused absences in the period above which one is reminded


@dataclass(frozen=True, slots=True)
class Rules:
    effective: Threshold = Threshold()
    effective_by_kind: dict[str, Threshold] = field(default_factory=dict)
    effective_by_session: dict[str, Threshold] = field(default_factory=dict)
    activities: dict[str, Activity] = field(default_factory=dict)
    reminders: Reminders = Reminders()

    def activity(self, name: str) -> Activity:
        return self.activities.get(name, Activity())

    def threshold(self, session_id: str, kind: str) -> tuple[Threshold, str]:
        """The effective-attendance rule of a session and its key: the session's own, else
        its kind's, else the default."""
        if session_id in self.effective_by_session:
            return self.effective_by_session[session_id], f'effective_attendance.session."{session_id}"'
        if kind in self.effective_by_kind:
            return self.effective_by_kind[kind], f"effective_attendance.kind.{kind}"
        return self.effective, "effective_attendance"

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(json.dumps(asdict(self)))  # plain JSON types
        return out


@dataclass(frozen=True, slots=True)
class Version:
    version: int
    rules: Rules
    note: str
    created_by: str
    created_at: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "note": self.note,
            "created_by": self.created_by,
            "created_at": self.created_at,
            "rules": self.rules.as_dict(),
        }


# --- validation ------------------------------------------------------------------------


def _number(value: Any, key: str, *, low: float | None = None, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RulesError(f"{key} must be a number, got {value!r}")
    if low is not None and value < low:
        raise RulesError(f"{key} must be at least {low}, got {value!r}")
    if high is not None and value > high:
        raise RulesError(f"{key} must be at most {high}, got {value!r}")
    return float(value)


def _table(value: Any, key: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise RulesError(f"[{key}] must be a table")
    return value


def _unknown(table: dict[str, Any], allowed: set[str] | frozenset[str], key: str) -> None:
    if extra := sorted(set(table) - set(allowed)):
        raise RulesError(f"[{key}] has unknown key {extra[0]!r}; known: {', '.join(sorted(allowed))}")


def _threshold(value: Any, key: str) -> Threshold:
    table = _table(value, key)
    _unknown(table, {"min_share", "min_minutes"}, key)
    share = table.get("min_share")
    minutes = table.get("min_minutes")
    return Threshold(
        min_share=None if share is None else _number(share, f"{key}.min_share", low=0, high=1),
        min_minutes=None if minutes is None else _number(minutes, f"{key}.min_minutes", low=0, high=24 * 60),
    )


def _kind(name: str, key: str) -> str:
    if name not in KINDS:
        raise RulesError(f"{key}: unknown session kind {name!r}; kinds are {', '.join(KINDS)}")
    return name


def _activity(name: str, value: Any) -> Activity:
    key = f"activities.{name}"
    if name not in ACTIVITIES:
        raise RulesError(f"unknown activity {name!r} in [activities]; activities are {', '.join(ACTIVITIES)}")
    table = _table(value, key)
    _unknown(table, ACTIVITIES[name], key)
    by_kind = {
        _kind(kind, f"{key}.by_kind"): _number(points, f"{key}.by_kind.{kind}", low=-1000, high=1000)
        for kind, points in _table(table.get("by_kind", {}), f"{key}.by_kind").items()
    }
    cap = table.get("cap_per_session")
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 0):
        raise RulesError(f"{key}.cap_per_session must be a whole number of at least 0, got {cap!r}")
    return Activity(
        points=_number(table.get("points", 0), f"{key}.points", low=-1000, high=1000),
        by_kind=by_kind,
        cap_per_session=cap,
    )


def _reminders(value: Any) -> Reminders:
    table = _table(value, "reminders")
    _unknown(table, {"period", "below", "inactive_days", "max_absences"}, "reminders")
    period = table.get("period", "quarter")
    if not isinstance(period, str):
        raise RulesError(f"reminders.period must be text, got {period!r}")
    try:
        parse_period(period)
    except PeriodError as exc:
        raise RulesError(f"reminders.period: {exc.message}") from None
    below = table.get("below")
    days = table.get("inactive_days")
    absences = table.get("max_absences")
    for key, whole in (("inactive_days", days), ("max_absences", absences)):
        if whole is not None and (isinstance(whole, bool) or not isinstance(whole, int) or whole < 0):
            raise RulesError(f"reminders.{key} must be a whole number of at least 0, got {whole!r}")
    return Reminders(
        period=period,
        below=None if below is None else _number(below, "reminders.below"),
        inactive_days=days,
        max_absences=absences,
    )


def validate(doc: dict[str, Any]) -> Rules:
    """Rules from a parsed TOML (or stored JSON) document; RulesError names the first bad key."""
    _unknown(doc, {"effective_attendance", "activities", "reminders"}, "the rules file")
    eff = dict(_table(doc.get("effective_attendance", {}), "effective_attendance"))
    by_kind_raw = _table(eff.pop("kind", {}), "effective_attendance.kind")
    by_session_raw = _table(eff.pop("session", {}), "effective_attendance.session")
    by_session = {}
    for session_id, rule in by_session_raw.items():
        if not re.fullmatch(SESSION_ID, session_id):
            raise RulesError(f"effective_attendance.session: {session_id!r} is not a session id")
        by_session[session_id] = _threshold(rule, f'effective_attendance.session."{session_id}"')
    activities = {
        name: _activity(name, value)
        for name, value in _table(doc.get("activities", {}), "activities").items()
    }
    return Rules(
        effective=_threshold(eff, "effective_attendance"),
        effective_by_kind={
            _kind(kind, "effective_attendance.kind"): _threshold(rule, f"effective_attendance.kind.{kind}")
            for kind, rule in by_kind_raw.items()
        },
        effective_by_session=by_session,
        activities=activities,
        reminders=_reminders(doc.get("reminders", {})),
    )


def parse_toml(text: str) -> Rules:
    if len(text.encode()) > MAX_RULES_BYTES:
        raise RulesError(f"the rules file is larger than {MAX_RULES_BYTES} bytes")
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RulesError(f"the rules file is not valid TOML: {exc}") from None
    return validate(doc)


def _from_stored(data: dict[str, Any]) -> Rules:
    """Rules as `as_dict` stored them (the normalised form, not the TOML layout)."""

    def threshold(t: dict[str, Any]) -> Threshold:
        return Threshold(min_share=t.get("min_share"), min_minutes=t.get("min_minutes"))

    return Rules(
        effective=threshold(data["effective"]),
        effective_by_kind={k: threshold(v) for k, v in data["effective_by_kind"].items()},
        effective_by_session={k: threshold(v) for k, v in data["effective_by_session"].items()},
        activities={k: Activity(**v) for k, v in data["activities"].items()},
        reminders=Reminders(**data["reminders"]),
    )


def default_source() -> str:
    return (resources.files("config") / "scoring.toml").read_text(encoding="utf-8")


# --- versions --------------------------------------------------------------------------

_LOCK = 0x73636F72  # "scor": one writer of rule versions and points at a time


async def add_version(pool: asyncpg.Pool, source: str, *, note: str, actor: str) -> Version:
    """Validate `source` and store it as the next version, which becomes current."""
    rules = parse_toml(source)
    await get_version(pool)  # the shipped defaults stay version 1, so history starts with them
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK)
        row = await conn.fetchrow(
            """INSERT INTO score_rules (version, rules, note, created_by, source)
               SELECT coalesce(max(version), 0) + 1, $1, $2, $3, $4 FROM score_rules
               RETURNING version, note, created_by, created_at""",
            rules.as_dict(),
            note[:500],
            actor,
            source,
        )
        await conn.execute(
            "INSERT INTO audit_log (actor, action, target, detail) VALUES ($1, 'scoring.rules', $2, $3)",
            actor,
            str(row["version"]),
            {"note": note[:500]},
        )
    return Version(row["version"], rules, row["note"], row["created_by"], row["created_at"].isoformat())


async def get_version(pool: asyncpg.Pool | asyncpg.Connection, version: int | None = None) -> Version:
    """A version of the rules (the current one by default); the shipped defaults become
    version 1 when none was ever loaded."""
    query = "SELECT version, rules, note, created_by, created_at FROM score_rules "
    if version is None:
        row = await pool.fetchrow(query + "ORDER BY version DESC LIMIT 1")
        if row is None:
            await pool.execute(
                """INSERT INTO score_rules (version, rules, note, created_by, source)
                   VALUES (1, $1, 'shipped defaults', 'default', $2) ON CONFLICT DO NOTHING""",
                parse_toml(default_source()).as_dict(),
                default_source(),
            )
            row = await pool.fetchrow(query + "ORDER BY version DESC LIMIT 1")
    else:
        row = await pool.fetchrow(query + "WHERE version = $1", version)
        if row is None:
            raise RulesError(f"there is no rules version {version}; list them with GET /api/scores/rules")
    return Version(
        row["version"],
        _from_stored(row["rules"]),
        row["note"],
        row["created_by"],
        row["created_at"].isoformat(),
    )


async def list_versions(pool: asyncpg.Pool) -> list[dict[str, Any]]:
    await get_version(pool)  # make sure the defaults are there
    rows = await pool.fetch(
        "SELECT version, note, created_by, created_at FROM score_rules ORDER BY version DESC"
    )
    return [{**dict(r), "created_at": r["created_at"].isoformat()} for r in rows]


async def source_of(pool: asyncpg.Pool, version: int) -> str:
    source = await pool.fetchval("SELECT source FROM score_rules WHERE version = $1", version)
    if source is None:
        raise RulesError(f"there is no rules version {version}")
    return str(source)
