"""ChatHistory against real stores: memory, a SQLite file and PostgreSQL."""

from __future__ import annotations

import asyncio
import gc
import threading
import uuid
import warnings
from collections.abc import Callable
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langgraph.store.base import BaseStore

from agent_history.errors import (
    ConversationChanged,
    InvalidArgument,
    InvalidMessage,
    InvalidNamespace,
    SyncCallInEventLoop,
)
from agent_history.history import DEFAULT_CHUNK_SIZE, ChatHistory, RunToken, Turn
from tests.support.counting_store import CountingStore

CONTENTS: list[Any] = [
    "plain",
    "",
    "unicode: 你好 👋 Ωmega \u200b \U0001f600",
    "nul \x00 inside",
    "x" * 200_000,
    [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": "data:,x"}}],
    [{"type": "text", "text": "nested \x00", "meta": {"a": [1, 2.5, None, True]}}],
]


def _key() -> str:
    return "telegram:" + uuid.uuid4().hex[:10]


@pytest.fixture
def history(store: BaseStore, ns: tuple[str, ...]) -> ChatHistory:
    return ChatHistory(store, namespace=ns, chunk_size=4)


def test_append_and_tail_in_order(history: ChatHistory) -> None:
    key = _key()
    for i in range(11):
        history.append(key, [HumanMessage(f"q{i}"), AIMessage(f"a{i}")])
    tail = history.tail(key, 5)
    assert [m.content for m in tail] == ["a8", "q9", "a9", "q10", "a10"]
    assert [type(m).__name__ for m in tail[:2]] == ["AIMessage", "HumanMessage"]
    assert history.count(key) == 22
    assert [t.seq for t in history.read(key)] == list(range(1, 23))
    assert [t.seq for t in history.read(key, start_seq=20)] == [20, 21, 22]
    assert history.tail(key, 100)[0].content == "q0"
    assert history.tail(key, 0) == []
    assert history.tail(_key(), 5) == []


def test_content_round_trips_exactly(history: ChatHistory) -> None:
    key = _key()
    result = history.append(key, [{"role": "user", "content": c} for c in CONTENTS])
    assert (result.appended, result.first_seq, result.last_seq) == (len(CONTENTS), 1, len(CONTENTS))
    assert [t.content for t in history.read(key)] == CONTENTS
    assert [m.content for m in history.tail(key, len(CONTENTS))] == CONTENTS


def test_redelivered_ids_are_stored_once(history: ChatHistory) -> None:
    key = _key()
    first = history.append(key, [HumanMessage("hi", id="tg-1"), AIMessage("hello", id="r-1")])
    again = history.append(key, [HumanMessage("hi", id="tg-1"), AIMessage("hello", id="r-1")])
    mixed = history.append(key, [HumanMessage("hi", id="tg-1"), HumanMessage("next", id="tg-2")])
    assert first.appended == 2
    assert (again.appended, again.duplicates, again.total) == (0, 2, 2)
    assert (mixed.appended, mixed.duplicates, mixed.first_seq) == (1, 1, 3)
    assert [t.content for t in history.read(key)] == ["hi", "hello", "next"]


def test_concurrent_redelivery_of_one_id_stores_it_once(history: ChatHistory) -> None:
    key = _key()
    start = threading.Barrier(8)
    results = []

    def deliver() -> None:
        start.wait()
        results.append(history.append(key, [HumanMessage("webhook", id="upd-77")]))

    threads = [threading.Thread(target=deliver) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(r.appended for r in results) == 1
    assert sum(r.duplicates for r in results) == 7
    assert history.count(key) == 1


def test_delete_removes_everything_and_a_new_conversation_starts_clean(
    history: ChatHistory, store: BaseStore
) -> None:
    key = _key()
    history.append(key, [HumanMessage(f"m{i}", id=f"id{i}") for i in range(10)])
    assert history.delete(key) == 10
    assert history.count(key) == 0
    assert store.search(history.conversation_namespace(key), limit=100) == []
    again = history.append(key, [HumanMessage("m1", id="id1")])
    assert (again.appended, again.first_seq) == (1, 1)
    assert [t.content for t in history.read(key)] == ["m1"]
    assert history.delete(_key()) == 0


@pytest.mark.parametrize("then", ["begun again", "deleted"])
async def test_a_read_paging_through_a_conversation_deleted_meanwhile_raises(
    history: ChatHistory, then: str
) -> None:
    """``read`` pages through a long conversation. Deleted between two pages, and begun
    again, it gave the old conversation's first page and the new one's later turns as
    one transcript (an export or a migration copied the mix); deleted, it ended early
    as if complete. It raises `ConversationChanged`; a read begun after is whole."""
    key = _key()
    history.append(key, [HumanMessage(f"old {i}") for i in range(600)])
    reads = [iter(history.read(key)), aiter(history.aread(key))]
    firsts = [next(reads[0]), await anext(reads[1])]
    assert [t.content for t in firsts] == ["old 0", "old 0"]
    history.delete(key)
    if then == "begun again":
        history.append(key, [HumanMessage(f"new {i}") for i in range(600)])
    with pytest.raises(ConversationChanged):
        list(reads[0])
    with pytest.raises(ConversationChanged):
        [turn async for turn in reads[1]]
    after = [t.content for t in history.read(key)]
    assert after == ([f"new {i}" for i in range(600)] if then == "begun again" else [])


def test_keys_lists_conversations(history: ChatHistory) -> None:
    keys = sorted(_key() for _ in range(3))
    for key in keys:
        history.append(key, [HumanMessage("x")])
    assert sorted(history.keys()) == keys
    info = history.info(keys[0])
    assert info is not None and info.turns == 1 and info.created_at


def test_history_is_readable_with_plain_store_search(
    history: ChatHistory, store: BaseStore
) -> None:
    key = _key()
    history.append(key, [HumanMessage(f"m{i}") for i in range(6)])
    items = store.search(history.conversation_namespace(key), filter={"kind": "chunk"}, limit=50)
    turns = sorted((t for item in items for t in item.value["turns"]), key=lambda r: r["seq"])
    assert [t["content"] for t in turns] == [f"m{i}" for i in range(6)]
    head = store.get(history.conversation_namespace(key), "head")
    assert head is not None and head.value["last_seq"] == 6


def test_value_field_is_honoured(store: BaseStore, ns: tuple[str, ...]) -> None:
    history = ChatHistory(store, namespace=ns, value_field="text")
    key = _key()
    history.append(key, [HumanMessage("hello")])
    item = store.get(history.conversation_namespace(key), "chunk:0000000000")
    assert item is not None
    assert item.value["turns"][0]["text"] == "hello"
    assert "content" not in item.value["turns"][0]
    assert history.tail(key, 1)[0].content == "hello"


def test_tail_touches_the_same_number_of_items_at_10_and_at_100k_turns(
    store: BaseStore, ns: tuple[str, ...]
) -> None:
    writer = ChatHistory(store, namespace=ns)
    short, long = _key(), _key()
    writer.append(short, [HumanMessage(f"s{i}") for i in range(10)])
    for block in range(10):
        writer.append(
            long, [{"role": "user", "content": f"t{block * 10_000 + i}"} for i in range(10_000)]
        )
    counting = CountingStore(store)
    reader = ChatHistory(counting, namespace=ns)

    assert [t.content for t in reader.tail_turns(long, 30)] == [
        f"t{i}" for i in range(99_970, 100_000)
    ]
    at_100k = counting.reset()
    assert [t.content for t in reader.tail_turns(short, 30)] == [f"s{i}" for i in range(10)]
    at_10 = counting.reset()
    assert at_100k["batches"] == at_10["batches"] == 2
    # head + the chunks spanning 30 turns (at most five with 8-turn chunks), never more
    spanned = -(-29 // DEFAULT_CHUNK_SIZE) + 1
    assert at_100k["get"] <= 1 + spanned and at_10["get"] <= 1 + spanned
    assert reader.count(long) == 100_000


async def test_async_paths_on_async_stores(astore: BaseStore, ns: tuple[str, ...]) -> None:
    history = ChatHistory(astore, namespace=ns, chunk_size=3)
    key = _key()
    for i in range(5):
        await history.aappend(key, [HumanMessage(f"q{i}", id=f"q{i}"), AIMessage(f"a{i}")])
    dup = await history.aappend(key, [HumanMessage("q0", id="q0")])
    assert dup.duplicates == 1
    assert [m.content for m in await history.atail(key, 3)] == ["a3", "q4", "a4"]
    assert [t.seq async for t in history.aread(key)] == list(range(1, 11))
    assert await history.acount(key) == 10
    assert [k async for k in history.akeys()] == [key]
    assert await history.adelete(key) == 10
    assert await history.acount(key) == 0


async def test_run_tokens_follow_the_latest_pass_of_each_answered_question(
    astore: BaseStore, ns: tuple[str, ...]
) -> None:
    history = ChatHistory(astore, namespace=ns)
    key = _key()
    exchange = [HumanMessage("q", id="q"), AIMessage("v1", id="v1")]
    await history.aappend(key, exchange, anchor_id="q", anchor_next="v1")
    assert await history.aanchor_tokens(key, ["q", "v1", "unknown"]) == {"q": RunToken("v1")}
    revision = [AIMessage("revise", id="r"), AIMessage("v2", id="v2")]
    seen = ["v1", "r", "v2"]
    await history.aappend(key, revision, anchor_id="q", anchor_next="v2", anchor_seen=seen)
    # The entry names the latest answer and the first message of the pass that stored it.
    latest = {"q": RunToken("v2", first="r")}
    assert await history.aanchor_tokens(key, ["q"]) == latest
    assert await asyncio.to_thread(history.anchor_tokens, key, ["q"]) == latest
    await history.adelete(key)
    assert await history.aanchor_tokens(key, ["q"]) == {}


async def test_async_methods_on_sync_stores(store: BaseStore, ns: tuple[str, ...]) -> None:
    history = ChatHistory(store, namespace=ns)
    key = _key()
    await history.aappend(key, [HumanMessage("one"), AIMessage("two")])
    assert [m.content for m in await history.atail(key, 5)] == ["one", "two"]
    assert [t.content async for t in history.aread(key)] == ["one", "two"]


def test_turns_can_be_reappended_from_another_history(
    history: ChatHistory, store: BaseStore
) -> None:
    key = _key()
    history.append(key, [HumanMessage("a", id="1"), AIMessage("b")])
    copy = ChatHistory(store, namespace=(*history.namespace, "copy"))
    copy.append(key, list(history.read(key)))
    assert [(t.seq, t.role, t.content, t.id) for t in copy.read(key)] == [
        (1, "user", "a", "1"),
        (2, "assistant", "b", None),
    ]
    assert isinstance(next(copy.read(key)), Turn)


def test_invalid_construction_and_keys(store: BaseStore) -> None:
    with pytest.raises(ValueError, match="chunk_size"):
        ChatHistory(store, chunk_size=0)
    with pytest.raises(ValueError, match="reserved"):
        ChatHistory(store, value_field="seq")
    with pytest.raises(ValueError, match="conversation key"):
        ChatHistory(store).tail("has\nnewline", 3)


def test_reads_ignore_chunks_above_the_head(history: ChatHistory, store: BaseStore) -> None:
    # A chunk beyond the head (left by an abandoned write on a store without transactions)
    # is the newest chunk by key: the one-round-trip reads must notice and read the right ones.
    key = _key()
    history.append(key, [HumanMessage(f"m{i}") for i in range(10)])
    orphan = {
        "kind": "chunk",
        "index": 9,
        "turns": [{"seq": s, "role": "user", "content": "stale"} for s in range(37, 41)],
    }
    store.put(history.conversation_namespace(key), "chunk:0000000009", orphan)
    assert [m.content for m in history.tail(key, 5)] == ["m5", "m6", "m7", "m8", "m9"]
    history.append(key, [HumanMessage("m10")])
    assert [t.content for t in history.read(key)] == [f"m{i}" for i in range(11)]
    assert [m.content for m in history.tail(key, 2)] == ["m9", "m10"]


async def test_sync_methods_on_async_stores(
    astore: BaseStore, backend: str, ns: tuple[str, ...]
) -> None:
    history = ChatHistory(astore, namespace=ns)
    key = _key()
    await history.aappend(key, [HumanMessage("one", id="1")])
    # From another thread, a sync call runs on the store's own event loop.
    result = await asyncio.to_thread(history.append, key, [AIMessage("two", id="2")])
    assert (result.appended, result.total) == (1, 2)
    assert [m.content for m in await asyncio.to_thread(history.tail, key, 5)] == ["one", "two"]
    assert [t.content for t in await asyncio.to_thread(lambda: list(history.read(key)))] == [
        "one",
        "two",
    ]
    if backend == "memory":
        return  # the in-memory store has no event loop of its own
    # On that loop itself a sync call would wait for the loop forever: a clear error, and
    # nothing else (a read used to leave a coroutine "never awaited" behind it).
    calls: list[Callable[[], Any]] = [
        lambda: history.tail(key, 5),
        lambda: list(history.read(key)),
        lambda: history.count(key),
        lambda: history.append(key, [AIMessage("three", id="3")]),
        lambda: history.for_key(key).messages,
    ]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for call in calls:
            with pytest.raises(SyncCallInEventLoop, match="async methods"):
                call()
        gc.collect()
    assert [str(w.message) for w in caught] == []


def test_one_driver_per_store_whatever_the_history(store: BaseStore, backend: str) -> None:
    first, second = ChatHistory(store), ChatHistory(store, namespace=("other",), chunk_size=4)
    assert first._driver is second._driver
    assert first._driver.backend == backend


@pytest.mark.parametrize("old_size", [32, 5])
async def test_a_conversation_keeps_the_chunk_size_it_was_made_with(
    store: BaseStore, ns: tuple[str, ...], old_size: int
) -> None:
    """A log written with another chunk size (32 was the default before 16) is read and
    appended by a history of today's default, sync and async, through every driver: its
    chunks keep their size, every tail is exact and nothing is stored twice."""
    key = _key()
    older = ChatHistory(store, namespace=ns, chunk_size=old_size)
    older.append(key, [HumanMessage(f"m{i}", id=f"m{i}") for i in range(1, 38)])
    today = ChatHistory(store, namespace=ns)
    assert today.chunk_size != old_size
    for n in (1, 5, 16, 30, 37, 60):
        assert [m.content for m in today.tail(key, n)] == [
            f"m{i}" for i in range(max(1, 38 - n), 38)
        ]
    today.append(key, [HumanMessage("m38", id="m38"), AIMessage("m39", id="m39")])
    await today.aappend(key, [HumanMessage("m39", id="m39"), HumanMessage("m40", id="m40")])
    assert [m.content for m in await today.atail(key, 33)] == [f"m{i}" for i in range(8, 41)]
    assert [t.seq for t in today.read(key)] == list(range(1, 41))
    assert today.info(key).chunk_size == old_size


@pytest.mark.parametrize("namespace", ["myapp", b"myapp", None, 7])
def test_a_namespace_that_is_not_a_sequence_of_labels_is_refused(
    store: BaseStore, namespace: Any
) -> None:
    """A bare string was split into one label per character: ("m", "y", "a", "p", "p")."""
    with pytest.raises(InvalidNamespace, match=r"sequence of labels.*\('myapp',\)"):
        ChatHistory(store, namespace=namespace)
    assert [ns for ns in store.list_namespaces(prefix=("m", "y"))] == []
    one_label = ChatHistory(store, namespace=["myapp"])
    assert one_label.namespace == ("myapp",)


@pytest.mark.parametrize("bad", [1.5, "2", None, True, float("nan"), [1]])
async def test_counts_that_are_not_whole_numbers_are_refused(
    history: ChatHistory, bad: Any
) -> None:
    """They raised TypeError from deep inside, or were taken (True as 1, 1.5 as 1)."""
    key = _key()
    history.append(key, [HumanMessage("q"), AIMessage("a")])
    calls: list[Callable[[], object]] = [
        lambda: history.tail(key, bad),
        lambda: history.tail_turns(key, bad),
        lambda: history.tail_context(key, bad),
        lambda: history.read(key, start_seq=bad),
        lambda: history.aread(key, start_seq=bad),
        lambda: ChatHistory(history.store, chunk_size=bad),
    ]
    if bad is not None:  # window=None: the whole transcript
        calls.append(lambda: history.for_key(key, window=bad))
    for call in calls:
        with pytest.raises(InvalidArgument, match="must be a whole number"):
            call()
    for acall in (lambda: history.atail(key, bad), lambda: history.atail_turns(key, bad)):
        with pytest.raises(InvalidArgument, match="must be a whole number"):
            await acall()


async def test_counts_out_of_range_are_refused_or_clamped_alike_on_every_backend(
    history: ChatHistory,
) -> None:
    key = _key()
    history.append(key, [HumanMessage("q"), AIMessage("a")])
    for call in (
        lambda: history.tail(key, -1),
        lambda: history.read(key, start_seq=0),
        lambda: history.for_key(key, window=-1),
        lambda: ChatHistory(history.store, chunk_size=0),
        lambda: ChatHistory(history.store, chunk_size=2**40),
    ):
        with pytest.raises(InvalidArgument, match="must be"):
            call()
    huge = 2**70  # SQLite raised OverflowError; memory returned everything
    assert [m.content for m in history.tail(key, huge)] == ["q", "a"]
    assert [m.content for m in await history.atail(key, huge)] == ["q", "a"]
    assert [t.content for t in history.tail_turns(key, huge)] == ["q", "a"]
    assert [m.content for m in history.for_key(key, window=huge).messages] == ["q", "a"]
    assert list(history.read(key, start_seq=huge)) == []
    assert [t async for t in history.aread(key, start_seq=huge)] == []


@pytest.mark.parametrize("field", [3, None, b"content"])
def test_a_value_field_that_is_not_text_is_refused(store: BaseStore, field: Any) -> None:
    with pytest.raises(InvalidArgument, match="value_field must be text"):
        ChatHistory(store, value_field=field)


@pytest.mark.parametrize("budget", [0, -1, 0.0, "x", True, float("nan"), float("inf")])
async def test_a_budget_that_is_not_a_positive_number_is_refused_on_every_backend(
    history: ChatHistory, budget: Any
) -> None:
    """budget=0 stored on memory and raised StoreTimeout on SQLite; "x" a TypeError."""
    key = _key()
    history.append(key, [HumanMessage("q")])
    calls: list[Callable[[], object]] = [
        lambda: history.append(key, [HumanMessage("more")], budget=budget),
        lambda: history.tail(key, 5, budget=budget),
        lambda: history.info(key, budget=budget),
        lambda: history.delete(key, budget=budget),
    ]
    for call in calls:
        with pytest.raises(InvalidArgument, match="budget must be"):
            call()
    with pytest.raises(InvalidArgument, match="budget must be"):
        await history.aappend(key, [HumanMessage("more")], budget=budget)
    assert [m.content for m in history.tail(key, 5, budget=30)] == ["q"]


@pytest.mark.parametrize("messages", [None, "hello", b"hi", 3])
def test_messages_that_are_not_a_sequence_are_refused(history: ChatHistory, messages: Any) -> None:
    key = _key()
    for call in (
        lambda: history.append(key, messages),
        lambda: history.for_key(key).add_messages(messages),
    ):
        with pytest.raises(InvalidMessage, match="must be a sequence of messages"):
            call()
    with pytest.raises(InvalidMessage, match="str is not a message"):
        history.for_key(key).add_messages(["hello"])
    assert history.count(key) == 0


@pytest.mark.parametrize("tool_calls", ["not a list", [1], [{"name": "x"}]])
def test_a_dict_with_malformed_tool_calls_is_refused_and_stores_nothing(
    store: BaseStore, ns: tuple[str, ...], tool_calls: object
) -> None:
    history = ChatHistory(store, namespace=ns)
    message = {"role": "assistant", "content": "", "tool_calls": tool_calls}
    with pytest.raises(InvalidMessage, match="message 1: tool_calls must be a list"):
        history.append("k", [{"role": "user", "content": "q"}, message])
    assert history.count("k") == 0


def test_a_dict_keeps_its_id_zero_its_name_and_its_tool_status(
    store: BaseStore, ns: tuple[str, ...]
) -> None:
    """A role/content dict keeps the fields its message has: an id of 0 is an id (a
    retried add stores nothing twice), a user's ``name`` and a tool result's ``status``
    (an error the model must see as one) are kept; a status no tool result has is refused."""
    history = ChatHistory(store, namespace=ns, scope="full")
    batch = [
        {"role": "user", "content": "hi", "name": "Ana", "id": 0},
        {
            "role": "assistant",
            "content": "",
            "id": 1,
            "tool_calls": [{"name": "t", "args": {}, "id": "c"}],
        },
        {
            "role": "tool",
            "content": "boom",
            "tool_call_id": "c",
            "status": "error",
            "name": "t",
            "id": "t",
        },
    ]
    history.append("k", batch)
    assert history.append("k", batch).appended == 0  # the retry
    stored = history.tail("k", 10)
    assert [m.id for m in stored] == ["0", "1", "t"]
    assert stored[0].name == "Ana" and stored[2].name == "t"
    assert isinstance(stored[2], ToolMessage) and stored[2].status == "error"
    # A sender's number as name is left out, a null status is the default (as before).
    lenient = [
        {"role": "user", "content": "q", "name": 123456789, "id": "h2"},
        {"role": "tool", "content": "r", "tool_call_id": "c", "status": None, "id": "t2"},
    ]
    assert history.append("k2", lenient).appended == 2
    read = history.tail("k2", 5)
    assert read[0].name is None and isinstance(read[1], ToolMessage)
    assert read[1].status == "success"
    odd = {"role": "tool", "content": "x", "tool_call_id": "c", "status": "failed"}
    with pytest.raises(InvalidMessage, match="message 0"):
        history.append("k", [odd])
    assert history.count("k") == 3


async def test_an_empty_message_id_is_no_id_and_every_message_is_kept(
    store: BaseStore, ns: tuple[str, ...]
) -> None:
    """A webhook handler that fills a missing id with ``""`` (``payload.get("id", "")``)
    gets every message stored: ``""`` is no id, not one id all its messages share (each
    message after the first was a "duplicate" and lost). ``message_ids`` entries of ``""``
    keep the message's own id, as ``None`` does."""
    history = ChatHistory(store, namespace=ns)
    first = history.append(
        "k",
        [{"role": "user", "content": "q0", "id": ""}, AIMessage("a0", id="")],
    )
    second = await history.aappend(
        "k",
        [HumanMessage("q1", id=""), AIMessage("a1", id="r-1")],
        message_ids=["", ""],
        anchor_id="",
        anchor_next="",
        anchor_seen=[""],
    )
    third = history.append("k", [HumanMessage("q2"), AIMessage("a2")], message_ids=["", "r-2"])
    assert [(r.appended, r.duplicates) for r in (first, second, third)] == [(2, 0)] * 3
    assert [(m.content, m.id) for m in history.tail("k", 10)] == [
        ("q0", None), ("a0", None), ("q1", None), ("a1", "r-1"), ("q2", None), ("a2", "r-2"),
    ]  # fmt: skip
    assert history.append("k", [AIMessage("a1", id="r-1")]).duplicates == 1  # ids still dedupe
