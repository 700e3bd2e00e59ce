"""The pattern matrix for the agents people already have: langchain's ``create_agent`` with
`HistoryMiddleware` and ``create_react_agent`` with `HistoryHooks`, both with a tool, run
over the same Telegram-style callback script as `AgentNode`'s matrix and checked against
the same independent oracle (`tests.support.patterns`).

Both surfaces run one pass per model call and keep every message in the agent's state,
so the oracle's ``toolnode`` pattern (an `AgentNode` <-> `ToolNode` loop) states what
the model must receive and what must be stored. Beyond the matrix's checks, a stable
thread must hold the whole conversation after every run (the window never replaces the
state), every model call must be reported once, and the reports' appended counts must
add up to the stored transcript.
"""

from __future__ import annotations

import uuid
import warnings
from dataclasses import dataclass
from typing import Any

from langchain_core.messages import SystemMessage

from agent_history import HistoryReport
from agent_history.history import ChatHistory
from agent_history.prebuilt import HistoryHooks
from agent_history.settings import HistorySettings
from agent_history.stores import (
    create_checkpointer,
    create_checkpointer_sync,
    create_graph_store,
    create_graph_store_sync,
)
from agent_history.toggles import HistoryToggles
from tests.support.patterns import (
    SYSTEM,
    Cell,
    Expected,
    Outcome,
    _check_run,
    _collect,
    _config,
    _plan,
    advance,
    callback,
    check_pairing,
    finish,
)
from tests.support.tool_models import WeatherModel, get_weather, signature

__all__ = ["SURFACES", "SurfaceCell", "arun_surface_cell", "build_agent", "run_surface_cell"]

SURFACES = ("middleware", "hooks")
"""``hooks_split``: the pre and post hooks of two `HistoryHooks`, so every post hook
begins its pass again (as after a resume in another process)."""


@dataclass(frozen=True)
class SurfaceCell:
    surface: str  # "middleware", "hooks" or "hooks_split"
    thread: str  # "fresh" (a thread per callback) or "stable" (one per chat)
    ids: bool  # callbacks carry channel message ids
    scope: str  # "turns" or "full"
    max_messages: int

    @property
    def oracle(self) -> Cell:
        """The `AgentNode` cell with the same expectations: one pass per model call."""
        return Cell("toolnode", self.thread, self.ids, self.scope, self.max_messages)


def history_fields(
    cell: SurfaceCell, namespace: tuple[str, ...], reports: list[HistoryReport]
) -> dict[str, Any]:
    return {
        "max_messages": cell.max_messages,
        "history_namespace": namespace,
        "history_scope": cell.scope,
        "toggles": HistoryToggles(env={}),
        "write_backoff_seconds": 0.0,
        "on_report": reports.append,
    }


def build_agent(
    surface: str, model: WeatherModel, store: Any, saver: Any, fields: dict[str, Any]
) -> Any:
    """The agent as its users write it, with the history surface added."""
    if surface == "middleware":
        from langchain.agents import create_agent

        from agent_history.middleware import HistoryMiddleware

        return create_agent(
            model,
            [get_weather],
            system_prompt=SYSTEM,
            middleware=[HistoryMiddleware(**fields)],
            store=store,
            checkpointer=saver,
        )
    from langgraph.prebuilt import create_react_agent

    hooks = HistoryHooks(**fields).hooks()
    if surface == "hooks_split":
        hooks["post_model_hook"] = HistoryHooks(**fields).post_model_hook
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # moved to langchain.agents; still shipped
        return create_react_agent(
            model, [get_weather], prompt=SYSTEM, store=store, checkpointer=saver, **hooks
        )


@dataclass
class _Run:
    cell: SurfaceCell
    model: WeatherModel
    reports: list[HistoryReport]
    exp: Expected
    outcome: Outcome

    def check(
        self, before: tuple[int, int], text: str, cid: int, redelivered: bool, result: Any
    ) -> None:
        cell, oracle = self.cell, self.cell.oracle
        calls = self.model.calls[before[0] :]
        reports = self.reports[before[1] :]
        answered = cell.thread == "stable" and redelivered and cell.ids
        thread_before = list(self.exp.thread)
        if answered and cell.surface != "middleware":
            # A prebuilt agent cannot skip its model: the answer is dropped, nothing stored.
            assert len(calls) == 1, "one model call for a callback the thread answered"
            check_pairing(calls[0])
            assert isinstance(calls[0][0], SystemMessage)
        else:
            _check_run(oracle, self.model, before[0], self.exp, text, cid, redelivered, result)
        if answered:
            assert [(r.redelivered, r.appended) for r in reports] == [(True, 0)]
            assert [r.model_called for r in reports] == [cell.surface != "middleware"]
        else:
            assert len(reports) == len(calls), "one report per model call"
            assert all(r.model_called and not r.fallbacks for r in reports)
        advance(oracle, self.exp, text, cid, redelivered)
        if cell.thread == "stable":
            thread = [signature(m) for m in result["messages"]]
            assert thread == self.exp.thread, "the state keeps the whole conversation"
            if answered:
                assert thread == thread_before, "a re-delivery leaves the thread as it was"
        _collect(self.outcome, result)

    def finish(self) -> None:
        finish(self.cell.oracle, self.exp, self.outcome)
        assert sum(r.appended for r in self.reports) == len(self.outcome.stored)


def _start(cell: SurfaceCell) -> tuple[_Run, int, tuple[str, ...], str]:
    run = _Run(cell, WeatherModel(), [], Expected(), Outcome())
    chat = uuid.uuid4().int % 10**9
    namespace = ("agent_chat_history", "s" + uuid.uuid4().hex[:10])
    return run, chat, namespace, uuid.uuid4().hex


def run_surface_cell(cell: SurfaceCell, settings: HistorySettings) -> Outcome:
    run, chat, namespace, stable = _start(cell)
    with create_graph_store_sync(settings) as store, create_checkpointer_sync(settings) as saver:
        fields = history_fields(cell, namespace, run.reports)
        agent = build_agent(cell.surface, run.model, store, saver, fields)
        for text, cid, redelivered, _ in _plan(cell.oracle):
            before = (len(run.model.calls), len(run.reports))
            message_id = cid if cell.ids else None
            result = agent.invoke(callback(chat, text, message_id), _config(cell.oracle, stable))
            run.check(before, text, cid, redelivered, result)
        history = ChatHistory(store, namespace=namespace, scope=cell.scope)  # type: ignore[arg-type]
        run.outcome.stored = history.to_messages(list(history.read(f"telegram:{chat}")))
    run.finish()
    return run.outcome


async def arun_surface_cell(cell: SurfaceCell, settings: HistorySettings) -> Outcome:
    run, chat, namespace, stable = _start(cell)
    async with create_graph_store(settings) as store, create_checkpointer(settings) as saver:
        fields = history_fields(cell, namespace, run.reports)
        agent = build_agent(cell.surface, run.model, store, saver, fields)
        for text, cid, redelivered, _ in _plan(cell.oracle):
            before = (len(run.model.calls), len(run.reports))
            message_id = cid if cell.ids else None
            result = await agent.ainvoke(
                callback(chat, text, message_id), _config(cell.oracle, stable)
            )
            run.check(before, text, cid, redelivered, result)
        history = ChatHistory(store, namespace=namespace, scope=cell.scope)  # type: ignore[arg-type]
        turns = [t async for t in history.aread(f"telegram:{chat}")]
        run.outcome.stored = history.to_messages(turns)
    run.finish()
    return run.outcome
