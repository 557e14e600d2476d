"""`tribune cluster up|down|status|kill|revive`: a local cluster of K nodes (config.cluster)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from config.cluster import Cluster, read_state
from config.logs import setup_logging

DEFAULT_DIR = Path("data/cluster")
SIGNALS = {"TERM": signal.SIGTERM, "KILL": signal.SIGKILL, "STOP": signal.SIGSTOP, "CONT": signal.SIGCONT}


def add_parser(sub: Any, name: str) -> None:
    p = sub.add_parser(
        name,
        help="run K nodes behind a load balancer on this machine",
        description=(
            "A local cluster: K nodes sharing one PostgreSQL and one Redis (embedded unless "
            "URLs are given) behind nginx (deploy/nginx.conf) or, without nginx, the built-in "
            "balancer. `up` runs in the foreground until Ctrl-C or `tribune cluster down`; the "
            "PIDs, URLs and logs are in DIR/cluster.json."
        ),
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    up = actions.add_parser("up", help="start the cluster and keep it running")
    up.add_argument("--nodes", type=int, default=2, help="nodes to run (default 2)")
    up.add_argument("--port", type=int, default=8000, help="the balancer's port (default 8000; 0: any)")
    up.add_argument("--balancer", choices=("auto", "nginx", "proxy"), default="auto")
    up.add_argument("--database-url", default="", help="an existing PostgreSQL (default: embedded)")
    up.add_argument("--redis-url", default="", help="an existing Redis/Valkey (default: embedded)")
    for action in (
        up,
        actions.add_parser("down", help="stop the cluster running in DIR"),
        actions.add_parser("status", help="print DIR/cluster.json with which processes are alive"),
        actions.add_parser("revive", help="start again every node that is not running"),
    ):
        action.add_argument(
            "--dir", type=Path, default=DEFAULT_DIR, help=f"cluster directory (default {DEFAULT_DIR})"
        )
    kill = actions.add_parser("kill", help="send a signal to one node (by index, 0 = node-a)")
    kill.add_argument("node", type=int)
    kill.add_argument("--signal", choices=sorted(SIGNALS), default="KILL")
    kill.add_argument(
        "--dir", type=Path, default=DEFAULT_DIR, help=f"cluster directory (default {DEFAULT_DIR})"
    )


def _alive(pid: int) -> bool:
    return pid > 0 and psutil.pid_exists(pid)


def up(args: argparse.Namespace) -> int:
    if not 1 <= args.nodes <= 16:
        print("tribune: --nodes must be 1..16", file=sys.stderr)
        return 2
    setup_logging("INFO")
    stopping = False
    revive = False

    def on_stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    def on_revive(signum: int, frame: object) -> None:
        nonlocal revive
        revive = True

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_revive)
    cluster = Cluster(
        args.dir,
        args.nodes,
        database_url=args.database_url,
        redis_url=args.redis_url,
        balancer=args.balancer,
        port=args.port or 0,
    )
    cluster.start()
    try:
        print(f"cluster of {args.nodes} behind {cluster.balancer}: {cluster.url}", flush=True)
        for node in cluster.members:
            print(f"  {node.node_id}  {node.url}  pid {node.pid}  log {node.log}", flush=True)
        print(
            f"state: {cluster.root / 'cluster.json'}   stop: tribune cluster down --dir {args.dir}",
            flush=True,
        )
        seen = [n.alive for n in cluster.members]
        while not stopping:
            time.sleep(0.2)
            if revive:
                revive = False
                for node in cluster.members:
                    if not node.alive:
                        cluster.start_node(node.index)
                        print(f"  {node.node_id} started again: pid {node.pid}", flush=True)
            now = [n.alive for n in cluster.members]
            if now != seen:
                for node, was in zip(cluster.members, seen, strict=True):
                    if was and not node.alive:
                        assert node.proc is not None
                        print(f"  {node.node_id} exited ({node.proc.returncode})", flush=True)
                cluster.write_state()
                seen = now
    finally:
        cluster.stop()
    return 0


def down(args: argparse.Namespace) -> int:
    state = read_state(args.dir)
    supervisor = int(state["supervisor"])
    if _alive(supervisor):
        os.kill(supervisor, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while _alive(supervisor) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not _alive(supervisor):
            print("cluster stopped")
            return 0
    # The supervisor is gone: stop what it left, by PID.
    pids = [n["pid"] for n in state["nodes"]] + [state["balancer"]["pid"]]
    for pid in pids:
        if _alive(pid):
            os.kill(pid, signal.SIGTERM)
    (args.dir / "cluster.json").unlink(missing_ok=True)
    print(f"supervisor {supervisor} was not running; sent SIGTERM to what it left")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.action == "up":
        return up(args)
    if args.action == "down":
        return down(args)
    state = read_state(args.dir)
    if args.action == "status":
        for node in state["nodes"]:
            node["alive"] = _alive(node["pid"])
        state["balancer"]["alive"] = _alive(state["balancer"]["pid"])
        state["supervisor_alive"] = _alive(state["supervisor"])
        for key in ("database_url", "redis_url"):
            state[key] = "(set; see cluster.json)" if state[key] else ""
        print(json.dumps(state, indent=2))
        return 0
    if args.action == "revive":
        os.kill(int(state["supervisor"]), signal.SIGHUP)
        return 0
    nodes = state["nodes"]
    if not 0 <= args.node < len(nodes):
        print(f"tribune: node must be 0..{len(nodes) - 1}", file=sys.stderr)
        return 2
    pid = int(nodes[args.node]["pid"])
    if not _alive(pid):
        print(f"tribune: {nodes[args.node]['id']} is not running", file=sys.stderr)
        return 1
    os.kill(pid, SIGNALS[args.signal])
    print(f"sent SIG{args.signal} to {nodes[args.node]['id']} (pid {pid})")
    return 0
