"""The pattern matrix: every way a LangGraph user wires `AgentNode` (fresh thread per
callback, stable thread with a checkpointer, an agent <-> ToolNode loop with a bound model,
tools inside the node, a prebuilt agent), with and without channel message ids, with
re-deliveries (at once and after a later turn), both transcript scopes and windows of
1, 2 and 6 messages, on a real SQLite file and the test PostgreSQL server, sync and async.

Every cell asserts every payload the model received, the stored transcript, that nothing
is stored twice, tool-call pairing in every payload, the newest user message in every
payload, that the graph ends within a plain tool loop's recursion, and that every stored
message equals the message the run produced, field for field.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from agent_history.settings import HistorySettings
from tests.conftest import settings_for
from tests.support.patterns import PATTERNS, Cell, arun_cell, run_cell

_COMBOS = list(itertools.product(PATTERNS, ("fresh", "stable"), (True, False), ("turns", "full")))
_WINDOWS = (1, 2, 6)
_BACKENDS = (
    ("sqlite", "sync"),
    ("sqlite", "async"),
    pytest.param("postgres", "sync", marks=pytest.mark.postgres),
    pytest.param("postgres", "async", marks=pytest.mark.postgres),
)


def _cells() -> list[pytest.param]:  # type: ignore[valid-type]
    """Every combination of pattern, thread, ids, scope and window, once; the backend and
    sync/async mode rotate so every combination of the four runs in every pattern."""
    cells = []
    for index, (combo, window) in enumerate(itertools.product(_COMBOS, _WINDOWS)):
        backend = _BACKENDS[index % len(_BACKENDS)]
        backend_name, mode = backend.values if hasattr(backend, "values") else backend
        marks = getattr(backend, "marks", ())
        pattern, thread, ids, scope = combo
        cell = Cell(pattern, thread, ids, scope, window)
        name = f"{pattern}-{thread}-{'ids' if ids else 'noids'}-{scope}-w{window}-{backend_name}-{mode}"
        cells.append(pytest.param(cell, backend_name, mode, id=name, marks=marks))
    return cells


@pytest.mark.parametrize(("cell", "backend_name", "mode"), _cells())
async def test_pattern(
    cell: Cell, backend_name: str, mode: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    settings: HistorySettings = settings_for(backend_name, tmp_path, request)
    if mode == "sync":
        run_cell(cell, settings)
    else:
        await arun_cell(cell, settings)
