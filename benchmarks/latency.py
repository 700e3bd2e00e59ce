"""Tail-read and append latency of every system at every history length, on one backend.

Every conversation is loaded before anything is timed, so all lengths are measured
against the same database (as in production, where short and long conversations share
one store) and a cell's length is not confounded with how full the database was.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from benchmarks.backends import BackendRun
from benchmarks.measure import quiet_gc, summarize, time_calls, time_interleaved
from benchmarks.modes import BenchConfig
from benchmarks.systems import NAIVE, OURS_PLAIN, HistorySystem
from benchmarks.workload import turn_pair

__all__ = ["appends_per_conversation", "run_latency", "run_store_primitives"]

Log = Callable[[str], None]
Row = dict[str, Any]


def appends_per_conversation(length: int, growth_limit: float) -> int:
    """Timed appends one conversation may take before it has grown more than allowed.

    Each append adds two turns; a 10-turn conversation takes one append (12 turns, the
    nearest we can get), a 100k-turn one thousands. Further appends go to more
    conversations of the same length, built untimed just before they are needed.
    """
    return max(1, int(length * growth_limit) // 2)


@dataclass(slots=True)
class _Cell:
    """One (system, length): its conversations and how long the first took to load."""

    system: HistorySystem
    length: int
    tag: str
    keys: list[str]
    per_conversation: int
    load_s: float = 0.0
    built: list[str] = field(default_factory=list)

    @property
    def base(self) -> Row:
        return {"backend": self.system.backend, "system": self.system.name, "length": self.length}

    def build(self, index: int) -> str:
        key = self.keys[index]
        if key not in self.built:
            self.system.load(key, self.length)
            self.built.append(key)
        return key


def _new_cell(system: HistorySystem, length: int, cfg: BenchConfig) -> _Cell:
    tag = uuid.uuid4().hex[:8]
    per_conversation = appends_per_conversation(length, cfg.growth_limit)
    conversations = math.ceil((cfg.warmup + cfg.reps) / per_conversation)
    keys = [f"bench-{system.name}-{length}-{tag}-{i}" for i in range(conversations)]
    cell = _Cell(system, length, tag, keys, per_conversation)
    started = time.perf_counter()
    cell.build(0)
    cell.load_s = time.perf_counter() - started
    return cell


def _timed(call: Callable[[int], object], cfg: BenchConfig, **kwargs: Any) -> list[int]:
    with quiet_gc():
        return time_calls(
            call,
            reps=cfg.reps,
            min_reps=cfg.min_reps,
            warmup=cfg.warmup,
            budget_s=cfg.cell_budget_s,
            **kwargs,
        )


@dataclass(slots=True)
class _Op:
    """One cell's timed operation: the call, what runs untimed before it, and the row
    made of its samples."""

    call: Callable[[int], object]
    prepare: Callable[[int], object] | None
    row: Callable[[list[int]], Row]


def _tail(cell: _Cell, cfg: BenchConfig) -> _Op:
    system, key = cell.system, cell.keys[0]

    def row(samples: list[int]) -> Row:
        return {
            **cell.base,
            "op": "tail",
            **summarize(samples).as_dict(),
            "turns_returned": system.tail(key, cfg.tail_n),
            "load_s": cell.load_s,
        }

    return _Op(lambda _i: system.tail(key, cfg.tail_n), None, row)


def _append(cell: _Cell, cfg: BenchConfig) -> _Op:
    system = cell.system
    calls = 0

    def append(i: int) -> None:
        nonlocal calls
        key = cell.keys[i // cell.per_conversation]
        system.append(key, turn_pair(f"{cell.tag}-{i}", cfg.content_chars))
        calls += 1

    def row(samples: list[int]) -> Row:
        # Every append must have landed (2 turns each); no conversation grew past the
        # limit.
        counts = [system.count(key) for key in cell.built]
        appended = sum(counts) - cell.length * len(cell.built)
        return {
            **cell.base,
            "op": "append",
            **summarize(samples).as_dict(),
            "conversations": len(cell.built),
            "appends_made": calls,
            "turns_appended": appended,
            "all_appends_stored": appended == 2 * calls,
            "max_growth_pct": round(100 * max((c - cell.length) / cell.length for c in counts), 1),
        }

    return _Op(append, lambda i: cell.build(i // cell.per_conversation), row)


def run_latency(run: BackendRun, cfg: BenchConfig, log: Log) -> list[Row]:
    """Load every (system, length) conversation, then time all tails, then all appends.

    The tails of one length's systems take turns, one call each (`time_interleaved`), so
    a slow spell of a shared machine falls on all of them and their ratios hold; appends
    take turns among the systems that write alike (see `_turn_groups`).
    """
    cells = [_new_cell(system, length, cfg) for length in cfg.lengths for system in run.systems]
    log(f"[{run.name}] loaded {len(cells)} conversations in {sum(c.load_s for c in cells):.1f} s")
    run.settle()
    rows: list[Row] = []
    for op, make in (("tail", _tail), ("append", _append)):
        for group in _turn_groups(cells, cfg, op):
            ops = [make(cell, cfg) for cell in group]
            with quiet_gc():
                samples = time_interleaved(
                    [(o.call, o.prepare) for o in ops],
                    reps=cfg.reps,
                    min_reps=cfg.min_reps,
                    warmup=cfg.warmup,
                    budget_s=cfg.cell_budget_s,
                )
            for cell, o, timed in zip(group, ops, samples, strict=True):
                row = o.row(timed)
                rows.append(row)
                log(
                    f"[{run.name}] {cell.system.name:<18} len {cell.length:>6} {op:<6}: "
                    f"p50 {row['p50_ms']:.3f} ms, p95 {row['p95_ms']:.3f} ms (n={row['n']})"
                )
    return rows


HEAVY_WRITERS = frozenset({OURS_PLAIN, NAIVE})
"""Systems whose appends write much more than the others': timed one at a time."""


def _turn_groups(cells: list[_Cell], cfg: BenchConfig, op: str) -> list[list[_Cell]]:
    """The cells that take turns: for tails, the systems of one length; for appends, the
    systems of one length that write about as little as each other (ours,
    langchain-postgres, the floor: the ratios the targets compare), while the heavy
    writers (`HEAVY_WRITERS`) are timed alone. A system's writes (the write-ahead log,
    checkpoints, vacuum) slow whichever call comes next on the same database, and ours
    through plain store calls writes several times what the others do (the naive blob,
    at 100k turns, megabytes per append): taking turns with them charged each system
    for their writes (langchain-postgres' append at 100 turns took 1.0 ms timed alone
    and 3.8 ms taking turns with every system, in two runs minutes apart)."""
    groups: list[list[_Cell]] = []
    for length in cfg.lengths:
        same = [cell for cell in cells if cell.length == length]
        if op == "tail":
            groups.append(same)
            continue
        light = [cell for cell in same if cell.system.name not in HEAVY_WRITERS]
        if light:
            groups.append(light)
        groups.extend([cell] for cell in same if cell.system.name in HEAVY_WRITERS)
    return groups


def run_store_primitives(run: BackendRun, cfg: BenchConfig, log: Log) -> list[Row]:
    """One `BaseStore.get` and one `BaseStore.put` of a small item: the round trip any
    design built on the LangGraph store pays per store call (ours: two per tail read)."""
    namespace = (*run.namespace, "store_primitives", uuid.uuid4().hex[:8])
    value = {"kind": "head", "last_seq": 12345, "chunk_size": 32, "note": "x" * 100}
    run.store.put(namespace, "item", value, index=False)
    calls: dict[str, Callable[[int], object]] = {
        "get": lambda _i: run.store.get(namespace, "item"),
        "put": lambda i: run.store.put(namespace, "item", {**value, "last_seq": i}, index=False),
    }
    rows: list[Row] = []
    for op, call in calls.items():
        stats = summarize(_timed(call, cfg))
        rows.append({"backend": run.name, "op": op, **stats.as_dict()})
        log(f"[{run.name}] store {op}: p50 {stats.p50_ms:.3f} ms (n={stats.n})")
    run.store.delete(namespace, "item")
    return rows
