"""An agent used as a subgraph of a parent graph (the usual way to compose agents): a
re-delivered callback on a stable thread is not answered again.

The agent's record of what it answered (``answered``) lives in its own state, which a
subgraph without ``checkpointer=True`` starts empty on every run, and which the parent
drops when its own state has no such field. The thread alone cannot tell a re-delivery
from a pipeline whose first agent keeps no record, so the log tells: the re-delivered
message was answered when the conversation stored, as its answer, one of the answers
that follow it in the thread. Each case stored the answer twice before.
"""

from __future__ import annotations

import operator
import uuid
from typing import Annotated, Any, TypedDict

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, AnyMessage, HumanMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.store.base import BaseStore

from agent_history import AgentNode, AgentState, ChatHistory, HistoryReport
from agent_history.messages import text_of
from agent_history.middleware import HistoryMiddleware
from agent_history.testing import RecordingChatModel
from agent_history.toggles import HistoryToggles
from tests.support.agent_graphs import telegram_callback

TOGGLES = HistoryToggles(env={})


class ParentState(TypedDict, total=False):
    """A parent graph's own state: no ``answered`` field."""

    messages: Annotated[list[AnyMessage], add_messages]
    inputs: dict[str, Any]
    results: Annotated[dict[str, Any], operator.or_]


def _agent_subgraph(kind: str, model: RecordingChatModel, reports: list[HistoryReport]) -> Any:
    if kind == "middleware":
        middleware = HistoryMiddleware(toggles=TOGGLES, on_report=reports.append)
        return create_agent(model, middleware=[middleware])
    builder = StateGraph(AgentState)
    node = AgentNode(model, use_graph_chat_history=True, toggles=TOGGLES, on_report=reports.append)
    builder.add_node("agent", node)
    builder.add_edge(START, "agent")
    return builder.compile()


def _parent(subgraph: Any, store: BaseStore) -> Any:
    builder = StateGraph(ParentState)
    builder.add_node("assistant", subgraph)
    builder.add_edge(START, "assistant")
    return builder.compile(checkpointer=InMemorySaver(), store=store)


@pytest.mark.parametrize("kind", ["node", "middleware"])
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_a_redelivery_to_an_agent_subgraph_on_a_stable_thread_is_not_answered_again(
    kind: str, mode: str, store: BaseStore
) -> None:
    model, reports = RecordingChatModel(), []
    graph = _parent(_agent_subgraph(kind, model, reports), store)
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
    history = ChatHistory(store)
    stored = [t.content for t in history.read(f"telegram:{chat}")]
    assert stored == ["one", "echo: one", "two", "echo: two"]


def test_an_agent_after_a_first_agent_that_keeps_no_record_answers_every_message(
    store: BaseStore,
) -> None:
    """The case the log must not be mistaken for: the first agent of a pipeline is a plain
    node (no record of what it answered), so the state's record is empty when the second
    one, an `AgentNode` with its own log, finds the message followed by an answer."""

    def writer(state: AgentState) -> dict[str, Any]:
        # An application's own first agent: it adds the delivered message (with its channel
        # id) and answers it, keeping no record of what it answered.
        message = state["inputs"]["message"]
        return {
            "messages": [
                HumanMessage(message["text"], id=str(message["message_id"])),
                AIMessage(f"draft for {message['text']}"),
            ]
        }

    model, reports = RecordingChatModel(), []
    builder = StateGraph(AgentState)
    builder.add_node("writer", writer)
    reviewer = AgentNode(
        model,
        use_graph_chat_history=True,
        toggles=TOGGLES,
        on_report=reports.append,
        history_namespace=("reviewer",),
    )
    builder.add_node("reviewer", reviewer)
    builder.add_edge(START, "writer")
    builder.add_edge("writer", "reviewer")
    graph = builder.compile(checkpointer=InMemorySaver(), store=store)
    thread = {"configurable": {"thread_id": uuid.uuid4().hex}}
    chat = uuid.uuid4().int % 10**9
    for number, text in enumerate(["one", "two"], start=1):
        out = graph.invoke(telegram_callback(chat, text, message_id=number), thread)
        assert text_of(out["messages"][-1]).startswith("echo: ")
        assert reports[-1].model_called and reports[-1].fallbacks == ()
    assert [[text_of(m) for m in call][-2:] for call in model.calls] == [
        ["one", "draft for one"],
        ["two", "draft for two"],
    ]
