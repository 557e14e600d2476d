"""The soak (opt-in: `pytest -m soak`, 30 minutes by default, TRIBUNE_SOAK_SECONDS to change):
two nodes, a steady audience, comments every second, and every few seconds a crowd that
joins a second session and leaves again. Afterwards each node's memory (what it holds, and its
resident size), file descriptors, asyncio tasks and rooms are back where they were."""

from __future__ import annotations

import asyncio
import os

import pytest

from interaction.fleet import FleetProcess
from interaction.rooms import BUFFER_EVENTS
from tests.test_faults import SESSION, Rig, Writer, make_rig  # noqa: F401 (the fixture)

SECONDS = float(os.environ.get("TRIBUNE_SOAK_SECONDS", "1800"))
pytestmark = [
    pytest.mark.asyncio(loop_scope="session"),
    pytest.mark.soak,
    pytest.mark.timeout(int(SECONDS) + 600),
]

CHURN = "lecture"
# A client that left still has Engine.IO's ping task asleep until its next ping (20 s).
SETTLE = 30
GAUGES = (
    "process_resident_memory_bytes",
    "tribune_malloc_in_use_bytes",
    "tribune_malloc_free_bytes",
    "tribune_python_allocated_blocks",
    "process_open_fds",
    "tribune_asyncio_tasks",
    "tribune_rooms",
)


async def gauges(rig: Rig, node: int) -> dict[str, float]:
    return {name: await rig.metric(node, name) for name in GAUGES}


async def test_joins_and_leaves_leave_nothing_behind(make_rig) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    seconds = SECONDS
    rig: Rig = await make_rig()
    await rig.db.execute(
        """INSERT INTO sessions (id, kind, title, scheduled_start, scheduled_end, epoch, created_by,
                                 audience, default_tier, moderation, state, started_at)
           VALUES ($1, 'lecture', '人大讲堂', now(), now() + interval '3 hours', 'e1', 't',
                   'public', 'viewer', 'post', 'live', now())""",
        CHURN,
    )
    steady = await rig.fleet(100)
    writer = Writer(rig)
    # Warm up: one crowd comes and goes before the baseline, so first-use allocations
    # (caches, pools, imported code paths) are not counted as growth; and the room's window
    # of recent events fills to its bound (a full window is ~50,000 allocated blocks, more
    # than a tenth of a node's, and a soak of 30 minutes publishes fewer comments).
    crowd = await FleetProcess.start(
        [rig.cluster.url], CHURN, rig.cluster.secret, [f"C{i}" for i in range(100)]
    )
    await asyncio.sleep(2)
    await crowd.close()
    await writer.run(BUFFER_EVENTS, rate=100)
    await asyncio.sleep(5)
    baseline = [await gauges(rig, n) for n in (0, 1)]

    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    comments = BUFFER_EVENTS
    cycles = 0
    while loop.time() < end:
        crowd = await FleetProcess.start(
            [rig.cluster.url], CHURN, rig.cluster.secret, [f"C{cycles}-{i}" for i in range(100)]
        )
        for _ in range(3):
            await writer.send(comments)
            comments += 1
            await asyncio.sleep(1)
        await crowd.close()
        cycles += 1
    await asyncio.sleep(SETTLE)
    after = [await gauges(rig, n) for n in (0, 1)]
    full = [await rig.metric(n, 'python_gc_collections_total{generation="2"}') for n in (0, 1)]
    print(
        f"soak: {cycles} crowds of 100 in {seconds:.0f} s; before {baseline}; after {after}; "
        f"full collections {full}"
    )
    for before, now in zip(baseline, after, strict=True):
        assert now["tribune_rooms"] == before["tribune_rooms"], (before, now)
        # What the node holds comes back (nothing live accumulates) …
        assert now["tribune_malloc_in_use_bytes"] <= before["tribune_malloc_in_use_bytes"] * 1.10, (
            before,
            now,
        )
        assert now["tribune_python_allocated_blocks"] <= before["tribune_python_allocated_blocks"] * 1.10, (
            before,
            now,
        )
        # … and so must what the system sees.
        assert now["process_resident_memory_bytes"] <= before["process_resident_memory_bytes"] * 1.10, (
            before,
            now,
        )
        assert now["process_open_fds"] <= before["process_open_fds"] * 1.05 + 2, (before, now)
        assert now["tribune_asyncio_tasks"] <= before["tribune_asyncio_tasks"] * 1.05 + 2, (before, now)
    report = await rig.all_caught_up(steady)
    assert report["duplicated"] == report["lost"] == 0 and report["drops"] == 0
    await writer.close()
