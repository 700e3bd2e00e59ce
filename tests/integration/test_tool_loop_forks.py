"""A tool loop whose final pass runs twice: an approval (a tool that calls ``interrupt()``)
resumed twice from the same interrupted checkpoint (a double-clicked "Approve" handled by
two workers, a retried resume, sequential or at the same moment), and a run replayed
from the checkpoint taken after the tool result (time travel). Every branch of the fork
shares the question and the tool call; only the final answer differs.

The log keeps the first answer, once, in both scopes; no model is asked to answer a
conversation that already ends in an answer; and later payloads carry the answer once,
for `AgentNode`, ``create_agent`` with `HistoryMiddleware`, and ``create_react_agent``
with `HistoryHooks`.
"""

from __future__ import annotations

import threading
import uuid
import warnings
from dataclasses import dataclass
from typing import Annotated, Any, TypedDict

import pytest
from langchain_core.messages import AIMessage, AnyMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.prebuilt import ToolNode, tools_condition
from langgraph.store.base import BaseStore
from langgraph.types import Command, interrupt

from agent_history import AgentNode, AgentState, ChatHistory, HistoryHooks, HistoryReport
from agent_history.messages import text_of
from agent_history.middleware import HistoryMiddleware
from agent_history.testing import RecordingChatModel
from agent_history.toggles import HistoryToggles
from tests.support.agent_graphs import telegram_callback
from tests.support.resumes import resume_twice_at_once
from tests.support.tool_models import WeatherModel, get_weather

TOGGLES = HistoryToggles(env={})
ANSWER = "final[Oslo]: sunny in Oslo"


@tool("get_weather")
def weather_after_approval(city: str) -> str:
    """The weather in a city, once a person approves the lookup."""
    interrupt({"approve": f"weather in {city}?"})
    return f"sunny in {city}"


class GatedWeatherModel(WeatherModel):
    """`WeatherModel` whose answers to a tool result wait at ``gate`` (when set): two
    final passes then both read the store before either appends."""

    gate: Any = None

    def reply(self, messages: list[BaseMessage], **kwargs: Any) -> Any:
        if self.gate is not None and messages and messages[-1].type == "tool":
            self.gate.wait()
        return super().reply(messages, **kwargs)


def _agent_graph(
    model: Any, store: BaseStore, scope: str, reports: list[HistoryReport], **fields: Any
) -> Any:
    node = AgentNode(
        model.bind_tools([weather_after_approval]),
        use_graph_chat_history=True,
        history_scope=scope,
        toggles=TOGGLES,
        on_report=reports.append,
        **fields,
    )
    builder = StateGraph(AgentState)
    builder.add_node("agent", node)
    builder.add_node("tools", ToolNode([weather_after_approval]))
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", tools_condition)
    builder.add_edge("tools", "agent")
    return builder.compile(store=store, checkpointer=InMemorySaver())


def _stored(
    store: BaseStore, key: str, scope: str, namespace: tuple[str, ...] = ("agent_chat_history",)
) -> list[tuple[str, str]]:
    history = ChatHistory(store, namespace=namespace, scope=scope)  # type: ignore[arg-type]
    return [(m.type, text_of(m)) for m in history.to_messages(list(history.read(key)))]


def _expected(scope: str) -> list[tuple[str, str]]:
    steps = [("ai", ""), ("tool", "sunny in Oslo")] if scope == "full" else []
    return [
        ("human", "weather in Oslo"), *steps, ("ai", ANSWER),
        ("human", "thanks"), ("ai", "echo: thanks"),
    ]  # fmt: skip


def _shape(messages: list[BaseMessage]) -> list[tuple[str, str]]:
    return [(m.type, text_of(m)) for m in messages]


@dataclass
class Asked:
    """A question asked on a stable thread, waiting for its approval."""

    graph: Any
    chat: int
    config: dict[str, Any]
    interrupted: dict[str, Any]
    """The interrupted checkpoint's config (what a second worker resumes)."""


def _ask(graph: Any) -> Asked:
    """Ask the weather in Oslo, up to the approval."""
    chat = uuid.uuid4().int % 10**9
    config = {"configurable": {"thread_id": f"chat-{chat}"}}
    result = graph.invoke(telegram_callback(chat, "weather in Oslo", 1), config)
    assert result["__interrupt__"], "the tool asks for approval"
    return Asked(graph, chat, config, graph.get_state(config).config)


def _check_thanks_payload(payload: list[BaseMessage], scope: str) -> None:
    """The next message's payload: the exchange once, with its first answer."""
    if scope == "full":
        assert _shape(payload) == [
            ("human", "weather in Oslo"), ("ai", ""), ("tool", "sunny in Oslo"),
            ("ai", ANSWER), ("human", "thanks"),
        ]  # fmt: skip
    else:
        # The thread's own tool steps belong to its second answer, which is not sent.
        assert _shape(payload) == [
            ("human", "weather in Oslo"), ("ai", ANSWER), ("human", "thanks")
        ]  # fmt: skip


@pytest.mark.parametrize("scope", ["turns", "full"])
def test_an_approval_resumed_twice_from_one_checkpoint_is_answered_once_in_the_log(
    store: BaseStore, scope: str
) -> None:
    model, reports = WeatherModel(), []
    graph = _agent_graph(model, store, scope, reports)
    asked = _ask(graph)
    chat, config, interrupted = asked.chat, asked.config, asked.interrupted

    first = graph.invoke(Command(resume=True), config)  # click 1
    second = graph.invoke(Command(resume=True), interrupted)  # click 2, same checkpoint
    assert text_of(first["messages"][-1]) == text_of(second["messages"][-1]) == ANSWER
    # Click 2's final pass answered the question and its own tool result, not a
    # conversation that already ended in the stored answer.
    assert [m.type for m in model.calls[-1]] == ["human", "ai", "tool"]
    assert reports[-1].appended == 0
    graph.invoke(telegram_callback(chat, "thanks", 2), config)

    assert _stored(store, f"telegram:{chat}", scope) == _expected(scope)
    _check_thanks_payload(model.calls[-1], scope)
    assert [r.appended for r in reports] == [0, len(_expected(scope)) - 2, 0, 2]


@pytest.mark.parametrize("scope", ["turns", "full"])
def test_a_replay_from_the_checkpoint_after_the_tool_result_adds_no_second_answer(
    store: BaseStore, scope: str
) -> None:
    model, reports = WeatherModel(), []
    graph = _agent_graph(model, store, scope, reports)
    asked = _ask(graph)
    chat, config = asked.chat, asked.config
    graph.invoke(Command(resume=True), config)
    # Time travel: run the final pass again from the checkpoint after the tool result.
    after_tool = next(
        s
        for s in graph.get_state_history(config)
        if s.next == ("agent",) and s.values["messages"][-1].type == "tool"
    )
    replayed = graph.invoke(None, after_tool.config)
    assert text_of(replayed["messages"][-1]) == ANSWER
    assert _shape(model.calls[-1]) == [
        ("human", "weather in Oslo"), ("ai", ""), ("tool", "sunny in Oslo")
    ]  # fmt: skip
    graph.invoke(telegram_callback(chat, "thanks", 2), config)

    assert _stored(store, f"telegram:{chat}", scope) == _expected(scope)
    _check_thanks_payload(model.calls[-1], scope)
    # A fresh thread (another process) sees the same conversation.
    graph.invoke(telegram_callback(chat, "recap", 3), {"configurable": {"thread_id": "x"}})
    assert _shape(model.calls[-1]) == [*_expected(scope), ("human", "recap")]


@pytest.mark.parametrize("scope", ["turns", "full"])
def test_two_approvals_resumed_at_the_same_moment_store_one_answer(
    store: BaseStore, scope: str
) -> None:
    model, reports = GatedWeatherModel(), []
    graph = _agent_graph(model, store, scope, reports)
    asked = _ask(graph)
    chat, interrupted = asked.chat, asked.interrupted
    # Both final passes have read the (empty) log when either appends.
    model.gate = threading.Barrier(2, timeout=60)
    resume_twice_at_once(graph, True, interrupted)
    model.gate = None
    assert sorted(r.appended for r in reports[1:]) == [0, len(_expected(scope)) - 2]
    graph.invoke(telegram_callback(chat, "thanks", 2), {"configurable": {"thread_id": "y"}})

    assert _stored(store, f"telegram:{chat}", scope) == _expected(scope)
    assert _shape(model.calls[-1]) == _expected(scope)[:-1]


def _key_of(chat: int) -> str:
    return f"telegram:{chat}"


def test_create_agent_with_human_approval_resumed_twice_stores_one_answer(
    store: BaseStore,
) -> None:
    from langchain.agents import create_agent
    from langchain.agents.middleware import HumanInTheLoopMiddleware

    model = WeatherModel()
    agent = create_agent(
        model,
        tools=[get_weather],  # the middleware asks for the approval
        middleware=[
            HistoryMiddleware(toggles=TOGGLES, history_scope="full"),
            HumanInTheLoopMiddleware(interrupt_on={"get_weather": True}),
        ],
        store=store,
        checkpointer=InMemorySaver(),
    )
    chat = uuid.uuid4().int % 10**9
    config = {"configurable": {"thread_id": f"chat-{chat}"}}
    result = agent.invoke(telegram_callback(chat, "weather in Oslo", 1), config)
    assert result["__interrupt__"]
    interrupted = agent.get_state(config).config
    approve = Command(resume={"decisions": [{"type": "approve"}]})
    agent.invoke(approve, config)
    agent.invoke(approve, interrupted)
    assert [m.type for m in model.calls[-1]] == ["human", "ai", "tool"]
    agent.invoke(telegram_callback(chat, "thanks", 2), config)

    assert _stored(store, _key_of(chat), "full") == _expected("full")
    assert [m.type for m in model.calls[-1]] == ["human", "ai", "tool", "ai", "human"]


def test_react_agent_hooks_with_a_tool_asking_approval_resumed_twice_store_one_answer(
    store: BaseStore,
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from langgraph.prebuilt import create_react_agent

        model = WeatherModel()
        agent = create_react_agent(
            model,
            [weather_after_approval],
            **HistoryHooks(toggles=TOGGLES, history_scope="turns").hooks(),
            store=store,
            checkpointer=InMemorySaver(),
        )
    chat = uuid.uuid4().int % 10**9
    config = {"configurable": {"thread_id": f"chat-{chat}"}}
    result = agent.invoke(telegram_callback(chat, "weather in Oslo", 1), config)
    assert result["__interrupt__"]
    interrupted = agent.get_state(config).config
    agent.invoke(Command(resume=True), config)
    agent.invoke(Command(resume=True), interrupted)
    agent.invoke(telegram_callback(chat, "thanks", 2), config)

    assert _stored(store, _key_of(chat), "turns") == _expected("turns")
    _check_thanks_payload(model.calls[-1], "turns")


class ThreeCitiesModel(WeatherModel):
    """Asks for the weather in Oslo, Rome and Lima one call at a time, then answers."""

    def reply(self, messages: list[BaseMessage], **kwargs: Any) -> Any:
        results = 0
        for message in reversed(messages):
            if message.type == "human":
                break
            results += isinstance(message, ToolMessage)
        if messages[-1].type == "ai":
            return AIMessage("asked to answer a conversation that ends in an answer")
        if results < 3:
            city = ("Oslo", "Rome", "Lima")[results]
            call = {"name": "get_weather", "args": {"city": city}, "id": f"c{results}"}
            return AIMessage("", tool_calls=[call])
        return AIMessage(f"all sunny ({len(self.calls)})")


def test_a_fork_in_an_exchange_longer_than_the_window_answers_its_own_tool_steps(
    store: BaseStore,
) -> None:
    """Full scope, a window of 6 and an exchange of 8 messages: the question is older
    than the stored window the second branch reads, which must still tell the fork."""
    model, reports = ThreeCitiesModel(), []
    graph = _agent_graph(model, store, "full", reports, max_messages=6)
    asked = _ask(graph)  # the model asks for Oslo, Rome and Lima, one at a time
    chat, config = asked.chat, asked.config
    for _ in range(2):  # approve Oslo, then Rome
        graph.invoke(Command(resume=True), config)
    interrupted = graph.get_state(config).config  # Lima waits for its approval
    first = graph.invoke(Command(resume=True), config)
    graph.invoke(Command(resume=True), interrupted)

    # The second branch's final pass: the question and its own three tool rounds.
    calls = [m for m in model.calls[-1] if m.type == "ai"]
    assert [m.type for m in model.calls[-1]] == ["human", *["ai", "tool"] * 3]
    assert [c.tool_calls[0]["args"]["city"] for c in calls] == ["Oslo", "Rome", "Lima"]
    assert reports[-1].appended == 0
    stored = _stored(store, f"telegram:{chat}", "full")
    assert stored[0] == ("human", "weather in Oslo")
    assert [t for t, _ in stored] == ["human", *["ai", "tool"] * 3, "ai"]
    assert stored[-1] == ("ai", text_of(first["messages"][-1]))


class _SupervisedState(TypedDict, total=False):
    messages: Annotated[list[AnyMessage], add_messages]
    rounds: int


def test_an_agent_sent_back_by_a_supervisor_stores_its_revised_answer(store: BaseStore) -> None:
    """One run: agent -> supervisor -> agent (revise) -> supervisor -> end, driven with
    plain messages. Both answers of the run are stored; the next message, on another
    thread of the same conversation, sees the revision."""
    model, namespace = WeatherModel(), uuid.uuid4().hex  # a conversation of this test only
    node = AgentNode(
        model,
        use_graph_chat_history=True,
        toggles=TOGGLES,
        history_namespace=[namespace],
        history_key_candidates=("user-42",),
    )

    def supervisor(state: _SupervisedState) -> dict[str, Any]:
        note = AIMessage("supervisor: be more precise", name="supervisor")
        return {"rounds": state.get("rounds", 0) + 1, "messages": [note]}

    builder = StateGraph(_SupervisedState)
    builder.add_node("agent", node)
    builder.add_node("supervisor", supervisor)
    builder.add_edge(START, "agent")
    builder.add_edge("agent", "supervisor")
    builder.add_conditional_edges(
        "supervisor", lambda s: "agent" if s["rounds"] < 2 else END, ["agent", END]
    )
    graph = builder.compile(store=store, checkpointer=InMemorySaver())
    graph.invoke({"messages": [HumanMessage("hello")]}, {"configurable": {"thread_id": "a"}})

    history = ChatHistory(store, namespace=(namespace,))
    run = [
        ("human", "hello"), ("ai", "echo: hello"),
        ("ai", "supervisor: be more precise"), ("ai", "echo: hello"),
    ]  # fmt: skip
    assert [(m.type, text_of(m)) for m in history.tail("user-42", 20)] == run
    # Time travel to the second pass: that branch's revision is not stored beside it.
    second_pass = next(
        s
        for s in graph.get_state_history({"configurable": {"thread_id": "a"}})
        if s.next == ("agent",) and len(s.values["messages"]) == 3
    )
    graph.invoke(None, second_pass.config)
    assert _shape(model.calls[-1]) == run[:3]
    assert [(m.type, text_of(m)) for m in history.tail("user-42", 20)] == run
    graph.invoke({"messages": [HumanMessage("thanks")]}, {"configurable": {"thread_id": "b"}})
    assert _shape(model.calls[3]) == [*run, ("human", "thanks")]
    assert len(history.tail("user-42", 20)) == 8  # the next run's four as well


class AskOnceModel(GatedWeatherModel):
    """Asks for the weather in Oslo, whatever came before, then answers the result."""

    def reply(self, messages: list[BaseMessage], **kwargs: Any) -> Any:
        if isinstance(messages[-1], ToolMessage):
            return super().reply(messages, **kwargs)
        call = {"name": "get_weather", "args": {"city": "Oslo"}, "id": "c-oslo"}
        return AIMessage("", tool_calls=[call])


@pytest.mark.parametrize("clicks", ["one after the other", "at once"])
@pytest.mark.parametrize("scope", ["turns", "full"])
def test_a_pipelines_second_agent_forked_at_its_approval_stores_one_answer(
    store: BaseStore, scope: str, clicks: str
) -> None:
    """triage -> weather <-> tools (each agent its own namespace): the weather agent's
    branches share the question, the triage answer before its own and its tool call."""
    namespace = uuid.uuid4().hex
    triage = AgentNode(
        RecordingChatModel(prefix="triage: "),
        use_graph_chat_history=True,
        history_namespace=[namespace, "triage"],
        toggles=TOGGLES,
    )
    model, reports = AskOnceModel(), []
    weather = AgentNode(
        model.bind_tools([weather_after_approval]),
        use_graph_chat_history=True,
        history_namespace=[namespace, "weather"],
        history_scope=scope,
        toggles=TOGGLES,
        on_report=reports.append,
    )
    builder = StateGraph(AgentState)
    builder.add_node("triage", triage)
    builder.add_node("weather", weather)
    builder.add_node("tools", ToolNode([weather_after_approval]))
    builder.add_edge(START, "triage")
    builder.add_edge("triage", "weather")
    builder.add_conditional_edges("weather", tools_condition)
    builder.add_edge("tools", "weather")
    graph = builder.compile(store=store, checkpointer=InMemorySaver())
    asked = _ask(graph)
    if clicks == "at once":
        model.gate = threading.Barrier(2, timeout=60)
        resume_twice_at_once(graph, True, asked.interrupted)
    else:
        graph.invoke(Command(resume=True), asked.config)
        graph.invoke(Command(resume=True), asked.interrupted)
        assert [m.type for m in model.calls[-1]] == ["human", "ai", "ai", "tool"]

    steps = [("ai", ""), ("tool", "sunny in Oslo")] if scope == "full" else []
    assert _stored(store, f"telegram:{asked.chat}", scope, (namespace, "weather")) == [
        ("human", "weather in Oslo"), ("ai", "triage: weather in Oslo"), *steps, ("ai", ANSWER)
    ]  # fmt: skip
    assert sorted(r.appended for r in reports[-2:]) == [0, 3 + len(steps)]


def test_a_revision_continues_an_exchange_an_earlier_release_stored(store: BaseStore) -> None:
    """An earlier release recorded the first message after the question as the run's
    token (here the tool call). A later pass of that run (a reviewer asked for a
    revision) still appends; another run answering the question does not."""
    history = ChatHistory(store, namespace=("upgrade", uuid.uuid4().hex))
    question = HumanMessage("weather in Oslo", id="q")
    history.append("k", [question, AIMessage("v1", id="v1")], anchor_id="q", anchor_next="call")
    revision = [AIMessage("revise it", id="review"), AIMessage("v2", id="v2")]
    seen = ("call", "result", "v1", "review", "v2")
    result = history.append("k", revision, anchor_id="q", anchor_next="v2", anchor_seen=seen)
    assert result.appended == 2
    # The revision is now the token: a second branch of that pass (the review resumed
    # twice) has seen what the first pass had, not the revision, and stores nothing.
    branch = [AIMessage("revise it", id="review-2"), AIMessage("v2 bis", id="v2-bis")]
    seen = ("call", "result", "v1", "review-2", "v2-bis")
    result = history.append("k", branch, anchor_id="q", anchor_next="v2-bis", anchor_seen=seen)
    assert (result.appended, result.duplicates) == (0, 2)
    again = [question, AIMessage("v1 again", id="other")]
    result = history.append("k", again, anchor_id="q", anchor_next="other", anchor_seen=["other"])
    assert (result.appended, result.duplicates) == (0, 2)
    assert [text_of(m) for m in history.tail("k", 10)] == [
        "weather in Oslo",
        "v1",
        "revise it",
        "v2",
    ]


def _greeted(model: Any, store: BaseStore, scope: str) -> Any:
    """greeter -> agent <-> tools: the greeter says a word before each run's agent (on
    a callback, before the delivered message, which the agent adds)."""
    node = AgentNode(
        model.bind_tools([weather_after_approval]),
        use_graph_chat_history=True,
        history_scope=scope,
        toggles=TOGGLES,
    )

    def greeter(state: AgentState) -> dict[str, Any]:
        notes = sum(1 for m in state.get("messages", []) if text_of(m).startswith("note"))
        return {"messages": [AIMessage(f"note {notes + 1}")]}

    builder = StateGraph(AgentState)
    builder.add_node("greeter", greeter)
    builder.add_node("agent", node)
    builder.add_node("tools", ToolNode([weather_after_approval]))
    builder.add_edge(START, "greeter")
    builder.add_edge("greeter", "agent")
    builder.add_conditional_edges("agent", tools_condition)
    builder.add_edge("tools", "agent")
    return builder.compile(store=store, checkpointer=InMemorySaver())


@pytest.mark.parametrize("scope", ["turns", "full"])
def test_after_a_fork_the_next_exchange_keeps_the_note_before_its_question(
    store: BaseStore, scope: str
) -> None:
    model = WeatherModel()
    graph = _greeted(model, store, scope)
    asked = _ask(graph)
    graph.invoke(Command(resume=True), asked.config)
    graph.invoke(Command(resume=True), asked.interrupted)
    graph.invoke(telegram_callback(asked.chat, "thanks", 2), asked.config)

    expected = [("ai", "note 1"), *_expected(scope)]
    expected.insert(-2, ("ai", "note 2"))
    assert _stored(store, f"telegram:{asked.chat}", scope) == expected
    assert _shape(model.calls[-1]) == expected[1:-1]  # (a window starts on a question)


@pytest.mark.parametrize("scope", ["turns", "full"])
def test_a_replay_of_an_exchange_an_earlier_release_stored_adds_no_second_answer(
    store: BaseStore, scope: str
) -> None:
    """Releases before the answer became the run token recorded the first message after
    the question (here the tool call, which every branch of the tool loop shares)."""
    model, reports = WeatherModel(), []
    graph = _agent_graph(model, store, scope, reports)
    asked = _ask(graph)
    graph.invoke(Command(resume=True), asked.config)
    key = f"telegram:{asked.chat}"
    namespace = ("agent_chat_history", key)
    call = next(m for m in graph.get_state(asked.config).values["messages"] if m.type == "ai")
    entry = store.get(namespace, "msgid:1")
    assert entry is not None
    store.put(namespace, "msgid:1", {**entry.value, "next": call.id})  # as such a release did
    after_tool = next(
        s
        for s in graph.get_state_history(asked.config)
        if s.next == ("agent",) and s.values["messages"][-1].type == "tool"
    )
    graph.invoke(None, after_tool.config)

    assert reports[-1].appended == 0
    assert reports[-1].redelivered
    assert _stored(store, key, scope) == _expected(scope)[:-2]
