"""One writer for what the broker records: presence and events. Writes queue here in the order they
happened and are committed in batches by a single task, so a reconnect storm is a few transactions
instead of thousands of competing ones, and a device's connect is never written after its disconnect."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from shared.context import Context
from shared.db import Tx

log = logging.getLogger("handshake.journal")

Entry = Callable[[Tx], Awaitable[None]]
MAX_BATCH = 500
MAX_QUEUE = 100_000


class Journal:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._queue: asyncio.Queue[Entry] = asyncio.Queue(maxsize=MAX_QUEUE)
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0

    def add(self, entry: Entry) -> None:
        try:
            self._queue.put_nowait(entry)
        except asyncio.QueueFull:
            self.dropped += 1  # bounded: past 100,000 pending writes, the newest are dropped and counted

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="handshake-journal")

    async def stop(self, timeout: float = 5.0) -> None:
        """Write what is queued (for a bounded time), then stop."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._queue.join()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < MAX_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            await self._commit(batch)
            for _ in batch:
                self._queue.task_done()

    async def _commit(self, batch: list[Entry]) -> None:
        for attempt in range(5):
            try:
                async with self.ctx.db.write() as tx:
                    for entry in batch:
                        await entry(tx)
                return
            except Exception as exc:
                log.warning("journal write of %d entries failed (%r); retrying", len(batch), exc)
                await asyncio.sleep(0.2 * 2**attempt)
        log.error("journal dropped %d entries after retries", len(batch))
