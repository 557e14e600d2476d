"""The event loop Tribune's processes run: uvloop where it is installed (a dependency on
Linux), else asyncio's own. Nodes, benchmarks and their load generators all use it, so a
benchmark's clients cost what a lean client costs, not what asyncio's selector loop does."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Coroutine, Iterable
from typing import Any, TypeVar

T = TypeVar("T")

log = logging.getLogger("tribune.loop")

STOP_SECONDS = 5.0  # how long a shutdown waits for cancelled tasks


def new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run` on the project's loop."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(main)


async def stop_tasks(tasks: Iterable[asyncio.Future[Any]], *, timeout: float, what: str) -> bool:
    """Cancel `tasks` and wait for them, at most `timeout` seconds: a shutdown must end. A
    task still running then is logged with where it waits, and left behind. True if all
    stopped."""
    pending = [t for t in tasks if not t.done()]
    for task in pending:
        task.cancel()
    if not pending:
        return True
    _, stuck = await asyncio.wait(pending, timeout=timeout)
    for task in stuck:
        where = io.StringIO()
        if isinstance(task, asyncio.Task):
            task.print_stack(file=where)
        log.warning(
            "%s: a task did not stop within %.0f s of being cancelled:\n%s", what, timeout, where.getvalue()
        )
    return not stuck
