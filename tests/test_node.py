"""A node as a newcomer runs it: `tribune serve` in its own process, embedded services,
a second node joining the first, clean shutdown, and refusals that say what to do."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from config.auth import Role, mint_token
from config.services import free_port
from config.settings import Settings

TRIBUNE = str(Path(sys.executable).with_name("tribune"))
pytestmark = pytest.mark.slow


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIBUNE_")}
    env.update(extra)
    return env


def http(method: str, url: str, body: Any = None, token: str = "") -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


class Node:
    def __init__(self, data_dir: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = data_dir.parent / f"node-{self.port}.log"
        data_dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [TRIBUNE, "serve", "--data-dir", str(data_dir), "--port", str(self.port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("w"),
        )

    def wait_ready(self, seconds: float = 60) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"node exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                if http("GET", self.url + "/readyz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"node not ready in {seconds}s:\n{self.log.read_text()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture
def nodes() -> Iterator[list[Node]]:
    started: list[Node] = []
    yield started
    for node in reversed(started):
        node.stop()


def env_file(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if line)


def test_embedded_node_second_node_and_clean_shutdown(tmp_path: Path, nodes: list[Node]) -> None:
    a = Node(tmp_path / "a", clean_env())
    nodes.append(a)
    a.wait_ready()
    joined = env_file(tmp_path / "a" / "node.env")
    assert oct((tmp_path / "a" / "node.env").stat().st_mode & 0o777) == "0o600"
    assert joined["TRIBUNE_DATABASE_URL"].startswith("postgresql://")
    assert joined["TRIBUNE_REDIS_URL"].startswith("redis://:")
    postgres_pid = int((tmp_path / "a" / "pg" / "postmaster.pid").read_text().split()[0])
    valkey_pid = int((tmp_path / "a" / "valkey" / "valkey.pid").read_text())
    assert psutil.pid_exists(postgres_pid) and psutil.pid_exists(valkey_pid)

    b = Node(tmp_path / "b", clean_env(**joined))
    nodes.append(b)
    b.wait_ready()
    assert not (tmp_path / "b" / "pg").exists()  # B runs no servers of its own

    settings = Settings(jwt_secret=joined["TRIBUNE_JWT_SECRET"])
    admin = mint_token(settings, rep="A1", roles=[Role.ADMIN])
    spec = {
        "id": "shared",
        "kind": "committee_meeting",
        "title": "常委会第十次会议",
        "scheduled_start": "2026-12-01T09:00:00+08:00",
        "scheduled_end": "2026-12-01T12:00:00+08:00",
    }
    assert http("POST", a.url + "/api/sessions", spec, admin)[0] == 201
    status, body = http("GET", b.url + "/api/sessions/shared", token=admin)
    assert status == 200 and body["session"]["title"] == "常委会第十次会议"
    status, body = http("POST", b.url + "/api/sessions/shared/state", {"state": "live"}, admin)
    assert status == 200 and body["event"]["seq"] == 2
    assert http("GET", a.url + "/api/sessions/shared", token=admin)[1]["session"]["state"] == "live"

    assert b.stop() == 0
    assert a.stop() == 0
    for pid in (postgres_pid, valkey_pid):
        assert not psutil.pid_exists(pid), f"embedded server {pid} still running after the node stopped"

    # The data stays: a restart on the same directory still has the session.
    again = Node(tmp_path / "a", clean_env())
    nodes.append(again)
    again.wait_ready()
    fresh = env_file(tmp_path / "a" / "node.env")
    admin = mint_token(Settings(jwt_secret=fresh["TRIBUNE_JWT_SECRET"]), rep="A1", roles=[Role.ADMIN])
    assert http("GET", again.url + "/api/sessions/shared", token=admin)[1]["session"]["state"] == "live"


def test_one_data_dir_one_node(tmp_path: Path, nodes: list[Node]) -> None:
    a = Node(tmp_path / "a", clean_env())
    nodes.append(a)
    a.wait_ready()
    second = subprocess.run(
        [TRIBUNE, "serve", "--data-dir", str(tmp_path / "a"), "--port", str(free_port())],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 1
    assert "in use by another node" in second.stderr
    assert http("GET", a.url + "/readyz")[0] == 200  # the first node is untouched


@pytest.mark.parametrize(
    ("env", "says"),
    [
        (
            {"TRIBUNE_DATABASE_URL": "postgresql://postgres@127.0.0.1:9/x", "TRIBUNE_DATABASE_TIMEOUT": "2"},
            "cannot connect to PostgreSQL",
        ),
        (
            {"TRIBUNE_REDIS_URL": "redis://:secretpw@127.0.0.1:9/0", "TRIBUNE_REDIS_TIMEOUT": "1"},
            "cannot connect to Redis at redis://:****@127.0.0.1:9/0",
        ),
        ({"TRIBUNE_LOG_LEVEL": "LOUD"}, "log_level: must be one of"),
    ],
)
def test_unreachable_or_bad_configuration_fails_at_start(
    tmp_path: Path, env: dict[str, str], says: str
) -> None:
    result = subprocess.run(
        [TRIBUNE, "serve", "--data-dir", str(tmp_path), "--port", str(free_port())],
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode in (1, 2)
    assert says in result.stderr
    assert "secretpw" not in result.stderr
    # Nothing left running under the data directory.
    leftovers = [
        p for p in psutil.process_iter(["cmdline"]) if str(tmp_path) in " ".join(p.info["cmdline"] or [])
    ]
    assert leftovers == []


def test_token_migrate_and_import_commands(tmp_path: Path) -> None:
    env = clean_env()
    data = ["--data-dir", str(tmp_path / "d")]
    migrated = subprocess.run(
        [TRIBUNE, "migrate", *data], env=env, capture_output=True, text=True, timeout=90
    )
    assert migrated.returncode == 0, migrated.stderr
    from recorder.migrate import load_migrations

    assert f"schema at version {len(load_migrations())}" in migrated.stdout
    roster = tmp_path / "roster.csv"
    roster.write_text("id,name,level\nR1,王伟,市\nR2,,市\n", encoding="utf-8")
    refused = subprocess.run(
        [TRIBUNE, "import-roster", *data, str(roster)], env=env, capture_output=True, text=True, timeout=90
    )
    assert refused.returncode == 1
    assert json.loads(refused.stdout)["rejected"][0] == {"row": 3, "errors": ["name is empty"], "id": "R2"}
    partial = subprocess.run(
        [TRIBUNE, "import-roster", *data, str(roster), "--skip-invalid"],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert partial.returncode == 0 and json.loads(partial.stdout)["created"] == 1

    token = subprocess.run(
        [TRIBUNE, "token", *data, "--rep", "R1", "--role", "host", "--ttl", "60"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert token.returncode == 0
    secret = (tmp_path / "d" / "jwt-secret").read_text()
    from config.auth import TokenVerifier

    who = TokenVerifier.from_settings(Settings(jwt_secret=secret)).verify(token.stdout.strip())
    assert who.rep == "R1" and who.roles == {Role.HOST}
