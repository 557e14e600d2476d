"""The live channel of one node when things break: Redis restarted, a reader that stops reading.
(Two nodes with one killed: tests/test_faults.py.)"""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from config.app import create_app
from config.auth import mint_token
from config.services import EmbeddedServices
from config.settings import Settings
from tests.faults import metric, stalled_reader
from tests.live import Viewer

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.slow, pytest.mark.faults]

SESSION = "fault-1"
SPEC = """INSERT INTO sessions (id, kind, title, scheduled_start, scheduled_end, epoch, created_by,
                                audience, default_tier, moderation)
          VALUES ($1, 'special_inquiry', 'T', now(), now() + interval '2 hours', 'e1', 't',
                  'public', 'voting', 'post')"""


async def test_redis_restart_loses_nothing(own_services: EmbeddedServices, own_settings: Settings) -> None:
    assert own_services.valkey is not None
    settings = own_settings.replace(health_interval=0.3, comment_burst=100)
    conn = await asyncpg.connect(settings.database_url)
    async with TestClient(TestServer(create_app(settings))) as node:
        await conn.execute(SPEC, SESSION)
        await conn.executemany(
            "INSERT INTO representatives (id, name, level) VALUES ($1, $1, 'city')", [("W",)]
        )
        writer = Viewer(str(node.make_url("/")), mint_token(settings, rep="W"), SESSION)
        reader = Viewer(str(node.make_url("/")), mint_token(settings, rep="R"), SESSION)
        await writer.connect()
        await reader.connect()
        for i in range(3):
            assert (await writer.call("comment.send", {"text": f"before {i}", "key": f"b{i}"}))["ok"]
        await asyncio.to_thread(own_services.valkey.stop)
        for i in range(3):  # accepted while Redis is away: the ledger is PostgreSQL
            assert (await writer.call("comment.send", {"text": f"during {i}", "key": f"d{i}"}))["ok"]
        await reader.wait(lambda: reader.seq == 6, seconds=15)  # delivered by catching up from the ledger
        ready = await node.get("/readyz")
        assert ready.status == 503
        await asyncio.to_thread(own_services.valkey.start)

        async def ready_again() -> bool:
            return (await node.get("/readyz")).status == 200

        deadline = asyncio.get_running_loop().time() + 15
        while not await ready_again():
            assert asyncio.get_running_loop().time() < deadline, await (await node.get("/readyz")).text()
            await asyncio.sleep(0.2)
        for i in range(3):
            assert (await writer.call("comment.send", {"text": f"after {i}", "key": f"a{i}"}))["ok"]
        await reader.wait(lambda: reader.seq == 9)
        assert [e["data"]["text"] for e in reader.events] == [
            f"{phase} {i}" for phase in ("before", "during", "after") for i in range(3)
        ]
        assert reader.gaps == reader.duplicates == 0
        metrics = await (await node.get("/metrics")).text()
        assert "tribune_bus_publish_failures_total" in metrics
        await writer.close()
        await reader.close()
    await conn.close()


async def test_slow_reader_is_dropped_and_others_are_not(client, auth, db, settings) -> None:  # type: ignore[no-untyped-def]
    """A viewer that stops reading is cut off once its unsent bytes pass client_buffer_bytes;
    a reading viewer in the same room gets everything."""
    await db.execute(SPEC, SESSION)
    reader = Viewer(str(client.make_url("/")), mint_token(settings, rep="R"), SESSION)
    await reader.connect()
    loop = asyncio.get_running_loop()
    auth_payload = {"token": mint_token(settings, rep="S"), "session": SESSION, "since": None}
    transport, slow, tally = await stalled_reader(client.host, client.port, auth_payload)
    # 3,000 events of 4 KB each (12 MB) written straight into the ledger; the node catches up.
    await db.execute(
        """INSERT INTO events (session_id, seq, type, data)
           SELECT $1, g, 'test.bulk', jsonb_build_object('pad', repeat('x', 4000))
             FROM generate_series(1, 3000) AS g ORDER BY g""",
        SESSION,
    )
    await reader.wait(lambda: reader.seq == 3000, seconds=60)
    assert reader.gaps == reader.duplicates == 0

    async def dropped() -> bool:
        node = str(client.make_url("")).rstrip("/")
        return await metric(client.session, node, "tribune_slow_client_drops_total") >= 1

    deadline = loop.time() + 30
    while not await dropped():
        assert loop.time() < deadline, "the slow reader was never dropped"
        await asyncio.sleep(0.2)
    transport.resume_reading()
    await asyncio.sleep(0.5)
    assert slow.seq < 3000  # it never got everything: it was cut off, not buffered without bound
    assert transport.is_closing() or tally.closed == 1
    await reader.close()
