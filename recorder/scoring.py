"""Points from the ledger: set-based SQL, one INSERT … SELECT per activity.

A rescore covers the sessions that ended and started in a period: it deletes their points
under a version of the rules and derives them again from the facts, so the same ledger and
the same version always give the same rows. Every row names its fact (the session for an
attendance, a comment, a poll), the rule key that priced it and the version. Facts that
earn nothing under the rules (an attendance below the threshold, a comment over the cap,
an excused absence) are kept with 0 points, so a duty record shows why.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from recorder.periods import Period
from recorder.rules import Rules, Version

_LOCK = 0x73636F72  # shared with recorder.rules: one writer of versions and points at a time

# The sessions a rescore covers, with their per-session rule parameters (Python resolves
# each session's rule once; SQL applies it to every row).
_PARAMS = """p AS (
    SELECT * FROM unnest($2::text[], $3::float8[], $4::text[], $5::int[])
                  AS p(session_id, pts, rule, cap))"""

# Who was expected at a session: its participant list if it has one, else the active roster.
EXPECTED = """expected AS (
    SELECT sp.session_id, sp.rep_id FROM session_participants sp WHERE sp.session_id = ANY({ids})
    UNION ALL
    SELECT s.id, r.id FROM sessions s JOIN representatives r ON r.active
     WHERE s.id = ANY({ids})
       AND NOT EXISTS (SELECT 1 FROM session_participants sp WHERE sp.session_id = s.id))"""

_DWELL_TABLE = """CREATE TEMP TABLE dwell (
    session_id text, rep_id text, first_at timestamptz, secs float8, threshold_rule text,
    effective boolean, period_at timestamptz, kind text) ON COMMIT DROP"""

_DWELL = """
INSERT INTO dwell
WITH t AS (
    SELECT * FROM unnest($1::text[], $2::float8[], $3::float8[], $4::text[])
                  AS t(session_id, min_share, min_secs, rule)),
d AS (
    SELECT a.session_id, a.rep_id, min(a.started_at) AS first_at,
           sum(greatest(0, extract(epoch FROM least(a.ended_at, s.ended_at)
                                           - greatest(a.started_at, s.started_at)))) AS secs
      FROM attendance_intervals a JOIN sessions s ON s.id = a.session_id
     WHERE a.session_id = ANY($1::text[]) AND a.ended_at IS NOT NULL
     GROUP BY a.session_id, a.rep_id)
SELECT d.session_id, d.rep_id, d.first_at, d.secs, t.rule AS threshold_rule,
       (t.min_share IS NULL OR d.secs >= t.min_share * extract(epoch FROM s.ended_at - s.started_at))
       AND (t.min_secs IS NULL OR d.secs >= t.min_secs) AS effective,
       s.started_at AS period_at, s.kind
  FROM d JOIN t USING (session_id) JOIN sessions s ON s.id = d.session_id"""

_INSERT = """INSERT INTO score_points
    (version, session_id, rep_id, activity, fact, rule, quantity, points, at, period_at)"""

_ATTENDANCE = f"""{_INSERT}
WITH {_PARAMS}
SELECT $1, d.session_id, d.rep_id,
       CASE WHEN d.effective THEN 'attendance' ELSE 'presence' END, d.session_id,
       CASE WHEN d.effective THEN p.rule ELSE d.threshold_rule END,
       round(d.secs::numeric / 60, 2),
       CASE WHEN d.effective THEN p.pts::numeric ELSE 0 END, d.first_at, d.period_at
  FROM dwell d JOIN p USING (session_id)"""

_LEAVE = f"""{_INSERT}
WITH {_PARAMS}
SELECT $1, l.session_id, l.rep_id, 'leave', l.session_id, p.rule, 1, p.pts::numeric, l.recorded_at,
       s.started_at
  FROM leaves_of_absence l JOIN p USING (session_id) JOIN sessions s ON s.id = l.session_id
 WHERE NOT EXISTS (SELECT 1 FROM dwell d
                    WHERE d.session_id = l.session_id AND d.rep_id = l.rep_id AND d.effective)"""

_ABSENCE = f"""{_INSERT}
WITH {_PARAMS}, {EXPECTED.format(ids="$2::text[]")}
SELECT $1, e.session_id, e.rep_id, 'absence', e.session_id, p.rule, 1, p.pts::numeric,
       s.started_at, s.started_at
  FROM expected e JOIN p USING (session_id) JOIN sessions s ON s.id = e.session_id
 WHERE p.pts <> 0
   AND NOT EXISTS (SELECT 1 FROM dwell d
                    WHERE d.session_id = e.session_id AND d.rep_id = e.rep_id AND d.effective)
   AND NOT EXISTS (SELECT 1 FROM leaves_of_absence l
                    WHERE l.session_id = e.session_id AND l.rep_id = e.rep_id)"""

# Comments count in the order they were made; past the cap they are kept at 0 points.
_COMMENTS = f"""{_INSERT}
WITH {_PARAMS},
c AS (
    SELECT c.id, c.session_id, c.rep_id, c.created_at,
           row_number() OVER (PARTITION BY c.session_id, c.rep_id ORDER BY c.id) AS n
      FROM comments c
     WHERE c.session_id = ANY($2::text[]) AND c.status = 'published' {{extra}})
SELECT $1, c.session_id, c.rep_id, $6, c.id::text,
       CASE WHEN p.cap IS NULL OR c.n <= p.cap THEN p.rule ELSE 'activities.' || $6 || '.cap_per_session' END,
       1, CASE WHEN p.cap IS NULL OR c.n <= p.cap THEN p.pts::numeric ELSE 0 END, c.created_at, s.started_at
  FROM c JOIN p USING (session_id) JOIN sessions s ON s.id = c.session_id"""

_POLLS = f"""{_INSERT}
WITH {_PARAMS},
b AS (
    SELECT pl.session_id, b.poll_id, b.rep_id, min(b.cast_at) AS at,
           row_number() OVER (PARTITION BY pl.session_id, b.rep_id ORDER BY b.poll_id) AS n
      FROM ballots b JOIN polls pl ON pl.id = b.poll_id
     WHERE pl.session_id = ANY($2::text[])
     GROUP BY pl.session_id, b.poll_id, b.rep_id)
SELECT $1, b.session_id, b.rep_id, 'poll', b.poll_id::text,
       CASE WHEN p.cap IS NULL OR b.n <= p.cap THEN p.rule ELSE 'activities.poll.cap_per_session' END,
       1, CASE WHEN p.cap IS NULL OR b.n <= p.cap THEN p.pts::numeric ELSE 0 END, b.at, s.started_at
  FROM b JOIN p USING (session_id) JOIN sessions s ON s.id = b.session_id"""

_LECTURE = f"""{_INSERT}
WITH {_PARAMS}
SELECT $1, d.session_id, d.rep_id, 'lecture_minute', d.session_id, p.rule, m.minutes,
       round(m.minutes * p.pts::numeric, 2), d.first_at, d.period_at
  FROM dwell d JOIN p USING (session_id)
 CROSS JOIN LATERAL (SELECT CASE WHEN p.cap IS NULL THEN floor(d.secs / 60)
                                 ELSE least(floor(d.secs / 60), p.cap) END::numeric AS minutes) m
 WHERE d.kind = 'lecture' AND m.minutes > 0"""


@dataclass(frozen=True, slots=True)
class Run:
    version: int
    period: Period
    sessions: int
    rows: int
    seconds: float
    scored_at: datetime
    steps: dict[str, float]

    def as_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "period": self.period.as_dict(),
            "sessions": self.sessions,
            "rows": self.rows,
            "seconds": round(self.seconds, 3),
            "scored_at": self.scored_at.isoformat(),
        }


def _params(rules: Rules, activity: str, sessions: list[asyncpg.Record]) -> list[Any]:
    rule = rules.activity(activity)
    priced = [rule.priced(activity, s["kind"]) for s in sessions]
    return [
        [s["id"] for s in sessions],
        [points for points, _ in priced],
        [key for _, key in priced],
        [rule.cap_per_session] * len(sessions),
    ]


async def rescore(pool: asyncpg.Pool, version: Version, period: Period, *, actor: str) -> Run:
    """Derive the points of every session that ended and started in `period` under `version`."""
    started = time.perf_counter()
    rules = version.rules
    steps: dict[str, float] = {}
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK)
        sessions = await conn.fetch(
            """SELECT id, kind FROM sessions
                WHERE state = 'ended' AND started_at >= $1 AND started_at < $2 ORDER BY id""",
            period.start,
            period.end,
        )
        mark = time.perf_counter()
        await conn.execute(
            "DELETE FROM score_points WHERE version = $1 AND period_at >= $2 AND period_at < $3",
            version.version,
            period.start,
            period.end,
        )
        steps["delete"] = time.perf_counter() - mark
        mark = time.perf_counter()
        ids = [s["id"] for s in sessions]
        thresholds = [rules.threshold(s["id"], s["kind"]) for s in sessions]
        await conn.execute(_DWELL_TABLE)
        await conn.execute(
            _DWELL,
            ids,
            [t.min_share for t, _ in thresholds],
            [None if t.min_minutes is None else t.min_minutes * 60 for t, _ in thresholds],
            [key for _, key in thresholds],
        )
        steps["dwell"] = time.perf_counter() - mark
        v = version.version
        absence = _params(rules, "absence", sessions)
        statements: list[tuple[str, str, list[Any]]] = [
            ("attendance", _ATTENDANCE, _params(rules, "attendance", sessions)),
            ("leave", _LEAVE, _params(rules, "leave", sessions)),
            ("absence", _ABSENCE, absence),
            ("comment", _COMMENTS.format(extra=""), [*_params(rules, "comment", sessions), "comment"]),
            (
                "adopted_comment",
                _COMMENTS.format(extra="AND c.adopted"),
                [*_params(rules, "adopted_comment", sessions), "adopted_comment"],
            ),
            ("poll", _POLLS, _params(rules, "poll", sessions)),
            ("lecture_minute", _LECTURE, _params(rules, "lecture_minute", sessions)),
        ]
        for name, sql, args in statements:
            if name == "absence" and not any(absence[1]):
                continue  # nobody loses points for absence: nothing to write
            mark = time.perf_counter()
            await conn.execute(sql, v, *args)
            steps[name] = time.perf_counter() - mark
        row = await conn.fetchrow(
            """WITH n AS (SELECT count(*) AS rows FROM score_points
                           WHERE version = $1 AND period_at >= $2 AND period_at < $3)
               INSERT INTO score_runs (version, period_from, period_to, sessions, points_rows, scored_by)
               SELECT $1, $2, $3, $4, n.rows, $5 FROM n RETURNING points_rows, scored_at""",
            v,
            period.start,
            period.end,
            len(sessions),
            actor,
        )
    took = time.perf_counter() - started
    return Run(v, period, len(sessions), row["points_rows"], took, row["scored_at"], steps)


async def ensure_scored(
    pool: asyncpg.Pool, version: Version, period: Period, *, max_age: float, actor: str
) -> datetime:
    """Rescore `period` unless a rescore covering it under `version` is at most `max_age`
    seconds old; returns when the points were derived."""

    async def fresh() -> datetime | None:
        found: datetime | None = await pool.fetchval(
            """SELECT max(scored_at) FROM score_runs
                WHERE version = $1 AND period_from <= $2 AND period_to >= $3
                  AND scored_at > clock_timestamp() - make_interval(secs => $4)""",
            version.version,
            period.start,
            period.end,
            max_age,
        )
        return found

    if (at := await fresh()) is not None:
        return at
    # Another node may be rescoring the same period: wait for it, then look again.
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK)
    if (at := await fresh()) is not None:
        return at
    return (await rescore(pool, version, period, actor=actor)).scored_at


def _num(value: Any) -> float:
    return float(value or 0)


async def rankings(
    pool: asyncpg.Pool,
    version: int,
    period: Period,
    *,
    level: str | None = None,
    delegation: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> dict[str, Any]:
    """Active representatives by points in the period, highest first (ties share a rank)."""
    rows = await pool.fetch(
        """WITH a AS (SELECT rep_id, activity, sum(points) AS points FROM score_points
                       WHERE version = $1 AND period_at >= $2 AND period_at < $3
                       GROUP BY rep_id, activity),
                t AS (SELECT rep_id, sum(points) AS total,
                             jsonb_object_agg(activity, points) FILTER (WHERE points <> 0) AS by_activity
                        FROM a GROUP BY rep_id)
           SELECT r.id, r.name, r.level, r.delegation, coalesce(t.total, 0) AS total, t.by_activity,
                  rank() OVER (ORDER BY coalesce(t.total, 0) DESC) AS rank, count(*) OVER () AS ranked
             FROM representatives r LEFT JOIN t ON t.rep_id = r.id
            WHERE r.active AND ($4::text IS NULL OR r.level = $4) AND ($5::text IS NULL OR r.delegation = $5)
            ORDER BY total DESC, r.id
            LIMIT $6 OFFSET $7""",
        version,
        period.start,
        period.end,
        level,
        delegation,
        limit,
        offset,
    )
    return {
        "ranked": rows[0]["ranked"] if rows else 0,
        "rankings": [
            {
                "rank": r["rank"],
                "rep": r["id"],
                "name": r["name"],
                "level": r["level"],
                "delegation": r["delegation"],
                "points": _num(r["total"]),
                "by_activity": {k: _num(v) for k, v in (r["by_activity"] or {}).items()},
            }
            for r in rows
        ],
    }


async def reminders(pool: asyncpg.Pool, version: Version, period: Period) -> list[dict[str, Any]]:
    """Active representatives the rules say to remind in `period`: below the points
    threshold, inactive for too long, or absent (unexcused) too often. Excused absences
    are counted apart and never count against anyone."""
    rule = version.rules.reminders
    if rule.below is None and rule.inactive_days is None and rule.max_absences is None:
        return []
    rows = await pool.fetch(
        f"""WITH ps AS (SELECT id FROM sessions
                         WHERE state = 'ended' AND started_at >= $2 AND started_at < $3),
                 ids AS (SELECT array_agg(id) AS a FROM ps),
                 {EXPECTED.format(ids="(SELECT a FROM ids)::text[]")},
                 eff AS (SELECT session_id, rep_id FROM score_points
                          WHERE version = $1 AND activity = 'attendance'
                            AND period_at >= $2 AND period_at < $3),
                 missed AS (
                    SELECT e.rep_id, count(*) AS absent FROM expected e
                     WHERE NOT EXISTS (SELECT 1 FROM eff WHERE eff.session_id = e.session_id
                                                           AND eff.rep_id = e.rep_id)
                       AND NOT EXISTS (SELECT 1 FROM leaves_of_absence l
                                        WHERE l.session_id = e.session_id AND l.rep_id = e.rep_id)
                     GROUP BY e.rep_id),
                 excused AS (
                    SELECT l.rep_id, count(*) AS excused
                      FROM leaves_of_absence l JOIN ps ON ps.id = l.session_id
                     WHERE NOT EXISTS (SELECT 1 FROM eff WHERE eff.session_id = l.session_id
                                                           AND eff.rep_id = l.rep_id)
                     GROUP BY l.rep_id),
                 total AS (SELECT rep_id, sum(points) AS points FROM score_points
                            WHERE version = $1 AND period_at >= $2 AND period_at < $3 GROUP BY rep_id),
                 last AS (SELECT rep_id, max(at) AS at FROM (
                            SELECT rep_id, max(started_at) AS at FROM attendance_intervals GROUP BY rep_id
                            UNION ALL SELECT rep_id, max(created_at) FROM comments GROUP BY rep_id
                            UNION ALL SELECT rep_id, max(cast_at) FROM ballots GROUP BY rep_id) x
                           GROUP BY rep_id)
            SELECT r.id, r.name, r.level, r.delegation, coalesce(total.points, 0) AS points,
                   last.at AS last_activity, coalesce(missed.absent, 0) AS absent,
                   coalesce(excused.excused, 0) AS excused
              FROM representatives r
              LEFT JOIN total ON total.rep_id = r.id
              LEFT JOIN last ON last.rep_id = r.id
              LEFT JOIN missed ON missed.rep_id = r.id
              LEFT JOIN excused ON excused.rep_id = r.id
             WHERE r.active
               AND (($4::float8 IS NOT NULL AND coalesce(total.points, 0) < $4)
                    OR ($5::int IS NOT NULL AND (last.at IS NULL
                                                 OR last.at < now() - make_interval(days => $5)))
                    OR ($6::int IS NOT NULL AND coalesce(missed.absent, 0) > $6))
             ORDER BY points, r.id""",
        version.version,
        period.start,
        period.end,
        rule.below,
        rule.inactive_days,
        rule.max_absences,
    )
    out = []
    now = datetime.now(period.start.tzinfo)
    for r in rows:
        reasons = []
        if rule.below is not None and _num(r["points"]) < rule.below:
            reasons.append("below_threshold")
        last = r["last_activity"]
        if rule.inactive_days is not None and (last is None or (now - last).days >= rule.inactive_days):
            reasons.append("inactive")
        if rule.max_absences is not None and r["absent"] > rule.max_absences:
            reasons.append("absent")
        out.append(
            {
                "rep": r["id"],
                "name": r["name"],
                "level": r["level"],
                "delegation": r["delegation"],
                "points": _num(r["points"]),
                "reasons": reasons,
                "last_activity": last.isoformat() if last else None,
                "absent": r["absent"],
                "excused": r["excused"],
            }
        )
    return out


async def record(pool: asyncpg.Pool, version: Version, period: Period, rep: str) -> dict[str, Any]:
    """A representative's duty record in a period: each fact with the points it earned,
    oldest first. Unexcused absences are listed even when the rules price them at 0."""
    person = await pool.fetchrow(
        "SELECT id, name, level, delegation, active FROM representatives WHERE id = $1", rep
    )
    rows = await pool.fetch(
        f"""WITH ps AS (SELECT id FROM sessions
                         WHERE state = 'ended' AND started_at >= $2 AND started_at < $3),
                 ids AS (SELECT array_agg(id) AS a FROM ps),
                 {EXPECTED.format(ids="(SELECT a FROM ids)::text[]")},
                 mine AS (SELECT * FROM score_points
                           WHERE version = $1 AND rep_id = $4 AND period_at >= $2 AND period_at < $3)
            SELECT m.at, m.session_id, m.activity, m.fact, m.rule, m.quantity, m.points FROM mine m
             WHERE m.activity <> 'absence'
            UNION ALL
            SELECT s.started_at, e.session_id, 'absence', e.session_id,
                   coalesce(m.rule, 'activities.absence.points'), 1, coalesce(m.points, 0)
              FROM expected e JOIN sessions s ON s.id = e.session_id
              LEFT JOIN mine m ON m.activity = 'absence' AND m.fact = e.session_id
             WHERE e.rep_id = $4
               AND NOT EXISTS (SELECT 1 FROM mine a WHERE a.activity IN ('attendance', 'leave')
                                                      AND a.session_id = e.session_id)""",
        version.version,
        period.start,
        period.end,
        rep,
    )
    titles = {
        r["id"]: r
        for r in await pool.fetch(
            "SELECT id, title, kind FROM sessions WHERE id = ANY($1::text[])",
            list({r["session_id"] for r in rows}),
        )
    }
    timeline = sorted(
        (
            {
                "at": r["at"].isoformat(),
                "session": r["session_id"],
                "title": titles[r["session_id"]]["title"],
                "kind": titles[r["session_id"]]["kind"],
                "activity": r["activity"],
                "fact": r["fact"],
                "quantity": _num(r["quantity"]),
                "points": _num(r["points"]),
                "rule": r["rule"],
            }
            for r in rows
        ),
        key=lambda f: (f["at"], f["activity"], f["fact"]),
    )
    by_activity: dict[str, float] = {}
    for fact in timeline:
        by_activity[fact["activity"]] = by_activity.get(fact["activity"], 0.0) + fact["points"]
    return {
        "rep": rep,
        "name": person["name"] if person else rep,
        "level": person["level"] if person else None,
        "delegation": person["delegation"] if person else None,
        "version": version.version,
        "period": period.as_dict(),
        "points": round(sum(by_activity.values()), 2),
        "by_activity": {k: round(v, 2) for k, v in by_activity.items()},
        "timeline": timeline,
    }
