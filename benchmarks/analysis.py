"""Ratios and target verdicts computed from the measurement rows (no I/O, no formatting)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from benchmarks.formatting import count, ratio
from benchmarks.systems import FLOOR, LANGCHAIN, NAIVE, OURS, OURS_PLAIN

__all__ = ["PERSISTENT", "SYSTEM_ORDER", "Cells", "evaluate_targets", "ratios"]

SYSTEM_ORDER = (OURS, OURS_PLAIN, NAIVE, LANGCHAIN, FLOOR)
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
            row: Row = {"backend": backend, "length": length}
            for other, label in ((FLOOR, "floor"), (NAIVE, "naive"), (LANGCHAIN, "langchain")):
                for op in ("tail", "append"):
                    row[f"{op}_ours_over_{label}"] = _div(
                        p(backend, OURS, op, length), p(backend, other, op, length)
                    )
                row[f"turn_ours_over_{label}"] = _div(
                    cells.turn(backend, OURS, length), cells.turn(backend, other, length)
                )
            for op in ("tail", "append"):
                row[f"{op}_basestore_over_ours"] = _div(
                    p(backend, OURS_PLAIN, op, length), p(backend, OURS, op, length)
                )
            per_length.append(row)
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


def _worst(cells: Cells, backend: str, mine: Any, theirs: Any) -> tuple[float, int] | None:
    """The largest ratio ``mine(length) / theirs(length)`` over the measured lengths."""
    worst: tuple[float, int] | None = None
    for length in cells.lengths(backend):
        r = _div(mine(length), theirs(length))
        if r is not None and (worst is None or r > worst[0]):
            worst = (r, length)
    return worst


def _at_most(name: str, backend: str, worst: tuple[float, int] | None, threshold: float) -> Row:
    value = worst[0] if worst else None
    return _target(
        name,
        backend,
        value,
        threshold,
        None if value is None else value <= threshold,
        f"{ratio(value)} at {worst[1]:,} turns (worst length)" if worst else "",
    )


def evaluate_targets(
    latency: Sequence[Row], concurrency: Sequence[Row], backends: Sequence[str]
) -> list[Row]:
    """The targets of the storage-layer issue as PASS / MISS / SKIP (not measured at this
    run's sizes) verdicts.

    Latency targets concern the persistent backends; the in-memory store hands out
    references, so "naive" pays no serialisation there and the floor is a bare list.
    Every tail returns LangChain messages built the same way (see `systems`).
    """
    cells = Cells(latency)
    out: list[Row] = []
    p = cells.p50
    for backend in [b for b in PERSISTENT if b in backends]:

        def op_of(system: str, op: str, b: str = backend) -> Any:
            return lambda length: p(b, system, op, length)

        def turn_of(system: str, b: str = backend) -> Any:
            return lambda length: cells.turn(b, system, length)

        out.append(
            _at_most(
                "ours tail <= 1.5x floor tail (same message construction), every length",
                backend,
                _worst(cells, backend, op_of(OURS, "tail"), op_of(FLOOR, "tail")),
                1.5,
            )
        )
        flat = _div(p(backend, OURS, "tail", 100_000), p(backend, OURS, "tail", 1_000))
        out.append(
            _target(
                "ours tail at 100k <= 1.2x tail at 1k",
                backend,
                flat,
                1.2,
                None if flat is None else flat <= 1.2,
                ratio(flat),
            )
        )
        if backend == "sqlite":
            out.append(
                _at_most(
                    "ours full turn (tail + append) <= 1.5x floor, every length",
                    backend,
                    _worst(cells, backend, turn_of(OURS), turn_of(FLOOR)),
                    1.5,
                )
            )
            for label, mine, theirs in (
                ("tail", p(backend, OURS, "tail", 10), p(backend, NAIVE, "tail", 10)),
                ("full turn", cells.turn(backend, OURS, 10), cells.turn(backend, NAIVE, 10)),
            ):
                value = _div(mine, theirs)
                out.append(
                    _target(
                        f"ours {label} at 10 turns <= 1.0x the single-item blob (naive)",
                        backend,
                        value,
                        1.0,
                        None if value is None else value <= 1.0,
                        ratio(value),
                    )
                )
        if backend == "postgres":
            out.append(
                _at_most(
                    "ours append <= 1.2x langchain-postgres append, every length",
                    backend,
                    _worst(cells, backend, op_of(OURS, "append"), op_of(LANGCHAIN, "append")),
                    1.2,
                )
            )
            out.append(
                _at_most(
                    "ours append <= 1.5x the raw single-statement insert (floor), every length",
                    backend,
                    _worst(cells, backend, op_of(OURS, "append"), op_of(FLOOR, "append")),
                    1.5,
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
                "postgres: 8 writer processes on distinct keys >= 4x one writer",
                "postgres",
                scale,
                4.0,
                None if scale is None else scale >= 4,
                f"{ratio(scale)} ({count(by.get(8))} vs {count(by.get(1))} turns/s)",
            )
        )
    return out
