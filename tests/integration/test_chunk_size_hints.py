"""A tail asks for as many newest chunks as the conversation needs, in its one query,
also for conversations stored with another chunk size (an older default): the store
answers them once with the reader's size, then with the conversation's own."""

from __future__ import annotations

import uuid
from collections.abc import Generator
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.store.base import BaseStore

from agent_history.context.window import chunks_per_get
from agent_history.history import DEFAULT_CHUNK_SIZE, ChatHistory
from agent_history.history.drivers.base import ChunkSizes
from agent_history.history.steps import Get, Request, Steps

OLD_SIZE = 16
assert OLD_SIZE != DEFAULT_CHUNK_SIZE


def _key() -> str:
    return "telegram:" + uuid.uuid4().hex[:10]


def _record_reads(history: ChatHistory) -> list[Get]:
    """Every `Get` the history's read procedures send to its driver, sync or async."""
    seen: list[Get] = []

    def spy(steps: Steps[Any]) -> Generator[Request, Any, Any]:
        try:
            request = next(steps)
            while True:
                if isinstance(request, Get):
                    seen.append(request)
                request = steps.send((yield request))
        except StopIteration as done:
            return done.value

    driver = history._driver
    read, aread = driver.read, driver.aread
    driver.read = lambda namespace, steps: read(namespace, spy(steps))  # type: ignore[method-assign]
    driver.aread = lambda namespace, steps: aread(namespace, spy(steps))  # type: ignore[method-assign]
    return seen


def _fill(history: ChatHistory, key: str, pairs: int) -> None:
    for i in range(pairs):
        history.append(key, [HumanMessage(f"q{i}", id=f"q{i}"), AIMessage(f"a{i}", id=f"a{i}")])


def _older_conversation(
    store: BaseStore, ns: tuple[str, ...], pairs: int
) -> tuple[str, ChatHistory, list[Get]]:
    """A conversation stored with `OLD_SIZE`-turn chunks, a reader with the default size,
    and the reads it sends."""
    key = _key()
    _fill(ChatHistory(store, namespace=ns, chunk_size=OLD_SIZE), key, pairs)
    reader = ChatHistory(store, namespace=ns)
    return key, reader, _record_reads(reader)


def test_an_older_conversation_is_read_with_its_own_chunk_size_after_the_first_tail(
    store: BaseStore, ns: tuple[str, ...]
) -> None:
    key, reader, reads = _older_conversation(store, ns, 50)

    tails = [[m.content for m in reader.tail(key, 30)] for _ in range(3)]

    expected = [f"{r}{i}" for i in range(35, 50) for r in ("q", "a")]
    assert tails == [expected] * 3
    # The first tail plans with the reader's size (more chunks than needed, still one
    # query); the head tells the driver, and later tails ask for what they need.
    first = [r.newest_chunks for r in reads if r.newest_chunks]
    assert first == [
        30 // DEFAULT_CHUNK_SIZE + 2,
        30 // OLD_SIZE + 2,
        30 // OLD_SIZE + 2,
    ]
    if reader._driver.backend in ("sqlite", "postgres"):
        # Every chunk came with the head: one query per tail, the first one included.
        assert [r.keys for r in reads] == [("head",)] * 3
    else:
        # Plain store calls: the head, then the chunks it names (hints do not apply).
        assert [len(r.keys) for r in reads] == [1, 3] * 3


def test_new_conversations_leave_nothing_to_remember(store: BaseStore, ns: tuple[str, ...]) -> None:
    reader = ChatHistory(store, namespace=ns)
    reads = _record_reads(reader)
    keys = [_key() for _ in range(3)]
    for key in keys:
        _fill(reader, key, 20)
        assert [m.content for m in reader.tail(key, 4)] == ["q18", "a18", "q19", "a19"]
        assert [m.content for m in reader.tail(key, 4)] == ["q18", "a18", "q19", "a19"]

    assert {r.newest_chunks for r in reads if r.newest_chunks} == {4 // DEFAULT_CHUNK_SIZE + 2}
    assert reader._driver.chunk_sizes._sizes == {}


def test_a_conversation_deleted_and_started_again_is_read_with_its_new_size(
    store: BaseStore, ns: tuple[str, ...]
) -> None:
    key, reader, reads = _older_conversation(store, ns, 20)
    reader.tail(key, 30)
    reader.tail(key, 30)
    assert reader.delete(key)
    _fill(reader, key, 20)

    assert [m.content for m in reader.tail(key, 2)] == ["q19", "a19"]
    assert [m.content for m in reader.tail(key, 2)] == ["q19", "a19"]
    hints = [r.newest_chunks for r in reads if r.newest_chunks]
    assert hints == [
        30 // DEFAULT_CHUNK_SIZE + 2,
        30 // OLD_SIZE + 2,
        2 // OLD_SIZE + 2,  # still the old size: this read shows the new one
        2 // DEFAULT_CHUNK_SIZE + 2,
    ]
    assert reader._driver.chunk_sizes._sizes == {}


async def test_async_tails_and_window_reads_learn_the_size_too(
    astore: BaseStore, ns: tuple[str, ...]
) -> None:
    key = _key()
    writer = ChatHistory(astore, namespace=ns, chunk_size=OLD_SIZE)
    for i in range(50):
        await writer.aappend(key, [HumanMessage(f"q{i}"), AIMessage(f"a{i}")])
    reader = ChatHistory(astore, namespace=ns)
    reads = _record_reads(reader)

    window = await reader.atail_context(key, 30)
    again = await reader.atail_context(key, 30)
    tail = await reader.atail(key, 30)

    expected = [f"{r}{i}" for i in range(35, 50) for r in ("q", "a")]
    assert [t.content for t in window.turns] == [t.content for t in again.turns] == expected
    assert [m.content for m in tail] == expected
    assert [r.newest_chunks for r in reads if r.newest_chunks] == [
        chunks_per_get(DEFAULT_CHUNK_SIZE),
        chunks_per_get(OLD_SIZE),
        30 // OLD_SIZE + 2,
    ]


@pytest.mark.parametrize("stored", ["16", 16.0, None, 0])
def test_a_head_with_an_odd_chunk_size_is_read_as_before_and_not_remembered(
    stored: object,
) -> None:
    from langgraph.store.memory import InMemoryStore

    store = InMemoryStore()
    history = ChatHistory(store, namespace=("h",))
    key = _key()
    _fill(history, key, 3)
    namespace = history.conversation_namespace(key)
    head = store.get(namespace, "head")
    assert head is not None
    store.put(namespace, "head", {**head.value, "chunk_size": stored})

    try:
        before = [m.content for m in history.tail(key, 2)]
    except (TypeError, ValueError, ZeroDivisionError):
        before = None  # the read fails as it did before hints were remembered
    if stored == "16" or stored == 16.0:
        assert before is not None
    assert history._driver.chunk_sizes._sizes == {}


def test_the_remembered_sizes_stay_bounded() -> None:
    sizes = ChunkSizes()
    for i in range(ChunkSizes.KEPT * 3 + 7):
        sizes.saw(("ns", str(i)), 8, 16)
        assert len(sizes._sizes) <= ChunkSizes.KEPT
    assert sizes.hint(("ns", str(ChunkSizes.KEPT * 3 + 6)), 8) == 16
    assert sizes.hint(("ns", "never seen"), 8) == 8
    sizes.saw(("ns", str(ChunkSizes.KEPT * 3 + 6)), 8, 8)
    assert sizes.hint(("ns", str(ChunkSizes.KEPT * 3 + 6)), 8) == 8


@pytest.mark.parametrize("size", [4, 8, 16])
def test_a_whole_read_takes_as_many_requests_whatever_the_chunk_size(size: int) -> None:
    from langgraph.store.memory import InMemoryStore

    from tests.support.counting_store import CountingStore

    store = InMemoryStore()
    key = _key()
    ChatHistory(store, namespace=("h",), chunk_size=size).append(
        key, [{"role": "user", "content": f"t{i}"} for i in range(600)]
    )
    counting = CountingStore(store)

    turns = list(ChatHistory(counting, namespace=("h",)).read(key))

    assert [t.content for t in turns] == [f"t{i}" for i in range(600)]
    # The head, then 256 turns' chunks per request: 600 turns in three.
    assert counting.reset()["batches"] == 1 + 3


def test_a_conversation_stored_before_the_upgrade_keeps_its_chunks_as_it_grows(
    store: BaseStore, ns: tuple[str, ...]
) -> None:
    key = _key()
    before = ChatHistory(store, namespace=ns, chunk_size=OLD_SIZE)
    after = ChatHistory(store, namespace=ns)
    for i in range(7):
        before.append(key, [HumanMessage(f"q{i}", id=f"q{i}"), AIMessage(f"a{i}", id=f"a{i}")])
    for i in range(7, 20):
        after.append(key, [HumanMessage(f"q{i}", id=f"q{i}"), AIMessage(f"a{i}", id=f"a{i}")])
        # A re-delivered exchange from before the upgrade is still known.
        assert after.append(key, [HumanMessage("q3", id="q3")]).duplicates == 1

    everything = [f"{r}{i}" for i in range(20) for r in ("q", "a")]
    assert [t.content for t in after.read(key)] == everything
    assert [m.content for m in after.tail(key, 30)] == everything[-30:]
    assert [m.content for m in before.tail(key, 30)] == everything[-30:]
    namespace = after.conversation_namespace(key)
    head = store.get(namespace, "head")
    assert head is not None and head.value["chunk_size"] == OLD_SIZE
    chunks = sorted(item.key for item in store.search(namespace, limit=100) if "chunk" in item.key)
    assert chunks == ["chunk:0000000000", "chunk:0000000001", "chunk:0000000002"]
