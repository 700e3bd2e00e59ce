"""Another process holds the SQLite write lock: the node waits within budget, falls back, recovers."""

from __future__ import annotations

import asyncio
import json
import logging
import select
import sqlite3
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.store.base import BaseStore

from agent_history import AgentNode, HistoryReport
from agent_history.history import ChatHistory
from agent_history.settings import HistorySettings
from agent_history.stores import create_graph_store, create_graph_store_sync
from agent_history.testing import RecordingChatModel
from tests.reliability.conftest import Record
from tests.support.agent_graphs import build_graph, new_thread, telegram_callback, toggles
from tests.support.sqlite_trace import patient_sqlite, write_begun

REPO = Path(__file__).resolve().parents[2]
HOLDER_NAMESPACE = ("holder", "data")
HOLDER_VALUE = {"written_by": "lock holder", "text": "kept ✓ 🧪"}
LINE_TIMEOUT = 30.0


def _read_line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], LINE_TIMEOUT)
    assert ready, "the lock holder did not answer"
    return proc.stdout.readline().strip()


@contextmanager
def _lock_holder(path: Path) -> Iterator[subprocess.Popen[str]]:
    """A separate process inside ``BEGIN IMMEDIATE`` with an uncommitted insert."""
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "tests.support.sqlite_lock_holder",
            str(path), ".".join(HOLDER_NAMESPACE), "row", json.dumps(HOLDER_VALUE),
        ],
        cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert _read_line(proc) == "locked"
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(LINE_TIMEOUT)
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()


def _commit(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.write("commit\n")
    proc.stdin.flush()
    assert _read_line(proc) == "committed"
    assert proc.wait(LINE_TIMEOUT) == 0


def _assert_really_locked(path: Path) -> None:
    probe = sqlite3.connect(path, isolation_level=None, timeout=0)
    try:
        with pytest.raises(sqlite3.OperationalError, match="database is locked"):
            probe.execute("BEGIN IMMEDIATE")
    finally:
        probe.close()


def _holder_row(path: Path) -> Any:
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(
            "SELECT value FROM store WHERE prefix = ? AND key = 'row'",
            (".".join(HOLDER_NAMESPACE),),
        ).fetchall()
    finally:
        conn.close()
    return [json.loads(value) for (value,) in rows]


def _settings(tmp_path: Path) -> HistorySettings:
    return HistorySettings(
        graph_store_backend="sqlite",
        graph_store_sqlite_path=tmp_path / "store.sqlite",
        graph_store_sqlite_busy_timeout=0.2,
    )


def _node(reports: list[HistoryReport]) -> AgentNode:
    return AgentNode(
        RecordingChatModel(),
        use_graph_chat_history=True,
        toggles=toggles(read_timeout_seconds="1", write_timeout_seconds="1"),
        write_backoff_seconds=0,
        on_report=reports.append,
    )


async def _check_transcript(store: BaseStore, key: str, expected_users: list[str]) -> None:
    turns = [turn async for turn in ChatHistory(store).aread(key)]
    assert [t.seq for t in turns] == list(range(1, len(turns) + 1))
    assert Counter(t.id for t in turns).most_common(1)[0][1] == 1
    assert [t.content for t in turns] == [
        text for user in expected_users for text in (user, f"echo: {user}")
    ]


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_write_lock_held_by_another_process(
    mode: str, tmp_path: Path, caplog: pytest.LogCaptureFixture, record_figures: Record
) -> None:
    settings = _settings(tmp_path)
    path = settings.graph_store_sqlite_path
    reports: list[HistoryReport] = []
    chat = int(uuid.uuid4().int % 10**9)
    key = f"telegram:{chat}"

    async def run(graph: Any, text: str) -> HistoryReport:
        state, config = telegram_callback(chat, text, message_id=text), new_thread()
        if mode == "sync":
            out = graph.invoke(state, config)
        else:
            out = await graph.ainvoke(state, config)
        assert out["messages"][-1].content == f"echo: {text}"
        return reports[-1]

    if mode == "sync":
        opened: Any = create_graph_store_sync(settings)
        store = opened.__enter__()
    else:
        opened = create_graph_store(settings)
        store = await opened.__aenter__()
    try:
        graph = build_graph(_node(reports), store)
        for text in ("first", "second"):
            assert (await run(graph, text)).fallbacks == ()
        with _lock_holder(path) as holder:
            _assert_really_locked(path)
            with caplog.at_level(logging.WARNING, logger="agent_history"):
                locked = await run(graph, "while locked")
            # The lock is still held after the run: the run gave up, it did not win.
            _assert_really_locked(path)
            _commit(holder)
        assert "write_failed" in locked.fallbacks and locked.appended == 0
        assert locked.stored_read == 4  # WAL: readers are not blocked by the writer
        warnings = [r.getMessage() for r in caplog.records if r.name == "agent_history"]
        assert any("reason=write_failed" in m and "database is locked" in m for m in warnings), (
            warnings
        )
        assert _holder_row(path) == [HOLDER_VALUE]
        if mode == "sync":
            item = store.get(HOLDER_NAMESPACE, "row")
        else:
            item = await store.aget(HOLDER_NAMESPACE, "row")
        assert item is not None and item.value == HOLDER_VALUE
        later = await run(graph, "after the lock")
        assert later.fallbacks == () and later.appended == 2
        await _check_transcript(store, key, ["first", "second", "after the lock"])
    finally:
        if mode == "sync":
            opened.__exit__(None, None, None)
        else:
            await opened.__aexit__(None, None, None)
    record_figures(
        scenario="sqlite_lock",
        mode=mode,
        runs=len(reports),
        lock_faults=1,
        fallbacks=sum(1 for r in reports if r.fallbacks),
        lost=0,
        duplicated=0,
    )


async def test_a_write_cancelled_while_waiting_for_the_lock_commits_nothing(
    tmp_path: Path,
) -> None:
    # A webhook server cancels the task of a client that hung up while its append waits
    # for another process's write lock. The caller is gone, told nothing was written,
    # and the channel will re-deliver: the append must not commit once the lock is free
    # (it did, up to the write budget later).
    settings = patient_sqlite(tmp_path)
    async with create_graph_store(settings) as store:
        history = ChatHistory(store)
        await history.aappend("chat", [HumanMessage("one", id="1"), AIMessage("a1", id="a1")])
        waiting = await write_begun(store)  # set when the append's transaction starts
        with _lock_holder(settings.graph_store_sqlite_path) as holder:
            append = asyncio.create_task(
                history.aappend("chat", [HumanMessage("two", id="2"), AIMessage("a2", id="a2")])
            )
            assert await asyncio.to_thread(waiting.wait, LINE_TIMEOUT)
            append.cancel()
            with pytest.raises(asyncio.CancelledError):
                await append
            _commit(holder)  # the lock is free: the abandoned append gets it
        # The next call runs on the connection's thread after the abandoned one ended.
        turns = [(t.seq, t.content) async for t in history.aread("chat")]
        assert turns == [(1, "one"), (2, "a1")]
        await history.aappend("chat", [HumanMessage("two", id="2"), AIMessage("a2", id="a2")])
        turns = [(t.seq, t.content) async for t in history.aread("chat")]
        assert turns == [(1, "one"), (2, "a1"), (3, "two"), (4, "a2")]
    assert _holder_row(settings.graph_store_sqlite_path) == [HOLDER_VALUE]
