"""Scoring from the ledger: points traceable to facts, rules versions, rankings, reminders,
duty records, leaves of absence and session reports — over HTTP and the CLI."""

from __future__ import annotations

import asyncio
import io
import subprocess
from pathlib import Path
from typing import Any

import openpyxl
import pytest
import redis.asyncio as aioredis

from config.auth import Role
from recorder import reminders
from recorder.rules import default_source
from tests.test_bench import TRIBUNE
from tests.test_node import clean_env

pytestmark = pytest.mark.asyncio(loop_scope="session")

Q4 = "2026-Q4"


async def ledger_facts(db: Any) -> None:
    """Five representatives and four ended sessions, with facts whose points are known:

    s1 special inquiry 09:00–11:00 (120 min): R1 90 min, 7 comments (1 adopted), 1 poll of
    2 questions; R2 30 min (below 60 %); R3 80 min in two intervals, 1 question; R4 on leave;
    R5 absent. s2 lecture 60 min: R1 45 min, R2 20 min. s4 is in 2027 (another period).
    """
    await db.executemany(
        "INSERT INTO representatives (id, name, level, delegation) VALUES ($1, $2, $3, $4)",
        [
            ("R1", "王伟", "city", "东港区代表团"),
            ("R2", "李娜", "city", "东港区代表团"),
            ("R3", "张强", "county", "莒县代表团"),
            ("R4", "赵敏", "city", "莒县代表团"),
            ("R5", "刘洋", "city", "莒县代表团"),
        ],
    )
    await db.executemany(
        """INSERT INTO sessions (id, kind, title, scheduled_start, scheduled_end, state, epoch, created_by,
                                 started_at, ended_at)
           VALUES ($1, $2, $3, $4::text::timestamptz, $5::text::timestamptz, 'ended', 'e', 't',
                   $4::text::timestamptz, $5::text::timestamptz)""",
        [
            ("s1", "special_inquiry", "专题询问", "2026-11-02 09:00+08", "2026-11-02 11:00+08"),
            ("s2", "lecture", "人大讲堂", "2026-11-10 14:00+08", "2026-11-10 15:00+08"),
            ("s4", "committee_meeting", "常委会会议", "2027-01-05 09:00+08", "2027-01-05 10:00+08"),
        ],
    )
    intervals = [
        ("s1", "R1", "09:00", "10:30"),
        ("s1", "R2", "09:00", "09:30"),
        ("s1", "R3", "09:00", "09:40"),
        ("s1", "R3", "09:50", "10:30"),
        ("s2", "R1", "14:00", "14:45"),
        ("s2", "R2", "14:10", "14:30"),
    ]
    days = {"s1": "2026-11-02", "s2": "2026-11-10"}
    await db.executemany(
        """INSERT INTO attendance_intervals (session_id, rep_id, started_at, ended_at, lease_until, node_id,
                                             close_reason)
           VALUES ($1, $2, $3::text::timestamptz, $4::text::timestamptz, $4::text::timestamptz,
                   'n', 'left')""",
        [(s, r, f"{days[s]} {a}+08", f"{days[s]} {b}+08") for s, r, a, b in intervals],
    )
    await db.execute(
        """INSERT INTO leaves_of_absence (session_id, rep_id, reason, recorded_by)
           VALUES ('s1', 'R4', '出差', 'A')"""
    )
    await db.executemany(
        """INSERT INTO comments (session_id, rep_id, author_name, body, status, adopted, client_key,
                                 created_at)
           VALUES ('s1', $1, $1, $2, $3, $4, $2,
                   '2026-11-02 09:30+08'::timestamptz + make_interval(mins => $5))""",
        [("R1", f"c{i}", "published", i == 6, i) for i in range(7)] + [("R1", "bad", "rejected", False, 8)],
    )
    poll = await db.fetchval(
        """INSERT INTO polls (session_id, kind, title, created_by)
           VALUES ('s1', 'satisfaction', '测评', 'H') RETURNING id"""
    )
    questions = [
        await db.fetchval(
            "INSERT INTO poll_questions (poll_id, position, text) VALUES ($1, $2, 'q') RETURNING id", poll, n
        )
        for n in range(2)
    ]
    await db.executemany(
        "INSERT INTO ballots (poll_id, question_id, rep_id, client_key) VALUES ($1, $2, $3, $4)",
        [
            (poll, questions[0], "R1", "k1"),
            (poll, questions[1], "R1", "k2"),
            (poll, questions[0], "R3", "k3"),
        ],
    )


async def tribune(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, [TRIBUNE, *args], env=env, capture_output=True, text=True, timeout=120
    )


async def get(client: Any, path: str, headers: dict[str, str], status: int = 200) -> Any:
    response = await client.get(path, headers=headers)
    assert response.status == status, await response.text()
    return await response.json()


async def points_rows(db: Any, version: int) -> list[tuple[Any, ...]]:
    rows = await db.fetch(
        """SELECT rep_id, activity, fact, rule, quantity, points FROM score_points
            WHERE version = $1 ORDER BY rep_id, activity, fact""",
        version,
    )
    return [tuple(r) for r in rows]


async def test_rankings_points_and_their_facts(client, auth, db) -> None:  # type: ignore[no-untyped-def]
    await ledger_facts(db)
    found = await get(client, f"/api/scores?period={Q4}", auth.admin)
    assert found["version"] == 1 and found["period"]["label"] == Q4
    table = [(r["rank"], r["rep"], r["points"]) for r in found["rankings"]]
    # R1: 3 (inquiry) + 5 comments (cap 5) + 5 adopted + 1 poll; lecture 1 + 45 × 0.1.
    assert table == [(1, "R1", 19.5), (2, "R3", 4.0), (3, "R2", 2.0), (4, "R4", 0.0), (4, "R5", 0.0)]
    assert found["rankings"][0]["by_activity"] == {
        "attendance": 4.0,
        "comment": 5.0,
        "adopted_comment": 5.0,
        "poll": 1.0,
        "lecture_minute": 4.5,
    }
    # Every point names its fact and rule; facts past the cap are kept at 0.
    comments = await db.fetch(
        """SELECT fact, rule, points FROM score_points
            WHERE rep_id = 'R1' AND activity = 'comment' ORDER BY fact::int"""
    )
    assert [r["points"] for r in comments] == [1] * 5 + [0] * 2
    assert {r["rule"] for r in comments[5:]} == {"activities.comment.cap_per_session"}
    published = await db.fetch("SELECT id FROM comments WHERE status = 'published'")
    assert {r["fact"] for r in comments} == {str(r["id"]) for r in published}
    presence = await db.fetchrow(
        "SELECT rule, quantity, points FROM score_points WHERE rep_id = 'R2' AND fact = 's1'"
    )
    assert (
        presence["rule"] == "effective_attendance" and presence["points"] == 0 and presence["quantity"] == 30
    )

    by_level = await get(client, f"/api/scores?period={Q4}&level=county", auth.admin)
    assert [r["rep"] for r in by_level["rankings"]] == ["R3"]
    by_delegation = await get(client, f"/api/scores?period={Q4}&delegation=莒县代表团&limit=2", auth.admin)
    assert [r["rep"] for r in by_delegation["rankings"]] == ["R3", "R4"] and by_delegation["ranked"] == 3
    nothing = await get(client, "/api/scores?period=2027", auth.admin)  # s4: nobody came
    assert nothing["ranked"] == 5 and {r["points"] for r in nothing["rankings"]} == {0.0}
    top = await get(client, f"/api/scores/top?period={Q4}", auth("R2"))
    assert [(t["rep"], t["points"]) for t in top["top"]] == [("R1", 19.5), ("R3", 4.0), ("R2", 2.0)]
    await get(client, f"/api/scores?period={Q4}", auth("R2"), status=403)
    bad = await get(client, "/api/scores?period=2026-Q5", auth.admin, status=422)
    assert "2026-Q5" in bad["error"]["message"] and "2026-Q4" in bad["error"]["message"]


async def test_rules_versions_rescore_deterministically(client, auth, db) -> None:  # type: ignore[no-untyped-def]
    await ledger_facts(db)
    await get(client, f"/api/scores?period={Q4}", auth.admin)
    first = await points_rows(db, 1)
    again = await client.post(f"/api/scores/rescore?period={Q4}", headers=auth.admin)
    assert again.status == 200 and (await again.json())["run"]["sessions"] == 2
    assert await points_rows(db, 1) == first  # the same facts and rules: the same points

    generous = "[activities.comment]\npoints = 2\n[activities.attendance]\npoints = 1\n"
    response = await client.post(
        "/api/scores/rules?note=more for comments",
        data=generous,
        headers={**auth.admin, "Content-Type": "application/toml"},
    )
    assert response.status == 201, await response.text()
    assert (await response.json())["rules"]["version"] == 2
    now = await get(client, f"/api/scores?period={Q4}", auth.admin)
    assert now["version"] == 2
    # Default effective rule (none given): every attendance counts; 7 comments × 2, no cap.
    assert [(r["rep"], r["points"]) for r in now["rankings"][:3]] == [("R1", 16.0), ("R2", 2.0), ("R3", 1.0)]
    old = await get(client, f"/api/scores?period={Q4}&version=1", auth.admin)
    assert old["rankings"][0]["points"] == 19.5
    await client.post(f"/api/scores/rescore?period={Q4}&version=1", headers=auth.admin)
    assert await points_rows(db, 1) == first
    listed = await get(client, "/api/scores/rules", auth.admin)
    assert [v["version"] for v in listed["versions"]] == [2, 1]
    source = await client.get("/api/scores/rules?version=2&format=toml", headers=auth.admin)
    assert await source.text() == generous


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ("[activities.likes]\npoints = 1\n", "unknown activity 'likes'"),
        ("[activities.comment]\npoints = 1\ncap_per_session = -1\n", "activities.comment.cap_per_session"),
        ('[reminders]\nperiod = "2026-Q7"\n', "reminders.period"),
        ("[activities.comment\n", "not valid TOML"),
        ("[effective_attendance.kind.opera]\nmin_minutes = 3\n", "unknown session kind 'opera'"),
    ],
    ids=["unknown-activity", "negative-cap", "bad-period", "bad-toml", "unknown-kind"],
)
async def test_bad_rules_are_refused_and_the_old_ones_stay(client, auth, db, body, named) -> None:  # type: ignore[no-untyped-def]
    before = await get(client, "/api/scores/rules", auth.admin)
    response = await client.post(
        "/api/scores/rules", data=body, headers={**auth.admin, "Content-Type": "application/toml"}
    )
    assert response.status == 422
    assert named in (await response.json())["error"]["message"]
    after = await get(client, "/api/scores/rules", auth.admin)
    assert after == before and after["current"]["version"] == 1


async def test_bad_rules_file_from_the_cli(database_url, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "rules.toml"
    bad.write_text("[activities.comment]\ncap_per_session = -3\n", encoding="utf-8")
    env = clean_env(TRIBUNE_DATABASE_URL=database_url)
    result = await tribune("scores", "--rules", str(bad), "--period", Q4, env=env)
    assert result.returncode == 1
    assert "activities.comment.cap_per_session" in result.stderr
    good = tmp_path / "good.toml"
    good.write_text("[activities.attendance]\npoints = 7\n", encoding="utf-8")
    result = await tribune("scores", "--rules", str(good), "--period", Q4, "--top", "3", env=env)
    assert result.returncode == 0, result.stderr
    assert "rules version 2 loaded" in result.stderr  # the bad file never became a version


async def test_cli_scores_and_report(db, database_url, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    await ledger_facts(db)
    env = clean_env(TRIBUNE_DATABASE_URL=database_url)
    result = await tribune("scores", "--period", Q4, "--top", "2", env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "rules version 1" in lines[0]
    assert lines[1].split()[:3] == ["1", "19.50", "R1"] and lines[2].split()[:3] == ["2", "4.00", "R3"]
    assert len(lines) == 3
    out = tmp_path / "s1.xlsx"
    result = await tribune("report", "session", "s1", "--xlsx", str(out), env=env)
    assert result.returncode == 0, result.stderr
    book = openpyxl.load_workbook(out)
    assert book.sheetnames == ["汇总 Summary", "代表 Representatives"]
    people = list(book["代表 Representatives"].iter_rows(values_only=True))
    assert [row[0] for row in people[1:]] == ["R1", "R2", "R3", "R4", "R5"]
    bad = await tribune("scores", "--period", "last-week", env=env)
    assert bad.returncode == 1 and "does not parse" in bad.stderr


async def test_session_report_and_leaves(client, auth, db) -> None:  # type: ignore[no-untyped-def]
    await ledger_facts(db)
    report = (await get(client, "/api/sessions/s1/report", auth("H1", Role.HOST)))["report"]
    assert report["totals"] == {
        "expected": 5,
        "attendees": 3,
        "effective": 2,
        "attended_below_threshold": 1,
        "excused": 1,
        "absent": 1,
        "peak_concurrent": 3,
        "dwell_minutes": 200.0,
        "comments": 8,
        "comments_published": 7,
        "comments_adopted": 1,
        "polls": 1,
        "votes": 3,
        "voters": 2,
    }
    status = {p["rep"]: (p["status"], p["dwell_minutes"], p["intervals"]) for p in report["representatives"]}
    assert status == {
        "R1": ("effective", 90.0, 1),
        "R2": ("attended", 30.0, 1),
        "R3": ("effective", 80.0, 2),
        "R4": ("excused", 0.0, 0),
        "R5": ("absent", 0.0, 0),
    }
    await get(client, "/api/sessions/s1/report", auth("R1"), status=403)

    # Staff record R5's leave: the report now counts R5 excused, not absent.
    response = await client.put("/api/sessions/s1/leaves/R5", json={"reason": "病假"}, headers=auth.admin)
    assert response.status == 200, await response.text()
    assert (await response.json())["leave"]["reason"] == "病假"
    report = (await get(client, "/api/sessions/s1/report", auth.admin))["report"]
    assert (report["totals"]["excused"], report["totals"]["absent"]) == (2, 0)
    listed = await get(client, "/api/sessions/s1/leaves", auth.admin)
    assert [(x["rep"], x["reason"]) for x in listed["leaves"]] == [("R4", "出差"), ("R5", "病假")]
    assert (await client.delete("/api/sessions/s1/leaves/R5", headers=auth.admin)).status == 200
    report = (await get(client, "/api/sessions/s1/report", auth.admin))["report"]
    assert (report["totals"]["excused"], report["totals"]["absent"]) == (1, 1)
    refused = await client.put("/api/sessions/s1/leaves/R5", json={"reason": "x"}, headers=auth("R5"))
    assert refused.status == 403
    unknown = await client.put("/api/sessions/s1/leaves/NOBODY", json={}, headers=auth.admin)
    assert unknown.status == 422 and "not on the roster" in (await unknown.json())["error"]["message"]
    missing = await client.put("/api/sessions/nope/leaves/R1", json={}, headers=auth.admin)
    assert missing.status == 404

    csv_response = await client.get("/api/sessions/s1/report?format=csv", headers=auth.admin)
    body = await csv_response.read()
    assert body.startswith(b"\xef\xbb\xbf") and "有效出席" in body.decode("utf-8-sig")
    xlsx = await client.get("/api/sessions/s1/report?format=xlsx", headers=auth.admin)
    book = openpyxl.load_workbook(io.BytesIO(await xlsx.read()))
    summary = dict(book["汇总 Summary"].iter_rows(min_row=2, values_only=True))
    assert summary["出席人次 Attendees"] == 3 and summary["最高同时在线 Peak concurrent"] == 3


async def test_duty_record(client, auth, db) -> None:  # type: ignore[no-untyped-def]
    await ledger_facts(db)
    record = (await get(client, f"/api/representatives/R1/record?period={Q4}", auth("R1")))["record"]
    assert record["points"] == 19.5
    kinds = [(f["session"], f["activity"], f["points"]) for f in record["timeline"]]
    assert kinds[0] == ("s1", "attendance", 3.0)  # oldest first: joined at 09:00
    assert sum(1 for k in kinds if k[1] == "comment") == 7
    assert ("s2", "lecture_minute", 4.5) in kinds
    assert all(f["rule"] for f in record["timeline"])
    r2 = (await get(client, f"/api/representatives/R2/record?period={Q4}", auth.admin))["record"]
    # Below the threshold in both sessions: present, and absent (unexcused) with 0 points.
    assert sorted((f["session"], f["activity"]) for f in r2["timeline"]) == [
        ("s1", "absence"),
        ("s1", "presence"),
        ("s2", "absence"),
        ("s2", "lecture_minute"),
        ("s2", "presence"),
    ]
    r4 = (await get(client, f"/api/representatives/R4/record?period={Q4}", auth.admin))["record"]
    assert sorted((f["session"], f["activity"]) for f in r4["timeline"]) == [
        ("s1", "leave"),
        ("s2", "absence"),
    ]
    await get(client, f"/api/representatives/R1/record?period={Q4}", auth("R2"), status=403)
    export = await client.get(f"/api/representatives/R1/record?period={Q4}&format=csv", headers=auth("R1"))
    text = (await export.read()).decode("utf-8-sig")
    assert text.splitlines()[0].startswith("时间 Time") and len(text.splitlines()) == 1 + len(
        record["timeline"]
    )


async def test_reminders_list_and_stream(client, auth, db, settings) -> None:  # type: ignore[no-untyped-def]
    await ledger_facts(db)
    rules = default_source().split("[reminders]")[0]
    rules += '[reminders]\nperiod = "2026-Q4"\nbelow = 3\nmax_absences = 1\ninactive_days = 60\n'
    await client.post("/api/scores/rules", data=rules, headers={**auth.admin, "Content-Type": "text/plain"})
    found = await get(client, "/api/scores/reminders", auth.admin)
    assert found["period"]["label"] == "2026-Q4"
    by_rep = {r["rep"]: r for r in found["reminders"]}
    # R4 missed s2 without leave and was excused from s1: one absence, one excused.
    assert set(by_rep) == {"R2", "R4", "R5"}
    assert by_rep["R4"]["absent"] == 1 and by_rep["R4"]["excused"] == 1
    assert by_rep["R4"]["reasons"] == ["below_threshold", "inactive"]
    assert by_rep["R2"]["reasons"] == ["below_threshold", "absent"]  # below 60 % twice: not effective
    assert by_rep["R5"]["reasons"] == ["below_threshold", "inactive", "absent"]
    sent = await client.post("/api/scores/reminders", headers=auth.admin)
    assert sent.status == 200
    body = await sent.json()
    assert body["sent"] == len(by_rep) and body["stream"] == reminders.stream_key(settings.redis_prefix)
    redis = aioredis.from_url(settings.redis_url)
    try:
        entries = await redis.xrange(body["stream"])
    finally:
        await redis.aclose()
    assert sorted(e[1][b"rep"].decode() for e in entries) == sorted(by_rep)
    r5 = next(e[1] for e in entries if e[1][b"rep"] == b"R5")
    assert b"absent" in r5[b"reasons"] and r5[b"period"] == b"2026-Q4"


async def test_effective_attendance_rule_per_session_and_kind(client, auth, db) -> None:  # type: ignore[no-untyped-def]
    await ledger_facts(db)
    rules = default_source().replace(
        "[effective_attendance.kind.lecture]\nmin_minutes = 30",
        "[effective_attendance.kind.lecture]\nmin_minutes = 15\n"
        '[effective_attendance.session."s1"]\nmin_share = 0.25',
    )
    assert rules != default_source()
    response = await client.post(
        "/api/scores/rules", data=rules, headers={**auth.admin, "Content-Type": "text/plain"}
    )
    assert response.status == 201, await response.text()
    report = (await get(client, "/api/sessions/s1/report", auth.admin))["report"]
    assert report["effective_rule"] == {
        "key": 'effective_attendance.session."s1"',
        "min_share": 0.25,
        "min_minutes": None,
    }
    assert report["totals"]["effective"] == 3  # R2's 30 of 120 minutes now count
    record = (await get(client, f"/api/representatives/R2/record?period={Q4}", auth.admin))["record"]
    facts = {(f["session"], f["activity"]): f for f in record["timeline"]}
    assert facts["s1", "attendance"]["points"] == 3.0
    assert facts["s2", "attendance"]["rule"] == "activities.attendance.by_kind.lecture"  # 20 min ≥ 15


async def test_periods() -> None:
    from datetime import datetime

    from recorder.periods import LOCAL, PeriodError, parse_period

    q4 = parse_period("2026-Q4")
    assert (q4.start, q4.end) == (datetime(2026, 10, 1, tzinfo=LOCAL), datetime(2027, 1, 1, tzinfo=LOCAL))
    month = parse_period("2026-12")
    assert month.end == datetime(2027, 1, 1, tzinfo=LOCAL)
    custom = parse_period("2026-03-01..2026-03-31")
    assert (custom.start.day, custom.end.month, custom.end.day) == (1, 4, 1)
    now = datetime(2026, 11, 21, 12, tzinfo=LOCAL)
    assert parse_period("quarter", now=now).label == "2026-Q4"
    assert parse_period("month", now=now).label == "2026-11"
    for bad in ("2026-Q5", "2026-13", "2026-02-30..2026-03-01", "2026-03-02..2026-03-01", "soon"):
        with pytest.raises(PeriodError):
            parse_period(bad)
