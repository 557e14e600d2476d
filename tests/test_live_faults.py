"""The live channel when things break: a node killed mid-stream, Redis restarted."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from config.app import create_app
from config.auth import Role, mint_token
from config.services import EmbeddedServices
from config.settings import Settings
from tests.conftest import TEST_SECRET
from tests.live import Viewer, close_client
from tests.test_node import Node, clean_env

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.slow]

SESSION = "fault-1"
SPEC = """INSERT INTO sessions (id, kind, title, scheduled_start, scheduled_end, epoch, created_by,
                                audience, default_tier, moderation)
          VALUES ($1, 'special_inquiry', 'T', now(), now() + interval '2 hours', 'e1', 't',
                  'public', 'voting', 'post')"""


class FailoverViewer(Viewer):
    """Reconnects to the next node when its node goes away, resuming from its last seq."""

    def __init__(self, urls: list[str], token: str, session: str) -> None:
        super().__init__(urls[0], token, session)
        self.urls = urls
        self.node = 0
        self.reconnects: list[float] = []
        self._reconnecting: asyncio.Task[None] | None = None
        self.closing = False
        self.sio.on("disconnect", self._lost)

    async def close(self) -> None:
        self.closing = True
        if self._reconnecting is not None:
            self._reconnecting.cancel()
        await super().close()

    def _lost(self, *args: Any) -> None:
        if self.closing:
            return
        if self._reconnecting is None or self._reconnecting.done():
            self._reconnecting = asyncio.get_running_loop().create_task(self._failover())

    async def _failover(self) -> None:
        started = asyncio.get_running_loop().time()
        while True:
            self.node = (self.node + 1) % len(self.urls)
            await asyncio.sleep(0.2 + secrets.randbelow(300) / 1000)  # jitter
            try:
                await close_client(self.sio)
                await self.connect(resume=True, url=self.urls[self.node])
                self.reconnects.append(asyncio.get_running_loop().time() - started)
                return
            except Exception:
                continue


async def test_kill_minus_9_one_of_two_nodes(services, database_url, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    conn = await asyncpg.connect(database_url)
    await conn.execute(SPEC, SESSION)
    await conn.executemany(
        "INSERT INTO representatives (id, name, level) VALUES ($1, $1, 'city')",
        [(f"V{i}",) for i in range(40)],
    )
    env = clean_env(
        TRIBUNE_DATABASE_URL=database_url,
        TRIBUNE_REDIS_URL=services.redis_url,
        TRIBUNE_JWT_SECRET=TEST_SECRET,
        TRIBUNE_REDIS_PREFIX=f"k{secrets.token_hex(3)}:",
        TRIBUNE_COMMENT_BURST="1000",
        TRIBUNE_HEALTH_INTERVAL="0.5",
    )
    a, b = (
        Node(tmp_path / "a", {**env, "TRIBUNE_NODE_ID": "a"}),
        Node(tmp_path / "b", {**env, "TRIBUNE_NODE_ID": "b"}),
    )
    settings = Settings(jwt_secret=TEST_SECRET)
    viewers: list[FailoverViewer] = []
    try:
        await asyncio.to_thread(a.wait_ready)
        await asyncio.to_thread(b.wait_ready)
        for i in range(40):
            urls = [a.url, b.url] if i % 2 == 0 else [b.url, a.url]
            viewer = FailoverViewer(
                urls, mint_token(settings, rep=f"V{i}", roles=[Role.REPRESENTATIVE]), SESSION
            )
            await viewer.connect()
            viewers.append(viewer)
        writers = [v for v in viewers[:4]]
        acked: set[str] = set()
        errors: list[str] = []

        async def write(n: int) -> None:
            writer = writers[n % len(writers)]
            key = f"c{n}"
            while True:  # retry with the same key until acknowledged
                try:
                    if writer.sio.connected:
                        ack = await writer.call("comment.send", {"text": f"comment {n}", "key": key})
                        if ack.get("ok"):
                            acked.add(key)
                            return
                        errors.append(repr(ack))
                except Exception as exc:
                    errors.append(repr(exc))
                await asyncio.sleep(0.2)

        tasks = []
        for n in range(60):
            tasks.append(asyncio.create_task(write(n)))
            if n == 20:
                os.kill(a.proc.pid, signal.SIGKILL)
            await asyncio.sleep(0.05)
        try:
            await asyncio.wait_for(asyncio.gather(*tasks), 60)
        except TimeoutError:
            states = [(v.node, v.sio.connected, len(v.reconnects), v.seq) for v in viewers]
            raise AssertionError(
                f"acked {len(acked)}; {errors[-5:]}; viewers {states[:3]}; "
                f"node b log: {b.log.read_text()[-3000:]}"
            ) from None
        total = await conn.fetchval("SELECT last_seq FROM sessions WHERE id = $1", SESSION)
        assert total == 60 and len(acked) == 60
        stored = [r["body"] for r in await conn.fetch("SELECT body FROM comments")]
        assert sorted(stored) == sorted(f"comment {n}" for n in range(60))  # each once
        # The published order is the ledger's: comment ids are taken before the seq, so two
        # nodes writing at once may publish a later id first.
        logged = await conn.fetch(
            "SELECT data->>'text' AS text FROM events WHERE session_id = $1"
            " AND type = 'comment.published' ORDER BY seq",
            SESSION,
        )
        published = [r["text"] for r in logged]
        assert sorted(published) == sorted(stored)
        for viewer in viewers:
            await viewer.wait(lambda v=viewer: v.seq == total, seconds=30)
        for viewer in viewers:
            texts = [e["data"]["text"] for e in viewer.events]
            assert viewer.gaps == 0 and viewer.duplicates == 0
            assert [e["seq"] for e in viewer.events] == list(range(1, total + 1))
            assert texts == published  # every published comment exactly once, in order
        moved = [v for v in viewers if v.reconnects]
        assert len(moved) == 20  # everyone who was on A, and only they
        assert max(t for v in moved for t in v.reconnects) <= 10
    finally:
        for viewer in viewers:
            await viewer.close()
        b.stop()
        a.stop()
        await conn.close()


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
    import socket

    from interaction.loadgen import FrameCache, Tally, ViewerProtocol

    await db.execute(SPEC, SESSION)
    reader = Viewer(str(client.make_url("/")), mint_token(settings, rep="R"), SESSION)
    await reader.connect()
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a phone on a bad link
    sock.setblocking(False)
    await loop.sock_connect(sock, (client.host, client.port))
    ready: asyncio.Future[bool] = loop.create_future()
    tally = Tally()
    auth_payload = {"token": mint_token(settings, rep="S"), "session": SESSION, "since": None}
    transport, slow = await loop.create_connection(
        lambda: ViewerProtocol(
            f"{client.host}:{client.port}", auth_payload, tally, FrameCache(), None, ready
        ),
        sock=sock,
    )
    assert await asyncio.wait_for(ready, 10)
    transport.pause_reading()
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
        text = await (await client.get("/metrics")).text()
        line = next(x for x in text.splitlines() if x.startswith("tribune_slow_client_drops_total"))
        return float(line.split()[-1]) >= 1

    deadline = loop.time() + 30
    while not await dropped():
        assert loop.time() < deadline, "the slow reader was never dropped"
        await asyncio.sleep(0.2)
    transport.resume_reading()
    await asyncio.sleep(0.5)
    assert slow.seq < 3000  # it never got everything: it was cut off, not buffered without bound
    assert transport.is_closing() or tally.closed == 1
    await reader.close()
