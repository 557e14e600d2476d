"""A protocol-v1 client for tests: python-socketio's own client with the msgpack parser."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import socketio

from interaction.loadgen import close_client


class Viewer:
    """Connects like a page does and records what it is sent; checks the seq order."""

    def __init__(self, url: str, token: str, session: str) -> None:
        self.url = url
        self.token = token
        self.session = session
        self.sio = socketio.AsyncClient(serializer="msgpack", reconnection=False)
        self.hello: dict[str, Any] | None = None
        self.snapshot: dict[str, Any] | None = None
        self.events: list[dict[str, Any]] = []
        self.queue: list[dict[str, Any]] = []
        self.presence: list[int] = []
        self.tallies: list[dict[str, Any]] = []
        self.nudges: list[dict[str, Any]] = []
        self.refused: Any = None
        self.epoch = ""
        self.seq = 0
        self.duplicates = 0
        self.gaps = 0

        @self.sio.on("hello")
        def on_hello(data: dict[str, Any]) -> None:
            self.hello = data
            if data["epoch"] != self.epoch:
                self.epoch, self.seq = data["epoch"], 0

        @self.sio.on("snapshot")
        def on_snapshot(data: dict[str, Any]) -> None:
            self.snapshot = data
            self.seq = data["seq"]

        @self.sio.on("events")
        def on_events(batch: list[dict[str, Any]]) -> None:
            for event in batch:
                if event["seq"] <= self.seq:
                    self.duplicates += 1
                    continue
                if event["seq"] != self.seq + 1:
                    self.gaps += 1
                self.seq = event["seq"]
                self.events.append(event)

        @self.sio.on("queue")
        def on_queue(data: dict[str, Any]) -> None:
            self.queue.append(data)

        @self.sio.on("presence")
        def on_presence(data: dict[str, Any]) -> None:
            self.presence.append(data["online"])

        @self.sio.on("tally")
        def on_tally(data: dict[str, Any]) -> None:
            self.tallies.append(data)

        @self.sio.on("nudge")
        def on_nudge(data: dict[str, Any]) -> None:
            self.nudges.append(data)

        @self.sio.on("connect_error")
        def on_refused(data: Any) -> None:
            self.refused = data

    async def connect(self, *, resume: bool = False, url: str | None = None, **kwargs: Any) -> None:
        since = {"epoch": self.epoch, "seq": self.seq} if resume and self.epoch else None
        self.hello = None
        await self.sio.connect(
            url or self.url,
            auth={"token": self.token, "session": self.session, "since": since},
            transports=kwargs.pop("transports", ["websocket"]),
            wait_timeout=10,
            **kwargs,
        )
        await self.wait(lambda: self.hello is not None)

    async def call(self, event: str, data: Any) -> dict[str, Any]:
        return dict(await self.sio.call(event, data, timeout=10))

    async def wait(self, condition: Callable[[], bool], seconds: float = 10) -> None:
        deadline = asyncio.get_running_loop().time() + seconds
        while not condition():
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError("timed out waiting for the condition")
            await asyncio.sleep(0.02)

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]

    async def close(self) -> None:
        await close_client(self.sio)
