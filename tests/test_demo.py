from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from config.cli.demo import DEMO_FEED, DEMO_REPS, DEMO_SESSION, seed
from config.services import free_port
from tests.test_node import TRIBUNE, clean_env, http


@pytest.mark.asyncio(loop_scope="session")
async def test_seed_is_repeatable(db) -> None:  # type: ignore[no-untyped-def]
    first = await seed(db)
    second = await seed(db)
    assert first != second  # a fresh stream key each run: only the digest of the old one was kept
    assert await db.fetchval("SELECT key_version FROM feeds WHERE id = $1", DEMO_FEED) == 2
    assert await db.fetchval("SELECT count(*) FROM representatives") == DEMO_REPS
    row = await db.fetchrow("SELECT kind, state, default_tier FROM sessions WHERE id = $1", DEMO_SESSION)
    assert tuple(row) == ("special_inquiry", "scheduled", "voting")
    assert await db.fetchval("SELECT count(*) FROM events WHERE session_id = $1", DEMO_SESSION) == 1


@pytest.mark.slow
def test_demo_command_prints_working_links(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "demo.out"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [TRIBUNE, "demo", "--data-dir", str(tmp_path / "d"), "--port", str(port)],
            env=clean_env(TRIBUNE_WEBRTC_HOST_ADDRESSES="127.0.0.1"),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while "Running on" not in log.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.2)
        text = log.read_text()
        links = dict(
            re.findall(
                rf"http://127\.0\.0\.1:{port}/(watch|moderate|host|projector)/{DEMO_SESSION}#token=(\S+)",
                text,
            )
        )
        assert set(links) == {"watch", "moderate", "host", "projector"}, text
        assert re.search(rf"http://127\.0\.0\.1:{port}/admin#token=\S+", text), text
        status, body = http(
            "GET", f"http://127.0.0.1:{port}/api/sessions/{DEMO_SESSION}", token=links["watch"]
        )
        assert status == 200 and body["session"]["your_tier"] == "voting"
        page = http_page(f"http://127.0.0.1:{port}/watch/{DEMO_SESSION}")
        assert "/static/js/watch.js" in page
        while time.monotonic() < deadline:  # the test pattern goes live as the session's video
            status, body = http("GET", f"http://127.0.0.1:{port}/api/feeds/{DEMO_FEED}", token=links["watch"])
            if status == 200 and body["feed"]["state"] == "live":
                break
            time.sleep(0.5)
        assert body["feed"]["state"] == "live", body
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


def http_page(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())
