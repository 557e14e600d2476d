"""`tribune feed`: create a feed, rotate its stream key, publish the test pattern."""

from __future__ import annotations

import argparse
import asyncio
import re
from typing import Any

from config.cli.common import add_settings_flags, ledger, settings_from
from recorder import feeds


def add_parser(sub: Any, name: str) -> None:
    p = sub.add_parser(name, help="video feeds: create, rotate a key, publish the test pattern")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")

    create = actions.add_parser("create", help="create a WHIP feed for a session and print its key")
    add_settings_flags(create)
    create.add_argument("feed", help="feed id (lower-case letters, digits and -)")
    create.add_argument("--session", required=True, help="the session it belongs to")

    rotate = actions.add_parser("rotate", help="give a feed a new stream key and print it")
    add_settings_flags(rotate)
    rotate.add_argument("feed")

    pattern = actions.add_parser(
        "test-pattern",
        help="publish a moving test picture with a clock and a tone over WHIP",
        description=(
            "Publish a synthetic 30 fps picture with a burnt-in clock and a 440 Hz tone, paced in "
            "real time, through a real WHIP client, until stopped (or for --seconds)."
        ),
    )
    pattern.add_argument(
        "--url", required=True, help="the WHIP endpoint, e.g. http://127.0.0.1:8080/whip/main"
    )
    pattern.add_argument("--key", required=True, help="the feed's stream key")
    pattern.add_argument("--seconds", type=float, default=None, help="stop after this long")
    pattern.add_argument("--size", default="640x360", help="picture size (default 640x360)")
    pattern.add_argument("--fps", type=int, default=30, help="frames per second (default 30)")
    pattern.add_argument(
        "--host-address",
        action="append",
        default=None,
        help="only gather ICE candidates on this IP (repeatable; e.g. 127.0.0.1)",
    )


def run(args: argparse.Namespace) -> int:
    if args.action == "test-pattern":
        return _test_pattern(args)
    settings = settings_from(args)

    async def go() -> str:
        async with ledger(settings) as pool:
            if args.action == "create":
                spec = feeds.FeedSpec(id=args.feed, session=args.session)
                _, created = await feeds.create(pool, spec, "cli")
                assert created is not None  # a WHIP feed has a key
                key = created
            else:
                _, key = await feeds.rotate(pool, args.feed, "cli")
        return key

    print(asyncio.run(go()))
    return 0


def _test_pattern(args: argparse.Namespace) -> int:
    from streaming.rtc import limit_host_addresses
    from streaming.testsrc import publish_test_pattern

    size = re.fullmatch(r"(\d{2,4})x(\d{2,4})", args.size)
    if size is None or not 1 <= args.fps <= 60:
        raise SystemExit("tribune feed test-pattern: --size is WIDTHxHEIGHT (e.g. 640x360), --fps 1..60")
    if args.host_address:
        limit_host_addresses(tuple(args.host_address))
    width, height = int(size[1]), int(size[2])
    sent = asyncio.run(
        publish_test_pattern(
            args.url, args.key, seconds=args.seconds, width=width, height=height, fps=args.fps
        )
    )
    print(f"published {sent} frames")
    return 0
