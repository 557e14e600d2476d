"""Presence: how many representatives are online in a session, on all nodes together.

Each node writes its own count into a Redis hash per session, with the time it stops being
believed; every node sums the live fields and tells its clients when the sum changes, at
most once per `presence_interval`, with the fan-out's next pass.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis

from config.settings import Settings
from config.web import UNAVAILABLE
from interaction.fanout import Fanout
from interaction.rooms import Room, Rooms

log = logging.getLogger("tribune.presence")


class Presence:
    def __init__(self, redis: Redis, rooms: Rooms, fanout: Fanout, settings: Settings) -> None:
        self._redis = redis
        self._rooms = rooms
        self._fanout = fanout
        self._prefix = settings.redis_prefix
        self._node = settings.node_id
        self._interval = settings.presence_interval
        self._totals: dict[str, int] = {}

    def online(self, room: Room) -> int:
        return max(self._totals.get(room.session_id, 0), room.online())

    async def tick(self) -> None:
        rooms = list(self._rooms.by_session.values())
        if not rooms:
            return
        now = time.time()
        expires = now + self._interval * 3 + 2
        async with self._redis.pipeline(transaction=False) as pipe:
            for room in rooms:
                key = f"{self._prefix}presence:{room.session_id}"
                pipe.hset(key, self._node, f"{room.online()}:{expires:.0f}")
                pipe.expire(key, int(self._interval * 3 + 5))
                pipe.hgetall(key)
            replies = await pipe.execute()
        for room, fields in zip(rooms, replies[2::3], strict=True):
            total = 0
            for raw in fields.values():
                count, _, until = raw.decode().partition(":")
                if float(until or 0) >= now:
                    total += int(count)
            if total != self._totals.get(room.session_id):
                self._totals[room.session_id] = total
                self._fanout.notify(
                    room, ("presence", 0), "presence", {"online": total}, spacing=self._interval
                )
        for gone in set(self._totals) - {r.session_id for r in rooms}:
            del self._totals[gone]

    async def forget(self, session_id: str) -> None:
        """This node has nobody left in the session: drop its count now, not at expiry."""
        try:
            await self._redis.hdel(f"{self._prefix}presence:{session_id}", self._node)
        except UNAVAILABLE as exc:
            log.warning("presence cleanup skipped: %r", exc)

    async def run(self, also: Callable[[], Awaitable[None]]) -> None:
        while True:
            for step in (self.tick, also):  # each on its own: Redis being away must not stop `also`
                try:
                    await step()
                except asyncio.CancelledError:
                    raise
                except UNAVAILABLE as exc:
                    log.warning("presence update skipped: %r", exc)
                except Exception:
                    log.exception("periodic %s failed", getattr(step, "__name__", "step"))
            await asyncio.sleep(self._interval)
