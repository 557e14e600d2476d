"""Polls (满意度测评, 票决): definitions, the draft → open → closed → published lifecycle as
ledger events, results computed from the ledger, on-site counts, who has not voted yet.

A poll's questions and options are fixed once it opens (the database refuses changes), so
nodes cache a definition and check a vote against it without a round trip; whether the poll
is still open is decided where the vote is written (interaction.ballots).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any, Literal

import asyncpg
import msgspec
from msgspec import Meta

from config.auth import Principal
from config.text import clean_text
from interaction.errors import InvalidMessage, PollConflict, PollNotFound
from recorder import events
from recorder.errors import SessionNotFound

log = logging.getLogger("tribune.polls")

Kind = Literal["satisfaction", "single", "multiple", "yes_no"]
Visibility = Literal["named", "anonymous"]
Tier = Literal["voting", "observer", "viewer"]
State = Literal["draft", "open", "closed", "published"]

SATISFACTION = ("满意", "基本满意", "不满意")
SATISFIED = 2  # the first two options count as satisfied: 满意率 = (满意 + 基本满意) / votes
YES_NO = ("赞成", "反对", "弃权")

Label = Annotated[str, Meta(min_length=1, max_length=200)]


class QuestionSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    text: Annotated[str, Meta(min_length=1, max_length=500)]
    options: Annotated[list[Label], Meta(min_length=1, max_length=100)]
    unit: Annotated[str, Meta(max_length=200)] = ""
    max_choices: Annotated[int, Meta(ge=1, le=100)] = 1


class PollSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A poll as the host writes it. Either `questions` in full, or the short forms: `units`
    for a satisfaction poll (each rated 满意 / 基本满意 / 不满意), `question` with `options`
    (single, multiple with `max_choices`) or alone (yes_no). A `template` fills defaults."""

    title: Annotated[str, Meta(min_length=1, max_length=200)]
    template: Annotated[str, Meta(max_length=64)] | None = None
    kind: Kind | None = None
    description: Annotated[str, Meta(max_length=2000)] = ""
    visibility: Visibility | None = None
    live_results: bool = False
    allow_change: bool = False
    threshold: Annotated[float, Meta(ge=0, le=1)] | None = None
    eligible_tiers: Annotated[list[Tier], Meta(min_length=1, max_length=3)] | None = None
    units: Annotated[list[Label], Meta(min_length=1, max_length=100)] | None = None
    question: Annotated[str, Meta(min_length=1, max_length=500)] | None = None
    options: Annotated[list[Label], Meta(min_length=1, max_length=100)] | None = None
    max_choices: Annotated[int, Meta(ge=1, le=100)] | None = None
    questions: Annotated[list[QuestionSpec], Meta(min_length=1, max_length=100)] | None = None


TEMPLATES: dict[str, dict[str, Any]] = {
    "satisfaction_per_department": {
        "kind": "satisfaction",
        "visibility": "anonymous",
        "description": "对各被询问部门的满意度测评：满意 / 基本满意 / 不满意",
    },
    "livelihood_projects": {
        "kind": "multiple",
        "visibility": "named",
        "description": "民生实事项目票决：在候选项目中至多选择 K 项，按得票排序",
    },
    "motion": {"kind": "yes_no", "visibility": "named", "description": "表决：赞成 / 反对 / 弃权"},
    "single_choice": {"kind": "single", "visibility": "named"},
}


@dataclass(frozen=True, slots=True)
class Question:
    text: str
    unit: str
    options: tuple[str, ...]
    max_choices: int


@dataclass(frozen=True, slots=True)
class Definition:
    kind: str
    title: str
    description: str
    template: str
    visibility: str
    live_results: bool
    allow_change: bool
    threshold: float | None
    eligible_tiers: tuple[str, ...]
    questions: tuple[Question, ...]


def _clean(text: str, what: str, *, multiline: bool = False) -> str:
    cleaned = clean_text(text, multiline=multiline)
    if not cleaned:
        raise InvalidMessage(f"{what} is empty")
    return cleaned


def build(spec: PollSpec) -> Definition:
    """Check a spec and expand its short forms; every error says what to change."""
    base: dict[str, Any] = {}
    if spec.template is not None:
        if spec.template not in TEMPLATES:
            raise InvalidMessage(
                f"unknown template {spec.template!r}; templates: {', '.join(sorted(TEMPLATES))}"
            )
        base = TEMPLATES[spec.template]
    kind = spec.kind or base.get("kind")
    if kind is None:
        raise InvalidMessage("give kind (satisfaction, single, multiple, yes_no) or a template")
    if spec.template is not None and spec.kind is not None and spec.kind != base["kind"]:
        raise InvalidMessage(f"template {spec.template!r} is a {base['kind']} poll, not {spec.kind}")
    visibility = spec.visibility or base.get("visibility", "named")
    if visibility == "anonymous" and spec.allow_change:
        raise InvalidMessage(
            "an anonymous poll cannot allow changing a vote: its ballots are not linked to voters"
        )
    questions = _questions(kind, spec)
    return Definition(
        kind=kind,
        title=_clean(spec.title, "the title"),
        description=clean_text(spec.description or base.get("description", ""), multiline=True),
        template=spec.template or "",
        visibility=visibility,
        live_results=spec.live_results,
        allow_change=spec.allow_change,
        threshold=spec.threshold,
        eligible_tiers=tuple(dict.fromkeys(spec.eligible_tiers or ["voting"])),
        questions=questions,
    )


def _questions(kind: str, spec: PollSpec) -> tuple[Question, ...]:
    if spec.questions is not None:
        if spec.units or spec.question or spec.options or spec.max_choices:
            raise InvalidMessage("give either questions, or the short form (units / question, options)")
        out = [
            Question(
                _clean(q.text, "a question"),
                clean_text(q.unit),
                tuple(_clean(o, "an option") for o in q.options),
                q.max_choices,
            )
            for q in spec.questions
        ]
    elif kind == "satisfaction":
        if not spec.units:
            raise InvalidMessage("a satisfaction poll needs units: the departments (or other units) rated")
        out = [Question(_clean(u, "a unit"), _clean(u, "a unit"), SATISFACTION, 1) for u in spec.units]
    elif kind == "yes_no":
        if not spec.question:
            raise InvalidMessage("a yes_no poll needs the question put to the vote")
        out = [Question(_clean(spec.question, "the question"), "", YES_NO, 1)]
    else:
        if not spec.question or not spec.options:
            raise InvalidMessage(f"a {kind} poll needs a question and its options")
        k = spec.max_choices or (1 if kind == "single" else len(spec.options))
        out = [
            Question(
                _clean(spec.question, "the question"),
                "",
                tuple(_clean(o, "an option") for o in spec.options),
                k,
            )
        ]
    for i, q in enumerate(out, 1):
        if len(set(q.options)) != len(q.options):
            raise InvalidMessage(f"question {i} lists an option twice")
        if len(q.options) < 2:
            raise InvalidMessage(f"question {i} needs at least two options")
        if q.max_choices > len(q.options):
            raise InvalidMessage(
                f"question {i} allows {q.max_choices} choices but has {len(q.options)} options"
            )
        if kind in ("satisfaction", "single", "yes_no") and q.max_choices != 1:
            raise InvalidMessage(f"a {kind} poll takes one choice per question")
        if kind == "satisfaction" and q.options != SATISFACTION:
            raise InvalidMessage(f"a satisfaction poll rates each unit {' / '.join(SATISFACTION)}")
    return tuple(out)


# --- the stored poll ------------------------------------------------------------------


@dataclass(slots=True)
class Poll:
    """A poll as nodes cache it: the definition with ids, and the state when read."""

    id: int
    session_id: str
    kind: str
    title: str
    description: str
    template: str
    visibility: str
    state: str
    live_results: bool
    allow_change: bool
    threshold: float | None
    eligible_tiers: tuple[str, ...]
    # question id → (max choices, option ids in order); and the full view
    questions: dict[int, tuple[int, tuple[int, ...]]] = field(default_factory=dict)
    view_questions: list[dict[str, Any]] = field(default_factory=list)
    opened_at: datetime | None = None
    closed_at: datetime | None = None
    published_at: datetime | None = None

    def view(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "session": self.session_id,
            "kind": self.kind,
            "title": self.title,
            "description": self.description,
            "template": self.template,
            "visibility": self.visibility,
            "state": self.state,
            "live_results": self.live_results,
            "allow_change": self.allow_change,
            "threshold": self.threshold,
            "eligible_tiers": list(self.eligible_tiers),
            "questions": self.view_questions,
        }


async def load(conn: asyncpg.Connection | asyncpg.Pool, poll_id: int) -> Poll:
    row = await conn.fetchrow(
        """SELECT p.*,
                  coalesce((SELECT jsonb_agg(jsonb_build_object(
                              'id', q.id, 'text', q.text, 'unit', q.unit, 'max_choices', q.max_choices,
                              'options', (SELECT jsonb_agg(jsonb_build_object('id', o.id, 'label', o.label)
                                                           ORDER BY o.position)
                                            FROM poll_options o WHERE o.question_id = q.id))
                              ORDER BY q.position)
                              FROM poll_questions q WHERE q.poll_id = p.id), '[]') AS questions
             FROM polls p WHERE p.id = $1""",
        poll_id,
    )
    if row is None:
        raise PollNotFound(f"no poll {poll_id}")
    return _from_row(row)


def _from_row(row: asyncpg.Record) -> Poll:
    questions = list(row["questions"])
    return Poll(
        id=row["id"],
        session_id=row["session_id"],
        kind=row["kind"],
        title=row["title"],
        description=row["description"],
        template=row["template"],
        visibility=row["visibility"],
        state=row["state"],
        live_results=row["live_results"],
        allow_change=row["allow_change"],
        threshold=float(row["threshold"]) if row["threshold"] is not None else None,
        eligible_tiers=tuple(row["eligible_tiers"]),
        questions={
            int(q["id"]): (int(q["max_choices"]), tuple(int(o["id"]) for o in q["options"] or []))
            for q in questions
        },
        view_questions=questions,
        opened_at=row["opened_at"],
        closed_at=row["closed_at"],
        published_at=row["published_at"],
    )


async def _write_definition(conn: asyncpg.Connection, poll_id: int, d: Definition) -> None:
    for position, q in enumerate(d.questions):
        qid = await conn.fetchval(
            """INSERT INTO poll_questions (poll_id, position, text, unit, max_choices)
               VALUES ($1, $2, $3, $4, $5) RETURNING id""",
            poll_id,
            position,
            q.text,
            q.unit,
            q.max_choices,
        )
        await conn.execute(
            """INSERT INTO poll_options (question_id, position, label)
               SELECT $1, n - 1, label FROM unnest($2::text[]) WITH ORDINALITY AS x(label, n)""",
            qid,
            list(q.options),
        )


# The columns of `polls` a definition sets, in the order `_settings` gives them.
_SETTINGS = (
    "kind",
    "title",
    "description",
    "template",
    "visibility",
    "live_results",
    "allow_change",
    "threshold",
    "eligible_tiers",
)


def _settings(d: Definition) -> tuple[Any, ...]:
    return (
        d.kind,
        d.title,
        d.description,
        d.template,
        d.visibility,
        d.live_results,
        d.allow_change,
        d.threshold,
        list(d.eligible_tiers),
    )


async def create(pool: asyncpg.Pool, session_id: str, spec: PollSpec, who: Principal) -> Poll:
    d = build(spec)
    async with pool.acquire() as conn, conn.transaction():
        state = await conn.fetchval("SELECT state FROM sessions WHERE id = $1", session_id)
        if state is None:
            raise SessionNotFound(f"no session {session_id!r}")
        if state == "ended":
            raise PollConflict("the session has ended; polls can no longer be added")
        poll_id = await conn.fetchval(
            f"""INSERT INTO polls (session_id, created_by, {", ".join(_SETTINGS)})
                VALUES ($1, $2, {", ".join(f"${i}" for i in range(3, 3 + len(_SETTINGS)))}) RETURNING id""",
            session_id,
            who.rep,
            *_settings(d),
        )
        await _write_definition(conn, poll_id, d)
        await _audit(conn, who, "poll.create", poll_id, {"title": d.title, "kind": d.kind})
        return await load(conn, poll_id)


async def edit(pool: asyncpg.Pool, poll_id: int, spec: PollSpec, who: Principal) -> Poll:
    """Replace a draft's definition."""
    d = build(spec)
    async with pool.acquire() as conn, conn.transaction():
        state = await conn.fetchval("SELECT state FROM polls WHERE id = $1 FOR UPDATE", poll_id)
        if state is None:
            raise PollNotFound(f"no poll {poll_id}")
        if state != "draft":
            raise PollConflict(f"poll {poll_id} is {state}; only a draft can be edited")
        assignments = ", ".join(f"{c} = ${i}" for i, c in enumerate(_SETTINGS, 2))
        await conn.execute(f"UPDATE polls SET {assignments} WHERE id = $1", poll_id, *_settings(d))
        await conn.execute("DELETE FROM poll_questions WHERE poll_id = $1", poll_id)
        await _write_definition(conn, poll_id, d)
        await _audit(conn, who, "poll.edit", poll_id, {"title": d.title})
        return await load(conn, poll_id)


async def list_for(pool: asyncpg.Pool, session_id: str, *, drafts: bool) -> list[Poll]:
    ids = await pool.fetch(
        "SELECT id FROM polls WHERE session_id = $1 AND ($2 OR state <> 'draft') ORDER BY id",
        session_id,
        drafts,
    )
    async with pool.acquire() as conn:
        return [await load(conn, r["id"]) for r in ids]


NEXT: dict[str, tuple[str, str, str]] = {
    # to: (from, timestamp column, event type)
    "open": ("draft", "opened_at", "poll.opened"),
    "closed": ("open", "closed_at", "poll.closed"),
    "published": ("closed", "published_at", "poll.results"),
}


@dataclass(slots=True)
class Transition:
    poll: Poll
    events: list[dict[str, Any]]
    results: dict[str, Any] | None = None


async def transition(pool: asyncpg.Pool, poll_id: int, to: str, who: Principal) -> Transition:
    """Move a poll on, with its event in the session's log, in one transaction. Closing waits
    for the casts already being written (they share-lock the poll) and counts from the ledger."""
    if to not in NEXT:
        raise InvalidMessage("state must be open, closed or published")
    before, column, event_type = NEXT[to]
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow("SELECT state, session_id FROM polls WHERE id = $1 FOR UPDATE", poll_id)
        if row is None:
            raise PollNotFound(f"no poll {poll_id}")
        if row["state"] != before:
            raise PollConflict(f"poll {poll_id} is {row['state']}; only a {before} poll can be {to}")
        if to == "open":
            session_state = await conn.fetchval("SELECT state FROM sessions WHERE id = $1", row["session_id"])
            if session_state != "live":
                raise PollConflict(f"the session is {session_state}; a poll opens only while it is live")
            if not await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM poll_questions WHERE poll_id = $1)", poll_id
            ):
                raise PollConflict("the poll has no questions")
        await conn.execute(f"UPDATE polls SET state = $2, {column} = now() WHERE id = $1", poll_id, to)
        poll = await load(conn, poll_id)
        results = None
        if to == "open":
            data: dict[str, Any] = {"poll": poll.view()}
        else:
            results = await compute_results(conn, poll)
            data = {"poll": poll_id, "state": to}
            if to == "published" or poll.live_results:
                data["results"] = results
        await _audit(conn, who, f"poll.{to}", poll_id, {})
        written = await events.append(conn, poll.session_id, [events.NewEvent(event_type, data, who.rep)])
    return Transition(poll, [e.wire() for e in written], results)


# --- results ----------------------------------------------------------------------------


async def online_counts(conn: asyncpg.Connection | asyncpg.Pool, poll: Poll) -> dict[int, dict[int, int]]:
    """Votes cast online per question and option, from the ledger."""
    if poll.visibility == "anonymous":
        rows = await conn.fetch(
            """SELECT a.question_id, a.option_id, a.count FROM anonymous_counts a
                 JOIN poll_questions q ON q.id = a.question_id WHERE q.poll_id = $1""",
            poll.id,
        )
    else:
        rows = await conn.fetch(
            """SELECT v.question_id, o AS option_id, count(*) AS count
                 FROM votes v, unnest(v.option_ids) AS o WHERE v.poll_id = $1 GROUP BY 1, 2""",
            poll.id,
        )
    out: dict[int, dict[int, int]] = {q: {} for q in poll.questions}
    for r in rows:
        out.setdefault(r["question_id"], {})[r["option_id"]] = int(r["count"])
    return out


# The tier of each representative who attended the session, as sessions.tier_for decides it.
ATTENDEE_TIERS = """
    SELECT DISTINCT a.rep_id,
           coalesce(sp.tier, CASE WHEN s.audience <> 'invited' AND r.active THEN s.default_tier END,
                    'viewer') AS tier
      FROM attendance_intervals a
      JOIN sessions s ON s.id = a.session_id
      LEFT JOIN session_participants sp ON sp.session_id = a.session_id AND sp.rep_id = a.rep_id
      LEFT JOIN representatives r ON r.id = a.rep_id
     WHERE a.session_id = $1"""


async def compute_results(conn: asyncpg.Connection | asyncpg.Pool, poll: Poll) -> dict[str, Any]:
    """Results from the ledger: online, on-site and combined per option; per question the
    votes, a rank, and for satisfaction polls 满意率; participation and validity."""
    online = await online_counts(conn, poll)
    ballots = {
        r["question_id"]: int(r["n"])
        for r in await conn.fetch(
            "SELECT question_id, count(*) AS n FROM ballots WHERE poll_id = $1 GROUP BY 1", poll.id
        )
    }
    onsite: dict[int, dict[int, int]] = {}
    for r in await conn.fetch(
        """SELECT t.question_id, t.option_id, t.count FROM onsite_tallies t
             JOIN poll_questions q ON q.id = t.question_id WHERE q.poll_id = $1""",
        poll.id,
    ):
        onsite.setdefault(r["question_id"], {})[r["option_id"]] = int(r["count"])
    voters = int(
        await conn.fetchval("SELECT count(DISTINCT rep_id) FROM ballots WHERE poll_id = $1", poll.id)
    )
    eligible = int(
        await conn.fetchval(
            f"""SELECT count(*) FROM (
                    SELECT rep_id FROM ({ATTENDEE_TIERS}) t WHERE tier = ANY($2::text[])
                    UNION SELECT rep_id FROM ballots WHERE poll_id = $3) e""",
            poll.session_id,
            list(poll.eligible_tiers),
            poll.id,
        )
    )
    questions = []
    for q in poll.view_questions:
        qid = int(q["id"])
        on, off = online.get(qid, {}), onsite.get(qid, {})
        options = []
        for o in q["options"] or []:
            oid = int(o["id"])
            a, b = on.get(oid, 0), off.get(oid, 0)
            options.append({"id": oid, "label": o["label"], "online": a, "onsite": b, "combined": a + b})
        for o in options:
            o["rank"] = 1 + sum(1 for other in options if other["combined"] > o["combined"])
        votes_online = ballots.get(qid, 0)
        votes_onsite = sum(off.values()) if int(q["max_choices"]) == 1 else None
        entry: dict[str, Any] = {
            "id": qid,
            "text": q["text"],
            "unit": q["unit"],
            "max_choices": q["max_choices"],
            "votes": {
                "online": votes_online,
                "onsite": votes_onsite,
                "combined": votes_online + (votes_onsite or 0),
            },
            "options": options,
        }
        if poll.kind == "satisfaction":
            entry["satisfaction_rate"] = {
                part: _rate(sum(o[part] for o in options[:SATISFIED]), sum(o[part] for o in options))
                for part in ("online", "onsite", "combined")
            }
        questions.append(entry)
    rate = _rate(voters, eligible)
    return {
        "poll": poll.id,
        "title": poll.title,
        "kind": poll.kind,
        "state": poll.state,
        "questions": questions,
        "participation": {"voted": voters, "eligible_present": eligible, "rate": rate},
        "threshold": poll.threshold,
        "valid": None if poll.threshold is None else (rate or 0.0) >= poll.threshold,
    }


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


class OnsiteCounts(msgspec.Struct, forbid_unknown_fields=True):
    """On-site (paper / handset) counts per question and option: {question: {option: n}}."""

    counts: dict[str, dict[str, Annotated[int, Meta(ge=0, le=10_000_000)]]]


async def set_onsite(pool: asyncpg.Pool, poll_id: int, body: OnsiteCounts, who: Principal) -> Poll:
    """Record the hall's counts (replacing earlier ones for the options given) before publishing."""
    async with pool.acquire() as conn, conn.transaction():
        poll = await load(conn, poll_id)
        state = await conn.fetchval("SELECT state FROM polls WHERE id = $1 FOR UPDATE", poll_id)
        if state not in ("open", "closed"):
            raise PollConflict(f"poll {poll_id} is {state}; on-site counts are entered while open or closed")
        rows: list[tuple[int, int, int]] = []
        for q_raw, per_option in body.counts.items():
            qid = _int_key(q_raw, "question")
            if qid not in poll.questions:
                raise InvalidMessage(f"question {qid} is not in poll {poll_id}")
            for o_raw, n in per_option.items():
                oid = _int_key(o_raw, "option")
                if oid not in poll.questions[qid][1]:
                    raise InvalidMessage(f"option {oid} is not an option of question {qid}")
                rows.append((qid, oid, n))
        await conn.executemany(
            """INSERT INTO onsite_tallies (question_id, option_id, count, entered_by) VALUES ($1, $2, $3, $4)
               ON CONFLICT (question_id, option_id)
               DO UPDATE SET count = excluded.count, entered_by = excluded.entered_by, entered_at = now()""",
            [(*r, who.rep) for r in rows],
        )
        await _audit(conn, who, "poll.onsite", poll_id, {"counts": body.counts})
        return poll


def _int_key(raw: str | int, what: str) -> int:
    try:
        return int(raw)
    except (TypeError, ValueError):
        raise InvalidMessage(f"{what} ids are whole numbers, got {str(raw)[:20]!r}") from None


async def missing_voters(pool: asyncpg.Pool, poll: Poll) -> list[dict[str, Any]]:
    """Eligible representatives present now (an open attendance interval) who have not yet
    answered every question."""
    rows = await pool.fetch(
        f"""SELECT t.rep_id, coalesce(r.name, t.rep_id) AS name, coalesce(r.delegation, '') AS delegation
              FROM ({ATTENDEE_TIERS} AND a.ended_at IS NULL) t
              LEFT JOIN representatives r ON r.id = t.rep_id
             WHERE t.tier = ANY($2::text[])
               AND (SELECT count(*) FROM ballots b WHERE b.poll_id = $3 AND b.rep_id = t.rep_id) < $4
             ORDER BY t.rep_id""",
        poll.session_id,
        list(poll.eligible_tiers),
        poll.id,
        len(poll.questions),
    )
    return [{"rep": r["rep_id"], "name": r["name"], "delegation": r["delegation"]} for r in rows]


async def named_votes(pool: asyncpg.Pool, poll: Poll) -> list[dict[str, Any]]:
    """Who voted what (named polls, for staff)."""
    if poll.visibility != "named":
        raise PollConflict("the poll is anonymous: its votes are not linked to voters")
    rows = await pool.fetch(
        """SELECT b.rep_id, coalesce(r.name, b.rep_id) AS name, b.question_id, v.option_ids, b.cast_at
             FROM ballots b JOIN votes v USING (question_id, rep_id)
             LEFT JOIN representatives r ON r.id = b.rep_id
            WHERE b.poll_id = $1 ORDER BY b.rep_id, b.question_id""",
        poll.id,
    )
    return [
        {
            "rep": r["rep_id"],
            "name": r["name"],
            "question": r["question_id"],
            "options": list(r["option_ids"]),
            "at": r["cast_at"].isoformat(),
        }
        for r in rows
    ]


async def own_answers(pool: asyncpg.Pool, session_id: str, rep: str) -> dict[int, dict[str, Any]]:
    """What one representative answered in a session's polls: options where the poll is
    named, only that a question was answered where it is anonymous."""
    rows = await pool.fetch(
        """SELECT b.poll_id, b.question_id, v.option_ids
             FROM ballots b JOIN polls p ON p.id = b.poll_id
             LEFT JOIN votes v ON v.question_id = b.question_id AND v.rep_id = b.rep_id
            WHERE p.session_id = $1 AND b.rep_id = $2""",
        session_id,
        rep,
    )
    out: dict[int, dict[str, Any]] = {}
    for r in rows:
        out.setdefault(r["poll_id"], {})[str(r["question_id"])] = (
            list(r["option_ids"]) if r["option_ids"] is not None else True
        )
    return out


async def snapshot(pool: asyncpg.Pool, session_id: str, rep: str, *, staff: bool) -> list[dict[str, Any]]:
    """Open, closed and published polls for a joining client, with its own answers; results
    where the client may see them."""
    mine = await own_answers(pool, session_id, rep)
    out = []
    async with pool.acquire() as conn:
        for poll in [
            await load(conn, r["id"])
            for r in await conn.fetch(
                "SELECT id FROM polls WHERE session_id = $1 AND state <> 'draft' ORDER BY id", session_id
            )
        ]:
            entry = {**poll.view(), "mine": mine.get(poll.id, {})}
            if poll.state == "published" or poll.live_results or (staff and poll.state == "closed"):
                entry["results"] = await compute_results(conn, poll)
            out.append(entry)
    return out


async def projector(pool: asyncpg.Pool, session_id: str) -> dict[str, Any] | None:
    """The most recently published results of a session, for the hall's projector."""
    poll_id = await pool.fetchval(
        """SELECT id FROM polls WHERE session_id = $1 AND state = 'published'
            ORDER BY published_at DESC, id DESC LIMIT 1""",
        session_id,
    )
    if poll_id is None:
        return None
    async with pool.acquire() as conn:
        return await compute_results(conn, await load(conn, poll_id))


RESULT_HEADER = (
    "测评/票决 Poll",
    "问题/被测评单位 Question",
    "选项 Option",
    "线上 Online",
    "线下 On-site",
    "合计 Combined",
    "名次 Rank",
    "满意率 Satisfaction rate",
    "参与 Voted",
    "应参与 Eligible present",
    "参与率 Participation",
    "有效 Valid",
)


def result_rows(results: dict[str, Any]) -> list[list[Any]]:
    p = results["participation"]
    valid = {None: "", True: "有效", False: "无效"}[results["valid"]]
    rows: list[list[Any]] = []
    for q in results["questions"]:
        rate = (q.get("satisfaction_rate") or {}).get("combined")
        for o in q["options"]:
            rows.append(
                [
                    results["title"],
                    q["unit"] or q["text"],
                    o["label"],
                    o["online"],
                    o["onsite"],
                    o["combined"],
                    o["rank"],
                    rate,
                    p["voted"],
                    p["eligible_present"],
                    p["rate"],
                    valid,
                ]
            )
    return rows


async def _audit(
    conn: asyncpg.Connection, who: Principal, action: str, poll_id: int, detail: dict[str, Any]
) -> None:
    await conn.execute(
        "INSERT INTO audit_log (actor, action, target, detail) VALUES ($1, $2, $3, $4)",
        who.rep,
        action,
        f"poll:{poll_id}",
        detail,
    )
