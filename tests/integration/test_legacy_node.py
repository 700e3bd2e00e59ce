"""AgentNode with ``history_read_legacy=True``: a conversation that only has an item of the
earlier single-item layout continues from it, and the log takes it over exactly once."""

from __future__ import annotations

import uuid
from collections.abc import Iterable

import pytest
from langgraph.store.base import BaseStore, GetOp, Op, Result
from langgraph.store.memory import InMemoryStore

from agent_history import AgentNode, HistoryReport
from agent_history.history import ChatHistory
from agent_history.legacy import LEGACY_NAMESPACE
from agent_history.testing import RecordingChatModel
from agent_history.toggles import HistoryToggles
from tests.support.agent_graphs import build_graph, new_thread, telegram_callback


def _legacy(store: BaseStore, key: str, turns: int) -> None:
    messages = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"old {i}"} for i in range(turns)
    ]
    store.put(LEGACY_NAMESPACE, key, {"version": 7, "messages": messages}, index=False)


@pytest.mark.parametrize("read_legacy", [True, False])
def test_a_legacy_only_conversation_continues_when_asked(
    store: BaseStore, read_legacy: bool
) -> None:
    chat = uuid.uuid4().int % 10**9
    key = f"telegram:{chat}"
    _legacy(store, key, 6)
    model = RecordingChatModel()
    reports: list[HistoryReport] = []
    node = AgentNode(
        model,
        use_graph_chat_history=True,
        max_messages=4,
        history_read_legacy=read_legacy,
        toggles=HistoryToggles(env={}),
        on_report=reports.append,
    )
    graph = build_graph(node, store)
    graph.invoke(telegram_callback(chat, "new 1", message_id=1), new_thread())
    graph.invoke(telegram_callback(chat, "new 2", message_id=2), new_thread())
    stored = [t.content for t in ChatHistory(store).read(key)]
    if not read_legacy:
        assert [m.content for m in model.calls[0]] == ["new 1"]
        assert stored == ["new 1", "echo: new 1", "new 2", "echo: new 2"]
        return
    # The first run's window comes from the legacy item, the second from the log.
    assert [m.content for m in model.calls[0]] == ["old 4", "old 5", "new 1"]
    assert [m.content for m in model.calls[1]] == ["new 1", "echo: new 1", "new 2"]
    assert stored == [f"old {i}" for i in range(6)] + [
        "new 1",
        "echo: new 1",
        "new 2",
        "echo: new 2",
    ]
    assert reports[0].fallbacks == () and reports[0].appended == 2


async def test_async_legacy_read_and_a_second_seed_write_nothing_twice(astore: BaseStore) -> None:
    chat = uuid.uuid4().int % 10**9
    key = f"telegram:{chat}"
    await astore.aput(
        LEGACY_NAMESPACE, key, {"version": 1, "messages": [{"role": "user", "content": "hi"}]}
    )
    model = RecordingChatModel()
    node = AgentNode(
        model, use_graph_chat_history=True, history_read_legacy=True, toggles=HistoryToggles(env={})
    )
    graph = build_graph(node, astore)
    await graph.ainvoke(telegram_callback(chat, "again", message_id=9), new_thread())
    history = ChatHistory(astore)
    turns = [t.content async for t in history.aread(key)]
    assert turns == ["hi", "again", "echo: again"]
    assert [m.content for m in model.calls[0]] == ["hi", "again"]


class _LegacyOutage(InMemoryStore):
    """An in-memory store whose reads of the legacy items fail while ``down``."""

    down = True

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        listed = list(ops)
        if self.down and any(
            isinstance(op, GetOp) and op.namespace == LEGACY_NAMESPACE for op in listed
        ):
            raise ConnectionError("legacy items unreachable")
        return super().batch(listed)

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        return self.batch(ops)


def test_a_failed_legacy_read_writes_nothing_so_the_old_history_is_taken_over_later() -> None:
    """Appending after a failed legacy read made the exchange the log's first turns: the
    legacy item was then never read again, and `migrate --from-legacy` refused it."""
    store, chat = _LegacyOutage(), uuid.uuid4().int % 10**9
    key = f"telegram:{chat}"
    _legacy(store, key, 4)
    model, reports = RecordingChatModel(), []
    node = AgentNode(
        model,
        use_graph_chat_history=True,
        history_read_legacy=True,
        toggles=HistoryToggles(env={}),
        write_backoff_seconds=0.0,
        on_report=reports.append,
    )
    graph = build_graph(node, store)

    graph.invoke(telegram_callback(chat, "new 1", message_id=1), new_thread())
    assert [m.content for m in model.calls[0]] == ["new 1"]  # answered in memory
    assert reports[0].fallbacks == ("legacy_read_failed",) and reports[0].appended == 0
    assert ChatHistory(store).count(key) == 0  # nothing that would hide the legacy item

    store.down = False
    graph.invoke(telegram_callback(chat, "new 2", message_id=2), new_thread())
    assert [m.content for m in model.calls[1]] == ["old 0", "old 1", "old 2", "old 3", "new 2"]
    stored = [t.content for t in ChatHistory(store).read(key)]
    assert stored == ["old 0", "old 1", "old 2", "old 3", "new 2", "echo: new 2"]


@pytest.mark.parametrize("how", ["delete", "purge", "forget_unmigrated"])
def test_a_deleted_conversation_does_not_come_back_from_its_legacy_item(
    store: BaseStore, how: str
) -> None:
    """The migration leaves legacy items in place. A conversation deleted afterwards (a
    user's "/forget", a deletion request, retention) has an empty log, so a node reading
    the legacy layout took the legacy item over again, and a second migration copied it
    back: the deleted history returned. Deleting a conversation deletes its legacy item
    (one never migrated too)."""
    import datetime

    from agent_history.legacy import migrate_legacy

    chat = uuid.uuid4().int % 10**9
    key = f"telegram:{chat}"
    _legacy(store, key, 4)
    history = ChatHistory(store)
    if how != "forget_unmigrated":
        assert migrate_legacy(store, history, keys=[key]).turns_copied == 4
    if how == "purge":
        later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=1)
        assert history.delete_if_idle(key, later) is not None
    else:
        assert history.delete(key) == (0 if how == "forget_unmigrated" else 4)
    assert store.get(LEGACY_NAMESPACE, key) is None
    assert migrate_legacy(store, history, keys=[key]).turns_copied == 0
    model = RecordingChatModel()
    node = AgentNode(
        model, use_graph_chat_history=True, history_read_legacy=True, toggles=HistoryToggles(env={})
    )
    build_graph(node, store).invoke(telegram_callback(chat, "new", message_id=9), new_thread())
    assert [m.content for m in model.calls[0]] == ["new"]
    assert [t.content for t in history.read(key)] == ["new", "echo: new"]


async def test_an_async_delete_deletes_the_legacy_item_too(astore: BaseStore) -> None:
    key = f"telegram:{uuid.uuid4().int % 10**9}"
    await astore.aput(LEGACY_NAMESPACE, key, {"version": 1, "messages": []}, index=False)
    assert await ChatHistory(astore).adelete(key) == 0
    assert await astore.aget(LEGACY_NAMESPACE, key) is None


def test_deleting_only_ever_deletes_a_legacy_item_not_another_conversations_items(
    store: BaseStore,
) -> None:
    """Any text is a key, and namespaces nest: conversation ``c`` of history ``t`` keeps
    its head at ``("t", "c"), "head"``, which is where history ``("t", "c")`` would look
    for the legacy item of a conversation keyed ``head``. Only a legacy item is deleted."""
    root = ("nested", uuid.uuid4().hex[:8])
    outer = ChatHistory(store, namespace=root)
    outer.append("c", [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}])
    outer.write_summary("c", "they greeted", covers_seq=2, base_version=0)
    inner = ChatHistory(store, namespace=(*root, "c"))
    for key in ("head", "summary", "chunk:0000000000"):
        assert inner.delete(key) == 0
    assert [t.content for t in outer.read("c")] == ["hi", "yo"]
    assert outer.summary("c") is not None
