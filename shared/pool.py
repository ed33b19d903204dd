"""A bounded thread pool for CPU-heavy work (password hashing) kept off the event loop. Past its
queue bound a caller is refused at once with 503 instead of queueing without limit (SPEC §11). One of
its threads hashes at the event loop's priority, the others at a lower one: a login storm then takes
the cores that are spare, not the event loop's share, and still always gets a core's fair share
itself (issue 11). While the event loop runs late (`throttle_when`), one hash runs at a time: the
loop, which serves every other request and every MQTT connection, gets the other cores back."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

import anyio

from shared.errors import ServiceUnavailableError

P = ParamSpec("P")
T = TypeVar("T")

# Added to the nice value of every pool thread but the first. One argon2 verification keeps a core
# ~20-40 ms; with every core hashing at full priority, the event loop thread (which serves every other
# request and MQTT) got a core only in turn with the hashers, and during a reconnect storm each request
# waited out their time slices. At +10 a thread weighs a tenth of the loop with the scheduler: it takes
# every cycle nobody else wants, so logins lose nothing on an idle machine. The first thread keeps the
# loop's priority: with all of them lowered, a client retrying its 503s at once kept the loop busy
# answering them and the hashers starved, so the queue never drained (measured: 0 logins/s).
NICER = 10


class _Priorities:
    """The initializer of the pool's threads: the first keeps its priority, the next ones are lowered."""

    def __init__(self) -> None:
        self._started = 0
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            self._started += 1
            first = self._started == 1
        if not first:
            lower_priority()


def lower_priority() -> None:
    """Lower the calling thread's priority by NICER. On Linux every thread has its own nice value, set
    with setpriority() on its thread id; elsewhere that call would name a process, so nothing is done."""
    if sys.platform.startswith("linux"):
        tid = threading.get_native_id()
        with contextlib.suppress(OSError):  # a sandbox may forbid it; hashing then runs as before
            os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + NICER))


class BoundedPool:
    def __init__(self, *, workers: int = 0, queue: int = 64) -> None:
        self.workers = workers or os.cpu_count() or 2
        self.capacity = self.workers + queue
        self._executor = ThreadPoolExecutor(
            max_workers=self.workers, thread_name_prefix="handshake-hash", initializer=_Priorities()
        )
        self._pending = 0  # admitted or waiting for a turn
        # Turns to hash, first come first served: as many as there are threads, one while the loop is late.
        self._turns = anyio.CapacityLimiter(self.workers)
        self._late: Callable[[], bool] = lambda: False

    def throttle_when(self, late: Callable[[], bool]) -> None:
        """One hash at a time while `late()` says the event loop is behind (handshake serve's collector
        watches it): in a reconnect storm with a login storm, hashes on every core kept the loop from a
        core of its own (issue 11). The queue bound and its 503 are unchanged."""
        self._late = late

    def _pace(self) -> None:
        """Turns for the pace of now: raising them lets the next in line start, lowering them lets no
        one new start until enough hashes have ended."""
        self._turns.total_tokens = 1 if self._late() else self.workers

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        if self._pending >= self.capacity:
            raise ServiceUnavailableError("The server is busy; try again in a moment.", retry_after=1)
        self._pending += 1
        try:
            self._pace()
            async with self._turns:
                try:
                    return await asyncio.get_running_loop().run_in_executor(self._executor, lambda: fn(*args, **kwargs))
                finally:
                    self._pace()
        finally:
            self._pending -= 1

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
