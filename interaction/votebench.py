"""`tribune bench votes`: N representatives cast a vote each through K nodes, with group
commit, beside a baseline — the same nodes writing one INSERT and commit per vote
(`vote_batch_max = 1`) — in the same run, and (`--refused`) the same votes on a closed
poll, read, checked and refused with nothing written: what a vote costs without its write.

Each system gets fresh embedded PostgreSQL and Valkey, K nodes on CPU 0 and load-generator
processes (interaction.votegen) on the other CPUs. Votes arrive at `rate` a second (0: all
at once); each is retried with the same key until acknowledged. Server CPU is the nodes'
plus PostgreSQL's and Valkey's, measured from the first vote to the last acknowledgement.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import psutil

from config.services import EmbeddedServices
from interaction.bench import (
    percentiles,
    raise_fd_limit,
    run_generators,
    spawn_job,
    start_nodes,
    stop_servers,
    wait_http,
)
from recorder.migrate import migrate

SESSION = "bench-votes"
PER_GENERATOR = 7000  # sockets per load-generator process, well under the file limit
IDLE_SECONDS = 5.0


def _service_cpu(root: Path) -> float:
    """CPU of PostgreSQL (its postmaster, live backends and reaped ones) and Valkey."""
    total = 0.0
    for proc in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if any(str(root) in part for part in proc.info["cmdline"] or []):
                t = proc.cpu_times()
                total += t.user + t.system + t.children_user + t.children_system
                for child in proc.children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        c = child.cpu_times()
                        total += c.user + c.system
    return total


def _node_cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
    return total


async def _prepare(database_url: str, voters: int, *, closed: bool = False) -> tuple[int, int, list[int]]:
    conn = await asyncpg.connect(database_url)
    try:
        await migrate(conn)
        await conn.execute(
            """INSERT INTO sessions (id, kind, title, scheduled_start, scheduled_end, epoch, created_by,
                                     audience, default_tier, state)
               VALUES ($1, 'special_inquiry', 'bench', now(), now() + interval '6 hours', 'v1', 'bench',
                       'roster', 'voting', 'live')""",
            SESSION,
        )
        await conn.execute(
            """INSERT INTO representatives (id, name, level)
               SELECT 'V' || lpad(i::text, 6, '0'), '代表' || i, 'city'
                 FROM generate_series(0, $1 - 1) AS i""",
            voters,
        )
        poll = await conn.fetchval(
            """INSERT INTO polls (session_id, kind, title, created_by) VALUES ($1, 'yes_no', '表决', 'bench')
               RETURNING id""",
            SESSION,
        )
        question = await conn.fetchval(
            "INSERT INTO poll_questions (poll_id, position, text) VALUES ($1, 0, '是否同意？') RETURNING id",
            poll,
        )
        options = [
            await conn.fetchval(
                "INSERT INTO poll_options (question_id, position, label) VALUES ($1, $2, $3) RETURNING id",
                question,
                i,
                label,
            )
            for i, label in enumerate(("赞成", "反对", "弃权"))
        ]
        await conn.execute("UPDATE polls SET state = 'open', opened_at = now() WHERE id = $1", poll)
        if closed:
            await conn.execute("UPDATE polls SET state = 'closed', closed_at = now() WHERE id = $1", poll)
        return poll, question, options
    finally:
        await conn.close()


async def _joined(database_url: str, voters: int, seconds: float = 300) -> None:
    """Wait until every voter's attendance is open: the nodes have finished welcoming them."""
    conn = await asyncpg.connect(database_url)
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if (
                await conn.fetchval("SELECT count(*) FROM attendance_intervals WHERE ended_at IS NULL")
                >= voters
            ):
                return
            await asyncio.sleep(0.5)
    finally:
        await conn.close()


async def run_system(
    root: Path,
    label: str,
    *,
    voters: int,
    nodes: int,
    rate: float,
    batch_max: int,
    progress: Callable[[str], None],
    closed: bool = False,
) -> dict[str, Any]:
    await asyncio.to_thread(root.mkdir, parents=True, exist_ok=True)
    services = EmbeddedServices(root / "services", postgres=True, redis=True)
    database_url, redis_url = await asyncio.to_thread(services.start)
    procs: list[subprocess.Popen[bytes]] = []
    generators: list[asyncio.subprocess.Process] = []
    try:
        poll, question, options = await _prepare(database_url, voters, closed=closed)
        secret = secrets.token_urlsafe(40)
        procs, urls = start_nodes(
            root,
            nodes,
            database_url=database_url,
            redis_url=redis_url,
            secret=secret,
            env={"TRIBUNE_DATABASE_POOL_MAX": "20", "TRIBUNE_VOTE_BATCH_MAX": str(batch_max)},
            log_prefix=f"{label[:8]}-",
        )
        for url in urls:
            await wait_http(url + "/readyz")
        cpus = ",".join(str(c) for c in range(1, os.cpu_count() or 2)) if (os.cpu_count() or 1) > 1 else ""
        all_voters = [(i, f"V{i:06d}") for i in range(voters)]
        count = -(-voters // PER_GENERATOR)
        shares = [all_voters[k::count] for k in range(count)]  # interleaved: all send all along
        for share in shares:
            job = {
                "urls": urls,
                "secret": secret,
                "session": SESSION,
                "voters": share,
                "poll": poll,
                "question": question,
                "options": options,
                "rate": rate,
            }
            gen = await spawn_job(
                "interaction.votegen",
                job,
                env={**os.environ, "TRIBUNE_BENCH_CPUS": cpus},
                limit=256 * 1024 * 1024,  # the report is one line with every latency
            )
            generators.append(gen)
        progress(f"{label}: connecting {voters} voters")
        for gen in generators:
            assert gen.stdout is not None
            line = await asyncio.wait_for(gen.stdout.readline(), 1800)
            if line.strip() != b"ready":
                raise RuntimeError(f"a load generator failed while connecting: {line!r}")
        progress(f"{label}: voting")
        pids = [p.pid for p in procs]
        await _joined(database_url, voters)
        await asyncio.sleep(1.0)  # let the connection work settle before measuring
        # What holding the voters costs with no vote at all (pings, presence, attendance):
        # every system pays it for as long as votes take to arrive.
        idle_node, idle_svc, idle_at = _node_cpu(pids), _service_cpu(root / "services"), time.monotonic()
        await asyncio.sleep(IDLE_SECONDS)
        node0, svc0, began = _node_cpu(pids), _service_cpu(root / "services"), time.monotonic()
        idle_cpu = (node0 - idle_node + svc0 - idle_svc) / (began - idle_at)
        start = time.time() + 0.5
        outs = await run_generators(generators, str(start), 1800)
        node_cpu, svc_cpu = _node_cpu(pids) - node0, _service_cpu(root / "services") - svc0
        window = time.monotonic() - began
        conn = await asyncpg.connect(database_url)
        in_db = int(await conn.fetchval("SELECT count(*) FROM ballots WHERE poll_id = $1", poll))
        distinct = int(
            await conn.fetchval("SELECT count(DISTINCT rep_id) FROM ballots WHERE poll_id = $1", poll)
        )
        await conn.close()
        latencies = [x for o in outs for x in o["latencies"]]
        by_second: dict[int, list[float]] = {}
        for o in outs:
            for at, latency in o["timeline"]:
                by_second.setdefault(int(at), []).append(latency)
        statuses: dict[str, int] = {}
        refusals: dict[str, int] = {}
        for o in outs:
            for k2, v in o["statuses"].items():
                statuses[k2] = statuses.get(k2, 0) + v
            for k2, v in o["refusals"].items():
                refusals[k2] = refusals.get(k2, 0) + v
        seconds = max(o["seconds"] for o in outs)
        acked = sum(o["acked"] for o in outs)
        refused = sum(refusals.values())
        cpu = node_cpu + svc_cpu
        return {
            "system": label,
            "voters": voters,
            "nodes": nodes,
            "acked": acked,
            "in_db": in_db,
            "duplicates": (in_db - distinct) + max(0, statuses.get("recorded", 0) - in_db),
            "statuses": statuses,
            "refusals": refusals,
            "retries": sum(o["retries"] for o in outs),
            "reconnects": sum(o["reconnects"] for o in outs),
            "seconds": round(seconds, 2),
            "votes_per_s": round(acked / seconds, 1) if seconds else None,
            "ack_latency_ms": percentiles(latencies),
            "server_cpu_s": round(cpu, 2),
            "node_cpu_s": round(node_cpu, 2),
            "postgres_valkey_cpu_s": round(svc_cpu, 2),
            "votes_per_server_cpu_s": round(acked / cpu, 1) if cpu else None,
            "idle_server_cpu_per_s": round(idle_cpu, 3),
            "server_cpu_us_per_vote_above_idle": (
                round((cpu - idle_cpu * window) / cast * 1e6) if (cast := acked or refused) else None
            ),
            "load_generator_cpu_s": round(sum(o["cpu_s"] for o in outs), 2),
            "vote_batch": await _batch_sizes(urls),
            "ack_latency_ms_by_second_sent": {
                second: percentiles(by_second[second])["p99"] for second in sorted(by_second)
            },
        }
    finally:
        for gen in generators:
            with contextlib.suppress(ProcessLookupError):
                gen.kill()
            await gen.wait()
        stop_servers(procs)
        await asyncio.to_thread(services.stop)


async def _batch_sizes(urls: list[str]) -> dict[str, float | None]:
    """Votes per group commit, from the nodes' /metrics."""
    import aiohttp

    count = total = 0.0
    async with aiohttp.ClientSession() as http:
        for url in urls:
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(url + "/metrics") as r:
                    for line in (await r.text()).splitlines():
                        if line.startswith("tribune_vote_batch_size_count"):
                            count += float(line.rsplit(" ", 1)[1])
                        elif line.startswith("tribune_vote_batch_size_sum"):
                            total += float(line.rsplit(" ", 1)[1])
    return {"commits": count, "mean_votes_per_commit": round(total / count, 1) if count else None}


async def bench_votes(
    *,
    voters: int,
    nodes: int,
    rate: float,
    baseline: bool,
    progress: Callable[[str], None],
    refused: bool = False,
) -> dict[str, Any]:
    raise_fd_limit()
    root = Path(tempfile.mkdtemp(prefix="tbv-"))
    try:
        result: dict[str, Any] = {"benchmark": "votes", "voters": voters, "nodes": nodes, "rate": rate}

        def system(where: Path, label: str, batch: int, closed: bool = False) -> Awaitable[dict[str, Any]]:
            return run_system(
                where,
                label,
                voters=voters,
                nodes=nodes,
                rate=rate,
                batch_max=batch,
                progress=progress,
                closed=closed,
            )

        result["tribune"] = await system(root, "tribune: group commit", 2000)
        if baseline:
            result["baseline"] = await system(root / "b", "baseline: one INSERT and commit per vote", 1)
            ours = result["tribune"]["votes_per_server_cpu_s"]
            theirs = result["baseline"]["votes_per_server_cpu_s"]
            if ours and theirs:
                result["votes_per_server_cpu_s_vs_baseline"] = round(ours / theirs, 2)
        if refused:
            # The same voters, frames and checks, on a poll that is closed: each vote is read,
            # checked and answered (`poll_closed`) with nothing written. What a vote costs
            # above this is what writing it costs.
            result["refused"] = await system(
                root / "r", "refused: the same votes on a closed poll, nothing written", 2000, closed=True
            )
            frame = result["refused"]["server_cpu_us_per_vote_above_idle"]
            writes = {
                name: result[name]["server_cpu_us_per_vote_above_idle"] - frame
                for name in ("tribune", "baseline")
                if name in result and frame is not None
            }
            result["write_cpu_us_per_vote"] = writes
            if writes.get("tribune", 0) > 0 and "baseline" in writes:
                ratio = writes["baseline"] / writes["tribune"]
                result["write_cpu_per_vote_baseline_vs_tribune"] = round(ratio, 2)
        return result
    finally:
        shutil.rmtree(root, ignore_errors=True)
