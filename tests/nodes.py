"""A node in the test process, served as `tribune serve` serves it: through the HTTP front."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

from config.front import NodeRunner


class NodeServer(TestServer):
    async def _make_runner(self, **kwargs: Any) -> web.AppRunner:
        return NodeRunner(self.app, **kwargs)
