"""Python's garbage collector at a server's pace (issue 11). CPython runs a full collection whenever
the objects that survived young collections grow by a quarter; each one walks every tracked object with
the GIL held. With 10,000 MQTT connections (~200 objects each: tasks, futures, queues) a full pass
stalled the event loop for 0.7-1.8 s, and a reconnect storm, which replaces every connection's objects,
set one off every few seconds.

`handshake serve` therefore takes the old generation over, and walks each long-lived object once:

- **settle** passes, small and often: once memory in use has grown by SETTLE_GROWTH blocks since the
  last pass (`sys.getallocatedblocks`, looked at every `PERIOD`), or SETTLE_EVERY after it if young
  collections promoted anything at all, a full collection runs and its survivors are frozen
  (`gc.freeze`), so the next one walks only what has been promoted since. In a storm that is a pass
  every tenth of a second or so, of tens of milliseconds, where one pass over everything stalled for
  seconds. Under plain HTTP load memory in use stays level (requests come and go), so a pass runs every
  few seconds: passes every 0.1 s took 8% of the event loop under wrk's commands, walking requests in
  flight that were freed a moment later.
- **deep** passes, rare: the frozen objects are given back (`gc.unfreeze`) and everything is walked, for
  cyclic garbage made of objects that lived long enough to be frozen. One runs once the memory blocks
  in use have doubled since the last, busy or not, so such garbage never piles up without bound, and
  one after `MAX_INTERVAL` at a quiet moment (or, busy all along, at twice that). Blocks in use, not
  resident memory: a reconnect storm frees 10,000 connections and makes 10,000 new ones, so the blocks
  in use come back to where they were, while resident memory grows (freed memory stays in the
  process). A deep pass that resident memory set off inside a storm found nothing to free, and held
  the loop for 1.2 s.

MQTT connections and sessions are freed by reference counting alone (measured: a deep pass after 10,000
connections dropped, and after 10,000 closed cleanly, found no cyclic garbage at all), so what a settle
pass freezes almost always dies without the collector. Young collections stay CPython's. From Python 3.14
the interpreter collects the old generation in increments itself; there only the start-up freeze is
ours."""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import time
from dataclasses import dataclass

from prometheus_client import Counter

from shared import background

log = logging.getLogger("handshake.collector")

PERIOD = 0.1  # s between looks
# Memory blocks in use more than at the last pass (or since, at the least): a settle pass. A pass walks
# what was promoted since the last one: at 50,000, passes of up to 48 ms were seen in a PostgreSQL storm.
SETTLE_GROWTH = 25_000
SETTLE_EVERY = 5.0  # s after the last pass: a settle pass for whatever was promoted, however little
QUIET_LAG = 0.005  # s: a look that came this late or less finds the loop quiet
QUIET_FOR = 2.0  # s of quiet before a deep pass that is due
LATE_LAG = 0.05  # s: a look that came this late finds the loop behind (`late`)
LATE_HOLD = 1.0  # s the loop counts as behind after such a look
MAX_INTERVAL = 3600.0  # s between deep passes: at a quiet moment after this, busy or not after twice this
GROWTH = 2.0  # memory blocks in use this many times those after the last deep pass: a deep pass, busy or not
GROWTH_FLOOR = 2_000_000  # blocks: and grown by at least this many (about 100 MB: small processes grow in big steps)
NEVER = 1_000_000  # young-generation passes before CPython would run a full one by itself
TAKES_OVER = sys.version_info < (3, 14)  # 3.14's incremental collector has no stop-the-world full pass
SETTLE = "settle"
DEEP = frozenset({"growth", "interval"})


@dataclass(frozen=True, slots=True)
class Look:
    """What the collector knows when it decides: seconds since the last deep pass and since the last
    pass of any kind, how long the loop has been quiet, whether young collections have promoted
    anything to the old generation since the last pass, how many more memory blocks are in use than at
    the last pass (or at the lowest since), and how many are in use now and were after the last deep
    pass."""

    since_deep: float
    since_pass: float
    quiet_for: float
    promoted: bool
    grown: int
    blocks: int
    blocks_after_deep: int


def pass_to_run(look: Look) -> str | None:
    """The pass to run now ("growth" and "interval" are deep, "settle" is not), or None."""
    if look.blocks >= look.blocks_after_deep * GROWTH and look.blocks - look.blocks_after_deep >= GROWTH_FLOOR:
        return "growth"
    if look.since_deep >= 2 * MAX_INTERVAL or (look.since_deep >= MAX_INTERVAL and look.quiet_for >= QUIET_FOR):
        return "interval"
    if look.promoted and (look.grown >= SETTLE_GROWTH or look.since_pass >= SETTLE_EVERY):
        return SETTLE
    return None  # little new in the old generation, nothing due


class Collector:
    def __init__(self, counter: Counter | None = None) -> None:
        self.counter = counter  # handshake_gc_full_collections{reason}
        self._task: asyncio.Task[None] | None = None
        self._thresholds = gc.get_threshold()
        self._last_deep = self._last_pass = time.monotonic()
        self._blocks_after_deep = 0
        self._blocks_low = sys.getallocatedblocks()  # blocks in use at the last pass, or the fewest since
        self._late_until = 0.0
        self.passes: list[tuple[str, float]] = []  # (reason, seconds it held the GIL), the latest few

    def start(self) -> None:
        gc.collect()
        gc.freeze()  # what start-up made (modules, settings, keys, caches' shells) lives as long as the process
        if TAKES_OVER:
            young, middle, _ = self._thresholds
            gc.set_threshold(young, middle, NEVER)
            self._mark_deep()
        # Watched on every Python: `late` paces the hashing pool even where the interpreter collects.
        self._task = asyncio.get_running_loop().create_task(self._watch(), name="handshake-collector")

    async def stop(self) -> None:
        await background.stop(self._task)
        self._task = None
        gc.set_threshold(*self._thresholds)
        gc.unfreeze()

    def late(self) -> bool:
        """Whether the event loop was more than LATE_LAG behind in the last LATE_HOLD seconds (the
        hashing pool then hashes one at a time, shared.pool)."""
        return time.monotonic() < self._late_until

    def _mark_deep(self) -> None:
        self._last_deep = time.monotonic()
        self._blocks_after_deep = sys.getallocatedblocks()

    def collect(self, reason: str) -> None:
        """A full collection of what is not frozen (a deep pass unfreezes everything first), its
        survivors frozen after it."""
        started = time.perf_counter()
        if reason in DEEP:
            gc.unfreeze()
        gc.collect()
        gc.freeze()
        held = time.perf_counter() - started
        self._last_pass = time.monotonic()
        self._blocks_low = sys.getallocatedblocks()
        if reason in DEEP:
            self._mark_deep()
        self.passes = [*self.passes[-9:], (reason, held)]
        if self.counter is not None:
            self.counter.labels(reason=reason).inc()
        log.debug("full garbage collection (%s) in %.1f ms", reason, held * 1000)

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        quiet_since: float | None = None
        while True:
            asked = loop.time()
            await asyncio.sleep(PERIOD)
            now = loop.time()
            lag = now - asked - PERIOD
            if lag > LATE_LAG:
                self._late_until = time.monotonic() + LATE_HOLD
            if not TAKES_OVER:
                continue
            if lag > QUIET_LAG:
                quiet_since = None
            elif quiet_since is None:
                quiet_since = now
            # Memory freed since the last pass (a storm's drop) lowers the mark growth is counted from.
            blocks = sys.getallocatedblocks()  # a sum over pymalloc's arenas: ~0.1 ms with 6,000,000 blocks
            self._blocks_low = min(self._blocks_low, blocks)
            look = Look(
                since_deep=time.monotonic() - self._last_deep,
                since_pass=time.monotonic() - self._last_pass,
                quiet_for=0.0 if quiet_since is None else now - quiet_since,
                # In CPython the oldest generation's count is the middle generation's passes since the
                # last full one: each of those promoted survivors into the old generation.
                promoted=gc.get_count()[2] > 0,
                grown=blocks - self._blocks_low,
                blocks=blocks,
                blocks_after_deep=self._blocks_after_deep,
            )
            reason = pass_to_run(look)
            if reason is not None:
                self.collect(reason)
                if reason in DEEP:
                    quiet_since = None
