"""Passes that answer no new user message, in a conversation other threads write to.

An agent a reviewer sends back to revise its answer, and an agent that follows up on its
own (a scheduled nudge, with a tool call), both add to an exchange whose question is
stored. Meanwhile the same conversation moves on elsewhere: another thread of the key
revises its own answer, the application pushes a message, a Telegram chat of the same
user asks something. Every message each thread produced is stored once, in order, and
the next payload carries it; a review resumed twice stores one revision.
"""

from __future__ import annotations

import logging
import threading
import uuid
import warnings
from typing import Any

import pytest
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition
from langgraph.store.base import BaseStore, GetOp, Op
from langgraph.store.memory import InMemoryStore
from langgraph.types import Command, interrupt

from agent_history import AgentNode, AgentState, ChatHistory, HistoryHooks, HistoryReport
from agent_history.messages import text_of
from agent_history.middleware import HistoryMiddleware
from agent_history.testing import RecordingChatModel
from agent_history.toggles import HistoryToggles
from tests.support.agent_graphs import telegram_callback
from tests.support.fault_stores import FaultyStore, InjectedStoreError
from tests.support.resumes import resume_twice_at_once

TOGGLES = HistoryToggles(env={})


@pytest.fixture
def key() -> str:
    """The user's conversation, one per test (persistent stores outlive a test)."""
    return f"user-{uuid.uuid4().hex}"


class Reviser(RecordingChatModel):
    """Answers ``v1 to <question>``; after a reviewer's note ``v2 (<note>)``, waiting at
    ``gate`` (when set) first."""

    gate: Any = None

    def reply(self, messages: list[BaseMessage], **kwargs: Any) -> Any:
        if text_of(messages[-1]).startswith("reviewer: "):
            if self.gate is not None:
                self.gate.wait()
            return AIMessage(f"v2 ({text_of(messages[-1]).removeprefix('reviewer: ')})")
        return AIMessage(f"v1 to {text_of(messages[-1])}")

    def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
        return self


def _review(state: AgentState) -> dict[str, Any]:
    verdict = interrupt("review the answer")
    if verdict == "ok":
        return {}
    return {"messages": [AIMessage(f"reviewer: {verdict}", name="reviewer")]}


def _revise_graph(kind: str, model: Reviser, store: BaseStore, reports: list[Any], key: str) -> Any:
    """worker -> review (interrupt) -> worker again when the reviewer asks, else end."""
    fields: dict[str, Any] = {
        "toggles": TOGGLES,
        "on_report": reports.append,
        "history_key_candidates": (key,),
    }
    worker: Any
    if kind == "AgentNode":
        worker = AgentNode(model, use_graph_chat_history=True, **fields)
    elif kind == "create_agent":
        from langchain.agents import create_agent

        worker = create_agent(model, [], middleware=[HistoryMiddleware(**fields)])
    else:
        from langgraph.prebuilt import create_react_agent

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # create_react_agent is deprecated upstream
            worker = create_react_agent(model, [], **HistoryHooks(**fields).hooks())
    builder = StateGraph(AgentState)
    builder.add_node("worker", worker)
    builder.add_node("review", _review)
    builder.add_edge(START, "worker")
    builder.add_edge("worker", "review")
    builder.add_conditional_edges(
        "review",
        lambda s: "worker" if getattr(s["messages"][-1], "name", None) == "reviewer" else END,
        ["worker", END],
    )
    return builder.compile(store=store, checkpointer=InMemorySaver())


def _log(store: BaseStore, key: str) -> list[tuple[str, str]]:
    return [(m.type, text_of(m)) for m in ChatHistory(store).tail(key, 50)]


def _shape(messages: list[BaseMessage]) -> list[tuple[str, str]]:
    return [(m.type, text_of(m)) for m in messages if m.type != "system"]


@pytest.mark.parametrize("kind", ["AgentNode", "create_agent", "create_react_agent"])
def test_two_threads_revising_in_turn_store_both_revisions(
    store: BaseStore, key: str, kind: str
) -> None:
    """A web thread and a second thread of the same user, each sent back once by its
    reviewer, interleaved: A answers, B answers, A revises, B revises."""
    model, reports = Reviser(), []
    graph = _revise_graph(kind, model, store, reports, key)
    a = {"configurable": {"thread_id": f"a-{uuid.uuid4().hex}"}}
    b = {"configurable": {"thread_id": f"b-{uuid.uuid4().hex}"}}
    graph.invoke({"messages": [HumanMessage("question A")]}, a)
    graph.invoke({"messages": [HumanMessage("question B")]}, b)
    graph.invoke(Command(resume="shorter"), a)
    graph.invoke(Command(resume="longer"), b)
    graph.invoke(Command(resume="ok"), a)
    graph.invoke(Command(resume="ok"), b)

    assert _log(store, key) == [
        ("human", "question A"), ("ai", "v1 to question A"),
        ("human", "question B"), ("ai", "v1 to question B"),
        ("ai", "reviewer: shorter"), ("ai", "v2 (shorter)"),
        ("ai", "reviewer: longer"), ("ai", "v2 (longer)"),
    ]  # fmt: skip
    assert [(r.appended, r.redelivered) for r in reports] == [(2, False)] * 4
    # B's revision saw its reviewer's note after what the log holds (A's turns among it).
    assert _shape(model.calls[-1])[-3:] == [
        ("ai", "reviewer: shorter"), ("ai", "v2 (shorter)"), ("ai", "reviewer: longer")
    ]  # fmt: skip


@pytest.mark.parametrize("clicks", ["one after the other", "at once"])
def test_a_review_resumed_twice_stores_one_revision(
    store: BaseStore, key: str, clicks: str
) -> None:
    """The reviewer's "revise" handled by two workers from one checkpoint: each branch
    adds its own reviewer note and revision; the log keeps the first branch's."""
    model, reports = Reviser(), []
    graph = _revise_graph("AgentNode", model, store, reports, key)
    config = {"configurable": {"thread_id": uuid.uuid4().hex}}
    graph.invoke({"messages": [HumanMessage("write a haiku")]}, config)
    interrupted = graph.get_state(config).config
    if clicks == "at once":
        model.gate = threading.Barrier(2, timeout=60)
        resume_twice_at_once(graph, "rhyme", interrupted)
    else:
        graph.invoke(Command(resume="rhyme"), interrupted)
        graph.invoke(Command(resume="rhyme"), interrupted)

    assert _log(store, key) == [
        ("human", "write a haiku"), ("ai", "v1 to write a haiku"),
        ("ai", "reviewer: rhyme"), ("ai", "v2 (rhyme)"),
    ]  # fmt: skip
    assert sorted(r.appended for r in reports) == [0, 2, 2]
    # A later run of the chat goes on from the stored revision, the log unchanged.
    graph.invoke({"messages": [HumanMessage("thanks")]}, {"configurable": {"thread_id": "next"}})
    assert _log(store, key)[4:] == [("human", "thanks"), ("ai", "v1 to thanks")]
    assert len(_log(store, key)) == 6


@pytest.mark.parametrize(
    "meanwhile", ["nothing", "an exchange after", "an exchange before", "a greeted chat before"]
)
@pytest.mark.parametrize("clicks", ["one after the other", "at once"])
def test_a_branch_sent_back_again_after_a_double_resume_stores_its_revision_at_once(
    store: BaseStore, key: str, clicks: str, meanwhile: str
) -> None:
    """The review resumed twice (the log keeps the first branch's revision); the thread
    goes on from the branch that ran last: the reviewer sends it back once more, then
    approves, then the user says thanks on the same thread. The second revision is
    stored when it is made, each revision once, and every model call sees one copy of
    the first revision (the stored one)."""
    model, reports = Reviser(), []
    graph = _revise_graph("AgentNode", model, store, reports, key)
    config = {"configurable": {"thread_id": uuid.uuid4().hex}}
    graph.invoke({"messages": [HumanMessage("write a haiku")]}, config)
    other: list[tuple[str, str]] = []
    if meanwhile != "nothing":
        other = [("human", "hello"), ("ai", "v1 to hello")]
    if meanwhile == "an exchange before":
        graph.invoke({"messages": [HumanMessage("hello")]}, {"configurable": {"thread_id": "o"}})
    elif meanwhile == "a greeted chat before":
        # A Telegram chat of the same user, whose greeter speaks before the question.
        other = [("ai", "one moment"), ("human", "hello"), ("ai", "echo: hello")]
        chat = _follow_up_graph(FollowUpModel(), store, "turns", [], key, greeter=True)
        chat.invoke(telegram_callback(7, "hello", 1), {"configurable": {"thread_id": "tg"}})
    interrupted = graph.get_state(config).config
    if clicks == "at once":
        model.gate = threading.Barrier(2, timeout=60)
        resume_twice_at_once(graph, "rhyme", interrupted)
        model.gate = None
    else:
        graph.invoke(Command(resume="rhyme"), interrupted)
        graph.invoke(Command(resume="rhyme"), interrupted)
    if meanwhile == "an exchange after":
        graph.invoke({"messages": [HumanMessage("hello")]}, {"configurable": {"thread_id": "o"}})
    graph.invoke(Command(resume="shorter"), config)
    assert reports[-1].appended == 2, "the second revision is stored when it is made"
    graph.invoke(Command(resume="ok"), config)
    graph.invoke({"messages": [HumanMessage("thanks")]}, config)

    first = [("ai", "reviewer: rhyme"), ("ai", "v2 (rhyme)")]
    second = [("ai", "reviewer: shorter"), ("ai", "v2 (shorter)")]
    opening = [("human", "write a haiku"), ("ai", "v1 to write a haiku")]
    before = meanwhile.endswith("before")
    logged = [*opening, *other, *first] if before else [*opening, *first, *other]
    assert _log(store, key) == [*logged, *second, ("human", "thanks"), ("ai", "v1 to thanks")]
    revise_again = next(c for c in model.calls if text_of(c[-1]) == "reviewer: shorter")
    assert _shape(revise_again) == [*logged, ("ai", "reviewer: shorter")]
    assert _shape(model.calls[-1]) == [*logged, *second, ("human", "thanks")]
    # No model call saw both branches' revision (the second branch answers its thread).
    for call in model.calls:
        assert _shape(call).count(("ai", "reviewer: rhyme")) <= 1


class FollowUpModel(RecordingChatModel):
    """Echoes a user message; with nothing new from the user, checks order 42 with the
    tool and reports it (the n-th follow-up of the chat)."""

    def reply(self, messages: list[BaseMessage], **kwargs: Any) -> Any:
        last = messages[-1]
        if isinstance(last, ToolMessage):
            done = sum(1 for m in messages if text_of(m).startswith("follow-up"))
            return AIMessage(f"follow-up {done + 1}: {text_of(last)}")
        if last.type == "human":
            return AIMessage(f"echo: {text_of(last)}")
        call = {"name": "order_status", "args": {"order": "42"}, "id": uuid.uuid4().hex}
        return AIMessage("", tool_calls=[call])

    def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
        return self


@tool
def order_status(order: str) -> str:
    """The status of an order."""
    return f"order {order} shipped"


def _follow_up_graph(
    model: Any, store: BaseStore, scope: str, reports: list[HistoryReport], key: str, greeter: bool
) -> Any:
    node = AgentNode(
        model,
        use_graph_chat_history=True,
        history_scope=scope,
        toggles=TOGGLES,
        on_report=reports.append,
        history_key_candidates=(key,),
    )
    builder = StateGraph(AgentState)
    builder.add_node("agent", node)
    builder.add_node("tools", ToolNode([order_status]))
    if greeter:
        builder.add_node("greeter", lambda s: {"messages": [AIMessage("one moment")]})
        builder.add_edge(START, "greeter")
        builder.add_edge("greeter", "agent")
    else:
        builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", tools_condition)
    builder.add_edge("tools", "agent")
    return builder.compile(store=store, checkpointer=InMemorySaver())


@pytest.mark.parametrize("scope", ["turns", "full"])
@pytest.mark.parametrize("meanwhile", ["a pushed message", "a Telegram exchange"])
def test_a_follow_up_with_a_tool_call_is_stored_after_the_conversation_moved_on(
    store: BaseStore, key: str, scope: str, meanwhile: str
) -> None:
    """A web thread answers "hi"; the conversation moves on without it; then the agent
    follows up on the web thread with no new user message (it checks an order with a
    tool and reports it), and the user says "thanks" there."""
    model, reports = FollowUpModel(), []
    web = _follow_up_graph(model, store, scope, reports, key, greeter=False)
    thread = {"configurable": {"thread_id": uuid.uuid4().hex}}
    web.invoke({"messages": [HumanMessage("hi")]}, thread)
    if meanwhile == "a pushed message":
        elsewhere = [("ai", "sale today")]
        ChatHistory(store).append(key, [AIMessage("sale today")])
    else:
        elsewhere = [("ai", "one moment"), ("human", "other q"), ("ai", "echo: other q")]
        chat = _follow_up_graph(model, store, scope, reports, key, greeter=True)
        callback = telegram_callback(7, "other q", 1)
        chat.invoke(callback, {"configurable": {"thread_id": "tg-7"}})
    web.invoke({"messages": []}, thread)
    web.invoke({"messages": [HumanMessage("thanks")]}, thread)

    steps = [("ai", ""), ("tool", "order 42 shipped")] if scope == "full" else []
    follow_up = [*steps, ("ai", "follow-up 1: order 42 shipped")]
    assert _log(store, key) == [
        ("human", "hi"), ("ai", "echo: hi"), *elsewhere, *follow_up,
        ("human", "thanks"), ("ai", "echo: thanks"),
    ]  # fmt: skip
    assert [r.redelivered for r in reports] == [False] * len(reports)
    # "thanks" is answered knowing the follow-up (with its tool steps, from the thread).
    sent = _shape(model.calls[-1])
    assert sent[-2:] == [("ai", "follow-up 1: order 42 shipped"), ("human", "thanks")]
    assert ("tool", "order 42 shipped") in sent
    assert sent.count(("ai", "follow-up 1: order 42 shipped")) == 1


@pytest.mark.parametrize("kind", ["AgentNode", "create_agent"])
def test_a_revision_replayed_from_its_checkpoint_is_not_stored_as_the_chat_goes_on(
    store: BaseStore, key: str, kind: str
) -> None:
    """Time travel to the checkpoint before the revision pass, then the user goes on on
    that branch: the replayed pass answers its reviewer's note (not the stored
    revision), and neither it nor the next run stores a second revision."""
    model, reports = Reviser(), []
    graph = _revise_graph(kind, model, store, reports, key)
    config = {"configurable": {"thread_id": uuid.uuid4().hex}}
    graph.invoke({"messages": [HumanMessage("write a haiku")]}, config)
    graph.invoke(Command(resume="rhyme"), config)
    graph.invoke(Command(resume="ok"), config)
    before_revision = next(
        s
        for s in graph.get_state_history(config)
        if s.next == ("worker",) and len(s.values["messages"]) == 3
    )
    graph.invoke(None, before_revision.config)
    assert _shape(model.calls[-1]) == [
        ("human", "write a haiku"), ("ai", "v1 to write a haiku"), ("ai", "reviewer: rhyme")
    ]  # fmt: skip
    graph.invoke(Command(resume="ok"), config)
    graph.invoke({"messages": [HumanMessage("thanks")]}, config)

    assert _log(store, key) == [
        ("human", "write a haiku"), ("ai", "v1 to write a haiku"),
        ("ai", "reviewer: rhyme"), ("ai", "v2 (rhyme)"),
        ("human", "thanks"), ("ai", "v1 to thanks"),
    ]  # fmt: skip
    assert [r.appended for r in reports] == [2, 2, 0, 2]
    # "thanks" is answered with the stored revision, once.
    assert _shape(model.calls[-1]).count(("ai", "v2 (rhyme)")) == 1


def test_a_follow_up_whose_write_failed_is_stored_with_the_next_message(key: str) -> None:
    """The follow-up pass (with its tool call) could not write; the conversation moved on
    meanwhile (a pushed message). The next message stores the follow-up with it, and
    its model sees the follow-up."""
    store = FaultyStore(InMemoryStore())
    model, reports = FollowUpModel(), []
    web = _follow_up_graph(model, store, "turns", reports, key, greeter=False)
    thread = {"configurable": {"thread_id": uuid.uuid4().hex}}
    web.invoke({"messages": [HumanMessage("hi")]}, thread)
    ChatHistory(store).append(key, [AIMessage("sale today")])
    store.fail_writes = True
    web.invoke({"messages": []}, thread)
    store.fail_writes = False
    web.invoke({"messages": [HumanMessage("thanks")]}, thread)

    assert _log(store, key) == [
        ("human", "hi"), ("ai", "echo: hi"), ("ai", "sale today"),
        ("ai", "follow-up 1: order 42 shipped"), ("human", "thanks"), ("ai", "echo: thanks"),
    ]  # fmt: skip
    assert "write_failed" in reports[-2].fallbacks
    assert _shape(model.calls[-1])[-2:] == [
        ("ai", "follow-up 1: order 42 shipped"), ("human", "thanks")
    ]  # fmt: skip


class TokenReadFails(FaultyStore):
    """Fails the next read of id entries alone once ``armed`` (an append's read has the
    open chunk with it, and comes after)."""

    armed = False

    def _check(self, ops: list[Op]) -> None:
        super()._check(ops)
        keys = [op.key for op in ops if isinstance(op, GetOp)]
        if self.armed and any(k.startswith("msgid:") for k in keys):
            self.armed = False
            raise InjectedStoreError("injected read failure")


def test_a_failed_read_of_the_run_tokens_degrades_to_the_messages(
    key: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The revise pass of a thread whose conversation moved on reads its run token; when
    that read fails, the pass warns (no message text) and goes on: its revision is
    stored."""
    store = TokenReadFails(InMemoryStore())
    model, reports = Reviser(), []
    graph = _revise_graph("AgentNode", model, store, reports, key)
    a = {"configurable": {"thread_id": "a"}}
    graph.invoke({"messages": [HumanMessage("question A")]}, a)
    graph.invoke({"messages": [HumanMessage("question B")]}, {"configurable": {"thread_id": "b"}})
    store.armed = True
    with caplog.at_level(logging.WARNING, logger="agent_history"):
        graph.invoke(Command(resume="shorter"), a)

    assert not store.armed, "the revise pass read the run token"
    assert reports[-1].fallbacks == ("anchor_read_failed",)
    assert reports[-1].appended == 2
    assert _log(store, key)[-2:] == [("ai", "reviewer: shorter"), ("ai", "v2 (shorter)")]
    assert "anchor_read_failed" in caplog.text and "question" not in caplog.text


@pytest.mark.parametrize("scope", ["turns", "full"])
def test_a_follow_up_replayed_then_made_again_is_stored_once_each(
    store: BaseStore, key: str, scope: str
) -> None:
    """A follow-up (tool call and report) is stored; it is replayed from the checkpoint
    before it (time travel: not stored again); then a second follow-up on that branch
    is stored when it is made, and "thanks" sees each follow-up once."""
    model, reports = FollowUpModel(), []
    web = _follow_up_graph(model, store, scope, reports, key, greeter=False)
    thread = {"configurable": {"thread_id": uuid.uuid4().hex}}
    web.invoke({"messages": [HumanMessage("hi")]}, thread)
    ChatHistory(store).append(key, [AIMessage("sale today")])
    web.invoke({"messages": []}, thread)
    before = next(
        s
        for s in web.get_state_history(thread)
        if s.next == ("agent",) and len(s.values["messages"]) == 2
    )
    web.invoke(None, before.config)
    assert reports[-1].appended == 0
    web.invoke({"messages": []}, thread)
    assert reports[-1].appended == (3 if scope == "full" else 1)
    web.invoke({"messages": [HumanMessage("thanks")]}, thread)

    steps = [("ai", ""), ("tool", "order 42 shipped")] if scope == "full" else []
    follow_ups = [
        *steps, ("ai", "follow-up 1: order 42 shipped"),
        *steps, ("ai", "follow-up 2: order 42 shipped"),
    ]  # fmt: skip
    opening = [("human", "hi"), ("ai", "echo: hi"), ("ai", "sale today")]
    assert _log(store, key) == [*opening, *follow_ups, ("human", "thanks"), ("ai", "echo: thanks")]
    sent = [m for m in _shape(model.calls[-1]) if m[0] != "tool" and m[1]]
    assert sent == [
        *opening, ("ai", "follow-up 1: order 42 shipped"),
        ("ai", "follow-up 2: order 42 shipped"), ("human", "thanks"),
    ]  # fmt: skip


def test_an_earlier_revision_replayed_and_sent_back_answers_its_own_branch(
    store: BaseStore, key: str
) -> None:
    """A loop revised twice and approved; time travel replays the first revision, and
    the reviewer sends that branch back with a new note. That pass answers its branch
    as it stands (the note last); the chat going on stores the note and its revision,
    never the replayed copy of the first revision."""
    model, reports = Reviser(), []
    graph = _revise_graph("AgentNode", model, store, reports, key)
    config = {"configurable": {"thread_id": uuid.uuid4().hex}}
    graph.invoke({"messages": [HumanMessage("write a haiku")]}, config)
    for verdict in ("rhyme", "shorter", "ok"):
        graph.invoke(Command(resume=verdict), config)
    stored = _log(store, key)
    first_revision = next(
        s
        for s in graph.get_state_history(config)
        if s.next == ("worker",) and len(s.values["messages"]) == 3
    )
    graph.invoke(None, first_revision.config)
    graph.invoke(Command(resume="funnier"), config)
    assert _shape(model.calls[-1])[-2:] == [("ai", "v2 (rhyme)"), ("ai", "reviewer: funnier")]
    assert _log(store, key) == stored
    graph.invoke(Command(resume="ok"), config)
    graph.invoke({"messages": [HumanMessage("thanks")]}, config)

    log = _log(store, key)
    assert log == [
        *stored, ("ai", "reviewer: funnier"), ("ai", "v2 (funnier)"),
        ("human", "thanks"), ("ai", "v1 to thanks"),
    ]  # fmt: skip
    assert _shape(model.calls[-1]) == [*log[:-1]]
