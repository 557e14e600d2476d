"""`tribune report session ID`: a session's attendance and participation report."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

from config.cli.common import add_settings_flags, ledger, settings_from
from recorder import reports, rules


def add_parser(sub: Any, name: str) -> None:
    p = sub.add_parser(
        name,
        help="a session's report (attendance, dwell time, comments, votes) as JSON, XLSX or CSV",
        description=(
            "Who was expected and who came (人次), whose attendance counts under the current rules, "
            "who was excused, dwell times, peak concurrency, comments, adopted comments and votes."
        ),
    )
    what = p.add_subparsers(dest="report", required=True, metavar="REPORT")
    s = what.add_parser("session", help="one session's report")
    add_settings_flags(s)
    s.add_argument("session", help="the session id")
    s.add_argument("--xlsx", type=Path, metavar="FILE", help="write the report as an XLSX workbook")
    s.add_argument("--csv", type=Path, metavar="FILE", help="write the per-representative rows as CSV")
    s.add_argument("--version", type=int, help="judge effective attendance under this rules version")


def run(args: argparse.Namespace) -> int:
    settings = settings_from(args)

    async def go() -> int:
        async with ledger(settings) as pool:
            version = await rules.get_version(pool, args.version)
            report = await reports.session_report(pool, args.session, version.rules, version.version)
        if args.xlsx:
            args.xlsx.write_bytes(reports.to_xlsx(report))
        if args.csv:
            args.csv.write_bytes(reports.to_csv(report))
        if args.xlsx or args.csv:
            totals = ", ".join(f"{k} {v}" for k, v in report["totals"].items())
            print(f"{report['session']['id']}: {totals}")
        else:
            print(json.dumps(report, ensure_ascii=False, indent=2))
        return 0

    return asyncio.run(go())
