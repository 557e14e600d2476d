"""A session's report: who was expected, who came and for how long, whose attendance
counts under the rules, who was excused, and what was said and answered.

Dwell time is the sum of a representative's intervals clipped to the session's live time
(to now while it is live). Peak concurrency comes from the same intervals, so it counts
representatives; staff and public viewers leave no attendance in the ledger.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

from recorder import sheets
from recorder.errors import SessionNotFound
from recorder.periods import LOCAL
from recorder.rules import Rules
from recorder.scoring import EXPECTED

_PEOPLE = f"""
WITH s AS (SELECT * FROM sessions WHERE id = $1),
     win AS (SELECT started_at AS a, coalesce(ended_at, now()) AS b FROM s),
     {EXPECTED.format(ids="ARRAY[$1]")},
     iv AS (SELECT i.rep_id, count(*) AS intervals, min(i.started_at) AS first_at,
                   max(coalesce(i.ended_at, now())) AS last_at,
                   sum(greatest(0, extract(epoch FROM least(coalesce(i.ended_at, now()), win.b)
                                                   - greatest(i.started_at, win.a)))) AS secs
              FROM attendance_intervals i CROSS JOIN win WHERE i.session_id = $1 GROUP BY i.rep_id),
     cm AS (SELECT rep_id, count(*) FILTER (WHERE status = 'published') AS published,
                   count(*) FILTER (WHERE status = 'published' AND adopted) AS adopted
              FROM comments WHERE session_id = $1 GROUP BY rep_id),
     pv AS (SELECT b.rep_id, count(DISTINCT b.poll_id) AS polls, count(*) AS answers
              FROM ballots b JOIN polls p ON p.id = b.poll_id WHERE p.session_id = $1 GROUP BY b.rep_id),
     lv AS (SELECT rep_id, reason FROM leaves_of_absence WHERE session_id = $1),
     people AS (SELECT rep_id FROM expected UNION SELECT rep_id FROM iv UNION SELECT rep_id FROM lv
                UNION SELECT rep_id FROM cm UNION SELECT rep_id FROM pv)
SELECT people.rep_id, coalesce(r.name, people.rep_id) AS name, coalesce(r.delegation, '') AS delegation,
       coalesce(r.level, '') AS level, (e.rep_id IS NOT NULL) AS expected,
       coalesce(iv.intervals, 0) AS intervals, iv.first_at, iv.last_at, coalesce(iv.secs, 0) AS secs,
       coalesce(cm.published, 0) AS comments, coalesce(cm.adopted, 0) AS adopted,
       coalesce(pv.polls, 0) AS polls, coalesce(pv.answers, 0) AS answers,
       (lv.rep_id IS NOT NULL) AS on_leave, coalesce(lv.reason, '') AS leave_reason
  FROM people
  LEFT JOIN representatives r ON r.id = people.rep_id
  LEFT JOIN expected e ON e.rep_id = people.rep_id
  LEFT JOIN iv ON iv.rep_id = people.rep_id
  LEFT JOIN cm ON cm.rep_id = people.rep_id
  LEFT JOIN pv ON pv.rep_id = people.rep_id
  LEFT JOIN lv ON lv.rep_id = people.rep_id
 ORDER BY people.rep_id"""

# Concurrency from interval edges; at one instant an end counts before a start, so a
# reconnect that continues an interval is not two people.
_PEAK = """SELECT coalesce(max(n), 0) FROM (
             SELECT sum(d) OVER (ORDER BY t, d ROWS UNBOUNDED PRECEDING) AS n FROM (
               SELECT started_at AS t, 1 AS d FROM attendance_intervals WHERE session_id = $1
               UNION ALL
               SELECT coalesce(ended_at, now()), -1 FROM attendance_intervals WHERE session_id = $1) e) c"""

_TOTALS = """SELECT
    (SELECT count(*) FROM comments WHERE session_id = $1) AS comments,
    (SELECT count(*) FROM comments WHERE session_id = $1 AND status = 'published') AS published,
    (SELECT count(*) FROM comments WHERE session_id = $1 AND status = 'published' AND adopted) AS adopted,
    (SELECT count(*) FROM polls WHERE session_id = $1) AS polls,
    (SELECT count(*) FROM ballots b JOIN polls p ON p.id = b.poll_id WHERE p.session_id = $1) AS votes,
    (SELECT count(DISTINCT b.rep_id) FROM ballots b JOIN polls p ON p.id = b.poll_id
      WHERE p.session_id = $1) AS voters"""

STATUS_LABELS = {
    "effective": "有效出席 effective",
    "attended": "出席未达标 attended",
    "excused": "请假 excused",
    "absent": "缺席 absent",
    "not_expected": "未列入 not expected",
}


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


async def session_report(pool: asyncpg.Pool, session_id: str, rules: Rules, version: int) -> dict[str, Any]:
    session = await pool.fetchrow(
        """SELECT id, kind, title, state, scheduled_start, scheduled_end, started_at, ended_at,
                  extract(epoch FROM coalesce(ended_at, now()) - started_at) AS live_secs
             FROM sessions WHERE id = $1""",
        session_id,
    )
    if session is None:
        raise SessionNotFound(f"no session {session_id!r}")
    threshold, rule_key = rules.threshold(session_id, session["kind"])
    live_secs = float(session["live_secs"] or 0)
    people = []
    counts = {status: 0 for status in STATUS_LABELS}
    dwell_total = 0.0
    for row in await pool.fetch(_PEOPLE, session_id):
        secs = float(row["secs"])
        dwell_total += secs
        if row["intervals"] and session["started_at"] and threshold.met(secs, live_secs):
            status = "effective"
        elif row["on_leave"]:
            status = "excused"
        elif row["intervals"]:
            status = "attended"
        elif row["expected"]:
            status = "absent"
        else:
            status = "not_expected"
        counts[status] += 1
        people.append(
            {
                "rep": row["rep_id"],
                "name": row["name"],
                "delegation": row["delegation"],
                "level": row["level"],
                "expected": row["expected"],
                "status": status,
                "dwell_minutes": round(secs / 60, 1),
                "share": round(secs / live_secs, 3) if live_secs else 0.0,
                "intervals": row["intervals"],
                "first_seen": _iso(row["first_at"]),
                "last_seen": _iso(row["last_at"]),
                "comments": row["comments"],
                "adopted": row["adopted"],
                "polls": row["polls"],
                "answers": row["answers"],
                "leave_reason": row["leave_reason"] if row["on_leave"] else None,
            }
        )
    totals = await pool.fetchrow(_TOTALS, session_id)
    peak = await pool.fetchval(_PEAK, session_id)
    return {
        "session": {
            "id": session["id"],
            "kind": session["kind"],
            "title": session["title"],
            "state": session["state"],
            "scheduled_start": session["scheduled_start"].isoformat(),
            "scheduled_end": session["scheduled_end"].isoformat(),
            "started_at": _iso(session["started_at"]),
            "ended_at": _iso(session["ended_at"]),
            "live_minutes": round(live_secs / 60, 1),
        },
        "rules_version": version,
        "effective_rule": {
            "key": rule_key,
            "min_share": threshold.min_share,
            "min_minutes": threshold.min_minutes,
        },
        "totals": {
            "expected": sum(1 for p in people if p["expected"]),
            "attendees": sum(1 for p in people if p["intervals"]),  # 人次
            "effective": counts["effective"],
            "attended_below_threshold": counts["attended"],
            "excused": counts["excused"],
            "absent": counts["absent"],
            "peak_concurrent": peak,
            "dwell_minutes": round(dwell_total / 60, 1),
            "comments": totals["comments"],
            "comments_published": totals["published"],
            "comments_adopted": totals["adopted"],
            "polls": totals["polls"],
            "votes": totals["votes"],
            "voters": totals["voters"],
        },
        "representatives": people,
    }


HEADER = (
    "代表编号 Rep",
    "姓名 Name",
    "代表团 Delegation",
    "出席情况 Status",
    "在线时长(分) Minutes",
    "占比 Share",
    "进出次数 Intervals",
    "首次进入 First seen",
    "最后离开 Last seen",
    "留言 Comments",
    "采纳 Adopted",
    "测评 Polls",
    "请假事由 Leave reason",
)


def _local(value: str | None) -> str:
    return datetime.fromisoformat(value).astimezone(LOCAL).strftime("%Y-%m-%d %H:%M:%S") if value else ""


def _rows(report: dict[str, Any]) -> list[list[Any]]:
    return [
        [
            p["rep"],
            p["name"],
            p["delegation"],
            STATUS_LABELS[p["status"]],
            p["dwell_minutes"],
            p["share"],
            p["intervals"],
            _local(p["first_seen"]),
            _local(p["last_seen"]),
            p["comments"],
            p["adopted"],
            p["polls"],
            p["leave_reason"] or "",
        ]
        for p in report["representatives"]
    ]


def to_csv(report: dict[str, Any]) -> bytes:
    return sheets.to_csv(HEADER, _rows(report))


_TOTAL_LABELS = {
    "expected": "应出席 Expected",
    "attendees": "出席人次 Attendees",
    "effective": "有效出席 Effective",
    "attended_below_threshold": "出席未达标 Below threshold",
    "excused": "请假 Excused",
    "absent": "缺席 Absent",
    "peak_concurrent": "最高同时在线 Peak concurrent",
    "dwell_minutes": "总在线时长(分) Total minutes",
    "comments": "留言 Comments",
    "comments_published": "已发布留言 Published",
    "comments_adopted": "采纳留言 Adopted",
    "polls": "测评 Polls",
    "votes": "投票 Votes",
    "voters": "投票人数 Voters",
}


def to_xlsx(report: dict[str, Any]) -> bytes:
    s = report["session"]
    summary: list[list[Any]] = [
        ["会议 Session", s["title"]],
        ["编号 Id", s["id"]],
        ["类型 Kind", s["kind"]],
        ["开始 Started", _local(s["started_at"])],
        ["结束 Ended", _local(s["ended_at"])],
        ["直播时长(分) Live minutes", s["live_minutes"]],
        ["有效出席规则 Rule", report["effective_rule"]["key"]],
        ["规则版本 Rules version", report["rules_version"]],
    ]
    summary += [[_TOTAL_LABELS[k], v] for k, v in report["totals"].items()]
    return sheets.to_xlsx(
        [
            ("汇总 Summary", ["项目 Item", "数值 Value"], summary),
            ("代表 Representatives", HEADER, _rows(report)),
        ]
    )


RECORD_HEADER = (
    "时间 Time",
    "会议 Session",
    "类型 Kind",
    "事项 Activity",
    "依据 Fact",
    "数量 Quantity",
    "积分 Points",
    "规则 Rule",
)


def record_rows(record: dict[str, Any]) -> list[list[Any]]:
    return [
        [
            _local(f["at"]),
            f["title"],
            f["kind"],
            f["activity"],
            f["fact"],
            f["quantity"],
            f["points"],
            f["rule"],
        ]
        for f in record["timeline"]
    ]


def record_csv(record: dict[str, Any]) -> bytes:
    return sheets.to_csv(RECORD_HEADER, record_rows(record))


def record_xlsx(record: dict[str, Any]) -> bytes:
    summary = [
        ["代表 Representative", f"{record['name']} ({record['rep']})"],
        ["期间 Period", record["period"]["label"]],
        ["规则版本 Rules version", record["version"]],
        ["积分 Points", record["points"]],
    ] + [[k, v] for k, v in record["by_activity"].items()]
    return sheets.to_xlsx(
        [
            ("汇总 Summary", ["项目 Item", "数值 Value"], summary),
            ("履职记录 Record", RECORD_HEADER, record_rows(record)),
        ]
    )
