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
async def test_hashing_threads_run_at_a_lower_priority_than_the_event_loop() -> None:
    pool = BoundedPool(workers=2, queue=4)
    try:
        loop_nice = _own_nice()
        seen = await asyncio.gather(*(pool.run(_own_nice) for _ in range(4)))
        assert set(seen) == {min(19, loop_nice + NICER)}
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
