"""A thread that answers a stored exchange a second time: a stable thread whose process
lost its checkpoints and then got a re-delivery, and a run replayed from an earlier
checkpoint. The log keeps the first answer only, and the next payloads carry it once."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from langchain_core.messages import BaseMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import START, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition
from langgraph.store.base import BaseStore

from agent_history import AgentNode, AgentState, ChatHistory
from agent_history.messages import text_of
from agent_history.testing import RecordingChatModel
from agent_history.toggles import HistoryToggles
from tests.support.agent_graphs import telegram_callback
from tests.support.tool_models import WeatherModel, get_weather


def _graph(model: Any, store: BaseStore, saver: Any, *, tools: bool = False, **kw: Any) -> Any:
    node = AgentNode(model, use_graph_chat_history=True, toggles=HistoryToggles(env={}), **kw)
    builder = StateGraph(AgentState)
    builder.add_node("agent", node)
    builder.add_edge(START, "agent")
    if tools:
        builder.add_node("tools", ToolNode([get_weather]))
        builder.add_conditional_edges("agent", tools_condition)
        builder.add_edge("tools", "agent")
    return builder.compile(store=store, checkpointer=saver)


def _stored(store: BaseStore, key: str, scope: str = "turns") -> list[str]:
    history = ChatHistory(store, scope=scope)  # type: ignore[arg-type]
    return [text_of(m) for m in history.to_messages(list(history.read(key)))]


def _texts(messages: list[BaseMessage]) -> list[str]:
    return [text_of(m) for m in messages]


@pytest.mark.parametrize("scope", ["turns", "full"])
def test_a_redelivery_after_the_checkpoints_were_lost_is_stored_once(
    store: BaseStore, scope: str
) -> None:
    model = RecordingChatModel()
    chat = uuid.uuid4().int % 10**9
    config = {"configurable": {"thread_id": f"chat-{chat}"}}
    graph = _graph(model, store, InMemorySaver(), history_scope=scope)
    graph.invoke(telegram_callback(chat, "one", 1), config)
    graph.invoke(telegram_callback(chat, "two", 2), config)
    # The process restarts: its in-memory checkpoints are gone, the store is not.
    graph = _graph(model, store, InMemorySaver(), history_scope=scope)
    graph.invoke(telegram_callback(chat, "two", 2), config)  # the channel re-delivers
    assert _texts(model.calls[-1]) == ["one", "echo: one", "two"]  # as of its first time
    graph.invoke(telegram_callback(chat, "three", 3), config)

    assert _stored(store, f"telegram:{chat}", scope) == [
        "one", "echo: one", "two", "echo: two", "three", "echo: three"
    ]  # fmt: skip
    # The thread's second answer to "two" is not sent beside the stored one.
    assert _texts(model.calls[-1]) == ["one", "echo: one", "two", "echo: two", "three"]
    graph.invoke(telegram_callback(chat, "four", 4), config)
    assert _stored(store, f"telegram:{chat}", scope)[-2:] == ["four", "echo: four"]
    assert len(_stored(store, f"telegram:{chat}", scope)) == 8
    # Every later payload too: the thread still holds its second answer to "two".
    assert _texts(model.calls[-1]) == [
        "one", "echo: one", "two", "echo: two", "three", "echo: three", "four"
    ]  # fmt: skip
    graph.invoke(telegram_callback(chat, "five", 5), config)
    assert _texts(model.calls[-1])[-5:] == ["three", "echo: three", "four", "echo: four", "five"]
    assert _texts(model.calls[-1]).count("echo: two") == 1


def test_a_redelivery_answered_with_a_tool_loop_keeps_its_own_steps(store: BaseStore) -> None:
    """The run answering the re-delivery goes round the tool loop (its tool steps follow
    the stored question and must reach the model), and the next run stores none of them."""
    model = WeatherModel(always_tools=True)
    chat = uuid.uuid4().int % 10**9
    config = {"configurable": {"thread_id": f"chat-{chat}"}, "recursion_limit": 8}
    graph = _graph(model, store, InMemorySaver(), tools=True, history_scope="full")
    graph.invoke(telegram_callback(chat, "weather in Oslo", 1), config)
    graph = _graph(model, store, InMemorySaver(), tools=True, history_scope="full")
    result = graph.invoke(telegram_callback(chat, "weather in Oslo", 1), config)
    assert _texts(result["messages"])[-1] == "final[Oslo]: sunny in Oslo"
    # Its second pass saw its own tool call and result after the question.
    assert [m.type for m in model.calls[-1]] == ["human", "ai", "tool"]
    graph.invoke(telegram_callback(chat, "thanks", 2), config)

    stored = _stored(store, f"telegram:{chat}", "full")
    assert stored == [
        "weather in Oslo", "", "sunny in Oslo", "final[Oslo]: sunny in Oslo",
        "thanks", "echo: thanks",
    ]  # fmt: skip
    assert [m.type for m in model.calls[-1]] == ["human", "ai", "tool", "ai", "human"]


def test_a_replay_from_an_earlier_checkpoint_adds_no_second_answer(store: BaseStore) -> None:
    model = RecordingChatModel()
    chat = uuid.uuid4().int % 10**9
    config = {"configurable": {"thread_id": f"chat-{chat}"}}
    graph = _graph(model, store, InMemorySaver())
    for number, text in enumerate(["t1", "t2", "t3"], start=1):
        graph.invoke(telegram_callback(chat, text, number), config)
    # Time travel: run again from the checkpoint taken before "t2" was answered.
    before_t2 = next(
        s
        for s in graph.get_state_history(config)
        if s.next == ("agent",) and s.values["inputs"]["message"]["text"] == "t2"
    )
    graph.invoke(None, before_t2.config)
    graph.invoke(telegram_callback(chat, "t4", 4), config)

    assert _stored(store, f"telegram:{chat}") == [
        "t1", "echo: t1", "t2", "echo: t2", "t3", "echo: t3", "t4", "echo: t4"
    ]  # fmt: skip


def test_a_late_redelivery_to_a_thread_that_lacks_its_exchange_keeps_the_log_order(
    store: BaseStore,
) -> None:
    # The thread lacks a stored exchange: the user's next message raced it from the same
    # checkpoint (a double send handled by two workers; or the client hung up after the
    # write, before the checkpoint). The channel re-delivers it after the chat went on.
    model = RecordingChatModel()
    chat = uuid.uuid4().int % 10**9
    config = {"configurable": {"thread_id": f"chat-{chat}"}}
    graph = _graph(model, store, InMemorySaver())
    graph.invoke(telegram_callback(chat, "one", 1), config)
    after_one = graph.get_state(config).config
    graph.invoke(telegram_callback(chat, "four", 4), config)
    graph.invoke(telegram_callback(chat, "five", 5), after_one)  # the racing run wins
    assert _texts(graph.get_state(config).values["messages"]) == [
        "one", "echo: one", "five", "echo: five",
    ]  # fmt: skip
    assert _texts(model.calls[-1]) == ["one", "echo: one", "four", "echo: four", "five"]

    graph.invoke(telegram_callback(chat, "four", 4), config)  # re-delivered late
    assert _texts(model.calls[-1]) == ["one", "echo: one", "four"]  # as of its first time
    graph.invoke(telegram_callback(chat, "six", 6), config)
    log = ["one", "echo: one", "four", "echo: four", "five", "echo: five"]
    # the log's order, each answer after its question (the thread's second answer to
    # "four", given after "five", is left out)
    assert _texts(model.calls[-1]) == [*log, "six"]
    graph.invoke(telegram_callback(chat, "seven", 7), config)
    assert _texts(model.calls[-1]) == [*log, "six", "echo: six", "seven"]
    assert _stored(store, f"telegram:{chat}") == [*log, "six", "echo: six", "seven", "echo: seven"]
