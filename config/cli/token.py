"""`tribune token`: mint a token for development."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from config.auth import Role, mint_token, with_signing_key
from config.cli.common import add_settings_flags, settings_from


def add_parser(sub: Any, name: str) -> None:
    p = sub.add_parser(
        name,
        help="mint a token for development",
        description=(
            "Print a signed token the node accepts (HS256 with the node's secret, or RS256 with "
            "--private-key). The wider platform signs real ones."
        ),
    )
    add_settings_flags(p)
    p.add_argument("--rep", required=True, help="representative id (the token's sub)")
    p.add_argument("--name", default="", help="display name")
    p.add_argument(
        "--role",
        action="append",
        choices=[r.value for r in Role],
        default=None,
        help="a role; repeat for several (default representative)",
    )
    p.add_argument("--ttl", type=float, default=3600.0, help="lifetime in seconds (default 3600)")
    p.add_argument("--private-key", type=Path, help="RS256 private key (PEM) to sign with")


def run(args: argparse.Namespace) -> int:
    settings = with_signing_key(settings_from(args))
    roles = [Role(r) for r in (args.role or [Role.REPRESENTATIVE.value])]
    print(
        mint_token(
            settings, rep=args.rep, name=args.name, roles=roles, ttl=args.ttl, private_key=args.private_key
        )
    )
    return 0
