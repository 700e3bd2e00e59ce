"""Stores without transactions that fail between an append's writes (the chunk and its id
entries land, the head does not): a retry with the same ids stores the turns, once, and
an agent whose store fails that way loses and duplicates nothing. Also: ids already
stored are skipped through plain batch calls, and odd stored data never breaks an
append."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

import pytest
from langgraph.store.base import BaseStore, Op, Result
from langgraph.store.memory import InMemoryStore

from agent_history import AgentNode
from agent_history.history import ChatHistory
from agent_history.testing import RecordingChatModel
from agent_history.toggles import HistoryToggles
from tests.support.agent_graphs import build_graph, new_thread, telegram_callback
from tests.support.fault_stores import FlakyMemoryStore, FlakyStore, head_put, seeded_failures

KINDS = {"wrapper": FlakyStore, "memory-subclass": FlakyMemoryStore}


def _store(kind: str, rule: Callable[[list[Op]], bool]) -> Any:
    return KINDS[kind](rule)


class _Switch:
    """Fails the next head write when armed."""

    def __init__(self) -> None:
        self.armed = False

    def __call__(self, ops: list[Op]) -> bool:
        if self.armed and head_put(ops):
            self.armed = False
            return True
        return False


def _exchange(tag: str) -> list[dict[str, str]]:
    return [
        {"role": "user", "content": tag, "id": f"u-{tag}"},
        {"role": "assistant", "content": f"re: {tag}", "id": f"a-{tag}"},
    ]


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_retry_after_a_failed_head_write_stores_the_turns(kind: str) -> None:
    switch = _Switch()
    store = _store(kind, switch)
    history = ChatHistory(store)
    history.append("k", [{"role": "user", "content": "first", "id": "u0"}])

    switch.armed = True
    with pytest.raises(ConnectionError):
        history.append("k", _exchange("one"))
    assert store.failures == 1
    assert history.count("k") == 1  # the head was not written: nothing is visible

    retried = history.append("k", _exchange("one"))
    assert (retried.appended, retried.duplicates) == (2, 0)
    again = history.append("k", _exchange("one"))
    assert (again.appended, again.duplicates) == (0, 2)
    assert [m.content for m in history.tail("k", 10)] == ["first", "one", "re: one"]


@pytest.mark.parametrize("kind", list(KINDS))
def test_entries_of_a_failed_append_do_not_match_the_turns_that_took_their_place(
    kind: str,
) -> None:
    # The failed append's id entries name seqs 2 and 3; a later append takes them. The
    # retry must still store the first exchange.
    switch = _Switch()
    store = _store(kind, switch)
    history = ChatHistory(store)
    history.append("k", [{"role": "user", "content": "first", "id": "u0"}])
    switch.armed = True
    with pytest.raises(ConnectionError):
        history.append("k", _exchange("one"))
    history.append("k", _exchange("two"))
    retried = history.append("k", _exchange("one"))
    assert (retried.appended, retried.duplicates) == (2, 0)
    assert [m.content for m in history.tail("k", 10)] == [
        "first", "two", "re: two", "one", "re: one",
    ]  # fmt: skip
    assert history.append("k", _exchange("two")).duplicates == 2


@pytest.mark.parametrize("kind", list(KINDS))
def test_random_failures_with_retries_lose_and_duplicate_nothing(kind: str) -> None:
    store = _store(kind, seeded_failures(seed=7, rate=0.2))
    history = ChatHistory(store)
    for i in range(150):
        while True:
            try:
                history.append("k", _exchange(str(i)))
                break
            except ConnectionError:
                continue
    assert store.failures > 30  # the faults really happened
    store.rule = lambda ops: False
    stored = list(history.read("k"))
    assert [t.content for t in stored] == [
        text for i in range(150) for text in (str(i), f"re: {i}")
    ]
    assert [t.seq for t in stored] == list(range(1, 301))


@pytest.mark.parametrize("kind", list(KINDS))
def test_an_agent_whose_store_fails_a_head_write_keeps_every_exchange_once(kind: str) -> None:
    # Every append's first head write fails: the node's own retry must store it.
    head_writes = [0]

    def first_head_write(ops: list[Op]) -> bool:
        if not head_put(ops):
            return False
        head_writes[0] += 1
        return head_writes[0] % 2 == 1

    store: BaseStore = _store(kind, first_head_write)
    model = RecordingChatModel()
    node = AgentNode(
        model,
        use_graph_chat_history=True,
        # A breaker that opens only when every call fails: half of the writes fail here.
        toggles=HistoryToggles(env={"ORCHEO_GRAPH_CHAT_HISTORY_BREAKER_FAILURE_RATIO": "1"}),
        write_backoff_seconds=0.0,
    )
    graph = build_graph(node, store)
    for i in range(4):
        graph.invoke(telegram_callback(7, f"msg {i}", message_id=i), new_thread())
    assert head_writes[0] == 8
    stored = [(t.role, t.content) for t in ChatHistory(store).read("telegram:7")]
    assert stored == [
        pair for i in range(4) for pair in (("user", f"msg {i}"), ("assistant", f"echo: msg {i}"))
    ]
    assert [len(call) for call in model.calls] == [1, 3, 5, 7]


class _PassThroughStore(BaseStore):
    """A store seen through its public batch calls only (the generic driver)."""

    def __init__(self) -> None:
        self.inner = InMemoryStore()

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        return self.inner.batch(ops)

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        return self.inner.batch(ops)


def test_appending_the_whole_thread_each_turn_stores_each_message_once() -> None:
    # A caller that hands over the whole growing thread every turn relies on ids: the
    # generic driver's read-back must not take the skipped ones for lost turns.
    history = ChatHistory(_PassThroughStore())
    thread: list[dict[str, str]] = []
    results = []
    for i in range(3):
        thread += _exchange(str(i))
        results.append(history.append("k", thread))
    assert [(r.appended, r.duplicates, r.conflicts) for r in results] == [
        (2, 0, 0), (2, 2, 0), (2, 4, 0),
    ]  # fmt: skip
    assert [t.content for t in history.read("k")] == ["0", "re: 0", "1", "re: 1", "2", "re: 2"]


ODD_EDITS: dict[str, Callable[[dict[str, Any], dict[str, Any]], None]] = {
    "entry seq as a float": lambda entry, chunk: entry.update(seq=1.0),
    "entry seq as text": lambda entry, chunk: entry.update(seq="1"),
    "entry seq missing": lambda entry, chunk: entry.pop("seq"),
    "entry seq true": lambda entry, chunk: entry.update(seq=True),
    "chunk turns null": lambda entry, chunk: chunk.update(turns=None),
    "chunk turns a number": lambda entry, chunk: chunk.update(turns=7),
    "chunk records not objects": lambda entry, chunk: chunk.update(turns=[["x"], "y"]),
    "record seq as text": lambda entry, chunk: chunk["turns"][0].update(seq="1"),
    "record seq as a float": lambda entry, chunk: chunk["turns"][0].update(seq=1.0),
}


@pytest.mark.parametrize("edit", list(ODD_EDITS))
def test_odd_stored_data_never_breaks_a_redelivery(edit: str) -> None:
    # A conversation edited by hand or by another tool: a re-delivered first exchange
    # must neither crash the append nor be stored twice.
    store = InMemoryStore()
    history = ChatHistory(store, chunk_size=2)
    for i in range(6):
        history.append("k", _exchange(str(i)))
    ns = history.conversation_namespace("k")
    entry = store.get(ns, "msgid:u-0")
    chunk = store.get(ns, "chunk:0000000000")
    assert entry is not None and chunk is not None
    entry_value, chunk_value = dict(entry.value), json.loads(json.dumps(chunk.value))
    ODD_EDITS[edit](entry_value, chunk_value)
    store.put(ns, "msgid:u-0", entry_value, index=False)
    store.put(ns, "chunk:0000000000", chunk_value, index=False)

    again = history.append("k", _exchange("0"))
    assert (again.appended, again.duplicates) == (0, 2)
    assert history.count("k") == 12


class _SortingStore(_PassThroughStore):
    """Hands values back with their keys in another order, as PostgreSQL's jsonb does."""

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        results = self.inner.batch(ops)
        for item in results:
            value = getattr(item, "value", None)
            if isinstance(value, dict):
                item.value = json.loads(json.dumps(value, sort_keys=True))
        return results


def test_content_read_back_with_its_keys_reordered_is_not_taken_for_a_lost_turn() -> None:
    history = ChatHistory(_SortingStore())
    blocks = [{"type": "text", "text": "hello"}]
    result = history.append("k", [{"role": "user", "content": blocks}])
    assert (result.appended, result.conflicts) == (1, 0)
    assert [t.content for t in history.read("k")] == [[{"text": "hello", "type": "text"}]]
