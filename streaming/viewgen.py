"""A WHEP load generator process for `tribune bench whep`.

Reads one JSON job on stdin (`url`, `token`, `viewers`, `decode`: how many of them decode),
connects its viewers a few at a time and prints `ready N`; on `go SECONDS` it counts the
video frames each viewer receives for that long and prints one JSON line, with the CPU
seconds the process used meanwhile. The rest count whole frames from the RTP headers
without decoding them (`WhepViewer(decode=False)`): the generator must not be what runs
out of CPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from typing import Any

import aiohttp

from streaming.clients import WhepViewer
from streaming.rtc import limit_host_addresses

CONNECT_AT_ONCE = 8


async def _connect(job: dict[str, Any], http: aiohttp.ClientSession) -> tuple[list[WhepViewer], list[str]]:
    viewers: list[WhepViewer] = []
    errors: list[str] = []
    gate = asyncio.Semaphore(CONNECT_AT_ONCE)

    async def one(n: int) -> None:
        viewer = WhepViewer(job["url"], job["token"], audio=job.get("audio", True), decode=n < job["decode"])
        async with gate:
            try:
                connected = asyncio.Event()

                def on_state(viewer: WhepViewer = viewer, connected: asyncio.Event = connected) -> None:
                    if viewer.pc.connectionState == "connected":
                        connected.set()

                viewer.pc.on("connectionstatechange", on_state)
                await viewer.start(http)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(connected.wait(), 20)
                viewers.append(viewer)
            except Exception as exc:
                errors.append(repr(exc))

    await asyncio.gather(*(one(n) for n in range(job["viewers"])))
    return viewers, errors


async def main() -> None:
    job = json.loads(sys.stdin.readline())
    limit_host_addresses(("127.0.0.1",))
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    async with aiohttp.ClientSession() as http:
        viewers, errors = await _connect(job, http)
        connected = sum(v.pc.connectionState == "connected" for v in viewers)
        print(f"ready {connected}", flush=True)
        line = (await reader.readline()).decode().split()
        seconds = float(line[1])
        before, cpu_before = [(v.frames, v.decoded) for v in viewers], time.process_time()
        await asyncio.sleep(seconds)
        after, cpu = [(v.frames, v.decoded) for v in viewers], time.process_time() - cpu_before
        out = {
            "connected": connected,
            "errors": errors[:5],
            "frames": [a[0] - b[0] for a, b in zip(after, before, strict=True)],
            "decoded": [a[1] - b[1] for a, b in zip(after, before, strict=True) if a[1] or b[1]],
            "first_keyframe": [v.first_keyframe for v in viewers],
            "still_connected": sum(v.pc.connectionState == "connected" for v in viewers),
            "cpu_s": cpu,  # this process, every thread, over the counted window
        }
        print(json.dumps(out), flush=True)
        await asyncio.gather(*(v.stop() for v in viewers), return_exceptions=True)


if __name__ == "__main__":
    asyncio.run(main())
