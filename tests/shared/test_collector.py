"""The garbage collector at a server's pace (shared.collector, issue 11): full passes when the loop is
quiet, or when memory grew or too long passed however busy it is; start-up frozen; all undone at stop."""

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
    MIN_INTERVAL,
    QUIET_FOR,
    Collector,
    Look,
    reason_to_collect,
)

MB = 2**20


def look(**changes: float | int | bool) -> Look:
    calm: dict[str, float | int | bool] = {
        "since_full": MIN_INTERVAL,
        "quiet_for": QUIET_FOR,
        "rss": 100 * MB,
        "rss_after_full": 100 * MB,
        "promoted": True,
    }
    return Look(**{**calm, **changes})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, "quiet"),
        ({"quiet_for": QUIET_FOR - 0.1}, None),  # busy: wait
        ({"since_full": MIN_INTERVAL - 1}, None),  # quiet, but a pass ran a moment ago
        ({"promoted": False}, None),  # nothing new in the old generation
        ({"promoted": False, "since_full": MAX_INTERVAL, "rss": 1000 * MB}, None),
        ({"quiet_for": 0.0, "since_full": MAX_INTERVAL}, "interval"),  # busy for too long
        ({"quiet_for": 0.0, "rss": int(100 * MB * GROWTH) + GROWTH_FLOOR}, "growth"),  # busy, memory grew enough
        ({"quiet_for": 0.0, "rss": int(100 * MB * GROWTH) - MB}, None),  # grew, not enough
        ({"quiet_for": 0.0, "rss": 20 * MB, "rss_after_full": 10 * MB}, None),  # doubled, by a few MB only
        ({"quiet_for": 0.0, "rss": 10_000 * MB, "rss_after_full": 0}, "growth"),  # no reading at the last pass
    ],
)
def test_when_a_full_pass_runs(changes: dict[str, float | int | bool], expected: str | None) -> None:
    assert reason_to_collect(look(**changes)) == expected


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
    """A collector that looks every 20 ms and calls 0.1 s of quiet enough."""
    if not collector.TAKES_OVER:
        pytest.skip("Python 3.14+ collects the old generation incrementally")
    monkeypatch.setattr(collector, "PERIOD", 0.02)
    monkeypatch.setattr(collector, "QUIET_FOR", 0.1)
    monkeypatch.setattr(collector, "MIN_INTERVAL", 0.0)
    owner = Collector()
    owner.start()
    try:
        yield owner
    finally:
        await owner.stop()


async def test_cyclic_garbage_is_collected_once_the_loop_is_quiet(quick: Collector) -> None:
    garbage = Cycle()
    collected = asyncio.Event()
    weakref.finalize(garbage, collected.set)
    for _ in range(3):  # survives young passes into the old generation, where only a full pass looks
        gc.collect(1)
    del garbage
    gc.collect(1)
    assert not collected.is_set()
    async with asyncio.timeout(5):
        await collected.wait()
    assert quick.passes[0][0] == "quiet"


async def test_a_busy_loop_postpones_the_full_pass(quick: Collector) -> None:
    gc.collect(1)  # something promoted: a pass would be worth it
    busy_until = time.monotonic() + 0.5
    while time.monotonic() < busy_until:  # the loop stays late on every look
        time.sleep(0.03)  # noqa: ASYNC251 -- blocking the loop is the point
        await asyncio.sleep(0)
    assert quick.passes == []
