"""The garbage collector at a server's pace (shared.collector, issue 11): settle passes walk only what
young collections promoted since the last pass (once memory has grown enough, or after a while) and freeze
what survives; deep passes walk everything, on doubled memory, or after the interval at a quiet moment;
start-up frozen; all undone at stop."""

from __future__ import annotations

import asyncio
import gc
import time
import weakref
from collections.abc import AsyncIterator

import pytest

from shared import collector
from shared.collector import (
    GROWTH,
    GROWTH_FLOOR,
    MAX_INTERVAL,
    QUIET_FOR,
    SETTLE_EVERY,
    SETTLE_GROWTH,
    Collector,
    Look,
    pass_to_run,
)
from tests.device_connector.helpers import eventually


def look(**changes: float | int | bool) -> Look:
    calm: dict[str, float | int | bool] = {
        "since_deep": 60.0,
        "since_pass": 0.1,
        "quiet_for": QUIET_FOR,
        "promoted": True,
        "grown": SETTLE_GROWTH,
        "blocks": 1_000_000,
        "blocks_after_deep": 1_000_000,
    }
    return Look(**{**calm, **changes})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, "settle"),
        ({"quiet_for": 0.0}, "settle"),  # busy or not: a settle pass is small
        ({"grown": SETTLE_GROWTH - 1}, None),  # memory level: what was promoted is mostly requests in flight
        ({"grown": 0, "since_pass": SETTLE_EVERY}, "settle"),  # but not for ever
        ({"promoted": False}, None),  # grown, but nothing in the old generation to walk
        ({"promoted": False, "since_pass": SETTLE_EVERY}, None),
        ({"since_deep": MAX_INTERVAL}, "interval"),  # due, and the loop is quiet
        ({"since_deep": MAX_INTERVAL, "quiet_for": QUIET_FOR - 0.1}, "settle"),  # due, but busy: wait
        ({"since_deep": MAX_INTERVAL, "quiet_for": 0.0, "promoted": False}, None),
        ({"since_deep": 2 * MAX_INTERVAL, "quiet_for": 0.0}, "interval"),  # busy for too long
        ({"since_deep": MAX_INTERVAL, "promoted": False}, "interval"),  # frozen garbage needs no promotion
        ({"quiet_for": 0.0, "blocks": int(GROWTH * GROWTH_FLOOR), "blocks_after_deep": GROWTH_FLOOR}, "growth"),  # busy
        ({"promoted": False, "blocks": int(GROWTH * GROWTH_FLOOR), "blocks_after_deep": GROWTH_FLOOR}, "growth"),
        ({"grown": 0, "blocks": int(GROWTH * GROWTH_FLOOR) - 1, "blocks_after_deep": GROWTH_FLOOR}, None),  # not enough
        ({"grown": 0, "blocks": GROWTH_FLOOR, "blocks_after_deep": GROWTH_FLOOR // 2}, None),  # by too few
        ({"grown": 0, "blocks": 4 * GROWTH_FLOOR - 1, "blocks_after_deep": 2 * GROWTH_FLOOR}, None),  # not doubled
        ({"quiet_for": 0.0, "blocks": GROWTH_FLOOR, "blocks_after_deep": 0}, "growth"),  # none at the last pass
    ],
)
def test_which_pass_runs(changes: dict[str, float | int | bool], expected: str | None) -> None:
    assert pass_to_run(look(**changes)) == expected


@pytest.mark.skipif(not collector.TAKES_OVER, reason="Python 3.14+ collects the old generation incrementally")
async def test_the_collector_takes_full_passes_over_and_gives_them_back() -> None:
    before = gc.get_threshold()
    owner = Collector()
    owner.start()
    try:
        assert gc.get_threshold()[:2] == before[:2]  # young collections stay CPython's
        assert gc.get_threshold()[2] >= collector.NEVER
        assert gc.get_freeze_count() > 0  # what start-up made is frozen
    finally:
        await owner.stop()
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


class Cycle:
    def __init__(self) -> None:
        self.me = self


@pytest.fixture
async def quick(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Collector]:
    """A collector that looks every 20 ms and settles whatever was promoted after 50 ms."""
    if not collector.TAKES_OVER:
        pytest.skip("Python 3.14+ collects the old generation incrementally")
    monkeypatch.setattr(collector, "PERIOD", 0.02)
    monkeypatch.setattr(collector, "SETTLE_EVERY", 0.05)
    owner = Collector()
    owner.start()
    try:
        yield owner
    finally:
        await owner.stop()


def promote() -> None:
    """Young collections, as CPython runs them: survivors reach the old generation."""
    for _ in range(3):
        gc.collect(1)


def tracked(thing: object) -> bool:
    """In one of the collector's generations: neither frozen nor freed."""
    return any(o is thing for o in gc.get_objects())


async def test_garbage_promoted_since_the_last_pass_goes_at_the_next_settle_pass(quick: Collector) -> None:
    garbage = Cycle()
    collected = asyncio.Event()
    weakref.finalize(garbage, collected.set)
    promote()  # into the old generation, where young collections never look
    del garbage
    gc.collect(1)
    assert not collected.is_set()
    async with asyncio.timeout(5):
        await collected.wait()
    assert any(reason == "settle" for reason, _ in quick.passes)


async def test_a_settle_pass_freezes_its_survivors_and_only_a_deep_pass_walks_them_again(quick: Collector) -> None:
    survivor = Cycle()
    collected = asyncio.Event()
    weakref.finalize(survivor, collected.set)
    promote()
    async with asyncio.timeout(5):
        while tracked(survivor):  # noqa: ASYNC110 - nothing to await: the next settle pass walks it, then freezes it
            await asyncio.sleep(0.01)
    settled = len(quick.passes)
    del survivor  # garbage now, but out of the settle passes' sight
    async with asyncio.timeout(5):
        while len(quick.passes) < settled + 2:
            promote()
            await asyncio.sleep(0.03)
    assert not collected.is_set()
    quick.collect("interval")  # a deep pass: everything walked again
    assert collected.is_set()
    assert gc.get_freeze_count() > 0  # and what it found alive frozen again


async def test_a_loop_that_ran_late_is_told_for_a_moment(quick: Collector, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(collector, "LATE_HOLD", 1.0)
    # Waited for, not assumed: on a loaded machine (the suite's other worker) the loop may itself run
    # LATE_LAG behind now and then.
    assert await eventually(lambda: not quick.late(), timeout=10)
    time.sleep(collector.LATE_LAG * 2)  # noqa: ASYNC251 -- blocking the loop is the point
    await asyncio.sleep(0.05)
    assert quick.late()  # the hashing pool now hashes one at a time (tests/shared/test_pool.py)
    assert await eventually(lambda: not quick.late(), timeout=10)
