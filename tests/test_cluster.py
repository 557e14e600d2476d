"""`tribune cluster` as an operator runs it: up, status, kill, revive, down — here with the
built-in balancer (the nginx one is what the fault suite runs on), which must behave as
deploy/nginx.conf does."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import psutil
import pytest

from interaction.fleet import FleetProcess
from tests.test_node import clean_env

TRIBUNE = str(Path(sys.executable).with_name("tribune"))
pytestmark = pytest.mark.slow


def cli(*args: str) -> dict[str, Any] | str:
    done = subprocess.run(
        [TRIBUNE, "cluster", *args], env=clean_env(), capture_output=True, text=True, timeout=90
    )
    assert done.returncode == 0, done.stderr
    try:
        return dict(json.loads(done.stdout))
    except json.JSONDecodeError:
        return done.stdout


@pytest.mark.asyncio(loop_scope="session")
async def test_cluster_up_kill_revive_down(tmp_path: Path) -> None:
    root = tmp_path / "cluster"
    log = (tmp_path / "up.log").open("w")
    up = await asyncio.create_subprocess_exec(
        *[TRIBUNE, "cluster", "up", "--nodes", "2", "--port", "0", "--balancer", "proxy", "--dir", str(root)],
        env=clean_env(),
        stdout=log,
        stderr=log,
    )
    try:
        deadline = time.monotonic() + 90
        while not (root / "cluster.json").exists():
            assert up.returncode is None and time.monotonic() < deadline, (tmp_path / "up.log").read_text()
            await asyncio.sleep(0.2)
        state = cli("status", "--dir", str(root))
        assert isinstance(state, dict)
        assert state["balancer"]["kind"] == "proxy" and state["balancer"]["alive"]
        assert [n["alive"] for n in state["nodes"]] == [True, True]
        assert "@" not in state["database_url"] + state["redis_url"]  # no passwords printed
        url = state["url"]
        full = json.loads((root / "cluster.json").read_text())
        assert oct((root / "cluster.json").stat().st_mode & 0o777) == "0o600"

        async with aiohttp.ClientSession() as http:
            seen = set()
            for _ in range(24):  # no cookie: spread over both nodes, each answer setting one
                async with aiohttp.ClientSession() as fresh, fresh.get(url + "/healthz") as r:
                    assert "tribune_node=" in r.headers["Set-Cookie"]
                    seen.add((await r.json())["node"])
            assert seen == {"node-a", "node-b"}
            sticky = set()
            for _ in range(10):
                async with http.get(url + "/healthz", headers={"Cookie": "tribune_node=k1"}) as r:
                    sticky.add((await r.json())["node"])
            assert len(sticky) == 1
            async with http.get(url + "/metrics") as r:
                assert r.status == 403
            async with http.post(url + "/api/sessions", data=b"x" * (2 * 1024 * 1024)) as r:
                assert r.status == 413

            conn = await asyncpg.connect(full["database_url"])
            await conn.execute(
                """INSERT INTO sessions (id, kind, title, scheduled_start, scheduled_end, epoch, created_by,
                                         audience, default_tier, state, started_at)
                   VALUES ('lec', 'lecture', '人大讲堂', now(), now() + interval '1 hour', 'e1', 't',
                           'public', 'viewer', 'live', now())"""
            )
            await conn.close()
            secret = env_secret(full)
            fleet = await FleetProcess.start([url], "lec", secret, [f"R{i}" for i in range(40)])
            try:
                killed = cli("kill", "0", "--dir", str(root))
                assert "SIGKILL to node-a" in str(killed)
                deadline = time.monotonic() + 20
                while True:  # everyone who was on node-a is back, through the balancer, on node-b
                    report = await fleet.report()
                    if report["drops"] and report["connected"] == 40:
                        break
                    assert time.monotonic() < deadline, report
                    await asyncio.sleep(0.2)
                state = cli("status", "--dir", str(root))
                assert isinstance(state, dict) and [n["alive"] for n in state["nodes"]] == [False, True]
                cli("revive", "--dir", str(root))
                deadline = time.monotonic() + 60
                while not all(n["alive"] for n in state["nodes"]):
                    assert time.monotonic() < deadline, "node-a did not come back"
                    await asyncio.sleep(0.5)
                    state = cli("status", "--dir", str(root))
                    assert isinstance(state, dict)
            finally:
                await fleet.close()
        pids = [n["pid"] for n in state["nodes"]] + [state["balancer"]["pid"]]
        assert "cluster stopped" in str(cli("down", "--dir", str(root)))
        assert await asyncio.wait_for(up.wait(), 30) == 0
        assert not [pid for pid in pids if psutil.pid_exists(pid)]
        assert not (root / "cluster.json").exists()
    finally:
        if up.returncode is None:
            up.terminate()
            await up.wait()
        log.close()


def env_secret(state: dict[str, Any]) -> str:
    """The cluster's signing secret, as its nodes see it (from a node's environment)."""
    proc = psutil.Process(state["nodes"][1]["pid"])
    return str(proc.environ()["TRIBUNE_JWT_SECRET"])


def test_bad_arguments_say_what_to_do(tmp_path: Path) -> None:
    done = subprocess.run(
        [TRIBUNE, "cluster", "status", "--dir", str(tmp_path)],
        env=clean_env(),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1 and "tribune cluster up" in done.stderr
    done = subprocess.run(
        [TRIBUNE, "cluster", "up", "--nodes", "40", "--dir", str(tmp_path)],
        env=clean_env(),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "--nodes must be 1..16" in done.stderr
    assert os.listdir(tmp_path) == []
