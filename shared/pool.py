"""A bounded thread pool for CPU-heavy work (password hashing) kept off the event loop. Past its
queue bound a caller is refused at once with 503 instead of queueing without limit (SPEC §11)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from shared.errors import ServiceUnavailableError

P = ParamSpec("P")
T = TypeVar("T")


class BoundedPool:
    def __init__(self, *, workers: int = 0, queue: int = 64) -> None:
        self.workers = workers or os.cpu_count() or 2
        self.capacity = self.workers + queue
        self._executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="handshake-hash")
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
