"""Agents used as subgraphs of a parent graph (the usual way to compose agents).

An agent records, in its state's ``answered`` field, the channel id of the delivered
message it answered; that record is what tells a re-delivered callback on a stable thread
from a pipeline's second agent. A subgraph's state is not kept between runs, so the record
must travel through the parent: a parent state with the ``answered`` field (as
`AgentState` has) keeps it, and a re-delivery is skipped. The thread alone cannot tell the
two cases apart, and neither can the log when the agents share it: the second agent of a
pipeline must answer, so without the record a re-delivery is answered again (documented in
agent-node.md).
"""

from __future__ import annotations

import operator
import uuid
from typing import Annotated, Any, TypedDict

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AnyMessage, HumanMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.store.base import BaseStore
from langgraph.store.memory import InMemoryStore

from agent_history import AgentNode, AgentState, ChatHistory, HistoryReport
from agent_history.messages import text_of
from agent_history.middleware import HistoryMiddleware
from agent_history.node import merge_results
from agent_history.testing import RecordingChatModel
from agent_history.toggles import HistoryToggles
from tests.support.agent_graphs import telegram_callback

TOGGLES = HistoryToggles(env={})


class ParentState(TypedDict, total=False):
    """A parent graph's own state, keeping the agents' ``answered`` record."""

    messages: Annotated[list[AnyMessage], add_messages]
    inputs: dict[str, Any]
    results: Annotated[dict[str, Any], operator.or_]
    answered: Annotated[dict[str, str], merge_results]


class BareParentState(TypedDict, total=False):
    """A parent state without ``answered``."""

    messages: Annotated[list[AnyMessage], add_messages]
    inputs: dict[str, Any]
    results: Annotated[dict[str, Any], operator.or_]


def _agent_subgraph(
    kind: str, model: RecordingChatModel, reports: list[HistoryReport], name: str = "agent"
) -> Any:
    if kind == "middleware":
        middleware = HistoryMiddleware(node_name=name, toggles=TOGGLES, on_report=reports.append)
        return create_agent(model, middleware=[middleware])
    builder = StateGraph(AgentState)
    node = AgentNode(model, use_graph_chat_history=True, toggles=TOGGLES, on_report=reports.append)
    builder.add_node(name, node)
    builder.add_edge(START, name)
    return builder.compile()


@pytest.mark.parametrize("kind", ["node", "middleware"])
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_a_redelivery_to_an_agent_subgraph_whose_parent_keeps_the_record_is_skipped(
    kind: str, mode: str, store: BaseStore
) -> None:
    model, reports = RecordingChatModel(), []
    builder = StateGraph(ParentState)
    builder.add_node("assistant", _agent_subgraph(kind, model, reports))
    builder.add_edge(START, "assistant")
    graph = builder.compile(checkpointer=InMemorySaver(), store=store)
    thread = {"configurable": {"thread_id": uuid.uuid4().hex}}
    chat = uuid.uuid4().int % 10**9

    async def run(text: str, message_id: int) -> dict[str, Any]:
        callback = telegram_callback(chat, text, message_id=message_id)
        if mode == "sync":
            return graph.invoke(callback, thread)  # type: ignore[no-any-return]
        return await graph.ainvoke(callback, thread)  # type: ignore[no-any-return]

    await run("one", 1)
    again = await run("one", 1)  # the webhook delivered it again
    assert [text_of(m) for m in again["messages"]] == ["one", "echo: one"]
    assert reports[-1].redelivered and not reports[-1].model_called
    final = await run("two", 2)
    assert [text_of(m) for m in final["messages"]] == ["one", "echo: one", "two", "echo: two"]
    assert [[text_of(m) for m in call] for call in model.calls] == [
        ["one"],
        ["one", "echo: one", "two"],
    ]
    stored = [t.content for t in ChatHistory(store).read(f"telegram:{chat}")]
    assert stored == ["one", "echo: one", "two", "echo: two"]


@pytest.mark.parametrize("kind", ["node", "middleware"])
def test_two_agent_subgraphs_sharing_the_default_log_both_answer_every_message(
    kind: str, store: BaseStore
) -> None:
    """A pipeline of two agents with every setting left at its default (one log): the
    second answers each new message after the first, under a parent with or without the
    record."""
    for state in (ParentState, BareParentState):
        researcher, writer = RecordingChatModel(prefix="notes: "), RecordingChatModel()
        reports: list[HistoryReport] = []
        builder = StateGraph(state)
        builder.add_node("research", _agent_subgraph(kind, researcher, reports, "researcher"))
        builder.add_node("write", _agent_subgraph(kind, writer, reports, "writer"))
        builder.add_edge(START, "research")
        builder.add_edge("research", "write")
        graph = builder.compile(checkpointer=InMemorySaver(), store=store)
        thread = {"configurable": {"thread_id": uuid.uuid4().hex}}
        chat = uuid.uuid4().int % 10**9
        for number, text in enumerate(["one", "two"], start=1):
            out = graph.invoke(telegram_callback(chat, text, message_id=number), thread)
            assert text_of(out["messages"][-1]) == f"echo: {text}"
        assert len(researcher.calls) == 2 and len(writer.calls) == 2
        assert all(r.model_called for r in reports)


@pytest.mark.parametrize("kind", ["node", "middleware"])
def test_deliveries_sent_to_agent_subgraphs_under_an_agent_state_parent_are_all_answered(
    store: BaseStore, kind: str
) -> None:
    """A batch of deliveries fanned out with ``Send`` to an agent subgraph, under a parent
    whose state is `AgentState`: each agent returns the ``inputs`` it was sent, and
    ``inputs`` took one value per step, so the run failed (``InvalidUpdateError``) after
    both exchanges were stored. The newest value is kept; every delivery is answered and
    stored under its own key."""
    from langgraph.types import Send

    class Batch(AgentState, total=False):
        deliveries: list[dict[str, Any]]

    model, reports = RecordingChatModel(), []
    builder = StateGraph(Batch)
    builder.add_node("agent", _agent_subgraph(kind, model, reports))
    builder.add_conditional_edges(
        START, lambda state: [Send("agent", d) for d in state["deliveries"]]
    )
    graph = builder.compile(store=store, checkpointer=InMemorySaver())
    chats = [uuid.uuid4().int % 10**9 for _ in range(2)]  # (PostgreSQL's log is shared)
    batch = [telegram_callback(chat, f"from {chat}", chat) for chat in chats]
    config = {"configurable": {"thread_id": uuid.uuid4().hex}}
    out = graph.invoke({"deliveries": batch}, config)
    assert sorted(text_of(m) for m in out["messages"]) == sorted(
        text for chat in chats for text in (f"from {chat}", f"echo: from {chat}")
    )
    assert out["inputs"] in [delivery["inputs"] for delivery in batch]
    for chat in chats:
        stored = [t.content for t in ChatHistory(store).read(f"telegram:{chat}")]
        assert stored == [f"from {chat}", f"echo: from {chat}"]
    assert sorted(r.appended for r in reports) == [2, 2]


def test_a_plain_run_given_inputs_none_after_a_callback_clears_them() -> None:
    """``inputs`` got a reducer (for ``Send`` fan-out): a plain-messages run on a stable
    thread that clears the last callback with ``"inputs": None`` must still clear it;
    kept, the callback's text was delivered again after the plain message."""
    model = RecordingChatModel()
    builder = StateGraph(AgentState)
    builder.add_node("agent", AgentNode(model, use_graph_chat_history=True, toggles=TOGGLES))
    builder.add_edge(START, "agent")
    graph = builder.compile(store=InMemoryStore(), checkpointer=InMemorySaver())
    config = {"configurable": {"thread_id": uuid.uuid4().hex}}
    graph.invoke(telegram_callback(7, "hi"), config)
    out = graph.invoke({"inputs": None, "messages": [HumanMessage("plain")]}, config)
    assert out["inputs"] == {}
    assert [text_of(m) for m in model.calls[-1]] == ["hi", "echo: hi", "plain"]
