"""Live poll tallies: counters in Redis, derived from committed votes and rebuildable from
the ledger. A node adds what its own casts changed and, at most `interval` apart, sends each
room's open polls to hosts and moderators (and to everyone for live-results polls) when the
counts moved — never per vote.

Hash `{prefix}tally:{poll}`: field `q:o` counts option o of question q, field `q:0` the
question's ballots, `_v` a version bumped on every change, `_base` set when the counters
were started (at the poll's opening, before any vote can be written) or last set from the
ledger. A hash without it (Redis lost it) is rebuilt from the ledger; votes written while
that rebuild reads can be counted twice or not at all — the check after the close reports
any difference, and results are always counted from the ledger.

Each node adds its casts exactly once: a round's increments go in one script together with
the round's number, which Redis keeps per node process (`{prefix}tallyflush:{node}:{token}`),
so a round sent again after an unanswered attempt is not counted twice.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import Counter
from collections.abc import Mapping
from typing import Any

import asyncpg
from redis.asyncio import Redis

from config.web import UNAVAILABLE
from interaction import polls
from interaction.fanout import Fanout
from interaction.rooms import Rooms, tally_notice

log = logging.getLogger("tribune.tallies")

TTL = 7 * 24 * 3600

# KEYS: this node's round marker, then the polls' hashes. ARGV: the round, the hashes' TTL,
# then per hash its number of fields followed by (field, increment) pairs.
FLUSH = """
local last = tonumber(redis.call('GET', KEYS[1]) or '0')
if last >= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', 86400)
local a = 3
for k = 2, #KEYS do
  local fields = tonumber(ARGV[a])
  a = a + 1
  for _ = 1, fields do
    redis.call('HINCRBY', KEYS[k], ARGV[a], ARGV[a + 1])
    a = a + 2
  end
  redis.call('HINCRBY', KEYS[k], '_v', 1)
  redis.call('EXPIRE', KEYS[k], ARGV[2])
end
return 1
"""


def decode(raw: Mapping[bytes | str, bytes | str]) -> dict[str, dict[str, Any]]:
    """{question: {"votes": n, "options": {option: n}}} from a tally hash; ids as strings, as
    map keys must be for every msgpack client."""
    out: dict[str, dict[str, Any]] = {}
    for field, value in raw.items():
        name = field.decode() if isinstance(field, bytes) else field
        if name.startswith("_"):
            continue
        q, o = name.split(":")
        entry = out.setdefault(q, {"votes": 0, "options": {}})
        if o == "0":
            entry["votes"] = int(value)
        else:
            entry["options"][o] = int(value)
    return out


class Tallies:
    def __init__(
        self,
        redis: Redis,
        pool: asyncpg.Pool,
        rooms: Rooms,
        fanout: Fanout,
        *,
        prefix: str,
        interval: float,
        node_id: str = "",
    ) -> None:
        self._redis = redis
        self._pool = pool
        self._rooms = rooms
        self._fanout = fanout
        self._prefix = prefix
        self._interval = interval
        self._pending: dict[int, Counter[tuple[int, int]]] = {}
        # Rounds not known to have reached Redis, oldest first: sent again, as they were.
        self._unsent: list[tuple[int, dict[int, Counter[tuple[int, int]]]]] = []
        self._round = 0
        self._marker = f"{prefix}tallyflush:{node_id}:{secrets.token_hex(4)}"
        self._sent: dict[int, bytes | None] = {}  # poll → the version last sent from here

    def key(self, poll_id: int) -> str:
        return f"{self._prefix}tally:{poll_id}"

    def add(self, poll_id: int, delta: Mapping[tuple[int, int], int]) -> None:
        """Count a committed cast (flushed to Redis on the next tick)."""
        self._pending.setdefault(poll_id, Counter()).update(delta)

    def holds(self, poll_id: int) -> bool:
        """Whether counts of this poll are still on their way from this node to Redis."""
        return poll_id in self._pending or any(poll_id in counts for _, counts in self._unsent)

    async def begin(self, poll_id: int) -> None:
        """Start a poll's counters at zero, before it opens: no vote is written before this,
        so the counters need no rebuild from the ledger (which could race the first votes)."""
        try:
            await self._set_base(poll_id, {})
        except UNAVAILABLE as exc:  # the first round rebuilds them from the ledger instead
            log.warning("counters of poll %s not started: %r", poll_id, exc)

    def _queue_round(self, pipe: Any, number: int, counts: dict[int, Counter[tuple[int, int]]]) -> None:
        keys = [self._marker]
        args: list[Any] = [number, TTL]
        for poll_id, delta in counts.items():
            fields = [(f"{q}:{o}", n) for (q, o), n in delta.items() if n]
            keys.append(self.key(poll_id))
            args.append(len(fields))
            for field, n in fields:
                args += [field, n]
        pipe.eval(FLUSH, len(keys), *keys, *args)  # the script travels with it: one round trip

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except UNAVAILABLE as exc:
                log.warning("tallies not updated this round: %r", exc)
            except Exception:
                log.exception("tally round failed")

    async def tick(self) -> None:
        if self._pending:
            self._round += 1
            self._unsent.append((self._round, self._pending))
            self._pending = {}
        watched = {
            poll_id: (room, live)
            for room in self._rooms.by_session.values()
            for poll_id, live in room.open_polls.items()
        }
        if not self._unsent and not watched:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for number, counts in self._unsent:
                self._queue_round(pipe, number, counts)
            for poll_id in watched:
                pipe.hgetall(self.key(poll_id))
            replies = await pipe.execute()  # on failure the rounds stay unsent: again next tick
        self._unsent.clear()
        for (poll_id, (room, live)), raw in zip(
            watched.items(), replies[len(replies) - len(watched) :], strict=True
        ):
            version = raw.get(b"_v") or raw.get("_v")
            if b"_base" not in raw and "_base" not in raw:
                await self.rebuild(poll_id)
                continue
            if version == self._sent.get(poll_id):
                continue
            self._sent[poll_id] = version
            tally = {"poll": poll_id, "questions": decode(raw)}
            if live:  # everyone's: with the next pass
                self._fanout.notify(room, tally_notice(poll_id), "tally", tally, spacing=self._interval)
            else:
                self._fanout.to_staff(room, "tally", tally)
        for poll_id in list(self._sent):
            if poll_id not in watched:
                del self._sent[poll_id]

    async def rebuild(self, poll_id: int) -> None:
        """Counters lost (Redis restarted, or they could not be started at the opening): set
        them from the ledger."""
        poll = await polls.load(self._pool, poll_id)
        counts = await polls.online_counts(self._pool, poll)
        ballots = await self._pool.fetch(
            "SELECT question_id, count(*) AS n FROM ballots WHERE poll_id = $1 GROUP BY 1", poll_id
        )
        mapping: dict[str, int] = {f"{q}:0": 0 for q in poll.questions}
        mapping.update({f"{r['question_id']}:0": int(r["n"]) for r in ballots})
        for q, per_option in counts.items():
            for o, n in per_option.items():
                mapping[f"{q}:{o}"] = n
        await self._set_base(poll_id, mapping)

    async def _set_base(self, poll_id: int, counts: dict[str, int]) -> None:
        """Set `counts` (fields not named keep theirs) and mark the counters as based."""
        fields: dict[Any, Any] = {**counts, "_base": 1}
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.key(poll_id), mapping=fields)
            pipe.hincrby(self.key(poll_id), "_v", 1)
            pipe.expire(self.key(poll_id), TTL)
            await pipe.execute()

    async def check(self, poll: polls.Poll, results: dict[str, Any]) -> list[str] | None:
        """After close: compare the counters with the ledger's final tally; log what disagrees
        (the ledger wins) and return it, or None when Redis could not be read.

        A cast committed just before the close reaches the counters on its node's next round,
        so call this once every node has had a round since (see `Live.change_poll`)."""
        try:
            raw = await self._redis.hgetall(self.key(poll.id))
        except UNAVAILABLE as exc:
            log.warning("tally check of poll %s skipped: %r", poll.id, exc)
            return None
        live = decode(raw)
        wrong = []
        for q in results["questions"]:
            counted = live.get(str(q["id"]), {"votes": 0, "options": {}})
            if counted["votes"] != q["votes"]["online"]:
                wrong.append(
                    f"question {q['id']}: {counted['votes']} ballots counted live, "
                    f"{q['votes']['online']} in the ledger"
                )
            for o in q["options"]:
                n = counted["options"].get(str(o["id"]), 0)
                if n != o["online"]:
                    wrong.append(f"option {o['id']}: {n} counted live, {o['online']} in the ledger")
        if wrong:
            log.warning(
                "poll %s: live tallies disagreed with the ledger (the ledger wins): %s",
                poll.id,
                "; ".join(wrong),
            )
        return wrong
