"""A service's background tasks end the same way: cancelled, then awaited, so that their own clean-up
has run before whatever they used is closed."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any


async def stop(*tasks: asyncio.Task[Any] | None) -> None:
    """Cancel each task and wait until it has ended; None stands for a task never started."""
    for task in tasks:
        if task is None:
            continue
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def honour_cancel() -> None:
    """Raise the CancelledError that a library swallowed. On Python 3.11 `asyncio.wait_for` returns its
    result, and no CancelledError, when a cancel lands as the awaited call completes; redis-py sends every
    command through it. The task is still marked (`Task.cancelling()`): a loop that awaits such a library
    calls this each round, or a stop waits for ever on a task that goes on looping."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
