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
