"""`tribune bench scoring`: a year of facts, then the time to score, rank and report on them.

It starts its own embedded PostgreSQL, generates the ledger with set-based SQL from a fixed
seed (representatives, ended sessions across 2026, attendance intervals — some in two
parts —, comments, some adopted, and satisfaction polls with ballots), and times what staff
wait for: rescoring the whole year, rescoring it again under changed rules, the rankings,
the reminder list, one duty record and the report of the largest session.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

from config.services import EmbeddedServices
from recorder import reports, rules, scoring
from recorder.db import create_pool
from recorder.migrate import migrate
from recorder.periods import parse_period

T = TypeVar("T")

_REPS = """INSERT INTO representatives (id, name, level, delegation)
SELECT 'R' || lpad(g::text, 6, '0'), '代表' || g,
       (ARRAY['city', 'county', 'county', 'township', 'township', 'provincial'])[1 + g % 6],
       'D' || lpad((g % 40)::text, 2, '0')
  FROM generate_series(1, $1) AS g"""

_SESSIONS = """INSERT INTO sessions
    (id, kind, title, scheduled_start, scheduled_end, state, epoch, created_by, started_at, ended_at)
SELECT 'b-' || lpad(g::text, 4, '0'), k.kind, 'session ' || g, t.at, t.at + interval '2 hours', 'ended', 'e',
       'bench', t.at, t.at + interval '2 hours'
  FROM generate_series(1, $1) AS g
 CROSS JOIN LATERAL (SELECT (ARRAY['committee_meeting', 'special_inquiry', 'court_hearing',
                                    'procuratorate_open_day', 'lecture'])[1 + g % 5] AS kind) k
 CROSS JOIN LATERAL (SELECT '2026-01-05 09:00+08'::timestamptz
                            + make_interval(days => (g - 1) * 360 / $1) AS at) t"""

# About one representative in ten attends a session (more at lectures), for 20–110 minutes,
# one in four in two parts with a gap between them.
_INTERVALS = """INSERT INTO attendance_intervals
    (session_id, rep_id, started_at, ended_at, lease_until, node_id, close_reason)
SELECT a.session_id, a.rep_id, i.started, i.ended, i.ended, 'bench', 'left'
  FROM (SELECT s.id AS session_id, r.id AS rep_id, s.started_at, s.ended_at,
               make_interval(mins => (random() * 20)::int) AS off,
               make_interval(mins => 10 + (random() * 45)::int) AS len,
               make_interval(mins => 1 + (random() * 10)::int) AS gap,
               CASE WHEN random() < 0.25 THEN 2 ELSE 1 END AS parts,
               random() AS x, CASE s.kind WHEN 'lecture' THEN 0.15 ELSE 0.08 END AS p
          FROM sessions s CROSS JOIN representatives r) a
 CROSS JOIN LATERAL generate_series(1, a.parts) AS n
 CROSS JOIN LATERAL (SELECT a.started_at + a.off + (n - 1) * (a.len + a.gap) AS started,
                            least(a.started_at + a.off + (n - 1) * (a.len + a.gap) + a.len
                                  + CASE WHEN a.parts = 1 THEN a.len ELSE interval '0' END,
                                  a.ended_at) AS ended) i
 WHERE a.x < a.p AND i.started < i.ended"""

_COMMENTS = """INSERT INTO comments (session_id, rep_id, author_name, body, status, adopted, client_key,
                      created_at)
SELECT p.session_id, p.rep_id, p.rep_id, 'comment ' || n, c.status,
       c.status = 'published' AND random() < 0.05,
       'b' || n, p.first_at + make_interval(mins => n)
  FROM (SELECT session_id, rep_id, min(started_at) AS first_at, 1 + (random() * 7)::int AS k, random() AS x
          FROM attendance_intervals GROUP BY session_id, rep_id) p
 CROSS JOIN LATERAL generate_series(1, p.k) AS n
 CROSS JOIN LATERAL (SELECT CASE WHEN random() < 0.9 THEN 'published' ELSE 'rejected' END AS status) c
 WHERE p.x < 0.35"""

_POLLS = """INSERT INTO polls (session_id, kind, title, created_by)
SELECT id, 'satisfaction', 'poll', 'bench' FROM sessions
 WHERE kind IN ('special_inquiry', 'committee_meeting')"""

_QUESTIONS = """INSERT INTO poll_questions (poll_id, position, text)
SELECT p.id, q, 'question ' || q FROM polls p CROSS JOIN generate_series(0, 2) AS q"""

_BALLOTS = """INSERT INTO ballots (poll_id, question_id, rep_id, client_key, cast_at)
SELECT q.poll_id, q.id, a.rep_id, 'b' || q.id, a.first_at + interval '90 minutes'
  FROM (SELECT session_id, rep_id, min(started_at) AS first_at FROM attendance_intervals
         GROUP BY session_id, rep_id) a
  JOIN polls p ON p.session_id = a.session_id
  JOIN poll_questions q ON q.poll_id = p.id
 WHERE random() < 0.7"""

CHANGED_RULES = """[effective_attendance]
min_minutes = 45
[activities.attendance]
points = 3
[activities.comment]
points = 2
cap_per_session = 3
[activities.adopted_comment]
points = 10
[activities.poll]
points = 2
[activities.lecture_minute]
points = 0.2
cap_per_session = 90
[reminders]
period = "year"
below = 30
inactive_days = 60
"""


async def _timed(work: Awaitable[T]) -> tuple[T, float]:
    started = time.perf_counter()
    result = await work
    return result, time.perf_counter() - started


async def generate(pool: asyncpg.Pool, *, reps: int, sessions: int, progress: Callable[[str], None]) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT setseed(0.2026)")
        progress("representatives")
        await conn.execute(_REPS, reps)
        progress("sessions")
        await conn.execute(_SESSIONS, sessions)
        progress("attendance")
        await conn.execute(_INTERVALS)
        progress("comments")
        await conn.execute(_COMMENTS)
        progress("polls")
        await conn.execute(_POLLS)
        await conn.execute(_QUESTIONS)
        await conn.execute("UPDATE polls SET state = 'open'")
        await conn.execute("UPDATE polls SET state = 'closed'")
        progress("ballots")
        await conn.execute(_BALLOTS)
    # A year-old ledger has long been vacuumed: its rows are frozen and their hint bits set,
    # so the first rescore does not pay for writing them.
    await pool.execute("VACUUM ANALYZE")


async def bench_scoring(*, reps: int, sessions: int, progress: Callable[[str], None]) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="trs-"))
    services = EmbeddedServices(root, postgres=True, redis=False)
    try:
        url, _ = await asyncio.to_thread(services.start)
        pool = await create_pool(url, min_size=1, max_size=4, timeout=10)
        try:
            async with pool.acquire() as conn:
                await migrate(conn)
            _, generate_s = await _timed(generate(pool, reps=reps, sessions=sessions, progress=progress))
            facts = await pool.fetchrow(
                """SELECT (SELECT count(*) FROM attendance_intervals) AS intervals,
                          (SELECT count(*) FROM (SELECT DISTINCT session_id, rep_id
                                                   FROM attendance_intervals) a) AS attendances,
                          (SELECT count(*) FROM comments) AS comments,
                          (SELECT count(*) FROM comments WHERE adopted) AS adopted,
                          (SELECT count(*) FROM ballots) AS ballots"""
            )
            year = parse_period("2026")
            progress("scoring")
            version = await rules.get_version(pool)
            first, _ = await _timed(scoring.rescore(pool, version, year, actor="bench"))
            again, _ = await _timed(scoring.rescore(pool, version, year, actor="bench"))
            changed = await rules.add_version(pool, CHANGED_RULES, note="bench", actor="bench")
            rescored, _ = await _timed(scoring.rescore(pool, changed, year, actor="bench"))
            progress("rankings")
            ranked, rankings_s = await _timed(scoring.rankings(pool, changed.version, year, limit=10))
            quarter = parse_period("2026-Q4")
            _, quarter_s = await _timed(
                scoring.rankings(pool, changed.version, quarter, delegation="D07", limit=10)
            )
            reminded, reminders_s = await _timed(scoring.reminders(pool, changed, year))
            top_rep = ranked["rankings"][0]["rep"]
            record, record_s = await _timed(scoring.record(pool, changed, year, top_rep))
            largest = await pool.fetchval(
                """SELECT session_id FROM attendance_intervals GROUP BY session_id
                    ORDER BY count(DISTINCT rep_id) DESC, session_id LIMIT 1"""
            )
            progress("report")
            report, report_s = await _timed(
                reports.session_report(pool, largest, changed.rules, changed.version)
            )
            _, xlsx_s = await _timed(asyncio.to_thread(reports.to_xlsx, report))
            return {
                "reps": reps,
                "sessions": sessions,
                "facts": dict(facts),
                "generate_s": round(generate_s, 2),
                "rescore_year_s": round(first.seconds, 3),
                "rescore_year_again_s": round(again.seconds, 3),
                "rescore_year_changed_rules_s": round(rescored.seconds, 3),
                "rescore_steps_s": {
                    name: {k: round(v, 3) for k, v in run.steps.items()}
                    for name, run in (("first", first), ("again", again), ("changed_rules", rescored))
                },
                "points_rows": rescored.rows,
                "same_rows_when_rescored": first.rows == again.rows,
                "rankings_year_top10_ms": round(rankings_s * 1000, 1),
                "rankings_quarter_delegation_ms": round(quarter_s * 1000, 1),
                "reminders_ms": round(reminders_s * 1000, 1),
                "reminded": len(reminded),
                "duty_record_ms": round(record_s * 1000, 1),
                "duty_record_facts": len(record["timeline"]),
                "session_report_ms": round(report_s * 1000, 1),
                "session_report_xlsx_ms": round(xlsx_s * 1000, 1),
                "session_report": {
                    "session": largest,
                    "rows": len(report["representatives"]),
                    **{
                        k: report["totals"][k]
                        for k in ("attendees", "effective", "peak_concurrent", "comments")
                    },
                },
            }
        finally:
            await pool.close()
    finally:
        await asyncio.to_thread(services.stop)
        shutil.rmtree(root, ignore_errors=True)
