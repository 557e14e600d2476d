"""`tribune bench comments`: comment fan-out under load, beside a stock baseline.

The run starts its own embedded PostgreSQL and Valkey and K nodes (pinned to CPU 0 when
the machine has two or more), connects N lean viewers (interaction.loadgen, pinned to the
other CPUs), and publishes R comments a second through the moderation path: a writer sends,
a moderator approves, both in a process of their own (interaction.commentgen). Latency runs
from the approval's send to the event reaching a viewer's socket, sampled on every
`sample_every`-th viewer; every viewer checks its own seqs. The baseline — stock
python-socketio, one `emit(room=…)` per event — then gets the same viewers and rate.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import json
import os
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import psutil

from config.auth import Role, mint_token
from config.services import EmbeddedServices, free_port
from config.settings import Settings
from interaction.loadgen import Tally, ViewerProtocol, close_client, connect_viewers
from recorder.migrate import migrate

SESSION = "bench"


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


CLIENT_CPUS = set(range(1, os.cpu_count() or 2))  # load generators: every CPU but the servers'


def pin_to(cpus: set[int]) -> Callable[[], None] | None:
    """A function that pins the calling process to `cpus` (None on a one-CPU machine)."""
    available = set(range(os.cpu_count() or 1))
    if len(available) < 2 or not cpus <= available:
        return None

    def pin() -> None:
        os.sched_setaffinity(0, cpus)
        raise_fd_limit()

    return pin


def spawn_server(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """A server process on CPU 0 (where there are two or more), its output in `log`."""
    with log.open("wb") as out:
        return subprocess.Popen(command, env=env, stdout=out, stderr=out, preexec_fn=pin_to({0}))


def pin_self() -> None:
    pin = pin_to(CLIENT_CPUS)
    if pin is not None:
        pin()


def percentiles(samples: list[float]) -> dict[str, float | None]:
    if not samples:
        return {"p50": None, "p95": None, "p99": None}
    q = statistics.quantiles(samples, n=100, method="inclusive") if len(samples) > 1 else samples * 99
    return {"p50": round(q[49] * 1000, 1), "p95": round(q[94] * 1000, 1), "p99": round(q[98] * 1000, 1)}


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
    return total


def start_nodes(
    root: Path,
    nodes: int,
    *,
    database_url: str,
    redis_url: str,
    secret: str,
    env: dict[str, str],
    log_prefix: str,
) -> tuple[list[subprocess.Popen[bytes]], list[str]]:
    """K `tribune serve` processes on the given services (pinned to CPU 0), with `env` on
    top of the shared settings; their URLs."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("TRIBUNE_")}
    tribune = str(Path(sys.executable).with_name("tribune"))
    procs, urls = [], []
    for k in range(nodes):
        port = free_port()
        node_env = {
            **base,
            "TRIBUNE_DATABASE_URL": database_url,
            "TRIBUNE_REDIS_URL": redis_url,
            "TRIBUNE_JWT_SECRET": secret,
            "TRIBUNE_NODE_ID": f"bench-{k}",
            "TRIBUNE_LOG_LEVEL": "WARNING",
            **env,
        }
        command = [tribune, "serve", "--port", str(port), "--data-dir", str(root / f"{log_prefix}node-{k}")]
        procs.append(spawn_server(command, node_env, root / f"{log_prefix}node-{k}.log"))
        urls.append(f"http://127.0.0.1:{port}")
    return procs, urls


async def spawn_job(module: str, job: dict[str, Any], **options: Any) -> asyncio.subprocess.Process:
    """A load-generator process, `python -m <module>` with its stdin and stdout piped, given
    its job as one JSON line; `options` go to `create_subprocess_exec` (limit, env, …)."""
    gen = await asyncio.create_subprocess_exec(
        sys.executable, "-m", module, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, **options
    )
    assert gen.stdin is not None
    gen.stdin.write(json.dumps(job).encode() + b"\n")
    await gen.stdin.drain()
    return gen


async def run_generators(
    generators: list[asyncio.subprocess.Process], go: str, timeout: float
) -> list[dict[str, Any]]:
    """Starts every (already connected) load generator with `go <go>` on its stdin and
    collects the one JSON line each prints when it is done."""
    for gen in generators:
        assert gen.stdin is not None
        gen.stdin.write(f"go {go}\n".encode())
        await gen.stdin.drain()
    outs = []
    for gen in generators:
        assert gen.stdout is not None
        outs.append(json.loads(await asyncio.wait_for(gen.stdout.readline(), timeout)))
    return outs


def stop_servers(procs: list[subprocess.Popen[bytes]], seconds: float = 30) -> None:
    """SIGTERM every server, then wait for each (killing one that does not stop)."""
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(seconds)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def wait_http(url: str, seconds: float = 60) -> None:
    import aiohttp

    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(url) as r:
                    if r.status < 500:
                        return
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


def _report(
    label: str,
    clients: int,
    nodes: int,
    published: dict[str, Any],
    tally: Tally,
    viewers: list[ViewerProtocol],
    final_seq: int,
    elapsed: float,
    cpu: float,
) -> dict[str, Any]:
    """The figures of one system's run; `published` is the publisher's report."""
    sent = {int(k): float(v) for k, v in published["sent"]}
    missing = sum(max(0, final_seq - v.seq) for v in viewers)
    deliveries = tally.events
    return {
        "system": label,
        "clients": clients,
        "connected": tally.connected,
        "nodes": nodes,
        "published": published["published"],
        "deliveries": deliveries,
        "deliveries_per_s": round(deliveries / elapsed, 1) if elapsed else 0,
        "deliveries_per_cpu_s": round(deliveries / cpu, 1) if cpu else None,
        "latency_ms": percentiles(tally.latencies(sent)),
        "handled_latency_ms": percentiles(tally.latencies(sent, handled=True)),
        "lost": tally.lost + missing,
        "duplicated": tally.duplicated,
        "out_of_order": tally.out_of_order,
        "server_cpu_s": round(cpu, 2),
        "seconds": round(elapsed, 1),
    }


async def _viewers(
    urls: list[str],
    auths: list[dict[str, Any]],
    sample_every: int,
    progress: Callable[[str, int, int], None],
) -> tuple[Tally, list[ViewerProtocol]]:
    tally = Tally()
    viewers = await connect_viewers(
        urls,
        auths,
        tally,
        sample_every=sample_every,
        progress=lambda done: progress("connecting", done, len(auths)),
    )
    # The viewers live until the end: out of the collector's way, as the node does with its own.
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)
    return tally, viewers


async def start_publisher(job: dict[str, Any]) -> asyncio.subprocess.Process:
    """The writer and moderator (or the baseline's publisher) in their own process
    (interaction.commentgen), connected and waiting for `go`. Like PostgreSQL and Valkey it
    may run on any CPU: pinned beside the viewers, its approvals would wait for their core."""
    gen = await spawn_job(
        "interaction.commentgen",
        job,
        limit=64 * 1024 * 1024,  # the report is one line with every approval's time
        preexec_fn=pin_to(set(range(os.cpu_count() or 1))),
    )
    assert gen.stdout is not None
    line = await asyncio.wait_for(gen.stdout.readline(), 60)
    if line.strip() != b"ready":
        raise RuntimeError(f"the comment publisher failed to connect: {line!r}")
    return gen


async def publish(
    gen: asyncio.subprocess.Process, duration: float, label: str, progress: Callable[[str, int, int], None]
) -> dict[str, Any]:
    """Starts the publisher and waits for its report: {"attempted", "published", "sent"}."""
    began = time.monotonic()
    report = asyncio.ensure_future(run_generators([gen], f"{time.time():.3f}", duration + 300))
    while not report.done():
        progress(label, min(int(time.monotonic() - began), int(duration)), int(duration))
        await asyncio.wait([report], timeout=1.0)
    await gen.wait()
    return report.result()[0]


async def _scrape(urls: list[str]) -> dict[str, Any]:
    """The nodes' /metrics that the report uses, summed over the nodes: histograms as
    {name: {upper bound: count}}, counters and sums as {name: value}."""
    import aiohttp

    histograms = ("tribune_fanout_delay_seconds", "tribune_event_loop_lag_seconds")
    values = (
        "tribune_fanout_flush_seconds_sum",
        "tribune_fanout_frames_total",
        "tribune_event_loop_stalls_total",
    )
    scraped: dict[str, Any] = {name: {} for name in histograms} | {name: 0.0 for name in values}
    async with aiohttp.ClientSession() as http:
        for url in urls:
            async with http.get(url + "/metrics") as r:
                for line in (await r.text()).splitlines():
                    name, value = line.split("{", 1)[0].split(" ", 1)[0], line.rsplit(" ", 1)[-1]
                    if name.endswith("_bucket") and name[: -len("_bucket")] in histograms:
                        bound = line.split('le="', 1)[1].split('"', 1)[0]
                        upper = float("inf") if bound == "+Inf" else float(bound)
                        buckets = scraped[name[: -len("_bucket")]]
                        buckets[upper] = buckets.get(upper, 0.0) + float(value)
                    elif name in values:
                        scraped[name] += float(value)
    return scraped


def _node_metrics(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """The nodes' own view of the publishing window, from /metrics scraped before and after.

    `node_fanout_delay_ms`: from an event reaching a node to its frame being written to every
    client (upper bounds of the histogram buckets holding p50 and p99).
    `node_us_per_frame`: the nodes' time per frame their passes wrote (encoding, the
    per-client checks and the kernel's send), the mean over the window; a pass over a node's
    clients takes about this times their number, so it says how fast this machine's loopback
    is today.
    `node_loop_lag_ms`: how late the loop ran a timer due every 100 ms (bucket upper bounds),
    and `node_loop_stalls` the times it was over 100 ms late: every client waited that long."""

    def upper_for(name: str, q: float) -> float | None:
        buckets = {b: n - before[name].get(b, 0.0) for b, n in after[name].items()}
        total = buckets.get(float("inf"), 0.0)
        if not total:
            return None
        return next((round(b * 1000, 1) for b in sorted(buckets) if buckets[b] >= q * total), None)

    def delta(name: str) -> float:
        return float(after[name] - before[name])

    frames = delta("tribune_fanout_frames_total")
    delay, lag = "tribune_fanout_delay_seconds", "tribune_event_loop_lag_seconds"
    return {
        "node_fanout_delay_ms": {"p50_at_most": upper_for(delay, 0.5), "p99_at_most": upper_for(delay, 0.99)},
        "node_us_per_frame": round(delta("tribune_fanout_flush_seconds_sum") / frames * 1e6, 2)
        if frames
        else None,
        "node_loop_lag_ms": {"p50_at_most": upper_for(lag, 0.5), "p99_at_most": upper_for(lag, 0.99)},
        "node_loop_stalls": int(delta("tribune_event_loop_stalls_total")),
    }


class Churn:
    """Viewers that join and leave half a second later, `per_second` of them, while it runs:
    presence changes as it does in a session people come and go from. Official
    python-socketio clients, in the load generator's process."""

    def __init__(self, url: str, settings: Settings, per_second: float) -> None:
        self.url, self.settings, self.per_second = url, settings, per_second
        self.joined = self.failed = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.per_second > 0:
            self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> dict[str, Any]:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        return {"per_s": self.per_second, "joined": self.joined, "failed": self.failed}

    async def _visit(self, n: int) -> None:
        import socketio

        client = socketio.AsyncClient(serializer="msgpack", reconnection=False)
        token = mint_token(self.settings, rep=f"J{n}", ttl=3600)
        try:
            await client.connect(
                self.url,
                auth={"token": token, "session": SESSION, "since": None},
                transports=["websocket"],
                wait_timeout=10,
            )
            self.joined += 1
            await asyncio.sleep(0.5)
        except socketio.exceptions.ConnectionError:
            self.failed += 1
        finally:
            await close_client(client)

    async def _run(self) -> None:
        visits: set[asyncio.Task[None]] = set()
        try:
            for n in itertools.count(1):
                visit = asyncio.ensure_future(self._visit(n))
                visits.add(visit)
                visit.add_done_callback(visits.discard)
                await asyncio.sleep(1 / self.per_second)
        finally:
            for visit in visits:
                visit.cancel()
            await asyncio.gather(*visits, return_exceptions=True)


async def _drain(viewers: list[ViewerProtocol], final_seq: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if all(v.seq >= final_seq for v in viewers if v.transport and not v.transport.is_closing()):
            return
        await asyncio.sleep(0.1)


async def run_tribune(
    root: Path,
    *,
    clients: int,
    nodes: int,
    rate: float,
    duration: float,
    sample_every: int,
    progress: Callable[[str, int, int], None],
    churn: float = 0.0,
) -> dict[str, Any]:
    services = EmbeddedServices(root / "services", postgres=True, redis=True)
    database_url, redis_url = await asyncio.to_thread(services.start)
    # The servers stay free to use any CPU; the nodes take CPU 0 and this generator the rest.
    pin_self()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        conn = await asyncpg.connect(database_url)
        await migrate(conn)
        await conn.execute(
            """INSERT INTO sessions (id, kind, title, scheduled_start, scheduled_end, epoch, created_by,
                                     audience, default_tier, moderation, state)
               VALUES ($1, 'special_inquiry', 'bench', now(), now() + interval '3 hours', 'b1', 'bench',
                       'public', 'viewer', 'pre', 'live')""",
            SESSION,
        )
        await conn.execute("INSERT INTO representatives (id, name, level) VALUES ('W1', 'writer', 'city')")
        await conn.execute(
            "INSERT INTO session_participants (session_id, rep_id, tier) VALUES ($1, 'W1', 'voting')", SESSION
        )
        secret = secrets.token_urlsafe(40)
        settings = Settings(jwt_secret=secret)
        procs, urls = start_nodes(
            root,
            nodes,
            database_url=database_url,
            redis_url=redis_url,
            secret=secret,
            env={"TRIBUNE_COMMENT_BURST": "1000000", "TRIBUNE_DATABASE_POOL_MAX": "30"},
            log_prefix="",
        )
        for url in urls:
            await wait_http(url + "/readyz")
        auths = [
            {"token": mint_token(settings, rep=f"B{i}", ttl=3 * 3600), "session": SESSION, "since": None}
            for i in range(clients)
        ]
        tally, viewers = await _viewers(urls, auths, sample_every, progress)
        tokens = [
            mint_token(settings, rep=rep, roles=roles, ttl=3 * 3600)
            for rep, roles in (("W1", (Role.REPRESENTATIVE,)), ("M1", (Role.MODERATOR,)))
        ]
        job = {"mode": "tribune", "url": urls[0], "tokens": tokens, "session": SESSION}
        gen = await start_publisher({**job, "rate": rate, "duration": duration, "wait": 60})
        pids = [p.pid for p in procs]
        scraped = await _scrape(urls)
        cpu0, t0, events0, own0 = (
            cpu_seconds(pids),
            time.monotonic(),
            tally.events,
            cpu_seconds([os.getpid()]),
        )
        churning = Churn(urls[0], settings, churn)
        churning.start()
        out = await publish(gen, duration, "publishing", progress)
        churned = await churning.stop()
        final_seq = int(await conn.fetchval("SELECT last_seq FROM sessions WHERE id = $1", SESSION))
        await _drain(viewers, final_seq, 30)
        elapsed, cpu = time.monotonic() - t0, cpu_seconds(pids) - cpu0
        tally.events -= events0
        report = _report("tribune", clients, nodes, out, tally, viewers, final_seq, elapsed, cpu)
        report["load_generator_cpu_s"] = round(cpu_seconds([os.getpid()]) - own0 + out["cpu_s"], 2)
        report.update(_node_metrics(scraped, await _scrape(urls)))
        if churn:
            report["churn"] = churned
        for viewer in viewers:
            viewer._close()
        await conn.close()
        return report
    finally:
        stop_servers(procs)
        await asyncio.to_thread(services.stop)


async def run_baseline(
    root: Path,
    *,
    clients: int,
    rate: float,
    duration: float,
    sample_every: int,
    progress: Callable[[str, int, int], None],
) -> dict[str, Any]:
    pin_self()
    port = free_port()
    proc = spawn_server(
        [sys.executable, "-m", "interaction.baseline", str(port)], dict(os.environ), root / "baseline.log"
    )
    try:
        url = f"http://127.0.0.1:{port}"
        await wait_http(url + "/socket.io/?EIO=4&transport=polling")
        auths = [{"token": "-", "session": SESSION, "since": None} for _ in range(clients)]
        tally, viewers = await _viewers([url], auths, sample_every, progress)
        job = {"mode": "baseline", "url": url, "session": SESSION}
        gen = await start_publisher({**job, "rate": rate, "duration": duration, "wait": 30})
        cpu0, t0, events0, own0 = (
            cpu_seconds([proc.pid]),
            time.monotonic(),
            tally.events,
            cpu_seconds([os.getpid()]),
        )
        out = await publish(gen, duration, "baseline", progress)
        n = int(out["attempted"])
        await _drain(viewers, n, 30)
        elapsed, cpu = time.monotonic() - t0, cpu_seconds([proc.pid]) - cpu0
        tally.events -= events0
        report = _report(
            "baseline: python-socketio emit(room) per event",
            clients,
            1,
            out,
            tally,
            viewers,
            n,
            elapsed,
            cpu,
        )
        report["load_generator_cpu_s"] = round(cpu_seconds([os.getpid()]) - own0 + out["cpu_s"], 2)
        for viewer in viewers:
            viewer._close()
        return report
    finally:
        stop_servers([proc], 15)


async def bench_comments(
    *,
    clients: int,
    nodes: int,
    rate: float,
    duration: float,
    baseline: bool,
    sample_every: int,
    progress: Callable[[str, int, int], None],
    churn: float = 0.0,
) -> dict[str, Any]:
    raise_fd_limit()
    root = Path(tempfile.mkdtemp(prefix="tb-"))
    try:
        result: dict[str, Any] = {"benchmark": "comments", "rate": rate, "duration_s": duration}
        result["tribune"] = await run_tribune(
            root,
            clients=clients,
            nodes=nodes,
            rate=rate,
            duration=duration,
            sample_every=sample_every,
            progress=progress,
            churn=churn,
        )
        if baseline:
            result["baseline"] = await run_baseline(
                root,
                clients=clients,
                rate=rate,
                duration=duration,
                sample_every=sample_every,
                progress=progress,
            )
            ours, theirs = (
                result["tribune"]["deliveries_per_cpu_s"],
                result["baseline"]["deliveries_per_cpu_s"],
            )
            if ours and theirs:
                result["deliveries_per_cpu_s_vs_baseline"] = round(ours / theirs, 1)
        return result
    finally:
        shutil.rmtree(root, ignore_errors=True)
