"""Messages a provider or a tool makes that are not plain JSON: the turn is stored (its
odd metadata in pydantic's JSON form), and a message the codec cannot store costs its
exchange only: no retry, and the store-wide breaker does not count it."""

from __future__ import annotations

import datetime
import decimal
import json
import logging
import uuid
from typing import Any

import pytest
from langchain_core.messages import AIMessage, BaseMessage, ChatMessage, HumanMessage, ToolMessage
from langgraph.graph import START, StateGraph
from langgraph.store.base import BaseStore

from agent_history import AgentNode, AgentState, ChatHistory, HistoryReport
from agent_history.errors import InvalidMessage
from agent_history.testing import RecordingChatModel
from agent_history.toggles import HistoryToggles
from tests.support.agent_graphs import new_thread, telegram_callback

_WHEN = datetime.datetime(2026, 11, 26, 7, 0, tzinfo=datetime.UTC)


def _deep(levels: int) -> Any:
    value: Any = "x"
    for _ in range(levels):
        value = {"a": value}
    return value


class OddModel(RecordingChatModel):
    """Answers with metadata a provider might attach; "deep" gets an answer whose
    content block nests deeper than any backend stores."""

    def reply(self, messages: list[BaseMessage], **kwargs: Any) -> AIMessage:
        text = str(messages[-1].content)
        if text == "deep":
            return AIMessage([{"type": "text", "text": "deep", "extra": _deep(80)}])
        return AIMessage(
            f"echo: {text}",
            response_metadata={"created": _WHEN, "cost": decimal.Decimal("0.10")},
            additional_kwargs={"raw": b"\xff\x00", "tags": {"a"}},
        )


def _graph(model: Any, store: BaseStore, reports: list[HistoryReport], **kw: Any) -> Any:
    toggles = HistoryToggles(
        env={"ORCHEO_GRAPH_CHAT_HISTORY_BREAKER_MIN_CALLS": "2"}  # opens after 2 failures
    )
    node = AgentNode(
        model, use_graph_chat_history=True, toggles=toggles, on_report=reports.append, **kw
    )
    builder = StateGraph(AgentState)
    builder.add_node("agent", node)
    builder.add_edge(START, "agent")
    return builder.compile(store=store)


def test_odd_metadata_is_stored_in_json_form(store: BaseStore) -> None:
    reports: list[HistoryReport] = []
    graph = _graph(OddModel(), store, reports, history_scope="full")
    chat = uuid.uuid4().int % 10**9
    result = graph.invoke(telegram_callback(chat, "hi", 1), new_thread())
    assert result["messages"][-1].content == "echo: hi"
    assert reports[-1].appended == 2 and reports[-1].fallbacks == ()

    history = ChatHistory(store, scope="full")
    stored = history.to_messages(list(history.read(f"telegram:{chat}")))
    assert [m.content for m in stored] == ["hi", "echo: hi"]
    answer = stored[1]
    assert answer.id == result["messages"][-1].id
    assert answer.response_metadata == {"created": "2026-11-26T07:00:00Z", "cost": "0.10"}
    assert answer.additional_kwargs == {"raw": "_wA=", "tags": ["a"]}


def test_a_tool_artifact_of_bytes_keeps_the_tool_turn(store: BaseStore) -> None:
    history = ChatHistory(store, scope="full")
    key = f"k{uuid.uuid4().hex[:8]}"
    call = AIMessage("", tool_calls=[{"name": "shot", "args": {}, "id": "c1"}], id="a1")
    result = ToolMessage("a picture", tool_call_id="c1", artifact=b"\x89PNG", id="t1")
    history.append(key, [call, result, AIMessage("done", id="a2")])
    assert history.to_messages(list(history.read(key)))[1].artifact == "iVBORw=="


def test_an_unstorable_answer_costs_its_exchange_only(
    store: BaseStore, caplog: pytest.LogCaptureFixture
) -> None:
    reports: list[HistoryReport] = []
    graph = _graph(OddModel(), store, reports)
    chat = uuid.uuid4().int % 10**9
    caplog.set_level(logging.WARNING, logger="agent_history")
    for number in range(1, 4):  # more refusals than the breaker needs to open
        result = graph.invoke(telegram_callback(chat, "deep", number), new_thread())
        assert result["messages"][-1].content[0]["text"] == "deep"
        assert reports[-1].fallbacks == ("invalid_message",)
    # Each refusal was tried once, and the breaker stayed closed: the next exchange is stored.
    graph.invoke(telegram_callback(chat, "fine", 9), new_thread())
    assert reports[-1].fallbacks == () and reports[-1].appended == 2
    stored = ChatHistory(store).to_messages(list(ChatHistory(store).read(f"telegram:{chat}")))
    assert [m.content for m in stored] == ["fine", "echo: fine"]
    refusals = [r for r in caplog.records if "reason=invalid_message" in r.getMessage()]
    assert len(refusals) == 3
    assert not any("breaker_open" in r.getMessage() for r in caplog.records)
    assert not any("x" * 3 in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("usage", ["reported", "not reported"])
def test_an_answer_from_langchains_response_cache_is_stored(store: BaseStore, usage: str) -> None:
    """On a cache hit LangChain gives the cached answer ``usage_metadata`` with
    ``"total_cost": 0`` added; from a model that reports no usage that is the whole
    of it, which ``AIMessage`` itself refuses: every exchange a cache answered was refused
    as unreadable and lost. Stored with zero token counts (a cache hit costs none)."""
    from langchain_core.caches import InMemoryCache

    class Model(RecordingChatModel):
        def reply(self, messages: list[BaseMessage], **kwargs: Any) -> AIMessage:
            counts = {"input_tokens": 3, "output_tokens": 2, "total_tokens": 5}
            return AIMessage(
                f"echo: {messages[-1].content}",
                usage_metadata=counts if usage == "reported" else None,
            )

    model, reports = Model(cache=InMemoryCache()), []
    graph = _graph(model, store, reports)
    first, second = (uuid.uuid4().int % 10**9 for _ in range(2))
    for chat in (first, second):  # one question on two chats: the second a cache hit
        graph.invoke(telegram_callback(chat, "hi", 1), new_thread())
    assert len(model.calls) == 1
    assert [(r.appended, r.fallbacks) for r in reports] == [(2, ()), (2, ())]
    cached = ChatHistory(store).to_messages(list(ChatHistory(store).read(f"telegram:{second}")))
    assert [m.content for m in cached] == ["hi", "echo: hi"]
    counts = {"input_tokens": 3, "output_tokens": 2, "total_tokens": 5}
    if usage == "not reported":
        counts = {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}
    assert cached[1].usage_metadata == {**counts, "total_cost": 0}


# What ``json.loads`` gives for a provider's JSON holding "\\ud83d" (half an emoji) in a key.
_HALF_EMOJI_KEYS = json.loads('{"q\\ud83d": {"x\\udc00": [1, "\\ud800"]}, "n": 2}')


class HalfEmojiModel(RecordingChatModel):
    """Answers with metadata whose keys hold lone surrogates."""

    def reply(self, messages: list[BaseMessage], **kwargs: Any) -> AIMessage:
        return AIMessage(
            f"echo: {messages[-1].content}",
            response_metadata=_HALF_EMOJI_KEYS,
            additional_kwargs={"provider_\ud800": {"when": _WHEN}},
        )


def test_metadata_keys_with_half_an_emoji_are_stored_exactly(store: BaseStore) -> None:
    """They used to fail every append as if the store had (retried, counted by the breaker,
    which then stopped every other chat's history too)."""
    reports: list[HistoryReport] = []
    graph = _graph(HalfEmojiModel(), store, reports)
    chats = [uuid.uuid4().int % 10**9 for _ in range(3)]  # more than the breaker needs
    for chat in chats:
        graph.invoke(telegram_callback(chat, "hi", 1), new_thread())
        assert reports[-1].fallbacks == () and reports[-1].appended == 2
    history = ChatHistory(store)
    for chat in chats:
        stored = history.to_messages(list(history.read(f"telegram:{chat}")))
        assert [m.content for m in stored] == ["hi", "echo: hi"]
        assert stored[1].response_metadata == _HALF_EMOJI_KEYS
        assert stored[1].additional_kwargs == {"provider_\ud800": {"when": "2026-11-26T07:00:00Z"}}


def test_a_tool_call_whose_arguments_have_half_an_emoji_in_a_key_reads_back_equal(
    store: BaseStore,
) -> None:
    history = ChatHistory(store, scope="full")
    key = f"k{uuid.uuid4().hex[:8]}"
    call = AIMessage("", id="c", tool_calls=[{"name": "t", "args": _HALF_EMOJI_KEYS, "id": "1"}])
    result = ToolMessage("done", tool_call_id="1", id="r")
    assert history.append(key, [call, result]).appended == 2
    assert history.to_messages(list(history.read(key))) == [call, result]


class _UndumpableAnswer(AIMessage):
    """An application's message class whose fields cannot be read."""

    def model_dump(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        raise RuntimeError("secret body")


def test_a_message_that_fails_to_convert_in_any_way_is_refused_as_a_message(
    store: BaseStore,
) -> None:
    """Making a record touches no store, so whatever fails there is the message's fault:
    `InvalidMessage` (the node neither retries nor counts it against the store), naming the
    error's class only, and nothing is written."""
    history = ChatHistory(store)
    key = f"k{uuid.uuid4().hex[:8]}"
    with pytest.raises(InvalidMessage) as refused:
        history.append(key, [HumanMessage("hi", id="u"), _UndumpableAnswer("x", id="a")])
    assert str(refused.value) == "a message cannot be stored (RuntimeError)"
    assert history.count(key) == 0


class ChatRoleModel(RecordingChatModel):
    """Answers with ``ChatMessage(role="assistant")``, as some runnables do."""

    def reply(self, messages: list[BaseMessage], **kwargs: Any) -> Any:
        return ChatMessage(f"echo: {messages[-1].content}", role="assistant")


def test_answers_given_as_assistant_chat_messages_are_stored_and_read(store: BaseStore) -> None:
    model, reports = ChatRoleModel(), []
    graph = _graph(model, store, reports)
    chat = uuid.uuid4().int % 10**9
    for number, text in enumerate(["one", "two"], start=1):
        graph.invoke(telegram_callback(chat, text, number), new_thread())

    assert [r.appended for r in reports] == [2, 2]
    stored = ChatHistory(store).tail(f"telegram:{chat}", 10)
    assert [(type(m).__name__, m.content) for m in stored] == [
        ("HumanMessage", "one"), ("ChatMessage", "echo: one"),
        ("HumanMessage", "two"), ("ChatMessage", "echo: two"),
    ]  # fmt: skip
    assert [m.content for m in model.calls[-1]] == ["one", "echo: one", "two"]


class BlockModel(RecordingChatModel):
    """Answers as Anthropic models do: a list of content blocks, whose keys a JSONB
    column (PostgreSQL) gives back in its own order."""

    def reply(self, messages: list[BaseMessage], **kwargs: Any) -> AIMessage:
        text = str(messages[-1].content)
        return AIMessage([{"type": "text", "text": f"echo: {text}", "citations": None}])


@pytest.mark.parametrize("scope", ["turns", "full"])
def test_a_redelivery_without_ids_of_a_block_answer_is_stored_once_on_every_backend(
    store: BaseStore, scope: str
) -> None:
    """A callback without a message id is told apart by its content. PostgreSQL gives a
    content block's keys back in another order than the model wrote them: the exchange
    must still be recognised, or every re-delivery is stored again (there only)."""
    reports: list[HistoryReport] = []
    model = BlockModel()
    graph = _graph(model, store, reports, history_scope=scope)
    chat = uuid.uuid4().int % 10**9
    graph.invoke(telegram_callback(chat, "hello"), new_thread())
    graph.invoke(telegram_callback(chat, "hello"), new_thread())  # the webhook again
    stored = ChatHistory(store, scope=scope).tail(f"telegram:{chat}", 10)
    assert [m.type for m in stored] == ["human", "ai"]
    assert stored[1].content == [{"type": "text", "text": "echo: hello", "citations": None}]
    assert [(r.appended, r.redelivered) for r in reports] == [(2, False), (0, True)]


def _changed_after_building() -> dict[str, BaseMessage]:
    """Messages that were valid when made, then changed without validation (attribute
    assignment, ``model_construct``): as stored, none of them can be built again."""
    raw_args = AIMessage("", tool_calls=[{"name": "t", "args": {"a": 1}, "id": "c1"}])
    raw_args.tool_calls[0]["args"] = '{"a": 1}'  # the provider's raw JSON text
    no_call_id = AIMessage("", tool_calls=[{"name": "t", "args": {}, "id": "c1"}])
    del no_call_id.tool_calls[0]["id"]
    usage = AIMessage("x")
    usage.usage_metadata = {"input_tokens": None, "output_tokens": 2, "total_tokens": 2}  # type: ignore[typeddict-item]
    status = ToolMessage("r", tool_call_id="c1")
    status.status = "failed"  # type: ignore[assignment]
    return {"raw_args": raw_args, "no_call_id": no_call_id, "usage": usage, "status": status}


@pytest.mark.parametrize("case", ["raw_args", "no_call_id", "usage", "status"])
def test_a_message_that_could_not_be_read_back_is_refused_and_nothing_is_written(
    store: BaseStore, case: str
) -> None:
    """Stored, such a message would be skipped on every read (the turn lost for good,
    and its tool result left without its call): it is refused as a message the codec
    cannot store, before anything is written."""
    history = ChatHistory(store, scope="full")
    key = f"changed-{uuid.uuid4().hex[:8]}"
    history.append(key, [HumanMessage("before", id="h0")])
    odd = _changed_after_building()[case]
    with pytest.raises(InvalidMessage, match="cannot be read back"):
        history.append(key, [HumanMessage("q", id="h1"), odd])
    assert [m.id for m in history.tail(key, 10)] == ["h0"]
    assert history.count(key) == 1
