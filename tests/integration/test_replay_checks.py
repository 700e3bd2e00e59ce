"""The rollout checklist (`agent_history.replay`) on the graphs users replay with
``--graph``: an agent <-> ToolNode loop makes several history passes per run, and a
store that fails makes runs go on in memory."""

from __future__ import annotations

from typing import Any

from langgraph.graph import START, StateGraph
from langgraph.store.base import BaseStore
from langgraph.store.memory import InMemoryStore

from agent_history import AgentNode, AgentState
from agent_history.replay import replay
from tests.integration.test_pattern_regressions import _tool_loop as tool_loop
from tests.support.agent_graphs import toggles
from tests.support.fault_stores import FaultyStore
from tests.support.tool_models import WeatherModel, get_weather

NAMESPACE = ("replayed",)


def _callback(chat_id: int | None, text: str) -> dict[str, Any]:
    return {
        "inputs": {"message": {"text": text}},
        "results": {"telegram_events_parser": {"chat_id": chat_id}},
    }


def _tool_loop(store: BaseStore) -> Any:
    node = AgentNode(
        WeatherModel().bind_tools([get_weather]), use_graph_chat_history=True,
        history_namespace=list(NAMESPACE), toggles=toggles(),
    )  # fmt: skip
    return tool_loop(node, store)


def test_a_tool_loop_counts_runs_not_passes() -> None:
    """Two runs of one chat (the first calling a tool: two passes) and a keyless one hold
    every check. The checks counted passes: the tool call's second pass read nothing
    stored yet and failed continuity, and three passes for two runs failed the
    degradation check with nothing crashed."""
    records = [
        _callback(1, "weather in Oslo"),
        _callback(1, "thanks"),
        _callback(None, "no key"),
    ]
    report = replay(records, InMemoryStore(), _tool_loop, namespace=NAMESPACE)
    assert [(c.name, c.ok) for c in report.checks if not c.ok] == []
    assert report.identities == {"telegram:1": 2}
    assert [len(passes) for passes in report.by_run] == [2, 1, 1]
    assert len(report.keyless) == 1


def test_a_keyless_run_cut_off_by_the_open_breaker_still_counts_as_keyless() -> None:
    """The first write fails and opens the breaker (its read succeeded: two calls, half
    failed); the third run has no key. It counts as a run without a valid key (it was
    not counted: only passes that reported ``no_valid_key`` were), and durability fails
    naming the store's failures."""
    faulty = FaultyStore(InMemoryStore())
    faulty.fail_writes = True

    def failing(store: BaseStore) -> Any:
        node = AgentNode(
            WeatherModel(), use_graph_chat_history=True, history_namespace=list(NAMESPACE),
            write_attempts=1, toggles=toggles(breaker_min_calls="2", breaker_cooldown_seconds="3600"),
        )  # fmt: skip
        builder = StateGraph(AgentState)
        builder.add_node("agent", node)
        builder.add_edge(START, "agent")
        return builder.compile(store=faulty)

    records = [_callback(1, "a"), _callback(1, "b"), _callback(None, "c"), _callback(1, "d")]
    report = replay(records, faulty, failing, namespace=NAMESPACE)
    assert [r.fallbacks for r in report.reports] == [("write_failed",)] + [("breaker_open",)] * 3
    assert len(report.keyless) == 1 and report.identities == {"telegram:1": 3}
    durability = next(c for c in report.checks if c.name == "the store keeps every turn")
    assert not durability.ok and "1x write_failed, 3x breaker_open" in durability.detail
