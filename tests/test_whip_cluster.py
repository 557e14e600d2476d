"""WHEP across nodes: a viewer on a node that does not ingest the feed is sent to its owner
with a 307; when the owner dies, the feed is marked ended for everyone."""

from __future__ import annotations

import os
import secrets
import signal
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from config.auth import Role, mint_token
from config.settings import Settings
from streaming.clients import WhepViewer, WhipError, WhipPublisher
from streaming.testsrc import PatternVideo, Tone
from tests.conftest import TEST_SECRET
from tests.live import Viewer
from tests.test_node import Node, clean_env, http
from tests.test_whip import until

pytestmark = [pytest.mark.usefixtures("loopback_only"), pytest.mark.slow, pytest.mark.faults]

SESSION = "hearing-1"


async def test_non_owner_redirects_and_owner_death_ends_the_feed(
    services: Any, database_url: str, tmp_path: Path
) -> None:
    conn = await asyncpg.connect(database_url)
    await conn.execute(
        """INSERT INTO sessions (id, kind, title, scheduled_start, scheduled_end, epoch, created_by,
                                 audience, default_tier, moderation, state, started_at)
           VALUES ($1, 'court_hearing', 'T', now(), now() + interval '2 hours', 'e1', 't',
                   'public', 'viewer', 'post', 'live', now())""",
        SESSION,
    )
    env = clean_env(
        TRIBUNE_DATABASE_URL=database_url,
        TRIBUNE_REDIS_URL=services.redis_url,
        TRIBUNE_JWT_SECRET=TEST_SECRET,
        TRIBUNE_REDIS_PREFIX=f"w{secrets.token_hex(3)}:",
        TRIBUNE_WEBRTC_HOST_ADDRESSES="127.0.0.1",
        TRIBUNE_FEED_LEASE="3",
    )
    a = Node(tmp_path / "a", {**env, "TRIBUNE_NODE_ID": "a"})
    b = Node(tmp_path / "b", {**env, "TRIBUNE_NODE_ID": "b"})
    settings = Settings(jwt_secret=TEST_SECRET)
    admin = mint_token(settings, rep="A1", roles=[Role.ADMIN])
    viewer_token = mint_token(settings, rep="R1", roles=[Role.REPRESENTATIVE])
    publisher: WhipPublisher | None = None
    watcher: WhepViewer | None = None
    page = Viewer(b.url, viewer_token, SESSION)
    try:
        a.wait_ready()
        b.wait_ready()
        status, body = http("POST", f"{a.url}/api/feeds", {"id": "court", "session": SESSION}, admin)
        assert status == 201, body
        await page.connect()
        async with aiohttp.ClientSession() as client:
            publisher = WhipPublisher(f"{a.url}/whip/court", body["key"], [PatternVideo(), Tone()])
            await publisher.start(client)
            await page.wait(lambda: bool(page.of_type("feed.live")), seconds=20)

            watcher = WhepViewer(f"{b.url}/whep/court", viewer_token)
            await watcher.start(client)
            assert watcher.redirected_from == f"{b.url}/whep/court"
            assert str(watcher.location).startswith(f"{a.url}/whep/court/")
            await until(lambda: watcher is not None and watcher.decoded >= 15, seconds=20)

            os.kill(a.proc.pid, signal.SIGKILL)
            a.proc.wait()
            await page.wait(lambda: bool(page.of_type("feed.ended")), seconds=20)
            assert page.of_type("feed.ended")[0]["data"] == {"feed": "court", "reason": "owner_lost"}
            assert await conn.fetchval("SELECT state FROM feeds WHERE id = 'court'") == "ended"
            late = WhepViewer(f"{b.url}/whep/court", viewer_token)
            with pytest.raises(WhipError) as refused:
                await late.start(client)
            assert refused.value.status == 404
    finally:
        if watcher is not None:
            await watcher.stop()
        if publisher is not None:
            await publisher.stop()
        await page.close()
        for node in (a, b):
            node.stop()
        await conn.close()
