"""`tribune migrate`: bring the ledger schema up to date."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from config.cli.common import add_settings_flags, ledger, settings_from


def add_parser(sub: Any, name: str) -> None:
    p = sub.add_parser(
        name,
        help="apply the ledger's migrations",
        description=("Apply pending SQL migrations under an advisory lock (nodes also do this at start)."),
    )
    add_settings_flags(p)


def run(args: argparse.Namespace) -> int:
    settings = settings_from(args)

    async def go() -> int:
        async with ledger(settings) as pool:
            version = await pool.fetchval("SELECT max(version) FROM schema_migrations")
        print(f"ledger schema at version {version}")
        return 0

    return asyncio.run(go())
