"""Graphs with more than one agent, and stable threads driven by more than callbacks: a
second `AgentNode` of the same run answers the delivered message too, a re-delivery is
skipped by both, and an earlier callback left in the state (``inputs`` keeps its last
value) is not taken for a new delivery."""

from __future__ import annotations

import uuid
import warnings
from typing import Any

import pytest
from langchain.agents import create_agent
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import START, StateGraph
from langgraph.store.base import BaseStore

from agent_history import AgentNode, AgentState, ChatHistory
from agent_history.incoming import SPAN_PREFIX, key_span
from agent_history.messages import text_of
from agent_history.middleware import HistoryMiddleware
from agent_history.testing import RecordingChatModel
from agent_history.toggles import HistoryToggles
from tests.support.agent_graphs import telegram_callback

TOGGLES = HistoryToggles(env={})


def _stored(store: BaseStore, key: str, namespace: tuple[str, ...]) -> list[str]:
    history = ChatHistory(store, namespace=namespace)
    return [text_of(m) for m in history.to_messages(list(history.read(key)))]


def _texts(messages: Any) -> list[str]:
    return [text_of(m) for m in messages]


def _pipeline(first: Any, second: Any, store: BaseStore, saver: Any) -> Any:
    builder = StateGraph(AgentState)
    for name, model in (("writer", first), ("reviewer", second)):
        node = AgentNode(
            model, use_graph_chat_history=True, history_namespace=[name], toggles=TOGGLES
        )
        builder.add_node(name, node)
    builder.add_edge(START, "writer")
    builder.add_edge("writer", "reviewer")
    return builder.compile(store=store, checkpointer=saver)


@pytest.mark.parametrize("thread", ["stable", "fresh"])
def test_the_second_agent_of_a_run_answers_the_delivered_message(
    store: BaseStore, thread: str
) -> None:
    writer, reviewer = RecordingChatModel(prefix="W: "), RecordingChatModel(prefix="R: ")
    graph = _pipeline(writer, reviewer, store, InMemorySaver() if thread == "stable" else None)
    chat = uuid.uuid4().int % 10**9
    for number, text in enumerate(["hi", "again"], start=1):
        thread_id = f"chat-{chat}" if thread == "stable" else uuid.uuid4().hex
        result = graph.invoke(
            telegram_callback(chat, text, number), {"configurable": {"thread_id": thread_id}}
        )
        assert _texts(result["messages"])[-2:] == [f"W: {text}", f"R: {text}"]
        answered = {k: v for k, v in result["answered"].items() if not k.startswith(SPAN_PREFIX)}
        assert answered == {"writer": str(number), "reviewer": str(number)}
        assert {key_span(result, node).key for node in ("writer", "reviewer")} == {  # type: ignore[union-attr]
            f"telegram:{chat}"
        }

    assert len(writer.calls) == len(reviewer.calls) == 2
    # The reviewer saw the writer's answer, and its own earlier answer from the store.
    assert _texts(reviewer.calls[-1]) == ["hi", "W: hi", "R: hi", "again", "W: again"]
    key = f"telegram:{chat}"
    assert _stored(store, key, ("reviewer",)) == ["hi", "W: hi", "R: hi", "again", "W: again", "R: again"]  # fmt: skip
    writer_log = _stored(store, key, ("writer",))
    assert writer_log[:2] == ["hi", "W: hi"] and writer_log[-2:] == ["again", "W: again"]
    assert len(writer_log) == len(set(writer_log))  # nothing twice


def test_a_redelivery_on_a_stable_thread_is_skipped_by_both_agents(store: BaseStore) -> None:
    writer, reviewer = RecordingChatModel(prefix="W: "), RecordingChatModel(prefix="R: ")
    graph = _pipeline(writer, reviewer, store, InMemorySaver())
    chat = uuid.uuid4().int % 10**9
    config = {"configurable": {"thread_id": f"chat-{chat}"}}
    graph.invoke(telegram_callback(chat, "hi", 7), config)
    result = graph.invoke(telegram_callback(chat, "hi", 7), config)  # re-delivered

    assert len(writer.calls) == len(reviewer.calls) == 1
    assert _texts(result["messages"]) == ["hi", "W: hi", "R: hi"]
    assert _stored(store, f"telegram:{chat}", ("reviewer",)) == ["hi", "W: hi", "R: hi"]


def test_a_stable_thread_answers_a_plain_message_after_a_callback(store: BaseStore) -> None:
    """A web chat or an operator tool posts ``{"messages": [...]}`` on the thread a
    callback used: the callback's ``inputs`` is still in the state, and is not delivered
    again."""
    model = RecordingChatModel()
    builder = StateGraph(AgentState)
    builder.add_node("agent", AgentNode(model, use_graph_chat_history=True, toggles=TOGGLES))
    builder.add_edge(START, "agent")
    graph = builder.compile(store=store, checkpointer=InMemorySaver())
    chat = uuid.uuid4().int % 10**9
    config = {"configurable": {"thread_id": f"chat-{chat}"}}
    graph.invoke(telegram_callback(chat, "one", 1), config)
    result = graph.invoke({"messages": [("user", "two")]}, config)

    assert _texts(result["messages"]) == ["one", "echo: one", "two", "echo: two"]
    assert _texts(model.calls[-1]) == ["one", "echo: one", "two"]
    # The key still comes from the callback's chat: one conversation.
    assert _stored(store, f"telegram:{chat}", ("agent_chat_history",)) == [
        "one", "echo: one", "two", "echo: two"
    ]  # fmt: skip
    graph.invoke(telegram_callback(chat, "one", 1), config)  # the old callback re-delivered
    assert len(model.calls) == 2


def test_the_middleware_answers_a_plain_message_after_a_callback(store: BaseStore) -> None:
    model = RecordingChatModel()
    agent = create_agent(
        model,
        tools=[],
        middleware=[HistoryMiddleware(toggles=TOGGLES)],
        store=store,
        checkpointer=InMemorySaver(),
    )
    chat = uuid.uuid4().int % 10**9
    config = {"configurable": {"thread_id": f"chat-{chat}"}}
    agent.invoke(telegram_callback(chat, "one", 1), config)
    result = agent.invoke({"messages": [("user", "two")]}, config)

    assert _texts(result["messages"]) == ["one", "echo: one", "two", "echo: two"]
    assert _stored(store, f"telegram:{chat}", ("agent_chat_history",)) == [
        "one", "echo: one", "two", "echo: two"
    ]  # fmt: skip


def test_a_stable_thread_of_plain_messages_stores_a_repeated_text_twice(
    store: BaseStore,
) -> None:
    """Plain ``{"messages": [...]}`` runs carry no channel id, but the stable thread
    gives each message its own id: a user who says "yes" twice said it twice."""
    model = RecordingChatModel()
    builder = StateGraph(AgentState)
    node = AgentNode(
        model,
        use_graph_chat_history=True,
        toggles=TOGGLES,
        history_key_candidates=["web:{{ config.configurable.thread_id }}"],
    )
    builder.add_node("agent", node)
    builder.add_edge(START, "agent")
    graph = builder.compile(store=store, checkpointer=InMemorySaver())
    thread_id = uuid.uuid4().hex
    config = {"configurable": {"thread_id": thread_id}}
    for text in ["x", "yes", "yes", "z"]:
        result = graph.invoke({"messages": [("user", text)]}, config)

    thread = result["messages"]
    history = ChatHistory(store)
    stored = history.to_messages(list(history.read(f"web:{thread_id}")))
    assert _texts(stored) == ["x", "echo: x", "yes", "echo: yes", "yes", "echo: yes", "z", "echo: z"]  # fmt: skip
    assert [m.id for m in stored] == [m.id for m in thread]


class _StructuredModel(RecordingChatModel):
    """Calls the weather tool, then gives its answer through the structured-output tool."""

    def reply(self, messages: list[Any], **kwargs: Any) -> Any:
        from langchain_core.messages import AIMessage

        calls = len(self.calls)
        if messages[-1].type == "human":
            call = {"name": "get_weather", "args": {"city": "Oslo"}, "id": f"w{calls}"}
        else:
            call = {"name": "Forecast", "args": {"city": "Oslo", "temp": 3}, "id": f"s{calls}"}
        return AIMessage("", tool_calls=[call])

    def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
        return self


@pytest.mark.parametrize("scope", ["turns", "full"])
def test_a_structured_answer_on_a_stable_thread_is_not_given_twice(
    store: BaseStore, scope: str
) -> None:
    from langchain.agents.structured_output import ToolStrategy
    from pydantic import BaseModel

    from tests.support.tool_models import get_weather

    class Forecast(BaseModel):
        city: str
        temp: int

    model = _StructuredModel()
    agent = create_agent(
        model,
        tools=[get_weather],
        response_format=ToolStrategy(Forecast),
        middleware=[HistoryMiddleware(toggles=TOGGLES, history_scope=scope)],
        store=store,
        checkpointer=InMemorySaver(),
    )
    chat = uuid.uuid4().int % 10**9
    config = {"configurable": {"thread_id": f"chat-{chat}"}}
    first = agent.invoke(telegram_callback(chat, "weather?", 1), config)
    assert first["structured_response"] == Forecast(city="Oslo", temp=3)
    calls = len(model.calls)
    again = agent.invoke(telegram_callback(chat, "weather?", 1), config)  # re-delivered

    assert len(model.calls) == calls == 2, "no model call for the re-delivery"
    assert [m.id for m in again["messages"]] == [m.id for m in first["messages"]]
    history = ChatHistory(store, scope=scope)
    stored = history.to_messages(list(history.read(f"telegram:{chat}")))
    kinds = [m.type for m in stored]
    assert kinds == (["human", "ai", "tool"] if scope == "turns" else ["human", "ai", "tool", "ai", "tool"])  # fmt: skip
    assert stored[-2].tool_calls[0]["name"] == "Forecast"


def test_the_hooks_build_an_agent_with_a_response_format(store: BaseStore) -> None:
    """``create_react_agent(response_format=...)`` needs ``structured_response`` in the
    state schema: the hooks' schema has it, and the run gives the structured answer."""
    from langchain_core.runnables import RunnableLambda
    from langgraph.prebuilt import create_react_agent
    from pydantic import BaseModel

    from agent_history import HistoryHooks
    from tests.support.agent_graphs import new_thread

    class Reply(BaseModel):
        words: int

    class Structuring(RecordingChatModel):
        def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
            return self

        def with_structured_output(self, schema: Any, **kwargs: Any) -> Any:
            return RunnableLambda(lambda messages: Reply(words=len(messages)))

    model = Structuring()
    hooks = HistoryHooks(toggles=TOGGLES).hooks()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # moved to langchain.agents; still shipped
        agent = create_react_agent(model, [], response_format=Reply, **hooks, store=store)
    chat = uuid.uuid4().int % 10**9
    for number, text in enumerate(["one", "two"], start=1):
        result = agent.invoke(telegram_callback(chat, text, number), new_thread())
    assert result["structured_response"] == Reply(words=2)  # the thread: question, answer
    assert _texts(model.calls[-1]) == ["one", "echo: one", "two"]
    assert _stored(store, f"telegram:{chat}", ("agent_chat_history",)) == [
        "one", "echo: one", "two", "echo: two"
    ]  # fmt: skip
