from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from config import keys
from config.app import create_app
from config.loop import stop_tasks
from config.services import EmbeddedServices
from config.settings import Settings

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_health_ready_and_metrics(client) -> None:  # type: ignore[no-untyped-def]
    health = await client.get("/healthz")
    assert health.status == 200 and (await health.json())["status"] == "ok"
    ready = await client.get("/readyz")
    assert ready.status == 200
    assert (await ready.json())["checks"] == {"postgres": "ok", "redis": "ok", "pubsub": "ok"}
    metrics = await client.get("/metrics")
    text = await metrics.text()
    assert metrics.content_type == "text/plain"
    assert 'tribune_http_requests_total{method="GET",route="/readyz",status="200"} 1.0' in text
    assert 'tribune_dependency_up{dependency="postgres"} 1.0' in text
    # Methods outside the usual ones (WebDAV's, TRACE) are counted under one label.
    for method in ("PROPFIND", "TRACE", "MKCOL"):
        assert (await client.request(method, "/readyz")).status == 405
    text = await (await client.get("/metrics")).text()
    assert 'tribune_http_requests_total{method="other",route="unmatched",status="405"} 3.0' in text
    assert "PROPFIND" not in text


async def wait_for(check: Callable[[], Awaitable[bool]], seconds: float = 15) -> bool:
    deadline = asyncio.get_running_loop().time() + seconds
    while asyncio.get_running_loop().time() < deadline:
        if await check():
            return True
        await asyncio.sleep(0.1)
    return False


@pytest.mark.faults
async def test_readyz_follows_postgres_and_redis(
    own_services: EmbeddedServices, own_settings: Settings
) -> None:
    assert own_services.postgres is not None and own_services.valkey is not None
    settings = own_settings
    async with TestClient(TestServer(create_app(settings))) as client:

        async def status() -> tuple[int, dict[str, Any]]:
            r = await client.get("/readyz")
            return r.status, (await r.json())["checks"]

        async def is_status(code: int) -> bool:
            return (await status())[0] == code

        assert await is_status(200)

        await asyncio.to_thread(own_services.valkey.stop)
        assert await wait_for(lambda: is_status(503)), "readyz stayed 200 without Redis"
        _, checks = await status()
        assert checks["postgres"] == "ok" and checks["redis"] != "ok"
        assert (await client.get("/healthz")).status == 200  # alive, just not ready
        await asyncio.to_thread(own_services.valkey.start)
        assert await wait_for(lambda: is_status(200)), "readyz did not recover with Redis back"

        await asyncio.to_thread(own_services.postgres.stop)
        assert await wait_for(lambda: is_status(503)), "readyz stayed 200 without PostgreSQL"
        assert (await status())[1]["postgres"] != "ok"
        # Requests that need the ledger fail with a clear 503, not a crash.
        api = await client.get("/api/sessions", headers={"Authorization": "Bearer x"})
        assert api.status == 401  # auth is checked before the ledger is touched
        await asyncio.to_thread(own_services.postgres.start)
        ok = await wait_for(lambda: is_status(200))
        assert ok, f"readyz did not recover with PostgreSQL back: {await status()}"
        metrics = await (await client.get("/metrics")).text()
        assert 'tribune_dependency_up{dependency="redis"} 1.0' in metrics


@pytest.mark.faults
async def test_ledger_outage_gives_503_and_writes_nothing(
    own_services: EmbeddedServices, own_settings: Settings
) -> None:
    from config.auth import Role, mint_token

    assert own_services.postgres is not None
    settings = own_settings
    database_url = settings.database_url
    admin = {"Authorization": "Bearer " + mint_token(settings, rep="A1", roles=[Role.ADMIN])}
    spec = {
        "id": "outage",
        "kind": "lecture",
        "title": "T",
        "scheduled_start": "2026-12-01T09:00:00Z",
        "scheduled_end": "2026-12-01T10:00:00Z",
    }
    async with TestClient(TestServer(create_app(settings))) as client:
        await asyncio.to_thread(own_services.postgres.stop)
        r = await client.post("/api/sessions", json=spec, headers=admin)
        assert r.status == 503
        assert (await r.json())["error"]["code"] == "unavailable"
        await asyncio.to_thread(own_services.postgres.start)

        async def accepted() -> bool:
            return (await client.post("/api/sessions", json=spec, headers=admin)).status == 201

        assert await wait_for(accepted)
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM sessions WHERE id = 'outage'") == 1
    finally:
        await conn.close()


async def test_a_connection_held_by_a_stuck_task_does_not_hold_the_shutdown(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(dataclasses.replace(settings, database_timeout=1.0))
    client = TestClient(TestServer(app))
    await client.start_server()
    held = asyncio.Event()

    async def stuck() -> None:
        async with app[keys.DB].acquire():
            held.set()
            await asyncio.Event().wait()  # never released

    task = asyncio.ensure_future(stuck())
    try:
        await held.wait()
        # Waits for the connection as long as the node allows, then terminates it; the guard
        # here only keeps a regression from hanging the suite.
        await asyncio.wait_for(client.close(), 60)
        assert "database connections still in use at shutdown were terminated" in caplog.text
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_task_that_ignores_cancellation_is_named_and_left_behind(
    caplog: pytest.LogCaptureFixture,
) -> None:
    release = asyncio.Event()

    async def obedient() -> None:
        await asyncio.Event().wait()

    async def stubborn() -> None:
        while not release.is_set():
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                continue  # ignores it

    tasks = [asyncio.ensure_future(obedient()), asyncio.ensure_future(stubborn())]
    await asyncio.sleep(0)
    assert await stop_tasks(tasks, timeout=0.5, what="the test's tasks") is False
    assert tasks[0].cancelled() and not tasks[1].done()
    assert "the test's tasks: a task did not stop" in caplog.text and "in stubborn" in caplog.text
    release.set()
    await tasks[1]
