"""The three benchmark sizes (full, quick, smoke) as plain settings."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["MODES", "BenchConfig"]


@dataclass(frozen=True, slots=True)
class BenchConfig:
    """How much to measure; recorded in ``results.json`` next to the numbers."""

    mode: str
    """``full``, ``quick`` or ``smoke``."""
    lengths: tuple[int, ...]
    """History lengths (stored turns) a conversation holds before it is measured."""
    reps: int
    """Most timed repetitions of one operation on one (system, backend, length) cell."""
    min_reps: int
    """Fewest timed repetitions, even when a cell runs past its time budget."""
    warmup: int
    """Untimed calls before a cell is timed (fewer when they are slow, see `measure`)."""
    cell_budget_s: float
    """Soft time limit of one cell: past it, stop once ``min_reps`` are taken."""
    tail_n: int = 30
    """Turns a tail read asks for (the agent's window)."""
    content_chars: int = 100
    """Characters of text in each synthetic turn."""
    growth_limit: float = 0.05
    """Most a conversation may grow (as a fraction of its length) from timed appends."""
    writers: tuple[int, ...] = (1, 4, 8, 16)
    """Writer process counts of the concurrency runs."""
    appends_per_writer: int = 25
    """Appends (one user + one assistant turn each) per writer process."""
    agent_lengths: tuple[int, ...] = (10, 10_000)
    """History lengths of the AgentNode overhead measurement."""
    agent_reps: int = 30
    """Timed graph invocations per (backend, length, history on/off)."""

    def as_dict(self) -> dict[str, Any]:
        """The settings as JSON-ready data."""
        return asdict(self)


_LENGTHS = (10, 100, 1_000, 10_000, 100_000)

MODES: dict[str, BenchConfig] = {
    "full": BenchConfig(
        mode="full",
        lengths=_LENGTHS,
        reps=300,
        min_reps=20,
        warmup=10,
        cell_budget_s=8.0,
        appends_per_writer=50,
        agent_reps=60,
    ),
    "quick": BenchConfig(
        mode="quick",
        lengths=_LENGTHS,
        reps=40,
        min_reps=3,
        warmup=3,
        cell_budget_s=0.5,
        writers=(1, 4, 8),
        appends_per_writer=25,
        agent_reps=12,
    ),
    "smoke": BenchConfig(
        mode="smoke",
        lengths=(10, 100),
        reps=3,
        min_reps=3,
        warmup=1,
        cell_budget_s=0.2,
        writers=(1, 2),
        appends_per_writer=2,
        agent_lengths=(10, 100),
        agent_reps=3,
    ),
}
