"""One load-generator process of `tribune bench votes`: connects its share of voters, waits
for the start time, casts one vote per voter at its share of the rate (retrying with the
same key until acknowledged) and prints what it saw as JSON.

    python -m interaction.votegen   (reads its job as one JSON line on stdin, then "go T")

Several run side by side because one process may hold fewer sockets than the benchmark needs.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any
from urllib.parse import urlsplit

from config.auth import mint_token
from config.loop import run as run_loop
from config.settings import Settings
from interaction.loadgen import FrameCache, Tally, ViewerProtocol


async def _connect(url: str, auth: dict[str, Any], tally: Tally, cache: FrameCache) -> ViewerProtocol:
    loop = asyncio.get_running_loop()
    parts = urlsplit(url)
    for attempt in range(20):
        ready: asyncio.Future[bool] = loop.create_future()
        protocol = ViewerProtocol(parts.netloc, auth, tally, cache, False, ready)
        try:
            await loop.create_connection(
                lambda p=protocol: p,  # type: ignore[misc]
                parts.hostname or "127.0.0.1",
                parts.port or 80,
            )
            if await asyncio.wait_for(ready, 60):
                return protocol
        except (OSError, TimeoutError):
            pass
        await asyncio.sleep(0.2 * (attempt + 1))
    raise RuntimeError(f"could not connect a voter to {url}")


async def main() -> None:
    job = json.loads(sys.stdin.readline())
    settings = Settings(jwt_secret=job["secret"])
    tally, cache = Tally(), FrameCache()
    urls: list[str] = job["urls"]
    voters: list[tuple[int, str, dict[str, Any]]] = []
    for index, rep in job["voters"]:
        token = mint_token(settings, rep=rep, ttl=6 * 3600)
        voters.append((index, rep, {"token": token, "session": job["session"], "since": None}))
    gate = asyncio.Semaphore(100)
    conns: dict[int, ViewerProtocol] = {}

    async def connect(index: int, auth: dict[str, Any]) -> None:
        async with gate:
            conns[index] = await _connect(urls[index % len(urls)], auth, tally, cache)

    await asyncio.gather(*(connect(index, auth) for index, _, auth in voters))
    print("ready", flush=True)
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    start = float(line.split()[1])
    cpu0 = time.process_time()
    latencies: list[float] = []
    timeline: list[tuple[float, float]] = []  # (seconds after the start it was sent, latency)
    statuses: dict[str, int] = {}
    refusals: dict[str, int] = {}
    retries = 0
    reconnects = 0

    async def vote(index: int, rep: str, auth: dict[str, Any]) -> None:
        nonlocal retries, reconnects
        await asyncio.sleep(max(0.0, start + index / job["rate"] - time.time()) if job["rate"] else 0.0)
        cast = {
            "poll": job["poll"],
            "answers": {str(job["question"]): job["options"][index % len(job["options"])]},
            "key": f"{rep}-1",
        }
        sent, sent_at = time.perf_counter(), time.time()
        while True:
            try:
                ack = await asyncio.wait_for(conns[index].call("vote.cast", cast), 30)
            except (ConnectionError, TimeoutError):
                reconnects += 1
                conns[index]._close()
                conns[index] = await _connect(urls[index % len(urls)], auth, tally, cache)
                continue
            if ack.get("ok"):
                latencies.append(time.perf_counter() - sent)
                timeline.append((round(sent_at - start, 2), round(latencies[-1], 3)))
                statuses[ack["status"]] = statuses.get(ack["status"], 0) + 1
                return
            code = ack["error"]["code"]
            refusals[code] = refusals.get(code, 0) + 1
            if code not in ("unavailable", "internal", "rate_limited"):
                return  # refused for good: counted, not retried
            retries += 1
            await asyncio.sleep(0.2)

    began = time.perf_counter()
    await asyncio.gather(*(vote(index, rep, auth) for index, rep, auth in voters))
    elapsed = time.perf_counter() - began
    out = {
        "connected": len(conns),
        "acked": len(latencies),
        "statuses": statuses,
        "refusals": refusals,
        "retries": retries,
        "reconnects": reconnects,
        "latencies": latencies,
        "timeline": timeline,
        "seconds": elapsed,
        "cpu_s": time.process_time() - cpu0,
    }
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
    for conn in conns.values():  # after the report: closing is not part of the measure
        conn._close()
    await asyncio.sleep(1)


if __name__ == "__main__":
    if hasattr(os, "sched_setaffinity") and os.environ.get("TRIBUNE_BENCH_CPUS"):
        os.sched_setaffinity(0, {int(c) for c in os.environ["TRIBUNE_BENCH_CPUS"].split(",")})
    run_loop(main())
