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


class Hashes:
    """Jobs that hold their thread until released, counting how many run at once."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.now = 0
        self.most = 0
        self._lock = threading.Lock()

    def job(self) -> bool:
        with self._lock:
            self.now += 1
            self.most = max(self.most, self.now)
        try:
            return self.release.wait(5)
        finally:
            with self._lock:
                self.now -= 1


@pytest.mark.parametrize(("late", "at_once"), [(False, 3), (True, 1)])
async def test_while_the_loop_is_late_one_hash_runs_at_a_time(late: bool, at_once: int) -> None:
    pool = BoundedPool(workers=3, queue=8)
    pool.throttle_when(lambda: late)
    hashes = Hashes()
    try:
        jobs = [asyncio.ensure_future(pool.run(hashes.job)) for _ in range(6)]
        await asyncio.sleep(0.2)
        assert hashes.now == at_once
        hashes.release.set()
        assert await asyncio.gather(*jobs) == [True] * 6  # every one served, in its turn
        assert hashes.most == at_once
    finally:
        hashes.release.set()
        pool.close()


async def test_the_pace_comes_back_and_a_cancelled_caller_gives_its_turn_on() -> None:
    pool = BoundedPool(workers=2, queue=8)
    late = [True]
    pool.throttle_when(lambda: late[0])
    first, others = Hashes(), Hashes()
    try:
        running = asyncio.ensure_future(pool.run(first.job))
        waiting = [asyncio.ensure_future(pool.run(others.job)) for _ in range(3)]
        await asyncio.sleep(0.1)
        assert (first.now, others.now) == (1, 0)
        waiting[0].cancel()  # leaves the line: the others keep their turns
        late[0] = False
        first.release.set()
        assert await running is True
        await asyncio.sleep(0.2)
        assert others.now == 2  # on time again: both threads
        others.release.set()
        assert await asyncio.gather(*waiting[1:]) == [True, True]
        assert waiting[0].cancelled()
    finally:
        first.release.set()
        others.release.set()
        pool.close()
