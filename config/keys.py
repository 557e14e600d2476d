"""Typed keys for what hangs on the application: the one place shared state lives."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import asyncpg
from aiohttp import web

from config.auth import TokenVerifier
from config.settings import Settings

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from config.health import HealthState
    from config.metrics import Metrics
    from config.services import ServiceUrls

SETTINGS = web.AppKey("settings", Settings)
SERVICE_URLS: web.AppKey[ServiceUrls] = web.AppKey("service_urls")
DB: web.AppKey[asyncpg.Pool] = web.AppKey("db")
REDIS: web.AppKey[Redis] = web.AppKey("redis")
VERIFIER = web.AppKey("verifier", TokenVerifier)
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
HEALTH: web.AppKey[HealthState] = web.AppKey("health")


class EventSink(Protocol):
    """Told of events a request committed, so live clients see them without waiting for
    the next catch-up poll. The live channel provides one; without it, nothing is told."""

    async def committed(self, session_id: str, events: Sequence[Any]) -> None: ...


EVENT_SINK: web.AppKey[EventSink] = web.AppKey("event_sink")
