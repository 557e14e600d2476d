"""`tribune import-roster`: load representatives from a CSV or XLSX file."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from config.cli.common import add_settings_flags, ledger, progress, settings_from
from recorder import roster


def add_parser(sub: Any, name: str) -> None:
    p = sub.add_parser(
        name,
        help="import the roster from CSV or XLSX",
        description=(
            "Import representatives (columns id/代表编号, name/姓名, level/层级, and optionally "
            "delegation/代表团, group/小组, liaison_station/联络站) in one transaction."
        ),
    )
    add_settings_flags(p)
    p.add_argument("file", type=Path, help="a .csv or .xlsx file")
    p.add_argument(
        "--skip-invalid",
        action="store_true",
        help="import the valid rows even if some are broken (default: import nothing)",
    )


def run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    try:
        data = args.file.read_bytes()
    except OSError as exc:
        print(f"tribune: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return 1
    kind = roster.XLSX_TYPES if args.file.suffix.lower() == ".xlsx" else roster.CSV_TYPES
    content_type = next(iter(sorted(kind)))

    async def go() -> int:
        async with ledger(settings) as pool:
            rows = sum(1 for _ in data.splitlines()) if content_type in roster.CSV_TYPES else 0
            report = await roster.import_file(
                pool,
                data,
                content_type,
                skip_invalid=args.skip_invalid,
                max_rows=settings.roster_max_rows,
                actor="cli",
                progress=progress("importing", max(rows - 1, 1)) if rows else None,
            )
        print(json.dumps(report.as_dict(), ensure_ascii=False, indent=2))
        return 0 if report.committed else 1

    return asyncio.run(go())
