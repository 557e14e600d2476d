"""docker-compose.yml and the nginx config it mounts: structure, routes, and (when Debian's
nginx is installed) that very config in front of two local nodes."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
import yaml
from aiohttp.test_utils import TestServer

from config.app import create_app
from config.services import free_port
from config.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
NGINX_CONF = ROOT / "deploy" / "nginx.conf"


def compose() -> dict:  # type: ignore[type-arg]
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_topology() -> None:
    services = compose()["services"]
    assert {"nginx", "tribune-a", "tribune-b", "postgres", "redis"} <= set(services)
    for node in ("tribune-a", "tribune-b"):
        env = services[node]["environment"]
        assert (
            env["TRIBUNE_DATABASE_URL"].startswith("postgresql://")
            and "@postgres:5432/" in env["TRIBUNE_DATABASE_URL"]
        )
        assert env["TRIBUNE_REDIS_URL"].startswith("redis://:") and "@redis:6379/" in env["TRIBUNE_REDIS_URL"]
        assert env["TRIBUNE_NODE_ID"] == node and env["TRIBUNE_HOST"] == "0.0.0.0"
        assert "/readyz" in " ".join(services[node]["healthcheck"]["test"])
        assert services[node]["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert services[node]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert (
        services["tribune-a"]["environment"]["TRIBUNE_NODE_ID"]
        != services["tribune-b"]["environment"]["TRIBUNE_NODE_ID"]
    )
    nginx = services["nginx"]
    assert "./deploy/nginx.conf:/etc/nginx/nginx.conf:ro" in nginx["volumes"]
    assert set(nginx["depends_on"]) == {"tribune-a", "tribune-b"}
    for store in ("postgres", "redis"):
        assert "healthcheck" in services[store]
    assert "pgdata" in compose()["volumes"]
    # Every node's variable is a real setting.
    from config.settings import ENV_PREFIX, Settings

    known = {ENV_PREFIX + f.upper() for f in Settings.__dataclass_fields__}
    assert set(services["tribune-a"]["environment"]) <= known


def locations(conf: str) -> list[tuple[str, str, str]]:
    """(modifier, pattern, body) of each location block in the server block."""
    found = []
    for match in re.finditer(r"location\s+(=|~|\^~)?\s*(\S+)\s*\{([^}]*)\}", conf):
        found.append((match[1] or "", match[2], match[3]))
    return found


def handling(path: str, blocks: list[tuple[str, str, str]]) -> str:
    """The body of the location nginx picks for `path` (exact, regex, then longest prefix)."""
    for mod, pattern, body in blocks:
        if mod == "=" and path == pattern:
            return body
    prefixes = [(p, b) for m, p, b in blocks if m in ("", "^~") and path.startswith(p)]
    for mod, pattern, body in blocks:
        if mod == "~" and re.search(pattern, path):
            return body
    return max(prefixes, key=lambda pb: len(pb[0]))[1]


def test_nginx_routes_everything_the_node_serves() -> None:
    conf = NGINX_CONF.read_text()
    blocks = locations(conf)
    app = create_app(Settings(jwt_secret="x" * 40))
    paths = {re.sub(r"\{[^}]+\}", "x", r.canonical) for r in app.router.resources()}
    paths |= {"/socket.io/", "/whip/feed", "/whep/feed", "/hls/feed/index.m3u8", "/vod/feed/index.m3u8"}
    for path in sorted(paths):
        body = handling(path, blocks)
        if path == "/metrics":
            assert "return 403" in body, "metrics must not be exposed through the proxy"
        else:
            assert "proxy_pass http://tribune_nodes" in body, f"{path} is not proxied"
    socketio = handling("/socket.io/", blocks)
    assert "proxy_set_header Upgrade $http_upgrade" in socketio
    assert "proxy_set_header Connection $connection_upgrade" in socketio
    assert "hash $tribune_sticky consistent" in conf


NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)


@pytest_asyncio.fixture(loop_scope="session")
async def two_nodes(settings: Settings) -> AsyncIterator[list[TestServer]]:
    servers = []
    for name in ("node-a", "node-b"):
        server = TestServer(create_app(settings.replace(node_id=name)), port=free_port())
        await server.start_server()
        servers.append(server)
    yield servers
    for server in servers:
        await server.close()


@pytest.mark.skipif(NGINX is None, reason="Debian's nginx is not installed (apt-get install nginx-light)")
@pytest.mark.asyncio(loop_scope="session")
async def test_nginx_config_in_front_of_two_nodes(two_nodes: list[TestServer], tmp_path: Path, auth) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    conf = NGINX_CONF.read_text()
    conf = conf.replace("server tribune-a:8080", f"server 127.0.0.1:{two_nodes[0].port}")
    conf = conf.replace("server tribune-b:8080", f"server 127.0.0.1:{two_nodes[1].port}")
    conf = conf.replace("listen 80;", f"listen 127.0.0.1:{port};")
    (tmp_path / "nginx.conf").write_text(conf)
    assert NGINX is not None
    nginx_args = ["-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-e", "stderr"]
    nginx_args += ["-g", f"daemon off; pid {tmp_path}/nginx.pid;"]
    proc = await asyncio.create_subprocess_exec(NGINX, *nginx_args, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(100):
                try:
                    async with http.get(base + "/healthz"):
                        break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)
            seen = set()
            for _ in range(24):  # no cookie: spread over both nodes
                async with aiohttp.ClientSession() as fresh, fresh.get(base + "/healthz") as r:
                    assert r.status == 200
                    assert "tribune_node=" in r.headers["Set-Cookie"]
                    seen.add((await r.json())["node"])
            assert seen == {"node-a", "node-b"}
            sticky = set()
            for _ in range(10):  # with the cookie: always the same node
                async with http.get(base + "/healthz", headers={"Cookie": "tribune_node=abc123"}) as r:
                    sticky.add((await r.json())["node"])
            assert len(sticky) == 1
            async with http.get(base + "/metrics") as r:
                assert r.status == 403
            spec = {
                "id": "via-proxy",
                "kind": "lecture",
                "title": "人大讲堂",
                "scheduled_start": "2026-12-01T09:00:00Z",
                "scheduled_end": "2026-12-01T10:00:00Z",
            }
            async with http.post(base + "/api/sessions", json=spec, headers=auth.admin) as r:
                assert r.status == 201
            for node in two_nodes:  # whichever node wrote it, both serve it
                async with http.get(
                    f"http://127.0.0.1:{node.port}/api/sessions/via-proxy", headers=auth.admin
                ) as r:
                    assert r.status == 200
            async with http.post(
                base + "/api/sessions",
                data=b"x" * (2 * 1024 * 1024),
                headers={**auth.admin, "Content-Type": "application/json"},
            ) as r:
                assert r.status == 413  # refused at the proxy
    finally:
        proc.terminate()
        _, err = await asyncio.wait_for(proc.communicate(), 10)
    assert b"[emerg]" not in err, err.decode()
