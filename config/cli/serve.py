"""`tribune serve`: run a node."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
from typing import Any

from aiohttp import web

from config.app import create_app
from config.auth import with_signing_key
from config.cli.common import add_settings_flags, settings_from
from config.front import IDLE_SECONDS, NodeRunner
from config.logs import setup_logging
from config.loop import new_event_loop
from config.settings import Settings

log = logging.getLogger("tribune")


def add_parser(sub: Any, name: str) -> None:
    p = sub.add_parser(
        name,
        help="run a node",
        description=(
            "Run a Tribune node. With no database_url / redis_url it starts embedded "
            "PostgreSQL and Valkey under the data directory and stops them on exit."
        ),
    )
    add_settings_flags(p)
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to listen on (default 8080; 0 picks a free one)")


def run_node(settings: Settings, app: web.Application) -> None:
    loop = new_event_loop()
    asyncio.set_event_loop(loop)

    async def settle_gc(app: web.Application) -> None:
        # Everything built at start lives as long as the node: move it out of the collector's
        # way, and collect the young generation less often. With ten thousand connections the
        # default thresholds run full collections often enough to show in tail latency.
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 50, 100)

    app.on_startup.append(settle_gc)

    async def serve() -> None:
        runner = NodeRunner(
            app, access_log=None, shutdown_timeout=10, keepalive_timeout=IDLE_SECONDS, handle_signals=True
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, settings.host, settings.port)
            await site.start()
            log.info("======== Running on %s ========", site.name)
            await asyncio.Event().wait()  # until a signal ends the loop
        finally:
            await runner.cleanup()

    main = loop.create_task(serve())
    try:
        loop.run_until_complete(main)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        if not main.done():
            main.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                loop.run_until_complete(main)
        for task in asyncio.all_tasks(loop):
            task.cancel()
        loop.run_until_complete(asyncio.gather(*asyncio.all_tasks(loop), return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def run(args: argparse.Namespace) -> int:
    settings = with_signing_key(settings_from(args, host=args.host, port=args.port))
    setup_logging(settings.log_level)
    shown = " ".join(f"{k}={v}" for k, v in settings.masked().items() if v)
    log.info("node %s starting: %s", settings.node_id, shown)
    run_node(settings, create_app(settings))
    return 0
