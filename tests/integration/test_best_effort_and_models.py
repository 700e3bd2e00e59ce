"""The best-effort append path of unknown stores, and the model forms AgentNode accepts."""

from __future__ import annotations

import re
import sys
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.runnables import RunnableLambda
from langchain_core.tools import tool
from langgraph.graph import START, StateGraph
from langgraph.store.base import BaseStore, Op, PutOp, Result
from langgraph.store.memory import InMemoryStore

from agent_history import AgentHistoryError, AgentNode, AgentState, ChatHistory, HistoryToggles
from agent_history.testing import RecordingChatModel


class RacingStore(BaseStore):
    """Another writer slips in after our chunk write, overwriting it, ``races`` times."""

    def __init__(self, races: int) -> None:
        self.inner = InMemoryStore()
        self.races = races

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        listed = list(ops)
        results = self.inner.batch(listed)
        chunk_puts = [
            op
            for op in listed
            if isinstance(op, PutOp) and op.key.startswith("chunk:") and op.value
        ]
        if self.races and chunk_puts:
            self.races -= 1
            op = chunk_puts[0]
            clobbered = {
                **op.value,
                "turns": [t for t in op.value["turns"] if t["content"] != "mine"],
            }
            self.inner.put(op.namespace, op.key, clobbered)
        return results

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        return self.batch(ops)


def test_best_effort_append_detects_and_repairs_a_lost_write() -> None:
    store = RacingStore(races=1)
    history = ChatHistory(store)
    history.append("k", [HumanMessage("before", id="b")])
    store.races = 1
    result = history.append("k", [HumanMessage("mine", id="m")])
    assert result.conflicts == 1
    assert [t.content for t in history.read("k")].count("mine") == 1


def test_best_effort_append_gives_up_after_bounded_retries() -> None:
    from agent_history import WriteConflict

    store = RacingStore(races=100)
    with pytest.raises(WriteConflict, match="lost 1 turn"):
        ChatHistory(store).append("k", [HumanMessage("mine", id="m")])


def _graph(node: AgentNode, store: BaseStore) -> Any:
    builder = StateGraph(AgentState)
    builder.add_node("agent", node)
    builder.add_edge(START, "agent")
    return builder.compile(store=store)


def _invoke(graph: Any, text: str) -> dict[str, Any]:
    state = {"inputs": {"message": text}, "results": {"telegram_events_parser": {"chat_id": 3}}}
    return graph.invoke(state, {"configurable": {"thread_id": uuid.uuid4().hex}})


def test_tools_build_a_tool_agent_around_the_model() -> None:
    @tool
    def lookup(order_id: str) -> str:
        """Look an order up."""
        return "shipped"

    model = RecordingChatModel()
    store = InMemoryStore()
    node = AgentNode(
        model, tools=[lookup], use_graph_chat_history=True, toggles=HistoryToggles(env={})
    )
    graph = _graph(node, store)
    _invoke(graph, "where is 42?")
    out = _invoke(graph, "and now?")
    assert out["messages"][-1].content == "echo: and now?"
    assert [m.content for m in model.calls[-1]][-3:] == [
        "where is 42?",
        "echo: where is 42?",
        "and now?",
    ]


def test_any_runnable_agent_taking_messages() -> None:
    seen: list[list[Any]] = []

    def agent(payload: dict[str, Any]) -> dict[str, Any]:
        seen.append(list(payload["messages"]))
        return {
            "messages": [*payload["messages"], AIMessage(f"{len(payload['messages'])} messages")]
        }

    store = InMemoryStore()
    graph = _graph(
        AgentNode(
            RunnableLambda(agent), use_graph_chat_history=True, toggles=HistoryToggles(env={})
        ),
        store,
    )
    _invoke(graph, "one")
    out = _invoke(graph, "two")
    assert out["messages"][-1].content == "3 messages"
    assert [m.content for m in seen[-1]] == ["one", "1 messages", "two"]


def test_provider_string_needs_langchain(monkeypatch: pytest.MonkeyPatch) -> None:
    # Without the agents extra: a clear error naming it (langchain hidden from imports).
    for name in [m for m in sys.modules if m == "langchain" or m.startswith("langchain.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "langchain", None)
    with pytest.raises(AgentHistoryError, match=r"agent-history\[agents\]"):
        AgentNode("openai:gpt-4o-mini")


def test_invalid_node_settings_fail_at_construction() -> None:
    with pytest.raises(ValueError, match="max_messages"):
        AgentNode(RecordingChatModel(), max_messages=0)
    with pytest.raises(ValueError, match="history_namespace"):
        AgentNode(RecordingChatModel(), history_namespace=["a.b"])
    with pytest.raises(TypeError):
        AgentNode(object())  # type: ignore[arg-type]


@pytest.mark.parametrize("doc", ["quickstart.md", "agent-node.md"])
def test_documentation_examples_run(
    doc: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    for name in (
        "ORCHEO_GRAPH_STORE_BACKEND",
        "ORCHEO_CHECKPOINT_BACKEND",
        "ORCHEO_GRAPH_STORE_SQLITE_PATH",
        "ORCHEO_CHECKPOINT_SQLITE_PATH",
    ):
        monkeypatch.delenv(name, raising=False)
    text = (Path(__file__).parents[2] / "docs" / doc).read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks
    for block in blocks:
        exec(compile(block, doc, "exec"), {"__name__": "__doc_example__"})
    assert (tmp_path / "agent-history" / "graph_store.sqlite").exists()
