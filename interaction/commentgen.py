"""The publishing side of `tribune bench comments`, in a process of its own: a writer who
sends comments and a moderator who approves them (or, for the baseline, one publisher),
at a steady rate. It prints when each approval left, so that latency runs from the
moderator's action to a viewer's arrival.

    python -m interaction.commentgen   (reads its job as one JSON line on stdin, then "go T")

The moderator is a person at their own desk: were the writer and moderator in the viewers'
process, each approval would wait there behind ten thousand viewers' frames before it left.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import socketio

from config.loop import run as run_loop
from interaction.loadgen import close_client


async def _connect(url: str, token: str | None, session: str) -> socketio.AsyncClient:
    client = socketio.AsyncClient(serializer="msgpack", reconnection=False)
    auth = {"token": token, "session": session, "since": None} if token is not None else None
    await client.connect(url, auth=auth, transports=["websocket"])
    return client


async def main() -> None:
    job: dict[str, Any] = json.loads(sys.stdin.readline())
    rate, duration, wait = float(job["rate"]), float(job["duration"]), float(job["wait"])
    baseline = job["mode"] == "baseline"
    if baseline:
        clients = [await _connect(job["url"], None, job["session"])]
    else:
        clients = [await _connect(job["url"], token, job["session"]) for token in job["tokens"]]
    print("ready", flush=True)
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    start = float(line.split()[1])
    sent: dict[int, float] = {}  # comment id (baseline: its number) → when its approval left
    published = 0

    async def one(n: int) -> None:
        nonlocal published
        if baseline:
            sent[n] = time.time()
            ack = await clients[0].call("publish", {"id": n, "text": f"bench comment {n}"}, timeout=120)
        else:
            writer, moderator = clients
            text = f"bench comment {n} " + "字" * 40
            answer = await writer.call("comment.send", {"text": text, "key": f"c{n}"}, timeout=30)
            comment = int(answer["comment"]["id"])
            sent[comment] = time.time()
            ack = await moderator.call("moderate", {"comment": comment, "action": "approve"}, timeout=30)
        if ack.get("ok"):
            published += 1

    await asyncio.sleep(max(0.0, start - time.time()))
    cpu0 = time.process_time()
    tasks = []
    n = 0
    while time.time() - start < duration:
        n += 1
        tasks.append(asyncio.create_task(one(n)))
        await asyncio.sleep(max(0.0, start + n / rate - time.time()))
    await asyncio.wait(tasks, timeout=wait)  # the baseline may still be working through its queue
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    report = {"attempted": n, "published": published, "sent": list(sent.items())}
    print(json.dumps({**report, "cpu_s": time.process_time() - cpu0}), flush=True)
    for client in clients:
        await close_client(client)


if __name__ == "__main__":
    run_loop(main())
