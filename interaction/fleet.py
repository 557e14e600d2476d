"""A fleet of representatives that stay connected: the load of the fault suite.

Each member is a lean protocol-v1 client (interaction.loadgen) that, when its connection
drops, connects again after a jittered exponential backoff (0.5 s doubling to 8 s, full
jitter) and resumes from its last seq, so it must end up with every event exactly once and
in order. On command the fleet votes — every member once, retrying with the same key until
acknowledged — and reports what it saw. One process holds a few thousand members; the
fault suite runs several side by side.

    python -m interaction.fleet   (a job as one JSON line on stdin; then commands, one a line:
                                   `report`, `vote {json}`, `quit`; each answered by one JSON line)
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from typing import Any
from urllib.parse import urlsplit

from config.auth import mint_token
from config.loop import run as run_loop
from config.settings import Settings
from interaction.loadgen import FrameCache, Tally, ViewerProtocol

BACKOFF_FIRST = 0.5
BACKOFF_CAP = 8.0


class Member:
    def __init__(self, fleet: Fleet, index: int, rep: str, token: str) -> None:
        self.fleet = fleet
        self.index = index
        self.rep = rep
        self.token = token
        self.protocol: ViewerProtocol | None = None
        self.seq = -1
        self.epoch = ""
        self.dropped_at: float | None = None
        self.reconnect_seconds: list[float] = []
        self.drops = 0
        self.task: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        p = self.protocol
        return (
            p is not None and p.transport is not None and not p.transport.is_closing() and p.on_ready.done()
        )

    async def connect(self) -> None:
        """Connect (again), backing off with full jitter until it works or the fleet closes."""
        fleet = self.fleet
        attempt = 0
        while not fleet.closing:
            url = urlsplit(fleet.urls[(self.index + attempt) % len(fleet.urls)])
            since = {"epoch": self.epoch, "seq": self.seq} if self.epoch else None
            auth = {"token": self.token, "session": fleet.session, "since": since}
            ready: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
            protocol = ViewerProtocol(url.netloc, auth, fleet.tally, fleet.cache, False, ready)
            protocol.seq = self.seq
            try:
                async with fleet.gate:
                    await asyncio.get_running_loop().create_connection(
                        lambda p=protocol: p,  # type: ignore[misc]
                        url.hostname or "127.0.0.1",
                        url.port or 80,
                    )
                    ok = await asyncio.wait_for(ready, 30)
            except (OSError, TimeoutError):
                ok = False
            if ok and not fleet.closing:
                self.protocol = protocol
                protocol.on_lost = self._lost
                if self.dropped_at is not None:
                    self.reconnect_seconds.append(time.monotonic() - self.dropped_at)
                    self.dropped_at = None
                return
            protocol._close()
            attempt += 1
            await asyncio.sleep(random.uniform(0, min(BACKOFF_CAP, BACKOFF_FIRST * 2**attempt)))

    def _lost(self) -> None:
        protocol = self.protocol
        if protocol is None or self.fleet.closing:
            return
        self.seq, self.epoch = protocol.seq, protocol.epoch
        self.protocol = None
        self.drops += 1
        self.dropped_at = time.monotonic()
        self.task = asyncio.get_running_loop().create_task(self._back())

    async def _back(self) -> None:
        await asyncio.sleep(random.uniform(0, BACKOFF_FIRST))
        await self.connect()

    def current_seq(self) -> int:
        return self.protocol.seq if self.protocol is not None else self.seq

    async def call(self, name: str, data: Any, timeout: float = 15) -> Any:
        """Emit with an acknowledgement on whatever connection is current."""
        protocol = self.protocol
        if protocol is None:
            raise ConnectionError("not connected")
        return await asyncio.wait_for(protocol.call(name, data), timeout)


class Fleet:
    def __init__(
        self, urls: list[str], session: str, secret: str, reps: list[str], concurrency: int = 200
    ) -> None:
        settings = Settings(jwt_secret=secret)
        self.urls = urls
        self.session = session
        self.tally = Tally()
        self.cache = FrameCache()
        self.gate = asyncio.Semaphore(concurrency)
        self.closing = False
        self.members = [
            Member(self, i, rep, mint_token(settings, rep=rep, ttl=6 * 3600)) for i, rep in enumerate(reps)
        ]
        self.votes: dict[str, Any] = {"acked": [], "statuses": {}, "refusals": {}, "retries": 0}

    async def start(self) -> None:
        await asyncio.gather(*(m.connect() for m in self.members))

    async def vote(self, job: dict[str, Any]) -> None:
        """Every member votes once (key `<rep>-<poll>`), retrying until acknowledged or refused
        for good; the acknowledged keys are reported."""
        votes = self.votes

        async def one(m: Member) -> None:
            await asyncio.sleep(random.uniform(0, job.get("spread", 0.0)))
            key = f"{m.rep}-{job['poll']}"
            options = job["options"]
            cast = {
                "poll": job["poll"],
                "answers": {str(job["question"]): options[m.index % len(options)]},
                "key": key,
            }
            while not self.closing:
                try:
                    ack = await m.call("vote.cast", cast)
                except (ConnectionError, TimeoutError):
                    votes["retries"] += 1
                    await asyncio.sleep(0.2)
                    continue
                if ack.get("ok"):
                    votes["acked"].append(key)
                    votes["statuses"][ack["status"]] = votes["statuses"].get(ack["status"], 0) + 1
                    return
                code = ack["error"]["code"]
                votes["refusals"][code] = votes["refusals"].get(code, 0) + 1
                if code not in ("unavailable", "internal", "rate_limited"):
                    return
                votes["retries"] += 1
                await asyncio.sleep(0.5)

        await asyncio.gather(*(one(m) for m in self.members))

    def report(self) -> dict[str, Any]:
        seqs = [m.current_seq() for m in self.members]
        waits = [t for m in self.members for t in m.reconnect_seconds]
        return {
            "members": len(self.members),
            "connected": sum(m.connected for m in self.members),
            "drops": sum(m.drops for m in self.members),
            "reconnected": len(waits),
            "reconnect_max_s": round(max(waits), 2) if waits else None,
            "seq_min": min(seqs),
            "seq_max": max(seqs),
            "events": self.tally.events,
            "duplicated": self.tally.duplicated,
            "lost": self.tally.lost,
            "out_of_order": self.tally.out_of_order,
            "refused": self.tally.refused,
            "votes": {**self.votes, "acked": sorted(self.votes["acked"])},
        }

    def close(self) -> None:
        self.closing = True
        for m in self.members:
            if m.task is not None:
                m.task.cancel()
            if m.protocol is not None:
                m.protocol._close()


async def main() -> None:
    job = json.loads(sys.stdin.readline())
    fleet = Fleet(job["urls"], job["session"], job["secret"], job["reps"])
    await fleet.start()
    out = sys.stdout
    out.write(json.dumps({"ready": len(fleet.members)}) + "\n")
    out.flush()
    loop = asyncio.get_running_loop()
    voting: asyncio.Task[None] | None = None
    while True:
        line = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
        if not line or line == "quit":
            break
        command, _, arg = line.partition(" ")
        if command == "vote":
            voting = asyncio.create_task(fleet.vote(json.loads(arg)))
            out.write(json.dumps({"voting": True}) + "\n")
        elif command == "votes-done":
            if voting is not None:
                await voting
            out.write(json.dumps(fleet.report()) + "\n")
        else:
            out.write(json.dumps(fleet.report()) + "\n")
        out.flush()
    fleet.close()
    await asyncio.sleep(0.5)


class FleetProcess:
    """The test side: a fleet generator process, its commands and answers."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, urls: list[str], session: str, secret: str, reps: list[str]) -> FleetProcess:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "interaction.fleet",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=64 * 1024 * 1024,
        )
        fleet = cls(proc)
        await fleet._send({"urls": urls, "session": session, "secret": secret, "reps": reps})
        answer = await fleet._answer(timeout=300)
        if answer.get("ready") != len(reps):
            raise RuntimeError(f"the fleet did not connect: {answer}")
        return fleet

    async def _send(self, data: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((data if isinstance(data, str) else json.dumps(data)).encode() + b"\n")
        await self.proc.stdin.drain()

    async def _answer(self, timeout: float = 60) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not line:
            raise RuntimeError("the fleet process exited")
        return dict(json.loads(line))

    async def report(self) -> dict[str, Any]:
        await self._send("report")
        return await self._answer()

    async def vote(self, poll: int, question: int, options: list[int], spread: float = 0.0) -> None:
        await self._send(
            "vote " + json.dumps({"poll": poll, "question": question, "options": options, "spread": spread})
        )
        await self._answer()

    async def votes_done(self, timeout: float = 180) -> dict[str, Any]:
        await self._send("votes-done")
        return await self._answer(timeout)

    async def close(self) -> None:
        if self.proc.returncode is None:
            try:
                await self._send("quit")
                await asyncio.wait_for(self.proc.wait(), 10)
            except (OSError, TimeoutError):
                self.proc.kill()
                await self.proc.wait()


if __name__ == "__main__":
    from interaction.bench import raise_fd_limit

    raise_fd_limit()
    run_loop(main())
