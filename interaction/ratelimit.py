"""Per-representative token buckets in Redis, shared by every node."""

from __future__ import annotations

from redis.asyncio import Redis

# KEYS[1] bucket; ARGV: capacity, refill seconds per token. Returns {allowed, wait_ms}.
# Time is the server's, so nodes with skewed clocks share one bucket fairly.
_TAKE = """
local capacity = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1])
local at = tonumber(state[2])
if tokens == nil then
  tokens = capacity
  at = now
end
tokens = math.min(capacity, tokens + (now - at) / interval)
local allowed = 0
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait = math.ceil((1 - tokens) * interval * 1000)
end
redis.call('HSET', KEYS[1], 'tokens', tokens, 'at', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(capacity * interval * 1000) + 1000)
return {allowed, wait}
"""


class TokenBucket:
    def __init__(self, redis: Redis, prefix: str, *, capacity: int, interval: float) -> None:
        self._redis = redis
        self._prefix = prefix
        self._capacity = capacity
        self._interval = interval
        self._script = redis.register_script(_TAKE)

    async def take(self, key: str) -> float:
        """Take a token; returns 0 when allowed, else the seconds to wait."""
        allowed, wait_ms = await self._script(
            keys=[f"{self._prefix}rl:{key}"], args=[self._capacity, self._interval]
        )
        return 0.0 if int(allowed) else int(wait_ms) / 1000
