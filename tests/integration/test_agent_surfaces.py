"""The pattern matrix for ``create_agent`` + `HistoryMiddleware` and ``create_react_agent``
+ `HistoryHooks`: a tool-calling agent run over Telegram-style callbacks (with and
without channel message ids, re-delivered at once and after a later turn), on fresh
threads and on a stable thread with a checkpointer, both transcript scopes, windows of
1, 2 and 6, on a real SQLite file and the test PostgreSQL server, sync and async.

Every cell asserts every payload the model received against the independent oracle of
`AgentNode`'s matrix, tool pairing and the newest user message in every payload, the
stored transcript (nothing twice, channel ids kept, stored == produced field for field),
that a stable thread keeps the whole conversation, and one report per model call.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import settings_for
from tests.support.agent_surfaces import (
    SURFACES,
    SurfaceCell,
    arun_surface_cell,
    run_surface_cell,
)

_BACKENDS = (
    ("sqlite", "sync"),
    ("sqlite", "async"),
    ("postgres", "sync"),
    ("postgres", "async"),
)


def _param(cell: SurfaceCell, backend: str, mode: str) -> pytest.param:  # type: ignore[valid-type]
    name = (
        f"{cell.surface}-{cell.thread}-{'ids' if cell.ids else 'noids'}-{cell.scope}"
        f"-w{cell.max_messages}-{backend}-{mode}"
    )
    marks = (pytest.mark.postgres,) if backend == "postgres" else ()
    return pytest.param(cell, backend, mode, id=name, marks=marks)


def _cells() -> list[pytest.param]:  # type: ignore[valid-type]
    """Every surface x thread x ids x scope x window once; backend and mode rotate, so
    each surface x thread x ids combination runs on all four (six cells per combination)."""
    combos = itertools.product(SURFACES, ("fresh", "stable"), (True, False), ("turns", "full"))
    cells = []
    for index, (combo, window) in enumerate(itertools.product(combos, (1, 2, 6))):
        cells.append(_param(SurfaceCell(*combo, window), *_BACKENDS[index % len(_BACKENDS)]))
    # The post hook beginning its pass again (no hand-over from its pre hook).
    for index, (thread, ids) in enumerate(itertools.product(("fresh", "stable"), (True, False))):
        cell = SurfaceCell("hooks_split", thread, ids, "full", 2)
        cells.append(_param(cell, *_BACKENDS[index]))
    return cells


@pytest.mark.parametrize(("cell", "backend", "mode"), _cells())
async def test_surface_pattern(
    cell: SurfaceCell, backend: str, mode: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    settings = settings_for(backend, tmp_path, request)
    if mode == "sync":
        run_surface_cell(cell, settings)
    else:
        await arun_surface_cell(cell, settings)


@pytest.mark.parametrize(
    ("returned", "reason"),
    [
        (5, "5"),
        (True, "render_error"),
        (b"user:1", "render_error"),
        (ValueError("db down"), "render_error"),
        (None, "unresolved_template"),
    ],
    ids=["int", "bool", "bytes", "raises", "none"],
)
def test_a_key_function_that_gives_no_key_is_reported_by_what_went_wrong(
    returned: Any, reason: str
) -> None:
    """`HistoryMiddleware(history_key=...)`: a value renders as a template renders one (an
    int user id is its digits, as it always was; bytes or a bool give no key), and an
    exception is named by its class, never swallowed as "missing"."""
    from langchain.agents import create_agent
    from langgraph.store.memory import InMemoryStore

    from agent_history.middleware import HistoryMiddleware
    from agent_history.testing import RecordingChatModel

    def key(state: Any, runtime: Any) -> Any:
        if isinstance(returned, Exception):
            raise returned
        return returned

    reports: list[Any] = []
    store = InMemoryStore()
    middleware = HistoryMiddleware(history_key=key, on_report=reports.append)
    agent = create_agent(RecordingChatModel(), tools=[], middleware=[middleware], store=store)
    out = agent.invoke({"messages": [{"role": "user", "content": "hi"}]})
    assert out["messages"][-1].content == "echo: hi"
    [report] = reports
    if reason == "5":
        assert report.key == "5" and report.fallbacks == ()
        return
    assert report.key is None and report.fallbacks == ("no_valid_key",)
    assert report.rejected == (reason,)
    assert list(store.search(())) == []
