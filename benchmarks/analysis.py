"""Ratios and target verdicts computed from the measurement rows (no I/O, no formatting)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from benchmarks.formatting import count, ratio
from benchmarks.systems import FLOOR, LANGCHAIN, NAIVE, OURS

__all__ = ["PERSISTENT", "SYSTEM_ORDER", "Cells", "evaluate_targets", "ratios"]

SYSTEM_ORDER = (OURS, NAIVE, LANGCHAIN, FLOOR)
PERSISTENT = ("sqlite", "postgres")
Row = dict[str, Any]


class Cells:
    """p50 lookup by (backend, system, op, length)."""

    def __init__(self, latency: Iterable[Row]) -> None:
        self.rows = {(r["backend"], r["system"], r["op"], r["length"]): r for r in latency}

    def p50(self, backend: str, system: str, op: str, length: int) -> float | None:
        row = self.rows.get((backend, system, op, length))
        return float(row["p50_ms"]) if row else None

    def turn(self, backend: str, system: str, length: int) -> float | None:
        """A full turn's store work: one tail read plus one append."""
        tail = self.p50(backend, system, "tail", length)
        append = self.p50(backend, system, "append", length)
        return None if tail is None or append is None else tail + append

    def backends(self) -> list[str]:
        return list(dict.fromkeys(k[0] for k in self.rows))

    def systems(self, backend: str) -> list[str]:
        present = {k[1] for k in self.rows if k[0] == backend}
        return [s for s in SYSTEM_ORDER if s in present]

    def lengths(self, backend: str) -> list[int]:
        return sorted({k[3] for k in self.rows if k[0] == backend})


def _div(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def ratios(latency: Sequence[Row], tail_n: int) -> dict[str, Any]:
    """p50 ratios per backend and length (below 1: ours is faster), and tail flatness."""
    cells = Cells(latency)
    per_length: list[Row] = []
    flatness: list[Row] = []
    for backend in cells.backends():
        lengths = cells.lengths(backend)
        for length in lengths:
            p = cells.p50
            per_length.append(
                {
                    "backend": backend,
                    "length": length,
                    "tail_ours_over_floor": _div(
                        p(backend, OURS, "tail", length), p(backend, FLOOR, "tail", length)
                    ),
                    "append_ours_over_floor": _div(
                        p(backend, OURS, "append", length), p(backend, FLOOR, "append", length)
                    ),
                    "tail_ours_over_naive": _div(
                        p(backend, OURS, "tail", length), p(backend, NAIVE, "tail", length)
                    ),
                    "append_ours_over_naive": _div(
                        p(backend, OURS, "append", length), p(backend, NAIVE, "append", length)
                    ),
                    "turn_ours_over_naive": _div(
                        cells.turn(backend, OURS, length), cells.turn(backend, NAIVE, length)
                    ),
                    "tail_ours_over_langchain": _div(
                        p(backend, OURS, "tail", length), p(backend, LANGCHAIN, "tail", length)
                    ),
                    "append_ours_over_langchain": _div(
                        p(backend, OURS, "append", length),
                        p(backend, LANGCHAIN, "append", length),
                    ),
                }
            )
        if len(lengths) >= 2:
            # The shortest history returns fewer turns than the window holds; the first
            # length that fills the window compares equal amounts of work.
            full_window = next((n for n in lengths if n >= tail_n), lengths[0])
            for system in cells.systems(backend):
                top = cells.p50(backend, system, "tail", lengths[-1])
                flatness.append(
                    {
                        "backend": backend,
                        "system": system,
                        "from_length": lengths[0],
                        "full_window_length": full_window,
                        "to_length": lengths[-1],
                        "tail_growth": _div(top, cells.p50(backend, system, "tail", lengths[0])),
                        "tail_growth_full_window": _div(
                            top, cells.p50(backend, system, "tail", full_window)
                        ),
                    }
                )
    return {"per_length": per_length, "flatness": flatness}


def _target(
    name: str, backend: str, value: float | None, threshold: float, ok: bool | None, detail: str
) -> Row:
    status = "SKIP" if value is None or ok is None else ("PASS" if ok else "MISS")
    if status == "SKIP":
        detail = "not measured at this run's sizes"
    return {
        "target": name,
        "backend": backend,
        "value": value,
        "threshold": threshold,
        "status": status,
        "detail": detail,
    }


def evaluate_targets(
    latency: Sequence[Row], concurrency: Sequence[Row], backends: Sequence[str]
) -> list[Row]:
    """The issue's targets as PASS / MISS / SKIP (not measured at this size) verdicts.

    Latency targets concern the persistent backends; the in-memory store hands out
    references, so "naive" pays no serialisation there and the floor is a bare list.
    """
    cells = Cells(latency)
    out: list[Row] = []
    for backend in [b for b in PERSISTENT if b in backends]:
        top = cells.p50(backend, OURS, "tail", 100_000)
        flat = _div(top, cells.p50(backend, OURS, "tail", 10))
        # A 10-turn history returns 10 turns, not a full window: say how 100 compares too.
        window = _div(top, cells.p50(backend, OURS, "tail", 100))
        out.append(
            _target(
                "ours tail at 100k <= 1.2x tail at 10",
                backend,
                flat,
                1.2,
                None if flat is None else flat <= 1.2,
                f"{ratio(flat)} (vs 100 turns, a full window: {ratio(window)})",
            )
        )
        for op in ("tail", "append"):
            worst: tuple[float, int] | None = None
            for length in cells.lengths(backend):
                r = _div(
                    cells.p50(backend, OURS, op, length), cells.p50(backend, FLOOR, op, length)
                )
                if r is not None and (worst is None or r > worst[0]):
                    worst = (r, length)
            out.append(
                _target(
                    f"ours {op} <= 2x floor (worst length)",
                    backend,
                    worst[0] if worst else None,
                    2.0,
                    None if worst is None else worst[0] <= 2.0,
                    f"{ratio(worst[0])} at {worst[1]:,}" if worst else "",
                )
            )
        speedup = _div(
            cells.p50(backend, NAIVE, "tail", 10_000), cells.p50(backend, OURS, "tail", 10_000)
        )
        out.append(
            _target(
                "ours tail >= 50x faster than naive at 10k",
                backend,
                speedup,
                50.0,
                None if speedup is None else speedup >= 50,
                f"{ratio(speedup)} faster",
            )
        )
        turn = _div(cells.turn(backend, NAIVE, 100_000), cells.turn(backend, OURS, 100_000))
        out.append(
            _target(
                "ours turn (tail+append) >= 50x faster than naive at 100k",
                backend,
                turn,
                50.0,
                None if turn is None else turn >= 50,
                f"{ratio(turn)} faster",
            )
        )
        ours = [r for r in concurrency if r["backend"] == backend and r["system"] == OURS]
        lost = sum(r["lost_turns"] for r in ours) if ours else None
        errors = sum(r["errors"] for r in ours)
        out.append(
            _target(
                "ours loses 0 turns at every concurrency level",
                backend,
                None if lost is None else float(lost),
                0.0,
                None if lost is None else lost == 0 and errors == 0,
                f"{lost} lost, {errors} failed appends over {len(ours)} runs",
            )
        )
    if "postgres" in backends:
        by = {
            r["writers"]: r["turns_per_s"]
            for r in concurrency
            if r["backend"] == "postgres" and r["system"] == OURS and r["keys"] == "distinct_keys"
        }
        scale = _div(by.get(8), by.get(1))
        out.append(
            _target(
                "postgres: 8 writers on distinct keys >= 4x one writer",
                "postgres",
                scale,
                4.0,
                None if scale is None else scale >= 4,
                f"{ratio(scale)} ({count(by.get(8))} vs {count(by.get(1))} turns/s)",
            )
        )
    return out
