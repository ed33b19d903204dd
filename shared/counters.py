"""Counters with a time window, for rate limits and lockout: in-process, or in Redis so that every
process of a deployment counts together. Losing them (a Redis restart) only resets the limits."""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Protocol

import redis.asyncio as aioredis

from shared.errors import ServiceUnavailableError


class Counters(Protocol):
    async def hit(self, key: str, window: int) -> int:
        """Add one to `key` (which expires `window` seconds after its first hit); the new count."""
        ...

    async def count(self, key: str) -> int: ...

    async def reset(self, key: str) -> None: ...

    async def block(self, key: str, seconds: int) -> None:
        """Mark `key` blocked for `seconds`."""
        ...

    async def blocked_for(self, key: str) -> int:
        """Seconds left on a block of `key`, 0 when not blocked."""
        ...

    async def status(self, blocked: list[str], counted: list[str]) -> tuple[int, list[int]]:
        """The longest block left among `blocked` and the count of each of `counted`, in one round trip."""
        ...


class MemoryCounters:
    """Bounded: past `capacity` keys the oldest are forgotten (a limit resets; nothing else breaks)."""

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._counts: OrderedDict[str, tuple[int, float]] = OrderedDict()
        self._blocks: OrderedDict[str, float] = OrderedDict()

    def _trim(self) -> None:
        while len(self._counts) > self.capacity:
            self._counts.popitem(last=False)
        while len(self._blocks) > self.capacity:
            self._blocks.popitem(last=False)

    async def hit(self, key: str, window: int) -> int:
        now = time.monotonic()
        count, expires = self._counts.get(key, (0, 0.0))
        if expires <= now:
            count, expires = 0, now + window
        self._counts[key] = (count + 1, expires)
        self._counts.move_to_end(key)
        self._trim()
        return count + 1

    async def count(self, key: str) -> int:
        count, expires = self._counts.get(key, (0, 0.0))
        return count if expires > time.monotonic() else 0

    async def reset(self, key: str) -> None:
        self._counts.pop(key, None)
        self._blocks.pop(key, None)

    async def block(self, key: str, seconds: int) -> None:
        self._blocks[key] = time.monotonic() + seconds
        self._blocks.move_to_end(key)
        self._trim()

    async def blocked_for(self, key: str) -> int:
        left = self._blocks.get(key, 0.0) - time.monotonic()
        return max(0, int(left + 0.999))

    async def status(self, blocked: list[str], counted: list[str]) -> tuple[int, list[int]]:
        return max([await self.blocked_for(key) for key in blocked] or [0]), [await self.count(key) for key in counted]


class RedisCounters:
    def __init__(self, redis: aioredis.Redis, *, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix + "count:"

    async def hit(self, key: str, window: int) -> int:
        name = self.prefix + key
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.incr(name)
                pipe.expire(name, window, nx=True)
                count, _ = await pipe.execute()
        except aioredis.RedisError as exc:
            raise ServiceUnavailableError() from exc
        return int(count)

    async def count(self, key: str) -> int:
        try:
            value = await self.redis.get(self.prefix + key)
        except aioredis.RedisError as exc:
            raise ServiceUnavailableError() from exc
        return int(value or 0)

    async def reset(self, key: str) -> None:
        try:
            await self.redis.delete(self.prefix + key, self.prefix + "block:" + key)
        except aioredis.RedisError as exc:
            raise ServiceUnavailableError() from exc

    async def block(self, key: str, seconds: int) -> None:
        try:
            await self.redis.set(self.prefix + "block:" + key, b"1", ex=max(1, seconds))
        except aioredis.RedisError as exc:
            raise ServiceUnavailableError() from exc

    async def blocked_for(self, key: str) -> int:
        try:
            left = await self.redis.ttl(self.prefix + "block:" + key)
        except aioredis.RedisError as exc:
            raise ServiceUnavailableError() from exc
        return max(0, int(left))

    async def status(self, blocked: list[str], counted: list[str]) -> tuple[int, list[int]]:
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for key in blocked:
                    pipe.ttl(self.prefix + "block:" + key)
                for key in counted:
                    pipe.get(self.prefix + key)
                replies = await pipe.execute()
        except aioredis.RedisError as exc:
            raise ServiceUnavailableError() from exc
        ttls, counts = replies[: len(blocked)], replies[len(blocked) :]
        return max([max(0, int(ttl)) for ttl in ttls] or [0]), [int(count or 0) for count in counts]
