"""Python's garbage collector at a server's pace (issue 11). CPython runs a full collection whenever
the objects that survived young collections grow by a quarter; each one walks every tracked object with
the GIL held. With 10,000 MQTT connections (~200 objects each: tasks, futures, queues) a full pass
stalled the event loop for 0.4-2 s, and a reconnect storm triggered one every few seconds: 18 s of a
40-s storm's CPU went to the collector, and every HTTP request and CONNECT waited behind it.

`handshake serve` therefore takes the full collections over: young collections stay CPython's (they are
short), objects made during start-up are frozen (never walked again), and a full pass runs when the
event loop has been quiet for a moment, or, however busy it is, once memory has doubled or
`MAX_INTERVAL` has passed, so cyclic garbage never piles up without bound. From Python 3.14 the
interpreter collects the old generation in increments itself; there only the freeze is ours."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import sys
import time
from dataclasses import dataclass

from prometheus_client import Counter

from shared import background

log = logging.getLogger("handshake.collector")

PERIOD = 0.5  # s between looks at the event loop
QUIET_LAG = 0.005  # s: a look that came this late or less finds the loop quiet
QUIET_FOR = 2.0  # s of quiet before a full pass
MIN_INTERVAL = 30.0  # s: never two quiet-time passes closer than this
MAX_INTERVAL = 600.0  # s: a full pass at the latest, busy or not
GROWTH = 2.0  # resident memory this many times that after the last pass: a full pass, busy or not
GROWTH_FLOOR = 128 * 2**20  # bytes: and grown by at least this much (small processes grow in big steps)
NEVER = 1_000_000  # young-generation passes before CPython would run a full one by itself
TAKES_OVER = sys.version_info < (3, 14)  # 3.14's incremental collector has no stop-the-world full pass


@dataclass(frozen=True, slots=True)
class Look:
    """What the collector knows when it decides: seconds since the last full pass, how long the loop
    has been quiet, resident memory now and after the last pass, and whether anything has been promoted
    to the old generation since then."""

    since_full: float
    quiet_for: float
    rss: int
    rss_after_full: int
    promoted: bool


def reason_to_collect(look: Look) -> str | None:
    """The reason for a full pass now, or None."""
    if not look.promoted:
        return None  # nothing new in the old generation: a full pass would find what the last one found
    if look.since_full >= MAX_INTERVAL:
        return "interval"
    if look.rss >= look.rss_after_full * GROWTH and look.rss - look.rss_after_full >= GROWTH_FLOOR:
        return "growth"
    if look.quiet_for >= QUIET_FOR and look.since_full >= MIN_INTERVAL:
        return "quiet"
    return None


def resident_bytes() -> int:
    """This process's resident memory, from /proc (0 where there is none: growth then never decides)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class Collector:
    def __init__(self, counter: Counter | None = None) -> None:
        self.counter = counter  # handshake_gc_full_collections{reason}
        self._task: asyncio.Task[None] | None = None
        self._thresholds = gc.get_threshold()
        self._last_full = time.monotonic()
        self._rss_after_full = 0
        self.passes: list[tuple[str, float]] = []  # (reason, seconds it held the GIL), the latest few

    def start(self) -> None:
        gc.collect()
        gc.freeze()  # what start-up made (modules, settings, keys, caches' shells) lives as long as the process
        if not TAKES_OVER:
            return
        young, middle, _ = self._thresholds
        gc.set_threshold(young, middle, NEVER)
        self._mark_full()
        self._task = asyncio.get_running_loop().create_task(self._watch(), name="handshake-collector")

    async def stop(self) -> None:
        await background.stop(self._task)
        self._task = None
        gc.set_threshold(*self._thresholds)
        gc.unfreeze()

    def _mark_full(self) -> None:
        self._last_full = time.monotonic()
        self._rss_after_full = resident_bytes()

    def collect(self, reason: str) -> None:
        started = time.perf_counter()
        gc.collect()
        held = time.perf_counter() - started
        self._mark_full()
        self.passes = [*self.passes[-9:], (reason, held)]
        if self.counter is not None:
            self.counter.labels(reason=reason).inc()
        log.debug("full garbage collection (%s) in %.0f ms", reason, held * 1000)

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        quiet_since: float | None = None
        while True:
            asked = loop.time()
            await asyncio.sleep(PERIOD)
            now = loop.time()
            if now - asked - PERIOD > QUIET_LAG:
                quiet_since = None
            elif quiet_since is None:
                quiet_since = now
            look = Look(
                since_full=time.monotonic() - self._last_full,
                quiet_for=0.0 if quiet_since is None else now - quiet_since,
                rss=resident_bytes(),
                rss_after_full=self._rss_after_full,
                # In CPython the oldest generation's count is the middle generation's passes since the
                # last full one: each of those promoted survivors into the old generation.
                promoted=gc.get_count()[2] > 0,
            )
            reason = reason_to_collect(look)
            if reason is not None:
                self.collect(reason)
                quiet_since = None
