"""Background tasks end when they are stopped, even when a library swallowed the cancel: on Python 3.11
redis-py sends each command through `asyncio.wait_for`, which returns the command's answer instead of
raising when a cancel lands as the answer arrives. The revocation loop then went on for ever, and a
`handshake serve` stopped during start-up on PostgreSQL + Redis hung (seen in CI)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis

from shared import background
from shared.context import Context
from shared.fanout import Fanout
from shared.revocation import Revocations


async def test_a_swallowed_cancel_is_raised_again() -> None:
    arrived = asyncio.Event()

    async def swallowing_call() -> str:
        """What a library does when a cancel lands as its answer arrives: it returns the answer."""
        try:
            arrived.set()
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            pass
        return "answer"

    rounds = 0

    async def loop() -> None:
        nonlocal rounds
        while True:
            await swallowing_call()
            rounds += 1
            background.honour_cancel()

    task = asyncio.create_task(loop())
    await arrived.wait()
    task.cancel()
    async with asyncio.timeout(5):
        with pytest.raises(asyncio.CancelledError):
            await task
    assert rounds == 1


async def test_honour_cancel_leaves_a_task_that_was_not_cancelled_alone() -> None:
    async def work() -> str:
        await asyncio.sleep(0)
        background.honour_cancel()
        return "done"

    assert await asyncio.create_task(work()) == "done"


class SwallowingRedis(aioredis.Redis):
    """A real client whose PING behaves as redis-py's commands do on Python 3.11 when the cancel and the
    answer meet: the caller gets PONG and no CancelledError."""

    pinging: asyncio.Event
    swallowing = True

    async def ping(self, **kwargs: Any) -> bool:
        self.pinging.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            if not self.swallowing:
                raise
        return True


async def test_the_revocation_loop_stops_when_its_redis_ping_swallowed_the_cancel(ctx: Context) -> None:
    redis = SwallowingRedis(host="127.0.0.1", port=1)  # never dialled: PING is the one call made
    redis.pinging = asyncio.Event()
    revocations = Revocations(ctx.settings, ctx.db, Fanout(redis, prefix="swallow:"))
    await revocations.start_loop()
    async with asyncio.timeout(10):
        await redis.pinging.wait()
    stopping = asyncio.create_task(revocations.stop())
    try:
        done, _ = await asyncio.wait({stopping}, timeout=5)
        assert stopping in done, "the revocation loop went on after its stop"
    finally:
        redis.swallowing = False  # so that a loop that did not stop can be ended
        await background.stop(stopping)
        await redis.aclose()
