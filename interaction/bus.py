"""The doorbell between nodes: one Redis pub/sub channel carrying msgpack messages.

Nothing here is the record: every event a message carries is already committed in
PostgreSQL, so a lost message costs only latency (rooms catch up from the ledger). The
node publishes a heartbeat to itself; not hearing it means the subscription is deaf, so
the node reports unready and subscribes again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack
import redis.asyncio as aioredis
import redis.exceptions

from config.loop import STOP_SECONDS, stop_tasks

log = logging.getLogger("tribune.bus")

Handler = Callable[[dict[str, Any]], Awaitable[None] | None]


class Bus:
    def __init__(
        self,
        redis_url: str,
        publisher: aioredis.Redis,
        *,
        prefix: str,
        node_id: str,
        interval: float,
        timeout: float,
        on_failure: Callable[[str], None] | None = None,
    ) -> None:
        self.channel = f"{prefix}bus"
        self._url = redis_url
        self._publisher = publisher
        self._node_id = node_id
        self._interval = interval
        self._timeout = timeout
        self._handlers: dict[str, Handler] = {}
        self._on_resubscribed: list[Callable[[], Awaitable[None]]] = []
        self._on_failure = on_failure or (lambda kind: None)
        self._tasks: list[asyncio.Task[None]] = []
        self._subscribed = asyncio.Event()
        self._resubscribe = asyncio.Event()
        self.heard_at = 0.0
        self.started_at = time.monotonic()

    def on(self, kind: str, handler: Handler) -> None:
        self._handlers[kind] = handler

    def on_resubscribed(self, callback: Callable[[], Awaitable[None]]) -> None:
        self._on_resubscribed.append(callback)

    async def publish(self, kind: str, **payload: Any) -> bool:
        """Ring the doorbell; False (and counted) when Redis did not take it."""
        data = msgpack.packb({"k": kind, "n": self._node_id, **payload}, use_bin_type=True)
        try:
            async with asyncio.timeout(self._timeout):
                await self._publisher.publish(self.channel, data)
        except (redis.exceptions.RedisError, OSError, TimeoutError) as exc:
            log.warning("publish of %s gave up: %s", kind, exc)
            self._on_failure(kind)
            return False
        return True

    def problem(self) -> str | None:
        """None while the node hears its own heartbeat, else why not."""
        limit = self._interval * 3 + self._timeout
        now = time.monotonic()
        if not self._subscribed.is_set():
            return "pub/sub is not subscribed"
        since = now - (self.heard_at or self.started_at)
        if since > limit:
            return f"own heartbeat not heard for {since:.1f}s"
        return None

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._listen(), name="bus-listen"),
            asyncio.create_task(self._heartbeat(), name="bus-heartbeat"),
        ]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._timeout * 2):
                await self._subscribed.wait()

    async def stop(self) -> None:
        await stop_tasks(self._tasks, timeout=STOP_SECONDS, what="bus")

    async def _heartbeat(self) -> None:
        while True:
            await self.publish("hb", t=time.time())
            if self._subscribed.is_set() and self.problem() is not None:
                log.warning("pub/sub looks deaf (%s); subscribing again", self.problem())
                self._resubscribe.set()
            await asyncio.sleep(self._interval)

    async def _listen(self) -> None:
        backoff = 0.1
        while True:
            client = aioredis.from_url(self._url, socket_connect_timeout=self._timeout, socket_keepalive=True)
            pubsub = client.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                self._subscribed.set()
                self._resubscribe.clear()
                self.heard_at = time.monotonic()
                backoff = 0.1
                for callback in self._on_resubscribed:
                    await callback()
                while not self._resubscribe.is_set():
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=self._interval)
                    if message is not None:
                        await self._dispatch(message["data"])
            except asyncio.CancelledError:
                raise
            except (redis.exceptions.RedisError, OSError) as exc:
                log.warning("pub/sub connection lost: %s; retrying in %.1fs", exc, backoff)
            except Exception:
                log.exception("pub/sub listener failed; subscribing again")
            finally:
                self._subscribed.clear()
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
                with contextlib.suppress(Exception):
                    await client.aclose()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    async def _dispatch(self, data: bytes) -> None:
        try:
            message = msgpack.unpackb(data, raw=False, strict_map_key=False)
            kind = message["k"]
        except (ValueError, KeyError, TypeError, msgpack.UnpackException):
            log.warning("ignored a malformed bus message (%d bytes)", len(data))
            return
        if kind == "hb":
            if message.get("n") == self._node_id:
                self.heard_at = time.monotonic()
            return
        handler = self._handlers.get(kind)
        if handler is None:
            return
        try:
            result = handler(message)
            if asyncio.iscoroutine(result):
                await result
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("bus handler for %s failed", kind)
