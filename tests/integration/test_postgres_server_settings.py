"""PostgreSQL servers set up unlike the default. A server, a proxy or a job that ends idle sessions (``idle_session_timeout``, a managed
database's idle limit, a cron job calling ``pg_terminate_backend``) closes the pool's
connections while they wait. The first call after each quiet spell used to fail on such
a connection: its read fell back, and its exchange was never stored. A connection that
sat idle is now checked before use and replaced when closed.

The quiet spell is not waited out: the idle threshold is set to zero, and the server
ends the pool's sessions itself, waiting until they are gone."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage
from psycopg.conninfo import make_conninfo

from agent_history import AgentNode, ChatHistory, HistoryReport
from agent_history.history.drivers import postgres_idle
from agent_history.settings import HistorySettings
from agent_history.stores import create_graph_store, create_graph_store_sync
from agent_history.testing import RecordingChatModel
from tests.support.agent_graphs import build_graph, new_thread, telegram_callback, toggles
from tests.support.postgres_server import end_idle_sessions

pytestmark = pytest.mark.postgres


def _setup(pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> tuple[str, HistorySettings]:
    monkeypatch.setattr(postgres_idle, "CHECK_AFTER_SECONDS", 0.0)
    application = "idle-" + uuid.uuid4().hex[:8]
    dsn = make_conninfo(pg_dsn, application_name=application)
    return application, HistorySettings(graph_store_backend="postgres", postgres_dsn=dsn)


def _node(reports: list[HistoryReport], namespace: str) -> AgentNode:
    return AgentNode(
        RecordingChatModel(),
        use_graph_chat_history=True,
        history_namespace=[namespace],
        toggles=toggles(),
        on_report=reports.append,
    )


def test_sync_calls_after_the_server_ended_idle_sessions_lose_nothing(
    pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    application, settings = _setup(pg_dsn, monkeypatch)
    namespace, reports = "idle_" + uuid.uuid4().hex[:8], []
    with create_graph_store_sync(settings) as store:
        graph = build_graph(_node(reports, namespace), store)
        graph.invoke(telegram_callback(5, "first", 1), new_thread())
        ended = 0
        for message_id in range(2, 5):
            ended += end_idle_sessions(pg_dsn, application)
            out = graph.invoke(
                telegram_callback(5, f"after quiet {message_id}", message_id), new_thread()
            )
            assert out["messages"][-1].content == f"echo: after quiet {message_id}"
            assert reports[-1].fallbacks == () and reports[-1].appended == 2
        assert ended >= 3
        history = ChatHistory(store, namespace=(namespace,))
        assert [t.content for t in history.read("telegram:5")][::2] == [
            "first", "after quiet 2", "after quiet 3", "after quiet 4"
        ]  # fmt: skip
        history.delete("telegram:5")


async def test_async_calls_after_the_server_ended_idle_sessions_lose_nothing(
    pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    application, settings = _setup(pg_dsn, monkeypatch)
    namespace, reports = "idle_" + uuid.uuid4().hex[:8], []
    async with create_graph_store(settings) as store:
        graph: Any = build_graph(_node(reports, namespace), store)
        await graph.ainvoke(telegram_callback(6, "first", 1), new_thread())
        for message_id in range(2, 5):
            end_idle_sessions(pg_dsn, application)
            await graph.ainvoke(
                telegram_callback(6, f"after quiet {message_id}", message_id), new_thread()
            )
            assert reports[-1].fallbacks == () and reports[-1].appended == 2
        history = ChatHistory(store, namespace=(namespace,))
        assert len([t async for t in history.aread("telegram:6")]) == 8
        await history.adelete("telegram:6")


@pytest.mark.parametrize("isolation", ["repeatable read", "serializable"])
def test_a_database_defaulting_to_a_stricter_isolation_loses_no_concurrent_append(
    pg_dsn: str, isolation: str
) -> None:
    """A database whose default isolation is stricter than PostgreSQL's own: an append's
    snapshot would predate the conversation's lock, and concurrent appends to one
    conversation failed with serialization errors (a fifth of them). The factory's pool
    runs its sessions at READ COMMITTED."""
    options = f"-c default_transaction_isolation={isolation.replace(' ', chr(92) + ' ')}"
    settings = HistorySettings(
        graph_store_backend="postgres",
        postgres_dsn=make_conninfo(pg_dsn, options=options),
        postgres_pool_max_size=8,
    )
    namespace = ("isolation_" + uuid.uuid4().hex[:8],)
    errors: list[BaseException] = []
    with create_graph_store_sync(settings) as store:
        history = ChatHistory(store, namespace=namespace)

        def writer(worker: int) -> None:
            for i in range(15):
                ids = (f"u{worker}-{i}", f"a{worker}-{i}")
                try:
                    history.append(
                        "telegram:1",
                        [HumanMessage("q", id=ids[0]), AIMessage("a", id=ids[1])],
                        budget=10,
                    )
                except BaseException as exc:
                    errors.append(exc)

        threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        turns = list(history.read("telegram:1"))
        assert len(turns) == 120 and [t.seq for t in turns] == list(range(1, 121))
        history.delete("telegram:1")
