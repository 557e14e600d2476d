"""The composition root: `create_app()` builds a node from its settings.

Every long-lived resource is a cleanup context, started in order and torn down in
reverse, and only if it started: embedded services → PostgreSQL pool (and migrations)
→ Redis → health monitor.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
from aiohttp import web

from config import health, keys, pages
from config.auth import TokenVerifier
from config.errors import Unavailable
from config.metrics import Metrics
from config.services import EmbeddedServices, ServiceUrls, write_node_env
from config.settings import Settings, mask_url
from config.web import edge_middleware
from interaction import api as interaction_api
from interaction import server as live
from recorder import api as recorder_api
from recorder.db import create_pool
from recorder.migrate import migrate
from streaming import api as streaming_api

log = logging.getLogger("tribune.app")


async def services_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    embedded: EmbeddedServices | None = None
    database_url, redis_url = settings.database_url, settings.redis_url
    if settings.embedded_database or settings.embedded_redis:
        embedded = EmbeddedServices(
            settings.data_dir, postgres=settings.embedded_database, redis=settings.embedded_redis
        )
        started_db, started_redis = await asyncio.to_thread(embedded.start)
        database_url = database_url or started_db
        redis_url = redis_url or started_redis
        env = {"TRIBUNE_DATABASE_URL": database_url, "TRIBUNE_REDIS_URL": redis_url}
        if settings.jwt_secret:
            env["TRIBUNE_JWT_SECRET"] = settings.jwt_secret
        path = write_node_env(settings.data_dir, env)
        log.info(
            "embedded services: postgres %s, redis %s (a second node: %s)",
            database_url,
            mask_url(redis_url),
            path,
        )
    app[keys.SERVICE_URLS] = ServiceUrls(database_url=database_url, redis_url=redis_url)
    try:
        yield
    finally:
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)


async def database_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    pool = await create_pool(
        app[keys.SERVICE_URLS].database_url,
        min_size=settings.database_pool_min,
        max_size=settings.database_pool_max,
        timeout=settings.database_timeout,
    )
    try:
        async with pool.acquire() as conn:
            applied = await migrate(conn)
        if applied:
            log.info("ledger migrated to version %d", applied[-1])
        app[keys.DB] = pool
        yield
    finally:
        try:  # waits for every connection to be released; one held by a stuck task must not
            async with asyncio.timeout(settings.database_timeout * 2):  # hold the shutdown
                await pool.close()
        except TimeoutError:  # close() has terminated the connections
            log.warning("database connections still in use at shutdown were terminated")


async def redis_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    client = aioredis.from_url(
        app[keys.SERVICE_URLS].redis_url,
        socket_timeout=settings.redis_timeout,
        socket_connect_timeout=settings.redis_timeout,
        health_check_interval=max(1, int(settings.health_interval * 5)),
    )
    try:
        try:
            await asyncio.wait_for(client.ping(), settings.redis_timeout)
        except Exception as exc:
            raise Unavailable(
                f"cannot connect to Redis at {mask_url(app[keys.SERVICE_URLS].redis_url)}: "
                f"{exc}; check redis_url"
            ) from exc
        app[keys.REDIS] = client
        yield
    finally:
        await client.aclose()


def create_app(settings: Settings) -> web.Application:
    if not settings.jwt_secret and settings.jwt_public_key is None:
        raise Unavailable("jwt_secret or jwt_public_key must be set to verify tokens")
    app = web.Application(client_max_size=settings.max_upload_bytes, middlewares=[edge_middleware])
    app[keys.SETTINGS] = settings
    app[keys.METRICS] = Metrics()
    app[keys.HEALTH] = health.HealthState()
    app[keys.VERIFIER] = TokenVerifier.from_settings(settings)
    app.cleanup_ctx.extend([services_ctx, database_ctx, redis_ctx])
    live.attach(app)
    streaming_api.attach(app)
    app.cleanup_ctx.append(health.monitor)
    app.cleanup_ctx.append(health.loop_watch)
    health.add_routes(app)
    recorder_api.add_routes(app)
    interaction_api.add_routes(app)
    pages.add_routes(app)
    return app
