"""`tribune`: one module per subcommand, each with `add_parser(subparsers)` and `run(args)`."""

from __future__ import annotations

import argparse
import sys
from types import ModuleType

from config.cli import (
    bench,
    check_config,
    cluster,
    demo,
    feed,
    import_roster,
    migrate,
    report,
    scores,
    serve,
    token,
)
from config.errors import TribuneError
from config.settings import SettingsError

COMMANDS: dict[str, ModuleType] = {
    "serve": serve,
    "demo": demo,
    "migrate": migrate,
    "token": token,
    "check-config": check_config,
    "import-roster": import_roster,
    "report": report,
    "scores": scores,
    "feed": feed,
    "bench": bench,
    "cluster": cluster,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tribune", description="Tribune: live sessions for people's-congress representatives."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in COMMANDS.items():
        module.add_parser(sub, name)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(COMMANDS[args.command].run(args) or 0)
    except SettingsError as exc:
        print(f"tribune: configuration error: {exc}", file=sys.stderr)
        return 2
    except TribuneError as exc:
        print(f"tribune: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
