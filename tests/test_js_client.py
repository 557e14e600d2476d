"""The official socket.io-client (npm) with socket.io-msgpack-parser speaks protocol v1."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import pytest

from config.auth import mint_token
from tests.test_live import SESSION, schedule

ROOT = Path(__file__).resolve().parent.parent
NODE_MODULES = ROOT / "pages" / "node_modules"
pytestmark = pytest.mark.asyncio(loop_scope="session")


async def run_client(url: str, token: str, session: str, text: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    node = shutil.which("node")
    assert node is not None, "Node.js is required (README: Python 3.11+ and Node)"
    assert NODE_MODULES.exists(), "run `python3 dev.py test`, which installs pages/ npm packages"
    proc = await asyncio.create_subprocess_exec(
        node,
        str(ROOT / "tests" / "js" / "socketio_client.cjs"),
        url,
        token,
        session,
        text,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "NODE_PATH": str(NODE_MODULES)},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert out, err.decode()
    return proc.returncode or 0, json.loads(out.decode().strip().splitlines()[-1])


async def test_official_client_connects_comments_and_receives(client, auth, db, settings) -> None:  # type: ignore[no-untyped-def]
    await schedule(client, auth, db)
    token = mint_token(settings, rep="R1", name="王伟")
    code, seen = await run_client(str(client.make_url("/")), token, SESSION, "来自浏览器客户端的留言")
    assert code == 0, seen
    assert seen["hello"]["you"]["rep"] == "R1" and seen["hello"]["session"] == SESSION
    assert seen["snapshot"]["seq"] == 1
    assert seen["ack"]["ok"] is True and seen["ack"]["comment"]["status"] == "published"
    published = [e for e in seen["events"] if e["type"] == "comment.published"]
    assert published[0]["data"]["text"] == "来自浏览器客户端的留言" and published[0]["seq"] == 2


async def test_official_client_sees_refusal_code(client, auth, db) -> None:  # type: ignore[no-untyped-def]
    await schedule(client, auth, db)
    code, seen = await run_client(str(client.make_url("/")), "not-a-token", SESSION, "x")
    assert code == 2
    assert seen["error"]["data"]["code"] == "unauthorized"
    assert "invalid" in seen["error"]["message"]
