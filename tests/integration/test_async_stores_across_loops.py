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
import threading
from typing import Any

import pytest
from langchain_core.messages import AIMessage, BaseMessage
from langgraph.store.base import BaseStore

from agent_history import AgentNode, ChatHistory, HistoryReport
from agent_history.settings import HistorySettings
from agent_history.stores import create_graph_store
from agent_history.testing import RecordingChatModel
from tests.support.agent_graphs import build_graph, new_thread, telegram_callback, toggles

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

    def request(message_id: int) -> Any:  # a worker thread of the sync framework
        callback = telegram_callback(7, f"question {message_id}", message_id)
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
    turns = [t async for t in ChatHistory(server_store).aread("telegram:7")]
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
