"""The best-effort append path of unknown stores, and the model forms AgentNode accepts."""

from __future__ import annotations

import re
import sys
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.runnables import RunnableLambda
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import START, StateGraph
from langgraph.store.base import BaseStore, Op, PutOp, Result
from langgraph.store.memory import InMemoryStore

from agent_history import (
    AgentHistoryError,
    AgentNode,
    AgentState,
    ChatHistory,
    HistoryReport,
    HistoryToggles,
)
from agent_history.testing import RecordingChatModel
from tests.support.agent_graphs import new_thread, telegram_callback
from tests.support.tool_models import LookupModel, lookup


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


def _tool_agent_graph(
    model: Any, tool_: Any, scope: str, store: BaseStore, reports: list[HistoryReport]
) -> Any:
    """START -> an AgentNode with ``tool_`` (it builds the tool agent), on a checkpointer."""
    node = AgentNode(
        model,
        tools=[tool_],
        use_graph_chat_history=True,
        history_scope=scope,  # type: ignore[arg-type]
        toggles=HistoryToggles(env={}),
        on_report=reports.append,
    )
    builder = StateGraph(AgentState)
    builder.add_node("agent", node)
    builder.add_edge(START, "agent")
    return builder.compile(store=store, checkpointer=InMemorySaver())


class _EmptyIdToolModel(RecordingChatModel):
    """A provider (some OpenAI-compatible servers) that answers with ``id=""``: it calls
    ``wx`` for a question about the weather, then answers from the tool's result."""

    def reply(self, messages: list[BaseMessage], **kwargs: Any) -> AIMessage:
        last = messages[-1]
        if isinstance(last, ToolMessage):
            return AIMessage(f"final: {last.content}", id="")
        if "weather" in str(last.content):
            call = {"name": "wx", "args": {"city": "Paris"}, "id": f"call-{len(self.calls)}"}
            return AIMessage("", id="", tool_calls=[call])
        return AIMessage(f"echo: {last.content}", id="")

    def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
        return self


@tool
def wx(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


@pytest.mark.parametrize("thread", ["new thread per run", "stable thread"])
@pytest.mark.parametrize("scope", ["full", "turns"])
async def test_a_tool_agent_whose_model_answers_with_empty_ids_stores_every_exchange(
    thread: str, scope: str
) -> None:
    """The tool agent a node builds gives a model answer with the id ``""`` an id of its
    own: LangGraph's ``add_messages`` took the tool call and the final answer for one
    message (the answer replaced the call), so the pass ended on a tool result and the
    exchange was never stored, without a warning."""
    model, store = _EmptyIdToolModel(), InMemoryStore()
    reports: list[HistoryReport] = []
    graph = _tool_agent_graph(model, wx, scope, store, reports)
    stable = {"configurable": {"thread_id": uuid.uuid4().hex}}
    for number, text in enumerate(["hi", "weather in Paris?", "thanks"]):
        callback = telegram_callback(7, text, number)
        config = stable if thread == "stable thread" else new_thread()
        out = await graph.ainvoke(callback, config)
        assert out["messages"][-1].content == (
            "final: sunny in Paris" if number == 1 else f"echo: {text}"
        )
    assert [r.appended for r in reports] == [2, 4 if scope == "full" else 2, 2]
    assert [r.fallbacks for r in reports] == [()] * 3
    stored = [(t.role, t.content) for t in ChatHistory(store, scope=scope).read("telegram:7")]
    tool_steps = [("assistant", ""), ("tool", "sunny in Paris")] if scope == "full" else []
    assert stored == [
        ("user", "hi"), ("assistant", "echo: hi"),
        ("user", "weather in Paris?"), *tool_steps, ("assistant", "final: sunny in Paris"),
        ("user", "thanks"), ("assistant", "echo: thanks"),
    ]  # fmt: skip
    sent = [str(m.content) for m in model.calls[-1]]
    assert sent[-2:] == ["final: sunny in Paris", "thanks"] and "weather in Paris?" in sent


@pytest.mark.parametrize("thread", ["new thread per run", "stable thread"])
@pytest.mark.parametrize("scope", ["full", "turns"])
def test_an_exchange_answered_by_a_tool_that_returns_directly_is_stored_once(
    thread: str, scope: str
) -> None:
    """A tool with ``return_direct=True`` ends the agent on its result: that result is the
    answer. The exchange was never stored (the pass did not end on a final answer), in
    either scope, so later turns did not see it; now the question, the tool call and its
    result are stored, once, and a re-delivery of the question is not answered again."""
    model, store = LookupModel(), InMemoryStore()
    reports: list[HistoryReport] = []
    graph = _tool_agent_graph(model, lookup, scope, store, reports)
    stable = {"configurable": {"thread_id": uuid.uuid4().hex}}
    deliveries = [(1, "hi"), (2, "where is my order?"), (2, "where is my order?"), (3, "thanks")]
    for message_id, text in deliveries:
        callback = telegram_callback(7, text, message_id)
        config = stable if thread == "stable thread" else new_thread()
        out = graph.invoke(callback, config)
        assert (
            str(out["messages"][-1].content)
            == {1: "echo: hi", 2: "order 42 shipped", 3: "echo: thanks"}[message_id]
        )
    assert [r.appended for r in reports] == [2, 3, 0, 2]
    assert reports[2].redelivered and [r.fallbacks for r in reports] == [()] * 4
    assert len(model.calls) == (3 if thread == "stable thread" else 4)
    stored = [(t.role, t.content) for t in ChatHistory(store, scope=scope).read("telegram:7")]
    assert stored == [
        ("user", "hi"), ("assistant", "echo: hi"),
        ("user", "where is my order?"), ("assistant", ""), ("tool", "order 42 shipped"),
        ("user", "thanks"), ("assistant", "echo: thanks"),
    ]  # fmt: skip
    sent = [str(m.content) for m in model.calls[-1]]
    assert sent == ["hi", "echo: hi", "where is my order?", "", "order 42 shipped", "thanks"]


def _return_direct_agent(
    surface: str, model: Any, scope: str, store: BaseStore, reports: list[HistoryReport]
) -> Any:
    """The tool agent AgentNode builds, or ``create_agent`` with `HistoryMiddleware`, with
    the return_direct tool ``lookup``."""
    if surface == "agent node":
        return _tool_agent_graph(model, lookup, scope, store, reports)
    from langchain.agents import create_agent

    from agent_history.middleware import HistoryMiddleware

    history = HistoryMiddleware(
        history_scope=scope,  # type: ignore[arg-type]
        write_attempts=1,  # (one failed exchange does not open the breaker: see min_calls)
        toggles=HistoryToggles(env={}),
        on_report=reports.append,
    )
    return create_agent(
        model, [lookup], middleware=[history], store=store, checkpointer=InMemorySaver()
    )


@pytest.mark.parametrize("surface", ["agent node", "middleware"])
@pytest.mark.parametrize("scope", ["full", "turns"])
def test_an_exchange_a_tool_ended_whose_write_failed_is_caught_up_with_its_answer(
    surface: str, scope: str
) -> None:
    """The write of an exchange a ``return_direct`` tool ended fails (the store is down);
    the next turn stores what the thread holds unstored. In the ``turns`` scope the tool
    call and its result (the answer) were dropped as tool steps: the question was stored
    unanswered, and every later window showed it so."""
    from tests.support.fault_stores import FaultyStore

    model, inner = LookupModel(), InMemoryStore()
    store = FaultyStore(inner)
    reports: list[HistoryReport] = []
    graph = _return_direct_agent(surface, model, scope, store, reports)
    config = new_thread()
    store.fail_writes = True
    graph.invoke(telegram_callback(7, "my order?", 1), config)
    assert any("write_failed" in r.fallbacks for r in reports)
    store.fail_writes = False
    graph.invoke(telegram_callback(7, "thanks", 2), config)
    stored = [(t.role, t.content) for t in ChatHistory(inner, scope=scope).read("telegram:7")]
    assert stored == [
        ("user", "my order?"), ("assistant", ""), ("tool", "order 42 shipped"),
        ("user", "thanks"), ("assistant", "echo: thanks"),
    ]  # fmt: skip
    graph.invoke(telegram_callback(7, "and now?", 3), new_thread())
    assert [str(m.content) for m in model.calls[-1]] == [
        "my order?", "", "order 42 shipped", "thanks", "echo: thanks", "and now?"
    ]  # fmt: skip


@pytest.mark.parametrize("surface", ["agent node", "middleware"])
@pytest.mark.parametrize("scope", ["full", "turns"])
def test_a_message_without_id_repeating_a_question_a_tool_answered_is_a_new_message(
    surface: str, scope: str
) -> None:
    """Callbacks without channel ids on a stable thread: the user asks the question a
    ``return_direct`` tool answered again. The thread's newest user message, with the
    same text and only tool steps after it, was taken for this run's own (a tool loop
    under way): the repeat was never added, and the model answered the tool result
    again. It is a new message, as after a model's answer; by content it repeats the
    stored exchange, so it is stored once."""
    model, store = LookupModel(), InMemoryStore()
    reports: list[HistoryReport] = []
    graph = _return_direct_agent(surface, model, scope, store, reports)
    config = new_thread()
    answers = []
    for text in ["my order?", "my order?", "thanks"]:
        out = graph.invoke(telegram_callback(7, text), config)
        answers.append(str(out["messages"][-1].content))
    assert answers == ["order 42 shipped", "order 42 shipped", "echo: thanks"]
    model_calls = [[str(m.content) for m in payload] for payload in model.calls]
    assert model_calls == [
        ["my order?"],
        ["my order?", "", "order 42 shipped", "my order?"],
        ["my order?", "", "order 42 shipped", "my order?", "", "order 42 shipped", "thanks"],
    ]
    stored = [(t.role, t.content) for t in ChatHistory(store, scope=scope).read("telegram:7")]
    assert stored == [
        ("user", "my order?"), ("assistant", ""), ("tool", "order 42 shipped"),
        ("user", "thanks"), ("assistant", "echo: thanks"),
    ]  # fmt: skip


@pytest.mark.parametrize("surface", ["agent node", "middleware"])
@pytest.mark.parametrize("calls", ["sync", "async"])
async def test_a_sticker_after_an_exchange_a_tool_ended_is_not_answered(
    surface: str, calls: str
) -> None:
    """A callback without text (a sticker) on a stable thread has nothing to answer when
    every question has its answer. An exchange a ``return_direct`` tool ended has one (the
    tool's result), but the thread rule wanted a model's final answer: the agent answered
    the question again and stored a second answer."""
    model, store = LookupModel(), InMemoryStore()
    reports: list[HistoryReport] = []
    graph = _return_direct_agent(surface, model, "full", store, reports)
    config = new_thread()
    sticker = telegram_callback(7, "", 2)
    sticker["inputs"]["message"] = {"sticker": {"file_id": "abc"}, "message_id": 2}
    for callback in [telegram_callback(7, "where is my order?", 1), sticker]:
        out = (
            await graph.ainvoke(callback, config)
            if calls == "async"
            else graph.invoke(callback, config)
        )
        assert str(out["messages"][-1].content) == "order 42 shipped"
    assert len(model.calls) == 1
    # (The middleware's model call that calls the tool stores nothing; after_agent does.)
    expected = [(3, True)] if surface == "agent node" else [(0, True), (3, False)]
    assert [(r.appended, r.model_called) for r in reports] == [*expected, (0, False)]
    stored = [(t.role, t.content) for t in ChatHistory(store).read("telegram:7")]
    assert stored == [
        ("user", "where is my order?"),
        ("assistant", ""),
        ("tool", "order 42 shipped"),
    ]
    # A question after it is answered as usual, with the exchange in its window.
    graph.invoke(telegram_callback(7, "thanks", 3), config)
    assert [str(m.content) for m in model.calls[-1]] == [
        "where is my order?", "", "order 42 shipped", "thanks"
    ]  # fmt: skip
