"""Reminders (履职提醒) go out as entries of a Redis stream, `{redis_prefix}reminders`,
which the platform reads (XREAD / a consumer group) and turns into SMS or IM messages.
The stream is capped (MAXLEN, approximately) so an absent reader cannot fill Redis."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from recorder.periods import Period

if TYPE_CHECKING:
    from redis.asyncio import Redis


def stream_key(prefix: str) -> str:
    return f"{prefix}reminders"


async def publish(
    redis: Redis, prefix: str, entries: list[dict[str, Any]], *, period: Period, version: int, maxlen: int
) -> int:
    """One stream entry per representative; returns how many were added."""
    if not entries:
        return 0
    sent_at = datetime.now(UTC).isoformat()
    async with redis.pipeline(transaction=False) as pipe:
        for entry in entries:
            fields: dict[Any, Any] = {
                "rep": entry["rep"],
                "name": entry["name"],
                "reasons": ",".join(entry["reasons"]),
                "period": period.label,
                "version": version,
                "points": entry["points"],
                "absent": entry["absent"],
                "excused": entry["excused"],
                "last_activity": entry["last_activity"] or "",
                "sent_at": sent_at,
                "data": json.dumps(entry, ensure_ascii=False),
            }
            pipe.xadd(stream_key(prefix), fields, maxlen=maxlen, approximate=True)
        await pipe.execute()
    return len(entries)
