"""`ChatHistory.for_key`: a conversation as LangChain's `BaseChatMessageHistory`, on every
backend, sync and async; ``RunnableWithMessageHistory`` and a plain loop keep a
conversation across runs (a store closed and opened again between them)."""

from __future__ import annotations

import logging
import uuid

import pytest
from langchain_core.chat_history import BaseChatMessageHistory
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    RemoveMessage,
    ToolMessage,
)
from langchain_core.runnables.history import RunnableWithMessageHistory
from langgraph.store.base import BaseStore

from agent_history import ChatHistory
from agent_history.errors import InvalidArgument, InvalidKey
from agent_history.settings import HistorySettings
from agent_history.stores import create_graph_store, create_graph_store_sync
from agent_history.testing import RecordingChatModel

_RWMH_DEPRECATED = "ignore:RunnableWithMessageHistory is deprecated"


def _exchange(n: int) -> list[BaseMessage]:
    return [HumanMessage(f"q{n}", id=f"q{n}"), AIMessage(f"a{n}", id=f"a{n}")]


def _texts(messages: list[BaseMessage]) -> list[str]:
    return [str(m.content) for m in messages]


def test_for_key_is_a_chat_message_history(store: BaseStore, ns: tuple[str, ...]) -> None:
    history = ChatHistory(store, namespace=ns)
    key = "tenant.a/user 17"
    everything = history.for_key(key)
    newest = history.for_key(key, window=3)
    assert isinstance(everything, BaseChatMessageHistory)
    assert everything.messages == [] and newest.messages == []
    for n in range(3):
        everything.add_messages(_exchange(n))
    everything.add_messages(_exchange(2))  # already stored: skipped
    assert _texts(everything.messages) == ["q0", "a0", "q1", "a1", "q2", "a2"]
    assert _texts(newest.messages) == ["a1", "q2", "a2"]
    assert newest.messages == everything.messages[-3:]
    assert history.count(key) == 6 and list(history.keys()) == [key]
    newest.clear()
    assert everything.messages == [] and history.count(key) == 0


def test_messages_langchain_serialised_are_stored_as_the_messages_they_were(
    store: BaseStore, ns: tuple[str, ...], caplog: pytest.LogCaptureFixture
) -> None:
    """A transcript LangChain's file, Redis or SQL histories kept (``messages_to_dict``)
    moves into the history whole: each dict was stored as an empty message without its
    id, silently. A role dict without ``content`` is refused, nothing written."""
    from langchain_core.messages import messages_to_dict

    from agent_history.errors import InvalidMessage

    call = {"name": "lookup", "args": {"order": 42}, "id": "c1"}
    saved = messages_to_dict(
        [
            HumanMessage("my card is 1234", id="h1"),
            AIMessage("", tool_calls=[call], id="a1"),
            ToolMessage("shipped", tool_call_id="c1", id="t1"),
            AIMessage([{"type": "text", "text": "noted"}], id="a2", name="bot"),
        ]
    )
    history = ChatHistory(store, namespace=ns, scope="full").for_key("migrated")
    history.add_messages(saved)
    history.add_messages(saved)  # a retry of the import: stored once
    stored = history.messages
    assert [(m.type, m.content, m.id) for m in stored] == [
        ("human", "my card is 1234", "h1"),
        ("ai", "", "a1"),
        ("tool", "shipped", "t1"),
        ("ai", [{"type": "text", "text": "noted"}], "a2"),
    ]
    assert stored[1].tool_calls == [{**call, "type": "tool_call"}] and stored[3].name == "bot"
    for bad in ({"role": "user", "text": "hello"}, {"type": "human", "data": {"id": "x"}}):
        with pytest.raises(InvalidMessage) as raised:
            history.add_messages([HumanMessage("kept out too", id="k"), bad])
        assert "message 1" in str(raised.value) and "hello" not in str(raised.value)
    assert len(history.messages) == 4
    assert "1234" not in caplog.text


def test_messages_without_ids_get_one_so_a_retry_stores_nothing_twice(
    store: BaseStore, ns: tuple[str, ...]
) -> None:
    view = ChatHistory(store, namespace=ns).for_key("alice@example.com")
    batch: list[BaseMessage] = [HumanMessage("hi"), AIMessage("hello")]
    view.add_messages(batch)
    view.add_messages(batch)  # a retried write with the same messages
    view.add_user_message("again")  # the interface's one-message helpers
    assert _texts(view.messages) == ["hi", "hello", "again"]
    assert [m.id for m in view.messages[:2]] == [m.id for m in batch]
    assert all(m.id for m in view.messages)


def test_full_scope_keeps_every_field(store: BaseStore, ns: tuple[str, ...]) -> None:
    call = {"name": "get_weather", "args": {"city": "Paris"}, "id": "c1"}
    produced: list[BaseMessage] = [
        HumanMessage("weather in Paris", id="h1"),
        AIMessage("", tool_calls=[call], id="t1", usage_metadata=_usage(), name="bot"),
        ToolMessage("sunny", tool_call_id="c1", name="get_weather", id="r1"),
        AIMessage("sunny in Paris", id="f1", response_metadata={"model_name": "m"}),
    ]
    full = ChatHistory(store, namespace=ns, scope="full").for_key("k")
    full.add_messages(produced)
    assert full.messages == produced
    turns = ChatHistory(store, namespace=(*ns[:-1], ns[-1] + "t")).for_key("k")
    turns.add_messages(produced)
    assert turns.messages == [produced[0], produced[3]]  # user messages and final answers


@pytest.mark.parametrize("scope", ["turns", "full"])
def test_chat_messages_with_a_chat_role_are_stored_as_chat_messages(
    store: BaseStore, ns: tuple[str, ...], scope: str, caplog: pytest.LogCaptureFixture
) -> None:
    """ChatMessage(role="user"/"assistant") was dropped while the same dict was stored."""
    chat: list[BaseMessage] = [
        ChatMessage("hi", role="user", id="c1"),
        ChatMessage("hello", role="assistant", id="c2", name="bot"),
        ChatMessage("again", role="human", id="c3"),
        ChatMessage("sure", role="bot", id="c4"),
    ]
    history = ChatHistory(store, namespace=ns, scope=scope)  # type: ignore[arg-type]
    view = history.for_key("k")
    with caplog.at_level(logging.WARNING, logger="agent_history"):
        view.add_messages(chat[:2])
        result = history.append("k", chat[2:])
    assert (result.appended, result.skipped, result.first_seq) == (2, 0, 3)
    assert view.messages == chat  # type, role, name and id kept
    assert [type(m).__name__ for m in history.tail("k", 4)] == ["ChatMessage"] * 4
    assert [t.role for t in history.read("k")] == ["user", "assistant", "user", "assistant"]
    assert [m.content for m in history.for_key("k", window=2).messages] == ["again", "sure"]
    assert not [r for r in caplog.records if "unsupported" in r.getMessage()]
    copy = ChatHistory(store, namespace=ns)
    assert copy.import_turns("copy", list(history.read("k"))).written == 4
    assert copy.for_key("copy").messages == chat


def test_messages_no_scope_stores_are_reported_not_dropped_silently(
    store: BaseStore, ns: tuple[str, ...], caplog: pytest.LogCaptureFixture
) -> None:
    history = ChatHistory(store, namespace=ns, scope="full")
    odd: list[BaseMessage] = [
        ChatMessage("judge", role="critic", id="x1"),
        FunctionMessage("fn", name="f", id="x2"),
        RemoveMessage(id="x3"),
        ChatMessage("ok", role="user", id="x4"),
    ]
    with caplog.at_level(logging.WARNING, logger="agent_history"):
        history.for_key("k").add_messages(odd)
        result = history.append("k", [{"role": "critic", "content": "secret words"}])
    assert (result.appended, result.skipped) == (0, 1)
    assert [m.id for m in history.for_key("k").messages] == ["x4"]
    warned = [
        r.getMessage() for r in caplog.records if "history_messages_unsupported" in r.getMessage()
    ]
    assert warned == [
        "event=history_messages_unsupported count=3 types=ChatMessage,FunctionMessage,RemoveMessage",
        "event=history_messages_unsupported count=1 types=dict",
    ]
    assert not [
        r for r in caplog.records if "judge" in r.getMessage() or "secret" in r.getMessage()
    ]


async def test_add_messages_takes_dicts_as_append_does(
    store: BaseStore, ns: tuple[str, ...]
) -> None:
    """Dicts raised AttributeError ('dict' object has no attribute 'id')."""
    history = ChatHistory(store, namespace=ns)
    view = history.for_key("k")
    view.add_messages([{"role": "user", "content": "hi", "id": "u1"}, AIMessage("hello")])
    await view.aadd_messages(
        [{"role": "human", "content": "again"}, {"role": "bot", "content": "ok"}]
    )
    view.add_messages([{"role": "user", "content": "hi", "id": "u1"}])  # stored id: skipped
    history.append("k2", [{"role": "user", "content": "hi", "id": "u1"}, AIMessage("hello")])
    assert _texts(view.messages) == ["hi", "hello", "again", "ok"]
    assert [type(m).__name__ for m in view.messages] == ["HumanMessage", "AIMessage"] * 2
    assert view.messages[0].id == "u1"
    assert _texts(view.messages[:2]) == _texts(history.for_key("k2").messages)


def _usage() -> dict[str, int]:
    return {"input_tokens": 3, "output_tokens": 1, "total_tokens": 4}


async def test_async_methods(astore: BaseStore, ns: tuple[str, ...]) -> None:
    history = ChatHistory(astore, namespace=ns)
    view = history.for_key("ключ 🗝", window=2)
    await view.aadd_messages(_exchange(0))
    await view.aadd_messages(_exchange(1))
    assert _texts(await view.aget_messages()) == ["q1", "a1"]
    everything = history.for_key("ключ 🗝")
    assert _texts(await everything.aget_messages()) == ["q0", "a0", "q1", "a1"]
    await view.aclear()
    assert await everything.aget_messages() == []


@pytest.mark.parametrize(
    ("key", "reason"), [("", "empty"), ("a\nb", "invalid_chars"), ("{{x}}", "unresolved_template")]
)
def test_invalid_key_or_window_is_refused(key: str, reason: str) -> None:
    from langgraph.store.memory import InMemoryStore

    history = ChatHistory(InMemoryStore())
    with pytest.raises(InvalidKey, match=reason):
        history.for_key(key)
    with pytest.raises(InvalidArgument, match="window"):
        history.for_key("ok", window=0)


@pytest.mark.filterwarnings(_RWMH_DEPRECATED)
def test_runnable_with_message_history_keeps_a_conversation_across_runs(
    persistent_settings: HistorySettings,
) -> None:
    model = RecordingChatModel()
    key = f"user-{uuid.uuid4().hex[:8]}@example.com"
    for text in ["hi", "what did I say?"]:
        # Each run opens the store anew, as a separate process would.
        with create_graph_store_sync(persistent_settings) as store:
            chain = RunnableWithMessageHistory(
                model, lambda session_id, s=store: ChatHistory(s).for_key(session_id, window=10)
            )
            reply = chain.invoke(text, {"configurable": {"session_id": key}})
            assert reply.content == f"echo: {text}"
    assert _texts(model.calls[-1]) == ["hi", "echo: hi", "what did I say?"]
    with create_graph_store_sync(persistent_settings) as store:
        assert _texts(ChatHistory(store).for_key(key).messages) == [
            "hi",
            "echo: hi",
            "what did I say?",
            "echo: what did I say?",
        ]


@pytest.mark.filterwarnings(_RWMH_DEPRECATED)
async def test_runnable_with_message_history_async(persistent_settings: HistorySettings) -> None:
    model = RecordingChatModel()
    key = f"user-{uuid.uuid4().hex[:8]}"
    for text in ["one", "two"]:
        async with create_graph_store(persistent_settings) as store:
            chain = RunnableWithMessageHistory(
                model, lambda session_id, s=store: ChatHistory(s).for_key(session_id)
            )
            await chain.ainvoke(text, {"configurable": {"session_id": key}})
    assert _texts(model.calls[-1]) == ["one", "echo: one", "two"]


def test_a_plain_loop_over_for_key(persistent_settings: HistorySettings) -> None:
    model = RecordingChatModel()
    key = f"chat-{uuid.uuid4().hex[:8]}"
    for text in ["a", "b", "c"]:
        with create_graph_store_sync(persistent_settings) as store:
            history = ChatHistory(store).for_key(key, window=3)
            question = HumanMessage(text)
            answer = model.invoke([*history.messages, question])
            history.add_messages([question, answer])
    assert [_texts(call) for call in model.calls] == [
        ["a"],
        ["a", "echo: a", "b"],
        ["echo: a", "b", "echo: b", "c"],
    ]


async def test_a_window_never_starts_with_a_tool_result_of_a_call_outside_it(
    store: BaseStore, ns: tuple[str, ...]
) -> None:
    """A model rejects a tool result whose call it was not sent: the window leaves such
    results out (here the window of 3 would start on the second of two results)."""
    view = ChatHistory(store, namespace=ns, scope="full").for_key("tools", window=3)
    call = AIMessage(
        "",
        tool_calls=[
            {"name": "a", "args": {}, "id": "c1"},
            {"name": "b", "args": {}, "id": "c2"},
        ],
    )
    view.add_messages(
        [
            HumanMessage("q"),
            call,
            ToolMessage("r1", tool_call_id="c1"),
            ToolMessage("r2", tool_call_id="c2"),
            AIMessage("done"),
        ]
    )
    assert [m.content for m in view.messages] == ["done"]
    assert [m.content for m in await view.aget_messages()] == ["done"]
    whole = ChatHistory(store, namespace=ns, scope="full").for_key("tools")
    assert [m.content for m in whole.messages] == ["q", "", "r1", "r2", "done"]


async def test_a_window_keeps_a_tool_call_under_way_so_its_results_follow_it(
    store: BaseStore, ns: tuple[str, ...]
) -> None:
    """A tool loop driven over the history (``RunnableWithMessageHistory``: the model's
    tool call is stored, the application runs the tool, then sends its result as the next
    input): the windowed read left the call out as if the loop had stopped, so the model
    got the result without its call, which providers reject. The whole transcript kept
    it, as LangChain's own histories do."""
    view = ChatHistory(store, namespace=ns, scope="full").for_key("loop", window=10)
    calls = [{"name": "a", "args": {}, "id": "c1"}, {"name": "b", "args": {}, "id": "c2"}]
    view.add_messages([HumanMessage("q", id="h1"), AIMessage("", id="a1", tool_calls=calls)])
    assert [m.id for m in view.messages] == ["h1", "a1"]
    view.add_messages([ToolMessage("r1", tool_call_id="c1", id="t1")])
    assert [m.id for m in await view.aget_messages()] == ["h1", "a1", "t1"]
    view.add_messages([ToolMessage("r2", tool_call_id="c2", id="t2"), AIMessage("done", id="a2")])
    assert [m.id for m in view.messages] == ["h1", "a1", "t1", "t2", "a2"]
    # A window that holds only results of a call older than it still starts clean.
    assert [m.id for m in ChatHistory(store, namespace=ns).for_key("loop", window=2).messages] == [
        "a2"
    ]


async def test_a_window_leaves_out_a_tool_call_whose_results_were_never_stored(
    store: BaseStore, ns: tuple[str, ...]
) -> None:
    """An agent loop that stopped between its tool call and the result (a crash, an
    approval never given) stored the call alone. A model rejects a call without its
    results ("tool_calls must be followed by tool messages"), so every later run of the
    chat would fail: the window leaves the call out and keeps the rest."""
    view = ChatHistory(store, namespace=ns, scope="full").for_key("stopped", window=10)
    view.add_messages(
        [
            HumanMessage("book it", id="h1"),
            AIMessage("", id="a1", tool_calls=[{"name": "book", "args": {}, "id": "c1"}]),
        ]
    )
    view.add_messages(
        [
            HumanMessage("hello again", id="h2"),
            AIMessage("", id="a2", tool_calls=[{"name": "a", "args": {}, "id": "c2"}]),
            ToolMessage("r2", tool_call_id="c2", id="t2"),
            AIMessage("done", id="a3"),
        ]
    )
    expected = ["h1", "h2", "a2", "t2", "a3"]
    assert [m.id for m in view.messages] == expected
    assert [m.id for m in await view.aget_messages()] == expected
    whole = ChatHistory(store, namespace=ns, scope="full").for_key("stopped")
    assert [m.id for m in whole.messages] == ["h1", "a1", "h2", "a2", "t2", "a3"]
