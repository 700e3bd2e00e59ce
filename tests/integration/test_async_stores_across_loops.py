"""An async store opened on the server's event loop, used from other loops.

A sync web framework (Flask, Django, a Celery worker) beside an async server runs the
async graph with ``asyncio.run(graph.ainvoke(...))`` per request, in worker threads, with
the store the server opened at start. The store's lock and connections belong to the
server's loop: awaited from another loop, SQLite's lock raised "bound to a different
event loop" as soon as two requests met (the runs answered, nothing was stored, the log
said only ``read_failed error=RuntimeError``), and PostgreSQL's pool waited out every
budget, so the breaker opened for the whole process. Each call now runs on the store's
own loop, as the sync methods' calls already did.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langgraph.store.base import BaseStore

from agent_history import (
    AgentNode,
    ChatHistory,
    HistoryReport,
    StoreTimeout,
    StoreUnavailable,
)
from agent_history.settings import HistorySettings
from agent_history.stores import create_graph_store
from agent_history.testing import RecordingChatModel
from tests.support.agent_graphs import build_graph, new_thread, telegram_callback, toggles
from tests.support.sqlite_trace import patient_sqlite, write_begun

REQUESTS = 3


class _TogetherModel(RecordingChatModel):
    """Answers once every request has reached the model, so that their appends meet."""

    barrier: Any = None

    def reply(self, messages: list[BaseMessage], **kwargs: Any) -> AIMessage:
        self.barrier.wait(timeout=30)
        return super().reply(messages, **kwargs)


@pytest.fixture
async def server_store(persistent_settings: HistorySettings) -> Any:
    async with create_graph_store(persistent_settings) as opened:  # on the server's loop
        yield opened


async def test_requests_on_loops_of_their_own_are_stored(
    server_store: BaseStore, caplog: pytest.LogCaptureFixture
) -> None:
    model = _TogetherModel(barrier=threading.Barrier(REQUESTS))
    reports: list[HistoryReport] = []
    node = AgentNode(
        model,
        use_graph_chat_history=True,
        toggles=toggles(),
        on_report=reports.append,
    )
    graph = build_graph(node, server_store)

    chat = uuid.uuid4().int % 10**9  # the session's PostgreSQL database is shared

    def request(message_id: int) -> Any:  # a worker thread of the sync framework
        callback = telegram_callback(chat, f"question {message_id}", message_id)
        return asyncio.run(graph.ainvoke(callback, new_thread()))

    with caplog.at_level(logging.WARNING, logger="agent_history"):
        # the server's loop goes on running (here: awaiting the workers)
        results = await asyncio.gather(
            *(asyncio.to_thread(request, i) for i in range(1, REQUESTS + 1))
        )

    assert [r["messages"][-1].content for r in results] == [
        f"echo: question {i}" for i in range(1, REQUESTS + 1)
    ]
    assert [r.fallbacks for r in reports] == [()] * REQUESTS
    assert [r.appended for r in reports] == [2] * REQUESTS
    assert not [r for r in caplog.records if r.name == "agent_history"]
    turns = [t async for t in ChatHistory(server_store).aread(f"telegram:{chat}")]
    assert [t.seq for t in turns] == list(range(1, 2 * REQUESTS + 1))
    assert sorted(t.content for t in turns if t.role == "user") == [
        f"question {i}" for i in range(1, REQUESTS + 1)
    ]


def test_a_store_whose_loop_is_gone_says_so(
    persistent_settings: HistorySettings, caplog: pytest.LogCaptureFixture
) -> None:
    async def opened_in_a_run_of_its_own() -> Any:
        async with create_graph_store(persistent_settings) as store:
            return store

    store = asyncio.run(opened_in_a_run_of_its_own())  # that loop is closed now
    reports: list[HistoryReport] = []
    node = AgentNode(
        RecordingChatModel(), use_graph_chat_history=True, toggles=toggles(),
        on_report=reports.append,
    )  # fmt: skip
    graph = build_graph(node, store)
    with caplog.at_level(logging.WARNING, logger="agent_history"):
        result = asyncio.run(graph.ainvoke(telegram_callback(7, "hi", 1), new_thread()))
    assert result["messages"][-1].content == "echo: hi"  # answered in memory
    assert reports[-1].fallbacks == ("read_failed",)
    [warning] = [r.getMessage() for r in caplog.records if r.name == "agent_history"]
    assert "reason=read_failed error=StoreUnavailable: this async store's event loop" in warning


async def test_the_legacy_read_runs_on_the_stores_loop_too(server_store: BaseStore) -> None:
    chat = uuid.uuid4().int % 10**9  # the session's PostgreSQL database is shared
    await server_store.aput(
        ("agent_chat_history",),
        f"telegram:{chat}",
        {"version": 1, "messages": [
            {"role": "user", "content": "old question"},
            {"role": "assistant", "content": "old answer"},
        ]},
    )  # fmt: skip
    model, reports = RecordingChatModel(), []
    node = AgentNode(
        model, use_graph_chat_history=True, history_read_legacy=True, toggles=toggles(),
        on_report=reports.append,
    )  # fmt: skip
    graph = build_graph(node, server_store)

    def request() -> Any:
        callback = telegram_callback(chat, "new question", 1)
        return asyncio.run(graph.ainvoke(callback, new_thread()))

    await asyncio.to_thread(request)
    assert [m.content for m in model.calls[-1]] == ["old question", "old answer", "new question"]
    assert (reports[-1].fallbacks, reports[-1].appended) == ((), 2)


async def test_a_blocked_store_loop_costs_a_caller_its_budget_not_more(
    server_store: BaseStore,
) -> None:
    history = ChatHistory(server_store)
    key = f"telegram:{uuid.uuid4().int % 10**9}"
    done = threading.Event()

    def caller() -> str:  # a worker thread's own loop
        async def tail() -> str:
            try:
                await history.atail(key, 10, budget=0.3)
            except StoreTimeout:
                return "timed out"
            return "answered"

        try:
            return asyncio.run(tail())
        finally:
            done.set()

    worker = asyncio.get_running_loop().run_in_executor(None, caller)
    # The application blocks the store's loop (a sync call on it) until the worker is done:
    # the worker's call cannot run there, and must give up at its budget.
    assert done.wait(timeout=30)
    assert await worker == "timed out"
    assert await history.atail(key, 10) == []  # the store serves its loop after


async def test_a_call_the_stores_loop_cancels_fails_as_a_store_failure(tmp_path: Path) -> None:
    # The server shuts down (asyncio.run cancels its loop's tasks on SIGTERM) while a worker
    # thread's append runs there: the worker, which nobody cancelled, gets a store failure
    # (its run degrades with a warning), not a CancelledError that no handler expects.
    settings = patient_sqlite(tmp_path)
    async with create_graph_store(settings) as store:
        history = ChatHistory(store)
        waiting = await write_begun(store)
        holder = sqlite3.connect(settings.graph_store_sqlite_path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # another writer holds the lock

        def worker() -> str:
            async def append() -> str:
                try:
                    await history.aappend("chat", [HumanMessage("q", id="q"), AIMessage("a")])
                except StoreUnavailable as failed:
                    return str(failed)
                return "appended"

            return asyncio.run(append())

        outcome = asyncio.get_running_loop().run_in_executor(None, worker)
        assert await asyncio.to_thread(waiting.wait, 30)  # the append waits for the lock
        [hop] = [
            task
            for task in asyncio.all_tasks()
            if task.get_coro().__qualname__ == "run_with_deadline"  # type: ignore[union-attr]
        ]
        hop.cancel()  # as the loop's shutdown does
        assert await outcome == "the store's event loop cancelled the call"
        holder.execute("ROLLBACK")
        holder.close()
        assert await history.acount("chat") == 0  # and the abandoned append wrote nothing


def test_a_sync_delete_on_a_store_whose_loop_is_gone_says_so(
    persistent_settings: HistorySettings,
) -> None:
    """A `delete` (and a purge) from a sync thread reaches an async store through its
    loop, as every other call does: on a store whose loop has stopped it fails at once
    (the deletion of the conversation's legacy item waited for the loop forever)."""

    async def opened_in_a_run_of_its_own() -> Any:
        async with create_graph_store(persistent_settings) as store:
            return store

    store = asyncio.run(opened_in_a_run_of_its_own())
    history = ChatHistory(store)
    outcome: list[BaseException] = []

    def delete() -> None:
        try:
            history.delete("telegram:1", budget=1.0)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=delete, daemon=True)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert [type(e).__name__ for e in outcome] == ["StoreUnavailable"]
