"""The hashing pool: bounded, and its threads yield the CPU to the event loop (issue 11)."""

from __future__ import annotations

import asyncio
import os
import sys
import threading

import pytest

from shared.errors import ServiceUnavailableError
from shared.pool import NICER, BoundedPool


def _own_nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are Linux's")
async def test_one_hashing_thread_keeps_the_loops_priority_the_others_yield() -> None:
    pool = BoundedPool(workers=3, queue=8)
    release = threading.Event()

    def nice_when_released() -> tuple[int, int]:
        release.wait(5)  # each of the three threads holds one job, so each one answers
        return threading.get_native_id(), _own_nice()

    try:
        loop_nice = _own_nice()
        jobs = [asyncio.ensure_future(pool.run(nice_when_released)) for _ in range(3)]
        await asyncio.sleep(0.1)
        release.set()
        by_thread = dict(await asyncio.gather(*jobs))
        assert sorted(by_thread.values()) == [loop_nice, min(19, loop_nice + NICER), min(19, loop_nice + NICER)]
        assert _own_nice() == loop_nice  # the loop's own thread is left as it was
    finally:
        pool.close()


async def test_a_caller_past_the_queue_bound_is_refused_at_once() -> None:
    pool = BoundedPool(workers=1, queue=1)
    release = threading.Event()
    try:
        held = [asyncio.ensure_future(pool.run(release.wait, 5)) for _ in range(2)]
        await asyncio.sleep(0.05)
        with pytest.raises(ServiceUnavailableError):
            await pool.run(release.wait, 5)
        release.set()
        assert await asyncio.gather(*held) == [True, True]
    finally:
        release.set()
        pool.close()
