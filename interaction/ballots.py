"""Votes, written by group commit: casts arriving while a write is in flight wait and go
together in the next one — one round trip and one commit for many votes. A cast is
acknowledged only after its commit; the same key again answers `already_recorded`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

import asyncpg
import msgspec
from msgspec import Meta

from config.web import UNAVAILABLE
from interaction.errors import AlreadyVoted, InvalidMessage, NotPermitted, PollClosed
from interaction.polls import Poll

log = logging.getLogger("tribune.ballots")

Answer = int | Annotated[list[int], Meta(min_length=1, max_length=100)]


class VoteCast(msgspec.Struct, forbid_unknown_fields=True):
    poll: Annotated[int, Meta(ge=1)]
    answers: Annotated[dict[str | int, Answer], Meta(min_length=1, max_length=100)]
    key: Annotated[str, Meta(min_length=1, max_length=64)]


@dataclass(frozen=True, slots=True)
class Cast:
    poll: int
    rep: str
    key: str
    answers: tuple[tuple[int, tuple[int, ...]], ...]  # (question, options), by question


@dataclass(frozen=True, slots=True)
class Result:
    status: str  # recorded | changed | already_recorded
    # What changed the counts: (question, option) → +1 / -1 (empty unless recorded / changed).
    delta: Mapping[tuple[int, int], int]


def check(poll: Poll, message: VoteCast, *, rep: str, session_id: str, tier: str) -> Cast:
    """Everything that can be refused without the ledger: whose poll, who may vote, what."""
    if poll.session_id != session_id:
        raise NotPermitted(f"poll {poll.id} belongs to another session")
    if poll.state in ("closed", "published"):
        raise PollClosed(f"poll {poll.id} is closed; votes are no longer taken")
    if poll.state != "open":
        raise PollClosed(f"poll {poll.id} is not open yet")
    if tier not in poll.eligible_tiers:
        raise NotPermitted(
            f"this poll is for the {' / '.join(poll.eligible_tiers)} tier; you attend as {tier}"
        )
    answers = []
    for raw, answer in message.answers.items():
        try:
            qid = int(raw)
        except ValueError:
            raise InvalidMessage(f"answers are keyed by question id, got {str(raw)[:20]!r}") from None
        if qid not in poll.questions:
            raise InvalidMessage(f"question {qid} is not in poll {poll.id}")
        max_choices, options = poll.questions[qid]
        chosen = (answer,) if isinstance(answer, int) else tuple(answer)
        if len(set(chosen)) != len(chosen):
            raise InvalidMessage(f"question {qid}: an option is chosen twice")
        if len(chosen) > max_choices:
            raise InvalidMessage(
                f"question {qid} allows at most {max_choices} choice(s); {len(chosen)} given"
            )
        for option in chosen:
            if option not in options:
                raise InvalidMessage(f"option {option} is not an option of question {qid}")
        answers.append((qid, tuple(sorted(chosen))))
    return Cast(poll.id, rep, message.key, tuple(sorted(answers)))


class BallotBox:
    """Group commit of casts: one writer, many waiting casts per round trip."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        max_batch: int = 2000,
        linger: float = 0.0,
        on_batch: Callable[[int], None] | None = None,
    ):
        self.pool = pool
        self.max_batch = max_batch
        self.linger = linger
        self.on_batch = on_batch
        self._queue: list[tuple[Cast, asyncio.Future[Result]]] = []
        self._wake = asyncio.Event()
        self._first_at = 0.0  # when the oldest vote in the queue arrived (loop time)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for _, fut in self._queue:
            if not fut.done():
                fut.set_exception(ConnectionError("the node is stopping"))
        self._queue.clear()

    async def cast(self, cast: Cast) -> Result:
        if self.max_batch == 1:  # no group commit: this vote alone, in its own transaction
            outcome = (await self._commit([cast]))[0]
            if isinstance(outcome, Exception):
                raise outcome
            return outcome
        fut: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        if not self._queue:
            self._first_at = asyncio.get_running_loop().time()
        self._queue.append((cast, fut))
        self._wake.set()
        return await fut

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                # Let a batch gather for `linger` after its first vote arrived (not when the
                # queue is already full): one round trip and one commit for all of them.
                wait = self._first_at + self.linger - loop.time()
                if wait > 0 and len(self._queue) < self.max_batch:
                    await asyncio.sleep(wait)
                batch, deferred = self._take()
                self._queue[:0] = deferred  # back to the front, in order
                self._first_at = loop.time()
                try:
                    await self._write(batch)
                except asyncio.CancelledError:
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(ConnectionError("the node is stopping"))
                    raise

    def _take(
        self,
    ) -> tuple[list[tuple[Cast, asyncio.Future[Result]]], list[tuple[Cast, asyncio.Future[Result]]]]:
        """Up to max_batch casts of which no two touch one person's answer to one question
        (such a pair waits for the next batch, where the first is already written)."""
        Item = tuple[Cast, asyncio.Future[Result]]
        batch: list[Item] = []
        deferred: list[Item] = []
        seen: set[tuple[str, int]] = set()
        taken = 0
        for item in self._queue:
            cast, fut = item
            taken += 1
            if fut.done():  # its caller gave up
                continue
            touched = {(cast.rep, q) for q, _ in cast.answers}
            if touched & seen or len(batch) >= self.max_batch:
                deferred.append(item)
                if len(batch) >= self.max_batch:
                    deferred.extend(self._queue[taken:])
                    break
                continue
            seen |= touched
            batch.append(item)
        del self._queue[:]
        return batch, deferred

    async def _write(self, batch: list[tuple[Cast, asyncio.Future[Result]]]) -> None:
        if not batch:
            return
        try:
            results = await self._commit([c for c, _ in batch])
        except (*UNAVAILABLE, asyncpg.PostgresConnectionError, asyncpg.InterfaceError) as exc:
            log.warning("a batch of %d votes was not written: %r", len(batch), exc)
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            return
        except asyncpg.PostgresError as exc:
            if len(batch) == 1:
                if not batch[0][1].done():
                    batch[0][1].set_exception(exc)
                return
            # Something in the batch is refused: write each alone so only that one fails.
            log.warning("a batch of %d votes failed (%r); writing them one by one", len(batch), exc)
            for item in batch:
                await self._write([item])
            return
        if self.on_batch is not None:
            self.on_batch(len(batch))
        for (_, fut), outcome in zip(batch, results, strict=True):
            if fut.done():
                continue
            if isinstance(outcome, Exception):
                fut.set_exception(outcome)
            else:
                fut.set_result(outcome)

    async def _commit(self, casts: list[Cast]) -> list[Result | Exception]:
        ns, polls, questions, reps, keys, options = [], [], [], [], [], []
        for n, cast in enumerate(casts):
            for qid, chosen in cast.answers:
                ns.append(n)
                polls.append(cast.poll)
                questions.append(qid)
                reps.append(cast.rep)
                keys.append(cast.key)
                options.append("{" + ",".join(map(str, chosen)) + "}")
        rows = await self.pool.fetch(
            "SELECT n, question_id, status, old_options FROM cast_ballots($1, $2, $3, $4, $5, $6)",
            ns,
            polls,
            questions,
            reps,
            keys,
            options,
        )
        by_cast: dict[int, list[asyncpg.Record]] = {}
        for r in rows:
            by_cast.setdefault(r["n"], []).append(r)
        return [_result(cast, by_cast.get(n, [])) for n, cast in enumerate(casts)]


def _result(cast: Cast, rows: list[asyncpg.Record]) -> Result | Exception:
    status = rows[0]["status"] if rows else "closed"
    if status == "closed":
        return PollClosed(f"poll {cast.poll} is closed; votes are no longer taken")
    if status == "conflict":
        return AlreadyVoted(
            "you have already voted on this question; this poll does not allow changing a vote"
        )
    delta: dict[tuple[int, int], int] = {}
    if status in ("recorded", "changed"):
        old = {r["question_id"]: r["old_options"] for r in rows}
        for qid, chosen in cast.answers:
            for option in old.get(qid) or ():
                delta[(qid, option)] = delta.get((qid, option), 0) - 1
            for option in chosen:
                delta[(qid, option)] = delta.get((qid, option), 0) + 1
            if not old.get(qid):
                delta[(qid, 0)] = delta.get((qid, 0), 0) + 1  # option 0: the question's ballots
    return Result(status, delta)


def ack(result: Result) -> dict[str, Any]:
    return {"status": result.status}
