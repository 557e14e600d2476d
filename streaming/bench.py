"""`tribune bench whep`: N WHEP viewers of one test-pattern feed, Tribune (one encoder per
feed) beside the naive aiortc relay (one encoder per viewer), in the same run.

Everything stays on 127.0.0.1. Servers run on CPU 0, the publisher and the viewer
generators on the other CPUs. A viewer is frozen when it receives fewer than 90% of the
frames the publisher sent in the measured window. The baseline is measured on a ladder of
viewer counts until it freezes viewers; `viewers_per_core` compares what each holds
without freezing anyone, per core of server CPU.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from config.auth import Role, mint_token
from config.services import EmbeddedServices, free_port
from config.settings import Settings
from interaction.bench import (
    CLIENT_CPUS,
    cpu_seconds,
    pin_to,
    run_generators,
    spawn_job,
    spawn_server,
    start_nodes,
    stop_servers,
    wait_http,
)

FPS = 30
PER_GENERATOR = 100
FEED = "bench"
SESSION = "bench-video"


async def create_feed(http: aiohttp.ClientSession, url: str, admin: dict[str, str], *, kind: str) -> str:
    """The benchmark's public session and its WHIP feed; returns the stream key."""
    spec = {
        "id": SESSION,
        "kind": kind,
        "title": "bench",
        "audience": "public",  # open to anyone: no signed HLS URLs
        "scheduled_start": "2026-12-01T09:00:00+08:00",
        "scheduled_end": "2026-12-01T11:00:00+08:00",
    }
    async with http.post(f"{url}/api/sessions", json=spec, headers=admin) as r:
        assert r.status == 201, await r.text()
    async with http.post(f"{url}/api/feeds", json={"id": FEED, "session": SESSION}, headers=admin) as r:
        assert r.status == 201, await r.text()
        return str((await r.json())["key"])


def _tribune_cmd() -> str:
    return str(Path(sys.executable).with_name("tribune"))


def _start_publisher(url: str, key: str, log: Path) -> subprocess.Popen[bytes]:
    command = [
        _tribune_cmd(),
        "feed",
        "test-pattern",
        "--url",
        url,
        "--key",
        key,
        "--host-address",
        "127.0.0.1",
    ]
    with log.open("wb") as out:
        return subprocess.Popen(command, stdout=out, stderr=out, preexec_fn=pin_to(CLIENT_CPUS))


def _pin_generator() -> Callable[[], None]:
    """Viewer generators yield to the publisher: a starved publisher would send fewer frames."""
    pin = pin_to(CLIENT_CPUS)

    def lower() -> None:
        if pin is not None:
            pin()
        os.nice(10)

    return lower


async def _watch(
    url: str,
    token: str,
    viewers: int,
    seconds: float,
    decode: int,
    pid: int,
    sent: Callable[[], Awaitable[int]],
) -> dict[str, Any]:
    """Run the generators: connect `viewers`, count frames for `seconds`; merged results,
    with the server's (`pid`) CPU seconds and the frames the publisher sent (`sent()`, as
    the server counts them) over the counted window."""
    count = max(1, -(-viewers // PER_GENERATOR))
    shares = [viewers // count + (1 if k < viewers % count else 0) for k in range(count)]
    generators = []
    for k, share in enumerate(shares):
        job = {"url": url, "token": token, "viewers": share, "decode": decode if k == 0 else 0}
        generators.append(await spawn_job("streaming.viewgen", job, preexec_fn=_pin_generator()))
    connected = 0
    for gen in generators:
        assert gen.stdout is not None
        line = (await asyncio.wait_for(gen.stdout.readline(), 600)).decode().split()
        if not line or line[0] != "ready":
            raise RuntimeError(f"a viewer generator failed while connecting: {line}")
        connected += int(line[1])
    await asyncio.sleep(2.0)  # let the last joiners reach their first keyframe
    cpu_before, started, sent_before = cpu_seconds([pid]), time.monotonic(), await sent()
    outs = await run_generators(generators, str(seconds), 600)
    cpu, took = cpu_seconds([pid]) - cpu_before, time.monotonic() - started
    frames_sent = await sent() - sent_before
    rss = _rss_mb(pid)
    for gen in generators:
        await gen.wait()
    frames = [f for o in outs for f in o["frames"]]
    return {
        "connected": connected,
        "frames": frames,
        "decoded": [d for o in outs for d in o["decoded"]],
        "first_keyframe": all(k for o in outs for k in o["first_keyframe"]),
        "still_connected": sum(o["still_connected"] for o in outs),
        "errors": [e for o in outs for e in o["errors"]][:5],
        "generators_cpu": sum(o["cpu_s"] for o in outs),
        "cpu": cpu,
        "took": took,
        "sent": frames_sent,
        "rss": rss,
    }


def _summary(viewers: int, watched: dict[str, Any], seconds: float) -> dict[str, Any]:
    sent = watched["sent"]
    frames = watched["frames"]
    return {
        "viewers": viewers,
        "connected": watched["connected"],
        "frames_sent": sent,
        "frames_expected": round(FPS * seconds),
        "frames_received": {
            "min": min(frames) if frames else 0,
            "median": statistics.median(frames) if frames else 0,
        },
        "frozen_viewers": sum(f < 0.9 * sent for f in frames) + (viewers - len(frames)),
        "decoded_sample": watched["decoded"],
        "all_started_at_keyframe": watched["first_keyframe"],
        "server_cpu_s": round(watched["cpu"], 2),
        "server_cores": round(watched["cpu"] / watched["took"], 3),
        "server_rss_mb": round(watched["rss"], 1),
        # The viewers' processes, beside the publisher on the other CPU: near 1 they, not the
        # server, are what freezes viewers.
        "load_generator_cores": round(watched["generators_cpu"] / watched["took"], 3),
        "errors": watched["errors"],
    }


def _rss_mb(pid: int) -> float:
    return float(psutil.Process(pid).memory_info().rss) / 2**20


async def _wait_until(check: Callable[[], Any], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.25)
    raise RuntimeError(f"timed out waiting for {what}")


async def run_tribune(
    root: Path, viewers: int, seconds: float, progress: Callable[[str], None]
) -> dict[str, Any]:
    services = EmbeddedServices(root / "services", postgres=True, redis=True)
    database_url, redis_url = await asyncio.to_thread(services.start)
    secret = secrets.token_urlsafe(40)
    settings = Settings(jwt_secret=secret)
    admin = {"Authorization": "Bearer " + mint_token(settings, rep="A1", roles=[Role.ADMIN])}
    viewer_token = mint_token(settings, rep="V1", roles=[Role.REPRESENTATIVE], ttl=3600)
    procs, urls = start_nodes(
        root,
        1,
        database_url=database_url,
        redis_url=redis_url,
        secret=secret,
        env={"TRIBUNE_WEBRTC_HOST_ADDRESSES": "127.0.0.1", "TRIBUNE_WHEP_MAX_VIEWERS": str(viewers + 10)},
        log_prefix="tribune-",
    )
    publisher: subprocess.Popen[bytes] | None = None
    url = urls[0]
    try:
        await wait_http(url + "/readyz")
        async with aiohttp.ClientSession() as http:
            key = await create_feed(http, url, admin, kind="lecture")
            publisher = _start_publisher(f"{url}/whip/{FEED}", key, root / "tribune-publisher.log")

            async def live() -> bool:
                async with http.get(f"{url}/api/feeds/{FEED}", headers=admin) as r:
                    return r.status == 200 and (await r.json())["feed"]["state"] == "live"

            await _wait_until(live, 30, "the test pattern to go live")
        progress(f"tribune: {viewers} viewers")

        async def sent() -> int:
            async with aiohttp.ClientSession() as http, http.get(f"{url}/metrics") as r:
                text = await r.text()
            found = re.search(rf'^tribune_feed_frames_total{{feed="{FEED}"}} ([0-9.e+]+)$', text, re.M)
            return int(float(found[1])) if found else 0

        watched = await _watch(f"{url}/whep/{FEED}", viewer_token, viewers, seconds, 3, procs[0].pid, sent)
        return _summary(viewers, watched, seconds)
    finally:
        if publisher is not None:
            publisher.terminate()
            publisher.wait(30)
        stop_servers(procs)
        await asyncio.to_thread(services.stop)


async def run_baseline(
    root: Path, ladder: list[int], seconds: float, progress: Callable[[str], None]
) -> list[dict[str, Any]]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = spawn_server(
        [sys.executable, "-m", "streaming.baseline", "--port", str(port)],
        dict(os.environ),
        root / "baseline.log",
    )
    publisher: subprocess.Popen[bytes] | None = None
    rungs = []
    try:
        await wait_http(url + "/status")
        publisher = _start_publisher(f"{url}/whip/{FEED}", "-", root / "baseline-publisher.log")
        async with aiohttp.ClientSession() as http:

            async def live() -> bool:
                async with http.get(f"{url}/status") as r:
                    return bool((await r.json())["live"])

            await _wait_until(live, 30, "the baseline's publisher")

        async def sent() -> int:
            async with aiohttp.ClientSession() as http, http.get(f"{url}/status") as r:
                return int((await r.json())["frames"])

        for count in ladder:
            progress(f"baseline: {count} viewers")
            watched = await _watch(f"{url}/whep/{FEED}", "-", count, seconds, 1, server.pid, sent)
            rung = _summary(count, watched, seconds)
            rungs.append(rung)
            if rung["frozen_viewers"]:
                break
            await asyncio.sleep(2.0)
    finally:
        if publisher is not None:
            publisher.terminate()
            publisher.wait(30)
        stop_servers([server])
    return rungs


async def bench_whep(
    *, viewers: int, seconds: float, baseline: bool, progress: Callable[[str], None]
) -> dict[str, Any]:
    root = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="tribune-bench-whep-"))
    result: dict[str, Any] = {"viewers": viewers, "seconds": seconds, "fps": FPS}
    await asyncio.to_thread((root / "t").mkdir)
    tribune = result["tribune"] = await run_tribune(root / "t", viewers, seconds, progress)
    if baseline:
        await asyncio.to_thread((root / "b").mkdir)
        rungs = await run_baseline(root / "b", [2, 4, 6, 8, 12, 16, 24, 32], seconds, progress)
        held = [r for r in rungs if not r["frozen_viewers"]]
        best = held[-1] if held else None
        result["baseline"] = {"ladder": rungs, "max_viewers_unfrozen": best["viewers"] if best else 0}
        held_all = tribune["server_cores"] and not tribune["frozen_viewers"]
        per_core_t = viewers / tribune["server_cores"] if held_all else None
        per_core_b = best["viewers"] / best["server_cores"] if best and best["server_cores"] else None
        result["viewers_per_core"] = {
            "tribune": round(per_core_t, 1) if per_core_t else None,
            "baseline": round(per_core_b, 1) if per_core_b else None,
            "ratio": round(per_core_t / per_core_b, 1) if per_core_t and per_core_b else None,
        }
    await asyncio.to_thread(shutil.rmtree, root, True)
    return result
