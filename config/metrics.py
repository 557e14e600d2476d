"""Prometheus metrics of one node, on a registry of its own (no process-global state)."""

from __future__ import annotations

import asyncio
import ctypes
import sys
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.http_requests = Counter(
            "tribune_http_requests_total",
            "HTTP requests served",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.http_seconds = Histogram(
            "tribune_http_request_duration_seconds",
            "HTTP request handling time",
            ["route"],
            registry=self.registry,
        )
        # Each request's children, found once: `labels()` takes a lock and builds a key each call.
        self._served: dict[tuple[str, str, str], Any] = {}
        self._timed: dict[str, Any] = {}
        self.dependency_up = Gauge(
            "tribune_dependency_up",
            "1 while the dependency answers health checks",
            ["dependency"],
            registry=self.registry,
        )
        self.roster_rows = Counter(
            "tribune_roster_rows_total",
            "Roster rows seen by imports",
            ["outcome"],
            registry=self.registry,
        )

        self.bus_publish_failures = Counter(
            "tribune_bus_publish_failures_total",
            "Doorbell messages Redis did not take (gave up)",
            ["kind"],
            registry=self.registry,
        )
        self.tally_checks = Counter(
            "tribune_tally_checks_total",
            "Closed polls whose live tallies were compared with the ledger's count",
            ["outcome"],
            registry=self.registry,
        )
        self.slow_client_drops = Counter(
            "tribune_slow_client_drops_total", "Clients dropped for not reading", registry=self.registry
        )
        self.deliveries = Counter(
            "tribune_event_deliveries_total",
            "Events delivered to clients (one per client per event)",
            registry=self.registry,
        )
        self.fanout_delay = Histogram(
            "tribune_fanout_delay_seconds",
            "From an event reaching this node to its frame being written to every client of the room",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.5, 1, 2.5, 5),
            registry=self.registry,
        )
        self.fanout_flush = Histogram(
            "tribune_fanout_flush_seconds",
            "Time spent writing one room's batch to all its clients (not the work run between its slices)",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
            registry=self.registry,
        )
        self.fanout_frames = Counter(
            "tribune_fanout_frames_total",
            "Frames the fan-out wrote to clients (one per client per tick with something new)",
            registry=self.registry,
        )
        self.vote_batch = Histogram(
            "tribune_vote_batch_size",
            "Votes written per group commit",
            buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2000),
            registry=self.registry,
        )
        self.live_clients = Gauge(
            "tribune_live_clients", "Socket.IO clients connected to this node", registry=self.registry
        )
        self.feed_frames = Counter(
            "tribune_feed_frames_total",
            "Video frames received from publishers (each encoded once)",
            ["feed"],
            registry=self.registry,
        )
        self.keyframes = Counter(
            "tribune_keyframes_total",
            "Keyframes the feed encoders made, on their interval or asked for by viewers",
            ["cause"],
            registry=self.registry,
        )
        self.whep_viewers = Gauge(
            "tribune_whep_viewers", "WHEP viewers served by this node", registry=self.registry
        )
        self.feeds_live = Gauge("tribune_feeds_live", "Feeds this node ingests", registry=self.registry)
        self.loop_lag = Histogram(
            "tribune_event_loop_lag_seconds",
            "How late the event loop ran a timer due every 100 ms (a blocked loop shows here)",
            buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=self.registry,
        )
        self.loop_stalls = Counter(
            "tribune_event_loop_stalls_total",
            "Times the event loop was blocked for longer than 100 ms (each is also logged)",
            registry=self.registry,
        )
        self.tasks = Gauge("tribune_asyncio_tasks", "asyncio tasks alive in the node", registry=self.registry)
        self.tasks.set_function(_tasks)
        self.rooms = Gauge("tribune_rooms", "Sessions with clients on this node", registry=self.registry)
        # process_resident_memory_bytes, process_open_fds, process_cpu_seconds_total …
        ProcessCollector(registry=self.registry)
        # python_gc_collections_total{generation}, python_gc_objects_collected_total …
        GCCollector(registry=self.registry)
        self.registry.register(HeldMemory())

    def served(self, method: str, route: str, status: int, seconds: float) -> None:
        """One HTTP request counted and timed. Methods outside the usual ones (WebDAV's, TRACE:
        aiohttp's parser lets every registered method through) count as `other`."""
        key = (method if method in HTTP_METHODS else "other", route, str(status))
        if (counter := self._served.get(key)) is None:
            counter = self._served[key] = self.http_requests.labels(*key)
        if (timer := self._timed.get(route)) is None:
            timer = self._timed[route] = self.http_seconds.labels(route)
        counter.inc()
        timer.observe(seconds)

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))


def _tasks() -> float:
    try:
        return float(len(asyncio.all_tasks()))
    except RuntimeError:  # scraped outside the node's loop
        return 0.0


class HeldMemory(Collector):
    """What the node holds beside what the kernel counts: RSS that grows while these stay
    flat is memory freed but not returned (fragmentation), not a leak. One `mallinfo2`
    call per scrape."""

    def __init__(self) -> None:
        self.mallinfo = _mallinfo()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(
            "tribune_python_allocated_blocks", "Memory blocks Python has allocated", sys.getallocatedblocks()
        )
        if self.mallinfo is not None:
            info = self.mallinfo()
            yield GaugeMetricFamily(
                "tribune_malloc_in_use_bytes", "Bytes in use in the C heap (glibc)", info.in_use
            )
            yield GaugeMetricFamily(
                "tribune_malloc_free_bytes",
                "Bytes free inside the C heap, held but not returned to the system (glibc)",
                info.fordblks,
            )


class MallInfo(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]

    @property
    def in_use(self) -> int:
        return int(self.uordblks + self.hblkhd)  # small chunks in use + chunks mapped on their own


def _mallinfo() -> Callable[[], MallInfo] | None:
    """glibc's `mallinfo2` (glibc 2.33 and later); None on other C libraries."""
    try:
        fn = ctypes.CDLL(None).mallinfo2
    except (OSError, AttributeError):
        return None
    fn.restype = MallInfo
    fn.argtypes = []
    return fn
