"""A bounded thread pool for CPU-heavy work (password hashing) kept off the event loop. Past its
queue bound a caller is refused at once with 503 instead of queueing without limit (SPEC §11). Its
threads run at a lower CPU priority than the event loop, so a login storm uses the cores that are spare
and never the event loop's share (issue 11)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from shared.errors import ServiceUnavailableError

P = ParamSpec("P")
T = TypeVar("T")

# Added to the nice value of each pool thread. One argon2 verification keeps a core ~20-40 ms; with
# every core hashing, the event loop thread (which serves every other request and MQTT) would get a
# core only in turn with the hashers, and each request behind it would wait out their time slices.
# At +10 a hashing thread weighs a tenth of the loop with the scheduler: hashing still takes every
# cycle nobody else wants, so logins lose nothing on an idle machine.
NICER = 10


def lower_priority() -> None:
    """Run in each pool thread as it starts. On Linux every thread has its own nice value, set with
    setpriority() on its thread id; elsewhere that call would name a process, so nothing is done."""
    if sys.platform.startswith("linux"):
        tid = threading.get_native_id()
        with contextlib.suppress(OSError):  # a sandbox may forbid it; hashing then runs as before
            os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + NICER))


class BoundedPool:
    def __init__(self, *, workers: int = 0, queue: int = 64) -> None:
        self.workers = workers or os.cpu_count() or 2
        self.capacity = self.workers + queue
        self._executor = ThreadPoolExecutor(
            max_workers=self.workers, thread_name_prefix="handshake-hash", initializer=lower_priority
        )
        self._pending = 0

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        if self._pending >= self.capacity:
            raise ServiceUnavailableError("The server is busy; try again in a moment.", retry_after=1)
        self._pending += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, lambda: fn(*args, **kwargs))
        finally:
            self._pending -= 1

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
