"""What the subcommands share: the settings flags and a ledger connection."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg

from config.services import EmbeddedServices
from config.settings import Settings, load_settings
from recorder.db import create_pool
from recorder.migrate import migrate


def add_settings_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, metavar="FILE", help="TOML settings file")
    parser.add_argument("--data-dir", type=Path, metavar="DIR", help="where embedded services keep data")


def settings_from(args: argparse.Namespace, **overrides: Any) -> Settings:
    if getattr(args, "data_dir", None) is not None:
        overrides["data_dir"] = args.data_dir
    return load_settings(args.config, **overrides)


@asynccontextmanager
async def ledger(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    """A migrated pool: the configured database, or the embedded one under the data dir."""
    embedded = None
    url = settings.database_url
    if settings.embedded_database:
        embedded = EmbeddedServices(settings.data_dir, postgres=True, redis=False)
        url, _ = await asyncio.to_thread(embedded.start)
    try:
        pool = await create_pool(url, min_size=1, max_size=2, timeout=settings.database_timeout)
        try:
            async with pool.acquire() as conn:
                await migrate(conn)
            yield pool
        finally:
            await pool.close()
    finally:
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)


def progress(label: str, total: int) -> Callable[[int], None]:
    """A one-line progress report on a terminal; silent when output is not a terminal."""
    if not sys.stderr.isatty():
        return lambda done: None

    def report(done: int) -> None:
        width = 30
        filled = width * done // max(total, 1)
        end = "\n" if done >= total else ""
        print(
            f"\r{label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}",
            end=end,
            file=sys.stderr,
            flush=True,
        )

    return report
