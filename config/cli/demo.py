"""`tribune demo`: a node on embedded services with a demo roster and special inquiry."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
from aiohttp import web

from config import keys
from config.app import create_app
from config.auth import Role, mint_token, with_signing_key
from config.cli.common import add_settings_flags, progress, settings_from
from config.cli.serve import run_node
from config.logs import setup_logging
from recorder import feeds, roster, sessions
from recorder.errors import SessionConflict

log = logging.getLogger("tribune.demo")

DEMO_SESSION = "demo-inquiry"
DEMO_FEED = "demo-main"
DEMO_REPS = 300
_SURNAMES = (
    "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈"
)
_GIVEN = "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华玉兰萍红建国志文海燕晓东春梅立新宏亮"
_DELEGATIONS = (
    "东港区代表团",
    "岚山区代表团",
    "五莲县代表团",
    "莒县代表团",
    "经济开发区代表团",
    "高新区代表团",
)
_LEVELS = ("city",) * 6 + ("county",) * 3 + ("provincial",)


def demo_roster(count: int = DEMO_REPS) -> list[roster.RosterRow]:
    """A deterministic roster of `count` representatives with plausible names."""
    rng = random.Random(20261121)
    rows = []
    for n in range(1, count + 1):
        name = rng.choice(_SURNAMES) + "".join(rng.choice(_GIVEN) for _ in range(rng.choice((1, 2))))
        delegation = _DELEGATIONS[n % len(_DELEGATIONS)]
        rows.append(
            roster.RosterRow(
                id=f"R{n:04d}",
                name=name,
                level=rng.choice(_LEVELS),
                delegation=delegation,
                group_name=f"第{(n % 12) + 1}小组",
                liaison_station=f"{delegation[:-3]}代表联络站",
            )
        )
    return rows


def demo_session_spec(now: datetime) -> sessions.SessionSpec:
    start = now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    return sessions.SessionSpec(
        id=DEMO_SESSION,
        kind="special_inquiry",
        title="关于优化营商环境工作情况的专题询问",
        announcement=(
            "市人大常委会将就优化营商环境工作情况开展专题询问。\n"
            "询问结束后，请列席代表对各被询问部门的答复进行满意度测评。"
        ),
        scheduled_start=start,
        scheduled_end=start + timedelta(hours=2),
        audience="roster",
        default_tier="voting",
    )


async def seed(pool: asyncpg.Pool) -> str:
    """Load the demo roster, session and feed; returns the feed's stream key (a new one on
    every run, since only its digest is kept)."""
    reps = demo_roster()
    async with pool.acquire() as conn, conn.transaction():
        await roster.upsert(conn, reps, progress=progress("demo roster", len(reps)), chunk=100)
    with contextlib.suppress(SessionConflict):  # kept from an earlier run
        await sessions.create(pool, demo_session_spec(datetime.now(UTC)), "demo")
    try:
        _, created = await feeds.create(pool, feeds.FeedSpec(id=DEMO_FEED, session=DEMO_SESSION), "demo")
    except feeds.FeedExists:
        _, key = await feeds.rotate(pool, DEMO_FEED, "demo")
        return key
    assert created is not None  # a WHIP feed has a key
    return created


async def publish_demo_feed(url: str, key: str) -> None:
    """The test pattern as the demo session's video, published once the node listens."""
    from streaming.testsrc import publish_test_pattern

    await asyncio.sleep(1.0)
    try:
        await publish_test_pattern(url, key)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.warning("the demo feed could not be published: %s", exc)


def demo_links(app: web.Application) -> list[tuple[str, str]]:
    settings = app[keys.SETTINGS]
    base = settings.base_url
    people = [
        ("viewer (representative R0001)", "watch", "R0001", (Role.REPRESENTATIVE,)),
        ("moderator", "moderate", "M001", (Role.MODERATOR,)),
        ("host", "host", "H001", (Role.HOST, Role.MODERATOR)),
        ("projector (the hall's screen)", "projector", "P001", (Role.MODERATOR,)),
    ]
    links = []
    for label, page, rep, roles in people:
        token = mint_token(settings, rep=rep, name=label.split(" ")[0], roles=roles, ttl=12 * 3600)
        links.append((label, f"{base}/{page}/{DEMO_SESSION}#token={token}"))
    admin = mint_token(settings, rep="A001", name="admin", roles=(Role.ADMIN,), ttl=12 * 3600)
    links.append(("admin", f"{base}/admin#token={admin}"))
    links.append(("admin API token", admin))
    return links


def add_parser(sub: Any, name: str) -> None:
    p = sub.add_parser(
        name,
        help="run a demo node with a roster and a special inquiry",
        description=(
            "Start a node on embedded PostgreSQL and Valkey (data kept in --data-dir between runs), "
            "load a demo roster and a special inquiry, and print the pages to open with tokens."
        ),
    )
    add_settings_flags(p)
    p.add_argument("--port", type=int, default=None, help="port to listen on (default 8080)")


def run(args: argparse.Namespace) -> int:
    data_dir = args.data_dir or Path("data/demo")
    args.data_dir = data_dir
    settings = with_signing_key(settings_from(args, port=args.port))
    setup_logging(settings.log_level)
    app = create_app(settings)

    publishing: list[asyncio.Task[None]] = []

    async def on_startup(app: web.Application) -> None:
        key = await seed(app[keys.DB])
        whip = f"{settings.base_url}/whip/{DEMO_FEED}"
        publishing.append(asyncio.create_task(publish_demo_feed(whip, key)))
        lines = ["", "Tribune demo is running. Open:"]
        lines += [f"  {label}:\n    {url}" for label, url in demo_links(app)]
        lines += [
            f"  video: the test pattern is published to {whip} (WHEP: {settings.base_url}/whep/{DEMO_FEED})",
            f"  health: {settings.base_url}/readyz   metrics: {settings.base_url}/metrics",
            "Stop with Ctrl-C; the data stays in " + str(data_dir),
            "",
        ]
        print("\n".join(lines), flush=True)

    async def on_shutdown(app: web.Application) -> None:
        for task in publishing:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    app.on_startup.append(on_startup)
    app.on_shutdown.insert(0, on_shutdown)
    run_node(settings, app)
    return 0
