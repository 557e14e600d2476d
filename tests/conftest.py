"""Shared test harness: real PostgreSQL and Valkey, started once per run.

With TRIBUNE_TEST_DATABASE_URL / TRIBUNE_TEST_REDIS_URL set, those servers are used;
otherwise the embedded ones are started, exactly as a node starts them. Every test gets
its own database (cloned from a migrated template) and its own Redis key prefix.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import sys
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient

from config.app import create_app
from config.auth import Role, mint_token
from config.services import EmbeddedServices
from config.settings import Settings
from recorder.migrate import migrate
from tests.nodes import NodeServer

TEMPLATE_DB = "tribune_template"
TEST_SECRET = "test-secret-" + "x" * 40


@dataclass(frozen=True)
class Services:
    database_url: str  # the maintenance database; tests get their own databases beside it
    redis_url: str


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def session_loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()


@pytest.fixture(autouse=True)
def hang_report(request: pytest.FixtureRequest, session_loop: asyncio.AbstractEventLoop) -> Iterator[None]:
    """A test that hangs also prints every asyncio task's stack, a little before pytest-timeout
    fails it with the threads' stacks only (where a hung coroutine does not show)."""
    marker = request.node.get_closest_marker("timeout")
    limit = float(marker.args[0] if marker else request.config.getini("timeout") or 0)
    if limit <= 0:
        yield
        return

    def dump() -> None:
        print(f"--- asyncio tasks of {request.node.nodeid}, still running ---", file=sys.stderr)
        for task in asyncio.all_tasks(session_loop):
            task.print_stack(file=sys.stderr)

    timer = threading.Timer(max(limit - 20, limit * 0.9), session_loop.call_soon_threadsafe, (dump,))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


@pytest.fixture(scope="session")
def services() -> Iterator[Services]:
    db_url = os.environ.get("TRIBUNE_TEST_DATABASE_URL", "")
    redis_url = os.environ.get("TRIBUNE_TEST_REDIS_URL", "")
    embedded = None
    root = Path(tempfile.mkdtemp(prefix="trt-"))  # short: PostgreSQL's socket path is limited
    if not db_url or not redis_url:
        embedded = EmbeddedServices(root, postgres=not db_url, redis=not redis_url)
        started_db, started_redis = embedded.start()
        db_url, redis_url = db_url or started_db, redis_url or started_redis
    try:
        yield Services(db_url, redis_url)
    finally:
        if embedded is not None:
            embedded.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def template_db(services: Services) -> str:
    admin = await asyncpg.connect(services.database_url)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {TEMPLATE_DB} WITH (FORCE)")
        await admin.execute(f"CREATE DATABASE {TEMPLATE_DB}")
    finally:
        await admin.close()
    conn = await asyncpg.connect(with_database(services.database_url, TEMPLATE_DB))
    try:
        await migrate(conn)
    finally:
        await conn.close()
    return TEMPLATE_DB


@pytest_asyncio.fixture(loop_scope="session")
async def database_url(services: Services, template_db: str) -> AsyncIterator[str]:
    """A fresh, migrated database of this test's own."""
    name = "t_" + secrets.token_hex(6)
    admin = await asyncpg.connect(services.database_url)
    try:
        await admin.execute(f"CREATE DATABASE {name} TEMPLATE {template_db}")
        yield with_database(services.database_url, name)
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await admin.close()


@pytest_asyncio.fixture(loop_scope="session")
async def db(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    from recorder.db import create_pool

    pool = await create_pool(database_url, min_size=1, max_size=4, timeout=5)
    yield pool
    await pool.close()


@pytest.fixture
def settings(services: Services, database_url: str, tmp_path: Path) -> Settings:
    return Settings(
        node_id="test-" + secrets.token_hex(3),
        data_dir=tmp_path,
        database_url=database_url,
        database_pool_min=1,
        database_pool_max=5,
        redis_url=services.redis_url,
        redis_prefix="t" + secrets.token_hex(4) + ":",
        jwt_secret=TEST_SECRET,
        health_interval=0.2,
    )


@pytest_asyncio.fixture(loop_scope="session")
async def client(settings: Settings) -> AsyncIterator[TestClient[Any, Any]]:
    """The very app `tribune serve` runs, on a loopback port."""
    async with TestClient(NodeServer(create_app(settings))) as test_client:
        yield test_client


@pytest_asyncio.fixture(loop_scope="session")
async def own_services() -> AsyncIterator[EmbeddedServices]:
    """PostgreSQL and Valkey of this test's own, so stopping them disturbs no other test."""
    root = Path(tempfile.mkdtemp(prefix="tro-"))
    services = EmbeddedServices(root, postgres=True, redis=True)
    await asyncio.to_thread(services.start)
    yield services
    await asyncio.to_thread(services.stop)
    shutil.rmtree(root, ignore_errors=True)


@pytest_asyncio.fixture(loop_scope="session")
async def own_settings(own_services: EmbeddedServices, tmp_path: Path) -> Settings:
    """Settings of a node on `own_services`, with short timeouts so outages show quickly."""
    assert own_services.postgres is not None and own_services.valkey is not None
    return Settings(
        data_dir=tmp_path,
        database_url=await asyncio.to_thread(own_services.postgres.start),
        redis_url=own_services.valkey.url,
        redis_prefix="t" + secrets.token_hex(4) + ":",
        jwt_secret=TEST_SECRET,
        health_interval=0.2,
        redis_timeout=0.5,
        database_timeout=1.0,
    )


class Tokens:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def __call__(self, rep: str, *roles: Role, ttl: float = 600, name: str = "") -> dict[str, str]:
        token = mint_token(self.settings, rep=rep, name=name, roles=roles or (Role.REPRESENTATIVE,), ttl=ttl)
        return {"Authorization": f"Bearer {token}"}

    @property
    def admin(self) -> dict[str, str]:
        return self("A001", Role.ADMIN)


@pytest.fixture
def auth(settings: Settings) -> Tokens:
    """`auth("R1")` → headers of a representative; `auth.admin` → an admin's."""
    return Tokens(settings)


def interfaces() -> list[str]:
    """The network interfaces of this process's namespace (/proc/net/dev is per namespace)."""
    lines = Path("/proc/net/dev").read_text().splitlines()[2:]
    return sorted(line.split(":", 1)[0].strip() for line in lines)


@pytest.fixture(scope="session")
def loopback_only() -> None:
    """WebRTC tests must not send a packet beyond loopback: they run only in a network
    namespace holding nothing but `lo` (`python3 dev.py test` runs the suite in one)."""
    found = interfaces()
    if found != ["lo"]:
        pytest.fail(
            f"WebRTC tests need a network namespace with only lo, but this one has {', '.join(found)}; "
            "run them with `python3 dev.py test` (or `unshare -n` and `ip link set lo up`)",
            pytrace=False,
        )
    from streaming.rtc import limit_host_addresses

    limit_host_addresses(("127.0.0.1",))  # aioice skips loopback unless told; it is all there is here


@pytest_asyncio.fixture(loop_scope="session")
async def browser() -> AsyncIterator[Any]:
    """Headless Chromium driven by Playwright (tests/browser.py)."""
    from tests.browser import launch

    async with launch() as chromium:
        yield chromium
