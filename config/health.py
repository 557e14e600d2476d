"""Liveness, readiness and metrics endpoints, and the monitor that keeps readiness true.

Readiness is what the monitor last saw, not a probe per request: a load balancer polling
every node must not turn into load on PostgreSQL and Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

from config import keys

log = logging.getLogger("tribune.health")

DEPENDENCIES = ("postgres", "redis")


@dataclass
class HealthState:
    """The last outcome of each dependency check: None while healthy, else the error."""

    problems: dict[str, str | None] = field(
        default_factory=lambda: dict.fromkeys(DEPENDENCIES, "not checked yet")
    )
    checked_at: float = 0.0
    # Further checks components register (the live channel's "pubsub"): None while healthy.
    extra: dict[str, Callable[[], str | None]] = field(default_factory=dict)
    probes: dict[str, asyncio.Future[object]] = field(default_factory=dict)  # checks in flight

    def ready(self, now: float, max_age: float) -> bool:
        fresh = now - self.checked_at <= max_age
        return fresh and all(problem is None for problem in self.problems.values())


async def _check(
    state: HealthState, name: str, probe: Callable[[], Awaitable[object]], timeout: float
) -> str | None:
    """Run `probe` (or wait for the one still running) up to `timeout`. A probe that takes
    longer is reported but not cancelled: cancelling a query resets its connection, and a
    slow PostgreSQL would then lose a pooled connection every interval to the check."""
    task = state.probes.get(name)
    if task is None or task.done():
        task = state.probes[name] = asyncio.ensure_future(probe())
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if not done:
        return f"no answer within {timeout:.1f}s"
    exc = task.exception()
    if exc is None:
        return None
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


async def check_once(app: web.Application) -> None:
    settings = app[keys.SETTINGS]
    state = app[keys.HEALTH]
    metrics = app[keys.METRICS]
    timeout = min(settings.redis_timeout, settings.database_timeout, max(settings.health_interval, 0.5))
    results = await asyncio.gather(
        _check(state, "postgres", lambda: app[keys.DB].fetchval("SELECT 1"), timeout),
        _check(state, "redis", lambda: app[keys.REDIS].ping(), timeout),
    )
    named = list(zip(DEPENDENCIES, results, strict=True)) + [(n, check()) for n, check in state.extra.items()]
    for stale in set(state.problems) - {n for n, _ in named}:
        del state.problems[stale]
    for name, problem in named:
        if problem != state.problems.get(name):
            if problem is None:
                log.info("%s is reachable", name)
            else:
                log.warning("%s check failed: %s", name, problem)
        state.problems[name] = problem
        metrics.dependency_up.labels(name).set(0 if problem else 1)
    state.checked_at = time.monotonic()


async def monitor(app: web.Application) -> AsyncIterator[None]:
    """Cleanup context: check the dependencies every `health_interval` seconds."""
    interval = app[keys.SETTINGS].health_interval

    async def loop() -> None:
        while True:
            try:
                await check_once(app)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("health check crashed; retrying")
            await asyncio.sleep(interval)

    await check_once(app)
    task = asyncio.create_task(loop(), name="health-monitor")
    yield
    task.cancel()
    for probe in app[keys.HEALTH].probes.values():
        probe.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await asyncio.gather(*app[keys.HEALTH].probes.values(), return_exceptions=True)


LAG_TICK = 0.1
STALL = 0.1


async def loop_watch(app: web.Application) -> AsyncIterator[None]:
    """Cleanup context: a timer due every 100 ms measures how late the loop runs it. Lag
    is a histogram on /metrics; a stall over 100 ms is counted and logged, since every
    client's ping and every acknowledgement waited that long."""
    metrics = app[keys.METRICS]
    loop = asyncio.get_running_loop()

    async def watch() -> None:
        last_log = 0.0
        while True:
            due = loop.time() + LAG_TICK
            await asyncio.sleep(LAG_TICK)
            lag = max(0.0, loop.time() - due)
            metrics.loop_lag.observe(lag)
            if lag > STALL:
                metrics.loop_stalls.inc()
                if loop.time() - last_log > 5:
                    last_log = loop.time()
                    log.warning("event loop blocked for %.0f ms", lag * 1000)

    task = asyncio.create_task(watch(), name="loop-watch")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "node": request.app[keys.SETTINGS].node_id})


async def readyz(request: web.Request) -> web.Response:
    settings = request.app[keys.SETTINGS]
    state = request.app[keys.HEALTH]
    max_age = settings.health_interval * 3 + settings.database_timeout
    ready = state.ready(time.monotonic(), max_age)
    checks = {name: problem or "ok" for name, problem in state.problems.items()}
    if not ready and all(p is None for p in state.problems.values()):
        checks["monitor"] = "no recent health check"
    return web.json_response(
        {"status": "ready" if ready else "unready", "node": settings.node_id, "checks": checks},
        status=200 if ready else 503,
    )


async def metrics(request: web.Request) -> web.Response:
    return web.Response(
        body=request.app[keys.METRICS].render(),
        headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
