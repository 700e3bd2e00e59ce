"""`AgentNode` where users put it besides a graph node of its own: composed with LCEL
(``preprocess | node``), called from a function node of theirs, or from a task of
LangGraph's functional API. Like any LangChain runnable it takes the run's config and
store from where it is called, so its history works there as in a node of its own."""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import pytest
from langchain_core.messages import BaseMessage, HumanMessage
from langchain_core.runnables import RunnableConfig, RunnableLambda
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.func import entrypoint, task
from langgraph.graph import START, StateGraph
from langgraph.store.memory import InMemoryStore

from agent_history import AgentNode, AgentState, ChatHistory
from agent_history.messages import text_of
from agent_history.testing import RecordingChatModel
from agent_history.toggles import HistoryToggles
from tests.support.agent_graphs import telegram_callback

TOGGLES = HistoryToggles(env={})
BY_USER = ["user:{{config.configurable.user_id}}"]


def _texts(messages: list[BaseMessage]) -> list[str]:
    return [text_of(m) for m in messages]


def _stored(store: InMemoryStore, key: str) -> list[str]:
    history = ChatHistory(store)
    return _texts(history.to_messages(list(history.read(key))))


def _fallbacks(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "history_fallback" in r.getMessage()]


def _run(graph: Any, payload: Any, config: RunnableConfig, mode: str) -> Any:
    if mode == "sync":
        return graph.invoke(payload, config)
    return asyncio.run(graph.ainvoke(payload, config))


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_node_composed_after_a_step_reads_and_stores_the_history(
    mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    # LangGraph runs a `RunnableSequence` node step by step and sets the run's context
    # for its first step only: the agent's store comes with the config it is given.
    model = RecordingChatModel()
    node = AgentNode(model, use_graph_chat_history=True, toggles=TOGGLES)
    seen: list[str] = []

    def normalise(state: dict[str, Any]) -> dict[str, Any]:
        seen.append(state["inputs"]["message"]["text"])
        return state

    store = InMemoryStore()
    builder = StateGraph(AgentState)
    builder.add_node("agent", RunnableLambda(normalise) | node)
    builder.add_edge(START, "agent")
    graph = builder.compile(store=store)
    caplog.set_level(logging.WARNING, logger="agent_history")
    for text in ("hi, I'm Ana", "what is my name?"):
        config: RunnableConfig = {"configurable": {"thread_id": uuid.uuid4().hex}}
        _run(graph, telegram_callback(42, text), config, mode)

    assert seen == ["hi, I'm Ana", "what is my name?"]
    assert [_texts(call) for call in model.calls] == [
        ["hi, I'm Ana"],
        ["hi, I'm Ana", "echo: hi, I'm Ana", "what is my name?"],
    ]
    assert _stored(store, "telegram:42") == [
        "hi, I'm Ana",
        "echo: hi, I'm Ana",
        "what is my name?",
        "echo: what is my name?",
    ]
    assert _fallbacks(caplog) == []


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_function_node_calling_the_agent_without_a_config_keys_by_the_runs_config(
    mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    model = RecordingChatModel()
    node = AgentNode(
        model, use_graph_chat_history=True, history_key_candidates=BY_USER, toggles=TOGGLES
    )

    def agent(state: dict[str, Any]) -> dict[str, Any]:
        return node.invoke(state)  # no config: the run's, as any runnable takes it

    async def aagent(state: dict[str, Any]) -> dict[str, Any]:
        return await node.ainvoke(state)

    store = InMemoryStore()
    builder = StateGraph(AgentState)
    builder.add_node("agent", agent if mode == "sync" else aagent)
    builder.add_edge(START, "agent")
    graph = builder.compile(store=store)
    caplog.set_level(logging.WARNING, logger="agent_history")
    for text in ("one", "two"):
        config: RunnableConfig = {"configurable": {"user_id": "u", "thread_id": uuid.uuid4().hex}}
        _run(graph, {"messages": [HumanMessage(text)]}, config, mode)

    assert [_texts(call) for call in model.calls] == [["one"], ["one", "echo: one", "two"]]
    assert _stored(store, "user:u") == ["one", "echo: one", "two", "echo: two"]
    assert _fallbacks(caplog) == []


def test_a_function_node_giving_its_own_config_still_finds_the_runs_store() -> None:
    model = RecordingChatModel()
    node = AgentNode(
        model, use_graph_chat_history=True, history_key_candidates=BY_USER, toggles=TOGGLES
    )

    def agent(state: dict[str, Any]) -> dict[str, Any]:
        return node.invoke(state, {"configurable": {"user_id": "own"}})

    store = InMemoryStore()
    builder = StateGraph(AgentState)
    builder.add_node("agent", agent)
    builder.add_edge(START, "agent")
    graph = builder.compile(store=store)
    for text in ("one", "two"):
        graph.invoke({"messages": [HumanMessage(text)]}, {"configurable": {"user_id": "u"}})

    assert _stored(store, "user:own") == ["one", "echo: one", "two", "echo: two"]
    assert ChatHistory(store).count("user:u") == 0


def test_a_task_of_the_functional_api_keeps_the_history() -> None:
    model = RecordingChatModel()
    node = AgentNode(
        model, use_graph_chat_history=True, history_key_candidates=BY_USER, toggles=TOGGLES
    )
    store = InMemoryStore()

    @task
    def call_agent(messages: list[BaseMessage]) -> dict[str, Any]:
        return node.invoke({"messages": messages})

    @entrypoint(checkpointer=InMemorySaver(), store=store)
    def chat(message: BaseMessage) -> str:
        return text_of(call_agent([message]).result()["messages"][-1])

    config: RunnableConfig = {"configurable": {"thread_id": "t", "user_id": "v"}}
    answers = [chat.invoke(HumanMessage(text), config) for text in ("three", "four")]

    assert answers == ["echo: three", "echo: four"]
    assert [_texts(call) for call in model.calls] == [
        ["three"],
        ["three", "echo: three", "four"],
    ]
    assert _stored(store, "user:v") == ["three", "echo: three", "four", "echo: four"]


def test_two_named_agents_in_one_function_node_keep_their_own_markers() -> None:
    # Both answer the delivered callback once; called without a config, each keeps its
    # markers under its own name (the graph node's name would be the same for both).
    writer_model, reviewer_model = RecordingChatModel(), RecordingChatModel()
    writer = AgentNode(
        writer_model,
        use_graph_chat_history=True,
        history_namespace=["writer"],
        name="writer",
        toggles=TOGGLES,
    )
    reviewer = AgentNode(
        reviewer_model,
        use_graph_chat_history=True,
        history_namespace=["reviewer"],
        name="reviewer",
        toggles=TOGGLES,
    )

    def both(state: dict[str, Any]) -> dict[str, Any]:
        first = writer.invoke(state)
        merged = {**state, "messages": [*state.get("messages", []), *first["messages"]]}
        second = reviewer.invoke(merged)
        answered = {**first.get("answered", {}), **second.get("answered", {})}
        return {"messages": [*first["messages"], *second["messages"]], "answered": answered}

    store = InMemoryStore()
    builder = StateGraph(AgentState)
    builder.add_node("agents", both)
    builder.add_edge(START, "agents")
    graph = builder.compile(store=store, checkpointer=InMemorySaver())
    config: RunnableConfig = {"configurable": {"thread_id": "chat-7"}}
    graph.invoke(telegram_callback(7, "draft this", message_id=1), config)
    graph.invoke(telegram_callback(7, "draft this", message_id=1), config)  # re-delivered

    answered = graph.get_state(config).values["answered"]
    assert {name: answered.get(name) for name in ("writer", "reviewer", "agents")} == {
        "writer": "1",
        "reviewer": "1",
        "agents": None,
    }
    assert [_texts(call)[-1] for call in writer_model.calls] == ["draft this"]
    assert [_texts(call)[-1] for call in reviewer_model.calls] == ["echo: draft this"]
    history = ChatHistory(store, namespace=("reviewer",))
    assert _texts(history.to_messages(list(history.read("telegram:7")))) == [
        "draft this",
        "echo: draft this",
        "echo: draft this",
    ]
