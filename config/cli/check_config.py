"""`tribune check-config`: load and validate the settings exactly as a node would."""

from __future__ import annotations

import argparse
from typing import Any

from config.cli.common import add_settings_flags, settings_from
from config.settings import describe_keys


def add_parser(sub: Any, name: str) -> None:
    keys = "\n".join(f"  {key:<20} {env:<30} default: {default}" for key, env, default in describe_keys())
    p = sub.add_parser(
        name,
        help="validate the settings and print them (secrets masked)",
        formatter_class=__import__("argparse").RawDescriptionHelpFormatter,
        description="Defaults, then --config FILE (TOML), then TRIBUNE_* variables.\n\nKeys:\n" + keys,
    )
    add_settings_flags(p)


def run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    for key, value in settings.masked().items():
        print(f"{key} = {value}")
    return 0
