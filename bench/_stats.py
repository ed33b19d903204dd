"""Benchmark helper: the figures and how they are printed. Percentiles and medians that skip nan, request
latencies, rates of runs (operations per second, the server's CPU per operation, what was refused or lost),
ratio lines against a baseline, and rounds that stop before they overrun a time allotment."""

from __future__ import annotations

import math
import statistics
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

DRAIN_TIMEOUT = 15.0  # s a connect run waits, at most, for the platform to write its presence changes


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return float("nan")
    rank = min(len(sorted_values), max(1, math.ceil(fraction * len(sorted_values))))
    return sorted_values[rank - 1]


def med(values: list[float]) -> float:
    """The median of the figures that are there (nan: not measured)."""
    clean = [v for v in values if v == v]
    return statistics.median(clean) if clean else float("nan")


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def cpu_text(us: float) -> str:
    # /proc counts in 10 ms ticks: under a tick per run reads as 0, which means "too small to see".
    return f"{us:6.0f}" if us == us and us > 0 else "     —"


def rounds(wanted: int, allotment: float) -> Iterator[int]:
    """Rounds within a part's time allotment: a round that would overrun it is dropped (one always runs)."""
    start = time.monotonic()
    for round_no in range(wanted):
        elapsed = time.monotonic() - start
        if round_no and elapsed + elapsed / round_no > allotment:
            print(f"  (rounds {round_no + 1}-{wanted} dropped: they would overrun the part's {allotment:.0f} s)")
            return
        yield round_no


@dataclass
class Latencies:
    """The successful requests' latencies of one run, what failed, and the server's CPU meanwhile."""

    values_ms: list[float]
    failures: Counter[str]
    wall: float
    server_cpu_ms: float = float("nan")  # the server's CPU per successful request

    @property
    def p50(self) -> float:
        return percentile(sorted(self.values_ms), 0.50)

    @property
    def p99(self) -> float:
        return percentile(sorted(self.values_ms), 0.99)

    @property
    def rate(self) -> float:
        return len(self.values_ms) / self.wall if self.wall else float("nan")

    def line(self, name: str, *, server: str = "server", width: int = 44) -> str:
        bad = ""
        if self.failures:
            bad = f"  FAILED {sum(self.failures.values())}: " + "; ".join(
                f"{c}× {w}" for w, c in self.failures.most_common(3)
            )
        return (f"  {name:<{width}} p50 {self.p50:6.1f} ms  p99 {self.p99:7.1f} ms  {self.rate:5.0f}/s"
                f"  {server} CPU {self.server_cpu_ms:5.2f} ms/op  ({len(self.values_ms)} ok){bad}")  # fmt: skip


@dataclass
class Rate:
    """One measured run of connects or messages."""

    per_s: float
    done: int
    cpu_us: float = float("nan")  # the measured server's CPU per operation (until drained, where measured)
    refused: Counter[str] = field(default_factory=Counter)
    drained_per_s: float = float("nan")  # ours: until the platform had also written every presence change
    unwritten: int = 0  # ... which it had not in time: device_connected events missing (1: some, not counted)
    broker_us: float = float("nan")  # a broker's CPU per operation, where the platform is not the broker
    collided: int = 0  # our connections that reused the name of an untracked closed one (RabbitMQ)
    lost: int = 0
    duplicates: int = 0
    cut_off: bool = False


def rate_line(name: str, rates: list[Rate], unit: str = "/s") -> str:
    """One run kind's median and rounds, with the broker's CPU and whatever went wrong."""
    per_s = [r.per_s for r in rates]
    extras = []
    refused: Counter[str] = Counter()
    for r in rates:
        refused.update(r.refused)
    if refused:
        extras.append("REFUSED " + ", ".join(f"{count}× {why}" for why, count in refused.most_common()))
    lost = sum(r.lost for r in rates)
    if lost:
        extras.append(f"{lost} LOST")
    dup = sum(r.duplicates for r in rates)
    if dup:
        extras.append(f"{dup} duplicated")
    if any(r.cut_off for r in rates):
        extras.append("cut off at the time cap")
    drained = [r.drained_per_s for r in rates]
    if any(d == d for d in drained):
        extras.append(
            f"with presence written: median {med(drained):.0f}/s, rounds {' '.join(f'{d:.0f}' for d in drained)}"
        )
    undrained = sum(1 for r in rates if r.unwritten)
    if undrained:
        extras.append(f"PRESENCE NOT WRITTEN within {DRAIN_TIMEOUT:.0f} s in {undrained} runs")
    extras.append(f"{sum(r.done for r in rates)} done")
    return (
        f"  {name:<28} median {med(per_s):6.0f}{unit}  broker CPU {cpu_text(med([r.cpu_us for r in rates]))} µs/op"
        f"   rounds: {' '.join(f'{v:.0f}' for v in per_s)}   [{', '.join(extras)}]"
    )


def ratio_line(
    label: str, ours: list[Rate], base: list[Rate], target: str, *, at_least: float | None = None, drained: bool = False
) -> str:
    """ours ÷ base by rate (drained: ours until its presence was written) and by the broker's CPU per op."""
    by_rate = med([r.drained_per_s if drained else r.per_s for r in ours]) / med([r.per_s for r in base])
    ours_cpu, base_cpu = med([r.cpu_us for r in ours]), med([r.cpu_us for r in base])
    by_cpu = f"{base_cpu / ours_cpu:5.2f}×" if ours_cpu > 0 and base_cpu > 0 else "   — "
    mark = f"  {verdict(by_rate >= at_least)}" if at_least is not None else ""
    return f"  {label:<36} {by_rate:5.2f}× by rate ({by_cpu} by broker CPU per op)   {target}{mark}"
