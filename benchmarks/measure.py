"""Timing primitives: a warmed-up, time-budgeted repetition loop and its summary statistics."""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

__all__ = ["Stats", "percentile", "quiet_gc", "summarize", "time_calls", "time_interleaved"]


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Linear-interpolated percentile of already sorted values (``fraction`` in [0, 1])."""
    if not sorted_values:
        return math.nan
    rank = fraction * (len(sorted_values) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (rank - low)


@dataclass(frozen=True, slots=True)
class Stats:
    """Summary of one cell's timed calls, in milliseconds."""

    n: int
    p50_ms: float
    p95_ms: float
    mean_ms: float
    samples_ms: tuple[float, ...]

    def as_dict(self) -> dict[str, object]:
        """JSON-ready form; samples are rounded to 0.1 microsecond to keep the file small."""
        return {
            "n": self.n,
            "p50_ms": self.p50_ms,
            "p95_ms": self.p95_ms,
            "mean_ms": self.mean_ms,
            "samples_ms": [round(s, 4) for s in self.samples_ms],
        }


def summarize(samples_ns: Sequence[int]) -> Stats:
    """p50, p95 and mean of durations given in nanoseconds."""
    values = [s / 1e6 for s in samples_ns]
    ordered = sorted(values)
    mean = sum(values) / len(values) if values else math.nan
    return Stats(
        len(values), percentile(ordered, 0.5), percentile(ordered, 0.95), mean, tuple(values)
    )


@contextmanager
def quiet_gc() -> Iterator[None]:
    """Collect, then freeze what exists, so the big fixtures (100k-turn histories) built
    by the benchmark are not rescanned by the collector during timed calls; garbage made
    by the calls themselves is still collected as it would be in production."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


@dataclass(slots=True)
class _Timing:
    call: Callable[[int], object]
    prepare: Callable[[int], object] | None
    index: int = 0
    spent_s: float = 0.0
    samples: list[int] = field(default_factory=list)

    def step(self, timed: bool) -> None:
        began = time.perf_counter()
        if self.prepare is not None:
            self.prepare(self.index)
        t0 = time.perf_counter_ns()
        self.call(self.index)
        elapsed = time.perf_counter_ns() - t0
        if timed:
            self.samples.append(elapsed)
        self.index += 1
        self.spent_s += time.perf_counter() - began


def time_interleaved(
    calls: Sequence[tuple[Callable[[int], object], Callable[[int], object] | None]],
    *,
    reps: int,
    min_reps: int,
    warmup: int,
    budget_s: float,
) -> list[list[int]]:
    """Time several ``(call, prepare)`` pairs in turn, one call of each per round, and
    return each one's durations in nanoseconds (see `time_calls`).

    Taking turns puts every system's calls in the same moments of the run: on a machine
    shared with other jobs, a slow spell then slows them all alike instead of the one
    cell that happened to be running, and the ratios between systems stay true.
    """
    timings = [_Timing(call, prepare) for call, prepare in calls]
    active = list(timings)
    for _ in range(warmup):
        active = [t for t in active if t.spent_s <= budget_s / 4]
        if not active:
            break
        for timing in active:
            timing.step(timed=False)
    for timing in timings:
        timing.spent_s = 0.0
    active = list(timings)
    for round_ in range(reps):
        # The order turns each round, so no system always follows the same other one
        # (whose writes it might pay for).
        turn = round_ % len(active)
        for timing in active[turn:] + active[:turn]:
            timing.step(timed=True)
        active = [t for t in active if len(t.samples) < min_reps or t.spent_s <= budget_s]
        if not active:
            break
    return [t.samples for t in timings]


def time_calls(
    call: Callable[[int], object],
    *,
    reps: int,
    min_reps: int,
    warmup: int,
    budget_s: float,
    prepare: Callable[[int], object] | None = None,
) -> list[int]:
    """Time ``call(i)`` with `time.perf_counter_ns`; return the durations in nanoseconds.

    ``prepare(i)``, when given, runs untimed before each call (warm-up calls included),
    with the same running index ``i``. Warm-up stops early once it has used a quarter of
    the budget, and timing stops after ``min_reps`` once the budget is spent: slow cells
    (a naive read of 100k turns) get fewer repetitions instead of stalling the run.
    """
    [samples] = time_interleaved(
        [(call, prepare)], reps=reps, min_reps=min_reps, warmup=warmup, budget_s=budget_s
    )
    return samples
