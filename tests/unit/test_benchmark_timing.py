"""The benchmark's systems take turns: one call each per round, in a turning order."""

from __future__ import annotations

from collections.abc import Callable

from benchmarks.measure import time_interleaved


def _recorder(
    name: str, events: list[tuple[str, int]]
) -> tuple[Callable[[int], object], Callable[[int], object]]:
    def call(i: int) -> None:
        events.append((name, i))

    def prepare(i: int) -> None:
        events.append((f"prepare {name}", i))

    return call, prepare


def test_every_round_calls_each_system_once_in_a_turning_order() -> None:
    events: list[tuple[str, int]] = []
    calls = [_recorder(name, events) for name in ("a", "b", "c")]
    samples = time_interleaved(calls, reps=4, min_reps=4, warmup=1, budget_s=3600)

    assert [len(s) for s in samples] == [4, 4, 4]
    timed = [e for e in events if not e[0].startswith("prepare")][3:]  # after the warm-up
    rounds = [[name for name, _ in timed[r * 3 : r * 3 + 3]] for r in range(4)]
    assert rounds == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]
    # Each system's running index goes on from its warm-up; prepare runs before each call.
    assert [i for name, i in events if name == "b"] == [0, 1, 2, 3, 4]
    assert [i for name, i in events if name == "prepare b"] == [0, 1, 2, 3, 4]


def test_a_spent_budget_stops_each_system_at_its_minimum() -> None:
    events: list[tuple[str, int]] = []
    calls = [_recorder(name, events) for name in ("a", "b")]
    samples = time_interleaved(calls, reps=50, min_reps=3, warmup=0, budget_s=0.0)
    assert [len(s) for s in samples] == [3, 3]
    assert all(d >= 0 for s in samples for d in s)


def test_appends_take_turns_only_among_systems_that_write_alike() -> None:
    from types import SimpleNamespace

    from benchmarks.latency import _Cell, _turn_groups
    from benchmarks.modes import MODES

    names = ("ours", "ours-basestore", "naive", "langchain-postgres", "floor")
    cfg = MODES["smoke"]  # lengths 10 and 100
    cells = [
        _Cell(SimpleNamespace(name=name), length, "t", [], 1)  # type: ignore[arg-type]
        for length in cfg.lengths
        for name in names
    ]

    def shape(op: str) -> list[list[tuple[str, int]]]:
        return [[(c.system.name, c.length) for c in g] for g in _turn_groups(cells, cfg, op)]

    assert shape("tail") == [[(name, length) for name in names] for length in cfg.lengths]
    assert shape("append") == [
        group
        for length in cfg.lengths
        for group in (
            [("ours", length), ("langchain-postgres", length), ("floor", length)],
            [("ours-basestore", length)],
            [("naive", length)],
        )
    ]
    # Every cell is timed exactly once.
    timed = [id(c) for g in _turn_groups(cells, cfg, "append") for c in g]
    assert sorted(timed) == sorted(id(c) for c in cells)
