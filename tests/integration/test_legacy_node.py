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
