"""`tribune bench …`: benchmarks that print JSON, each beside its baseline in the same run."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from config.logs import setup_logging
from config.loop import run as run_loop


def _stage(stage: str) -> None:
    """Progress of a benchmark, on a terminal only (stdout is the JSON)."""
    if sys.stderr.isatty():
        print(stage, file=sys.stderr, flush=True)


def add_parser(sub: Any, name: str) -> None:
    p = sub.add_parser(
        name,
        help="run a benchmark and print JSON",
        description=("Benchmarks start their own embedded services and nodes; figures go to stdout as JSON."),
    )
    kinds = p.add_subparsers(dest="bench", required=True, metavar="BENCH")
    c = kinds.add_parser(
        "comments", help="comment fan-out through the moderation path, vs stock python-socketio"
    )
    c.add_argument("--clients", type=int, default=1000, help="viewers to connect (default 1000)")
    c.add_argument("--nodes", type=int, default=1, help="Tribune nodes sharing one PostgreSQL and Redis")
    c.add_argument("--rate", type=float, default=100.0, help="comments published per second (default 100)")
    c.add_argument("--duration", type=float, default=20.0, help="seconds of publishing (default 20)")
    c.add_argument("--sample-every", type=int, default=20, help="measure latency on every Nth viewer")
    c.add_argument(
        "--churn",
        type=float,
        default=0.0,
        help="extra viewers a second joining Tribune's run and leaving half a second later, so "
        "presence keeps changing (default 0)",
    )
    c.add_argument("--no-baseline", action="store_true", help="skip the stock python-socketio baseline")
    c.add_argument("--json", action="store_true", help="print only the JSON (the default output anyway)")
    v = kinds.add_parser("votes", help="votes acknowledged after commit: group commit vs one commit per vote")
    v.add_argument("--voters", type=int, default=2000, help="representatives, one vote each (default 2000)")
    v.add_argument("--nodes", type=int, default=2, help="Tribune nodes sharing one PostgreSQL and Redis")
    v.add_argument("--rate", type=float, default=2000.0, help="votes arriving per second; 0: all at once")
    v.add_argument("--no-baseline", action="store_true", help="skip the one-commit-per-vote baseline")
    v.add_argument(
        "--refused",
        action="store_true",
        help="also cast the same votes on a closed poll, nothing written: a vote's cost without its write",
    )
    v.add_argument("--json", action="store_true", help="print only the JSON (the default output anyway)")
    w = kinds.add_parser(
        "whep", help="WHEP viewers of one feed: encode once vs aiortc's one encoder per viewer"
    )
    w.add_argument("--viewers", type=int, default=200, help="WHEP viewers of the feed (default 200)")
    w.add_argument("--seconds", type=float, default=20.0, help="seconds of counting frames (default 20)")
    w.add_argument("--no-baseline", action="store_true", help="skip the one-encoder-per-viewer baseline")
    w.add_argument("--json", action="store_true", help="print only the JSON (the default output anyway)")
    h = kinds.add_parser("hls", help="simulated HLS players of one feed spread over K nodes")
    h.add_argument("--viewers", type=int, default=1000, help="players (default 1000)")
    h.add_argument("--nodes", type=int, default=2, help="Tribune nodes serving the feed's HLS (default 2)")
    h.add_argument("--seconds", type=float, default=30.0, help="seconds of playing (default 30)")
    h.add_argument("--json", action="store_true", help="print only the JSON (the default output anyway)")
    a = kinds.add_parser(
        "all",
        help="every benchmark in sequence, at sizes that fit a two-core machine, as one JSON",
        description=(
            "Runs comments (2,000 viewers, 50/s, 10 s), votes (2,000 voters on 2 nodes), whep "
            "(30 viewers, 10 s), hls (500 players on 2 nodes, 20 s) and scoring (2,000 "
            "representatives, 50 sessions), each beside its baseline, and prints one JSON object "
            "with the machine's description. WebRTC benchmarks belong in a loopback-only network "
            "namespace (see docs/benchmarks.md)."
        ),
    )
    a.add_argument("--only", action="append", choices=ALL, help="run only these (repeatable)")
    a.add_argument("--json", action="store_true", help="print only the JSON (the default output anyway)")
    s = kinds.add_parser(
        "scoring", help="a year of generated facts: time to rescore, rank, remind and report"
    )
    s.add_argument("--reps", type=int, default=10_000, help="representatives (default 10000)")
    s.add_argument("--sessions", type=int, default=200, help="ended sessions across 2026 (default 200)")
    s.add_argument("--json", action="store_true", help="print only the JSON (the default output anyway)")


ALL = ("comments", "votes", "whep", "hls", "scoring")


def machine() -> dict[str, Any]:
    import os
    import platform

    import psutil

    return {
        "cpus": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


async def run_all(only: list[str] | None) -> dict[str, Any]:
    """Each benchmark at a size this machine holds, one after another."""
    from interaction.bench import bench_comments, raise_fd_limit
    from interaction.votebench import bench_votes
    from recorder.bench import bench_scoring
    from streaming.bench import bench_whep
    from streaming.hlsbench import bench_hls

    raise_fd_limit()
    result: dict[str, Any] = {"machine": machine(), "benchmarks": {}}
    for name in only or ALL:
        _stage(f"bench {name}")
        began = time.monotonic()
        if name == "comments":
            figures = await bench_comments(
                clients=2000,
                nodes=1,
                rate=50,
                duration=10,
                baseline=True,
                sample_every=20,
                progress=lambda stage, done, total: None,
            )
        elif name == "votes":
            figures = await bench_votes(voters=2000, nodes=2, rate=2000, baseline=True, progress=_stage)
        elif name == "whep":
            figures = await bench_whep(viewers=30, seconds=10, baseline=True, progress=_stage)
        elif name == "hls":
            figures = await bench_hls(viewers=500, nodes=2, seconds=20, progress=_stage)
        else:
            figures = await bench_scoring(reps=2000, sessions=50, progress=_stage)
        figures["wall_s"] = round(time.monotonic() - began, 1)
        result["benchmarks"][name] = figures
    return result


def run_scoring(args: argparse.Namespace) -> int:
    from recorder.bench import bench_scoring

    if not 1 <= args.reps <= 1_000_000 or not 1 <= args.sessions <= 10_000:
        print("tribune: --reps must be 1..1000000 and --sessions 1..10000", file=sys.stderr)
        return 2

    def progress(stage: str) -> None:
        if sys.stderr.isatty():
            print(f"\r{stage}…{' ' * 20}", end="", file=sys.stderr, flush=True)

    result = run_loop(bench_scoring(reps=args.reps, sessions=args.sessions, progress=progress))
    if sys.stderr.isatty():
        print(file=sys.stderr)
    print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0


def run(args: argparse.Namespace) -> int:
    setup_logging("WARNING")
    if args.bench == "votes":
        return _votes(args)
    if args.bench == "scoring":
        return run_scoring(args)
    if args.bench == "all":
        print(json.dumps(run_loop(run_all(args.only)), indent=2, ensure_ascii=False))
        return 0
    if args.bench == "whep":
        return _whep(args)
    if args.bench == "hls":
        return _hls(args)
    from interaction.bench import bench_comments

    if args.clients < 1 or args.nodes < 1 or args.rate <= 0 or args.duration <= 0:
        print("tribune: --clients, --nodes, --rate and --duration must be positive", file=sys.stderr)
        return 2
    if not 0 <= args.churn <= 100:
        print("tribune: --churn is viewers a second, from 0 to 100", file=sys.stderr)
        return 2

    def progress(stage: str, done: int, total: int) -> None:
        if sys.stderr.isatty():
            print(f"\r{stage}: {done}/{total}   ", end="", file=sys.stderr, flush=True)

    result = run_loop(
        bench_comments(
            clients=args.clients,
            nodes=args.nodes,
            rate=args.rate,
            duration=args.duration,
            baseline=not args.no_baseline,
            sample_every=max(1, args.sample_every),
            progress=progress,
            churn=args.churn,
        )
    )
    if sys.stderr.isatty():
        print(file=sys.stderr)
    print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0


def _votes(args: argparse.Namespace) -> int:
    from interaction.votebench import bench_votes

    if args.voters < 1 or args.nodes < 1 or args.rate < 0:
        print("tribune: --voters and --nodes must be positive, --rate at least 0", file=sys.stderr)
        return 2

    result = run_loop(
        bench_votes(
            voters=args.voters,
            nodes=args.nodes,
            rate=args.rate,
            baseline=not args.no_baseline,
            progress=_stage,
            refused=args.refused,
        )
    )
    print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0


def _hls(args: argparse.Namespace) -> int:
    from streaming.hlsbench import bench_hls

    if not 1 <= args.viewers <= 20_000 or not 1 <= args.nodes <= 8 or not 5 <= args.seconds <= 3600:
        print("tribune: --viewers must be 1..20000, --nodes 1..8 and --seconds 5..3600", file=sys.stderr)
        return 2

    result = run_loop(
        bench_hls(viewers=args.viewers, nodes=args.nodes, seconds=args.seconds, progress=_stage)
    )
    print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0


def _whep(args: argparse.Namespace) -> int:
    from interaction.bench import raise_fd_limit
    from streaming.bench import bench_whep

    if not 1 <= args.viewers <= 2000 or not 2 <= args.seconds <= 3600:
        print("tribune: --viewers must be 1..2000 and --seconds 2..3600", file=sys.stderr)
        return 2
    raise_fd_limit()

    result = run_loop(
        bench_whep(viewers=args.viewers, seconds=args.seconds, baseline=not args.no_baseline, progress=_stage)
    )
    print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0
