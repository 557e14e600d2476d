"""`tribune scores`: load rules, rescore a period, print the rankings, reminders or a duty record."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from config.cli.common import add_settings_flags, ledger, settings_from
from recorder import roster, rules, scoring
from recorder.periods import FORMS, parse_period


def add_parser(sub: Any, name: str) -> None:
    p = sub.add_parser(
        name,
        help="rescore a period and print the rankings (履职排行榜)",
        description=(
            "Derive the points of every session that ended in the period from the ledger, under the "
            "current rules (or --version), and print the rankings. --rules FILE first loads a TOML "
            "rules file as the next version; a file with an error is refused and the rules in force stay."
        ),
    )
    add_settings_flags(p)
    p.add_argument("--period", default="year", help=f"the period: {FORMS} (default: year)")
    p.add_argument("--top", type=int, default=10, help="how many to print (default 10)")
    p.add_argument("--level", choices=sorted(set(roster.LEVELS.values())), help="only this level")
    p.add_argument("--delegation", help="only this delegation")
    p.add_argument("--version", type=int, help="score under this rules version (default: current)")
    p.add_argument("--rules", type=Path, metavar="FILE", help="load this TOML rules file as the next version")
    p.add_argument("--note", default="", help="a note stored with --rules")
    p.add_argument("--reminders", action="store_true", help="print the reminder list instead")
    p.add_argument("--record", metavar="REP", help="print this representative's duty record instead")
    p.add_argument("--json", action="store_true", help="print JSON")


def _print_rankings(result: dict[str, Any]) -> None:
    print(f"period {result['period']['label']}, rules version {result['version']}, {result['ranked']} ranked")
    for r in result["rankings"]:
        print(f"{r['rank']:>5}  {r['points']:>9.2f}  {r['rep']:<12} {r['name']}  {r['delegation']}")


def run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    if args.top < 1:
        print("tribune: --top must be at least 1", file=sys.stderr)
        return 2
    period = parse_period(args.period)
    source = None
    if args.rules is not None:
        try:
            source = args.rules.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            print(f"tribune: cannot read {args.rules}: {exc}", file=sys.stderr)
            return 1

    async def go() -> int:
        async with ledger(settings) as pool:
            if source is not None:
                added = await rules.add_version(pool, source, note=args.note, actor="cli")
                print(f"rules version {added.version} loaded from {args.rules}", file=sys.stderr)
            version = await rules.get_version(pool, args.version)
            run = await scoring.rescore(pool, version, period, actor="cli")
            print(f"scored {run.sessions} sessions ({run.rows} facts) in {run.seconds:.2f}s", file=sys.stderr)
            result: dict[str, Any]
            if args.record:
                result = await scoring.record(pool, version, period, args.record)
            elif args.reminders:
                found = await scoring.reminders(pool, version, period)
                result = {"period": period.as_dict(), "version": version.version, "reminders": found}
            else:
                result = {
                    "period": period.as_dict(),
                    "version": version.version,
                    **await scoring.rankings(
                        pool,
                        version.version,
                        period,
                        level=args.level,
                        delegation=args.delegation,
                        limit=args.top,
                    ),
                }
        if args.json or args.record or args.reminders:
            print(json.dumps(result, ensure_ascii=False, indent=2))
        else:
            _print_rankings(result)
        return 0

    return asyncio.run(go())
