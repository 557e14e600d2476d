"""A local cluster: K nodes on one machine sharing one PostgreSQL and one Redis, behind a
load balancer, each node's PID and log known so it can be killed and started again.

The balancer is Debian's nginx running deploy/nginx.conf (the docker-compose config, with
the nodes' loopback addresses put in) when nginx is installed, otherwise config.balancer,
which behaves the same. PostgreSQL and Valkey are the embedded ones unless URLs are given.
`tribune cluster up` runs one in the foreground; tests and benchmarks use `Cluster`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from config.balancer import FAIL_TIMEOUT
from config.errors import TribuneError
from config.services import EmbeddedServices, free_port, write_private
from interaction.bench import stop_servers

log = logging.getLogger("tribune.cluster")

ROOT = Path(__file__).resolve().parent.parent
NGINX_CONF = ROOT / "deploy" / "nginx.conf"
STATE = "cluster.json"


def find_nginx() -> str | None:
    found = shutil.which("nginx")
    if found:
        return found
    return "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None


def nginx_config(listen: int, nodes: list[int], error_log: Path) -> str:
    """deploy/nginx.conf with the nodes' loopback ports as upstreams and a loopback listener."""
    conf = NGINX_CONF.read_text()
    servers = "".join(f"        server 127.0.0.1:{port} max_fails=1 fail_timeout=5s;\n" for port in nodes)
    conf, found = re.subn(r"(?:[ \t]*server tribune-\w+:8080[^\n]*\n)+", servers, conf)
    if found != 1:
        raise RuntimeError(f"{NGINX_CONF} has no block of `server tribune-…:8080` upstream lines")
    conf = conf.replace("listen 80;", f"listen 127.0.0.1:{listen};")
    return conf.replace("error_log /dev/stderr warn;", f"error_log {error_log} warn;")


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/readyz", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _alive(proc: subprocess.Popen[bytes] | None) -> bool:
    return proc is not None and proc.poll() is None


@dataclass
class ClusterNode:
    index: int
    node_id: str
    port: int
    data_dir: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else 0

    @property
    def alive(self) -> bool:
        return _alive(self.proc)


@dataclass
class Cluster:
    """`Cluster(root, 2).start()`; `kill(0)`, `start_node(0)`, `stop()`.

    `env` is added to every node's environment (TRIBUNE_* settings)."""

    root: Path
    nodes: int = 2
    database_url: str = ""
    redis_url: str = ""
    secret: str = field(default_factory=lambda: secrets.token_urlsafe(40))
    env: dict[str, str] = field(default_factory=dict)
    balancer: str = "auto"  # auto | nginx | proxy
    port: int = 0
    members: list[ClusterNode] = field(default_factory=list)
    balancer_proc: subprocess.Popen[bytes] | None = None
    services: EmbeddedServices | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.nodes <= 16:
            raise ValueError("a local cluster has 1 to 16 nodes")
        if self.balancer not in ("auto", "nginx", "proxy"):
            raise ValueError("balancer must be auto, nginx or proxy")
        if self.balancer == "auto":
            self.balancer = "nginx" if find_nginx() else "proxy"
        elif self.balancer == "nginx" and not find_nginx():
            raise RuntimeError("nginx is not installed (apt-get install nginx-light), use --balancer proxy")
        self.root = self.root.resolve()
        self.port = self.port or free_port()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90) -> Cluster:
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            if not self.database_url or not self.redis_url:
                self.services = EmbeddedServices(
                    self.root / "services", postgres=not self.database_url, redis=not self.redis_url
                )
                database_url, redis_url = self.services.start()
                self.database_url = self.database_url or database_url
                self.redis_url = self.redis_url or redis_url
            for index in range(self.nodes):
                node_id = f"node-{chr(ord('a') + index)}"
                self.members.append(
                    ClusterNode(
                        index, node_id, free_port(), self.root / node_id, self.root / f"{node_id}.log"
                    )
                )
            for node in self.members:
                self.start_node(node.index, wait=False)
            for node in self.members:
                self.wait_ready(node.index, timeout)
            self.start_balancer()
        except BaseException:
            self.stop()
            raise
        self.write_state()
        return self

    def node_env(self, node: ClusterNode) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith("TRIBUNE_")}
        return {
            **base,
            "TRIBUNE_DATABASE_URL": self.database_url,
            "TRIBUNE_REDIS_URL": self.redis_url,
            "TRIBUNE_JWT_SECRET": self.secret,
            "TRIBUNE_NODE_ID": node.node_id,
            "TRIBUNE_PUBLIC_URL": self.url,
            **self.env,
        }

    def start_node(self, index: int, *, wait: bool = True, timeout: float = 60) -> ClusterNode:
        """Start node `index` (again, on the same port and data directory)."""
        node = self.members[index]
        if node.alive:
            raise RuntimeError(f"{node.node_id} is already running (pid {node.pid})")
        tribune = str(Path(sys.executable).with_name("tribune"))
        command = [tribune, "serve", "--port", str(node.port), "--data-dir", str(node.data_dir)]
        with node.log.open("ab") as out:
            node.proc = subprocess.Popen(command, env=self.node_env(node), stdout=out, stderr=out)
        if wait:
            self.wait_ready(index, timeout)
        if self.balancer_proc is not None:  # cluster.json appears once the whole cluster is up
            self.write_state()
        return node

    def wait_ready(self, index: int, timeout: float = 60) -> None:
        node = self.members[index]
        deadline = time.monotonic() + timeout
        while not ready(node.url):
            if not node.alive:
                raise RuntimeError(f"{node.node_id} exited at start; its log:\n{self.tail(index)}")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{node.node_id} not ready in {timeout:.0f}s; its log:\n{self.tail(index)}"
                )
            time.sleep(0.1)

    def kill(self, index: int, sig: int = signal.SIGKILL) -> None:
        node = self.members[index]
        if node.proc is not None and node.alive:
            node.proc.send_signal(sig)

    def stop_node(self, index: int, timeout: float = 30) -> int | None:
        """SIGTERM, then wait (SIGKILL after `timeout`); the exit code."""
        proc = self.members[index].proc
        if proc is None:
            return None
        stop_servers([proc], timeout)
        return proc.returncode

    def rolling_restart(self, settle: float = FAIL_TIMEOUT + 1) -> list[int | None]:
        """SIGTERM each node in turn and start it again, waiting after each until it is ready
        and the balancer trusts it again: both balancers skip a node for FAIL_TIMEOUT seconds
        after it refused a connection, so stopping the next one sooner leaves none. The
        nodes' exit codes."""
        codes = []
        for node in self.members:
            codes.append(self.stop_node(node.index))
            self.start_node(node.index)
            time.sleep(settle)
        return codes

    def tail(self, index: int, chars: int = 4000) -> str:
        with contextlib.suppress(OSError):
            return self.members[index].log.read_text(errors="replace")[-chars:]
        return ""

    def start_balancer(self) -> None:
        ports = [m.port for m in self.members]
        out = (self.root / "balancer.log").open("ab")
        with out:
            if self.balancer == "nginx":
                nginx = find_nginx()
                assert nginx is not None
                prefix = self.root / "nginx"
                prefix.mkdir(exist_ok=True)
                conf = prefix / "nginx.conf"
                conf.write_text(nginx_config(self.port, ports, self.root / "balancer.log"))
                args = [nginx, "-p", str(prefix), "-c", str(conf), "-e", str(self.root / "balancer.log")]
                args += ["-g", f"daemon off; pid {prefix}/nginx.pid;"]
            else:
                args = [sys.executable, "-m", "config.balancer", "--port", str(self.port)]
                args += [m.url for m in self.members]
            self.balancer_proc = subprocess.Popen(args, stdout=out, stderr=out, cwd=ROOT)
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=2):
                    break
            except OSError:
                if not _alive(self.balancer_proc) or time.monotonic() > deadline:
                    log_text = (self.root / "balancer.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"the {self.balancer} balancer did not start:\n{log_text}") from None
                time.sleep(0.05)

    def stop_balancer(self) -> None:
        proc, self.balancer_proc = self.balancer_proc, None
        if proc is not None:
            stop_servers([proc], 10)  # nginx: SIGTERM is its fast shutdown, connections closed

    def restart_balancer(self) -> None:
        """Every client connection through the balancer drops at once."""
        self.stop_balancer()
        self.start_balancer()
        self.write_state()

    def stop(self) -> None:
        self.stop_balancer()
        stop_servers([m.proc for m in self.members if m.proc is not None])
        if self.services is not None:
            self.services.stop()
            self.services = None
        with contextlib.suppress(FileNotFoundError):
            (self.root / STATE).unlink()

    def state(self) -> dict[str, Any]:
        return {
            "supervisor": os.getpid(),
            "url": self.url,
            "balancer": {
                "kind": self.balancer,
                "pid": self.balancer_proc.pid if self.balancer_proc else 0,
                "log": str(self.root / "balancer.log"),
            },
            "database_url": self.database_url,
            "redis_url": self.redis_url,
            "nodes": [
                {
                    "id": m.node_id,
                    "url": m.url,
                    "pid": m.pid if m.alive else 0,
                    "log": str(m.log),
                    "data_dir": str(m.data_dir),
                }
                for m in self.members
            ],
        }

    def write_state(self) -> None:
        """`root/cluster.json` (0600: it holds the services' URLs with their passwords)."""
        write_private(self.root / STATE, json.dumps(self.state(), indent=2))


def read_state(root: Path) -> dict[str, Any]:
    path = root / STATE
    try:
        return dict(json.loads(path.read_text()))
    except FileNotFoundError:
        raise TribuneError(
            f"no cluster is running in {root} (no {STATE}); start one with `tribune cluster up`"
        ) from None
