"""A PostgreSQL store opened on one connection (``from_conn_string``, LangGraph's usual
way) survives a call that reaches its budget: the statement is cancelled, not the
connection's socket shut, so the history and LangGraph's own calls work again at once.
(A pool replaces a connection instead; `tests/reliability/test_hung_server.py`.)"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import anyio
import psycopg
import pytest
from langgraph.store.postgres import AsyncPostgresStore, PostgresStore

from agent_history import AgentNode, HistoryReport
from agent_history.errors import StoreTimeout
from agent_history.history import ChatHistory
from agent_history.testing import RecordingChatModel
from agent_history.toggles import HistoryToggles
from tests.support.agent_graphs import build_graph, new_thread, telegram_callback
from tests.support.postgres_server import waiting_on_a_lock

pytestmark = pytest.mark.postgres


def _dsn(base: str, application: str) -> str:
    return f"{base}?application_name={application}"


@pytest.fixture
def dsn(fresh_pg_dsn: str) -> str:
    with PostgresStore.from_conn_string(fresh_pg_dsn) as store:
        store.setup()
    return fresh_pg_dsn


@pytest.fixture
def table_lock(dsn: str) -> Iterator[Any]:
    """Another session that takes the ``store`` table (a migration, ``VACUUM FULL``)."""
    conn = psycopg.connect(dsn)

    class Lock:
        def take(self) -> None:
            conn.execute("LOCK TABLE store IN ACCESS EXCLUSIVE MODE")

        def release(self) -> None:
            conn.rollback()

    try:
        yield Lock()
    finally:
        conn.close()


def _exchange(tag: str) -> list[dict[str, str]]:
    return [
        {"role": "user", "content": tag, "id": f"u-{tag}"},
        {"role": "assistant", "content": f"re: {tag}", "id": f"a-{tag}"},
    ]


def test_a_timed_out_call_leaves_the_store_usable(dsn: str, table_lock: Any) -> None:
    with PostgresStore.from_conn_string(dsn) as store:
        history = ChatHistory(store)
        history.append("k", _exchange("one"))
        pid = store.conn.info.backend_pid
        table_lock.take()
        with pytest.raises(StoreTimeout):
            history.tail("k", 5, budget=0.3)
        with pytest.raises(StoreTimeout):
            history.append("k", _exchange("two"), budget=0.3)
        table_lock.release()
        assert [m.content for m in history.tail("k", 5, budget=5)] == ["one", "re: one"]
        assert history.append("k", _exchange("two"), budget=5).appended == 2
        store.put(("profile",), "u", {"v": 1})  # LangGraph's own calls work too
        item = store.get(("profile",), "u")
        assert item is not None and item.value == {"v": 1}
        assert store.conn.info.backend_pid == pid  # the same session, never reopened
        assert history.count("k") == 4


def test_async_timeouts_and_hang_ups_leave_the_store_usable(dsn: str, table_lock: Any) -> None:
    application = f"single-{uuid.uuid4().hex[:8]}"

    async def scenario() -> None:
        async with AsyncPostgresStore.from_conn_string(_dsn(dsn, application)) as store:
            history = ChatHistory(store)
            await history.aappend("k", _exchange("one"))
            pid = store.conn.info.backend_pid
            table_lock.take()
            with pytest.raises(StoreTimeout):
                await history.atail("k", 5, budget=0.3)
            # A client that hangs up while its call waits on the table.
            task = asyncio.ensure_future(history.atail("k", 5))
            for _ in range(2000):  # poll the observable state, yielding to the loop
                if await asyncio.to_thread(waiting_on_a_lock, dsn, application):
                    break
                await asyncio.sleep(0.005)
            else:
                raise AssertionError("the call never waited on the table")
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            table_lock.release()
            assert [m.content for m in await history.atail("k", 5)] == ["one", "re: one"]
            assert (await history.aappend("k", _exchange("two"))).appended == 2
            await store.aput(("profile",), "u", {"v": 1})
            item = await store.aget(("profile",), "u")
            assert item is not None and item.value == {"v": 1}
            assert store.conn.info.backend_pid == pid
            assert await history.acount("k") == 4

    asyncio.run(scenario())


@pytest.mark.parametrize("hang_up", ["cancelled three times", "anyio cancel scope"])
def test_a_caller_cancelled_again_while_it_cleans_up_leaves_the_store_usable(
    dsn: str, hang_up: str
) -> None:
    # A web framework's cancel scope (anyio, as Starlette uses) cancels the task again at
    # every step until it ends; so does a server shutting down after a client hung up.
    application = f"again-{uuid.uuid4().hex[:8]}"
    holder = psycopg.connect(dsn, autocommit=True)
    holder.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", ("agent_chat_history.chat",))

    async def waiting() -> None:
        for _ in range(2000):  # poll the observable state, yielding to the loop
            if await asyncio.to_thread(waiting_on_a_lock, dsn, application):
                return
            await asyncio.sleep(0.005)
        raise AssertionError("the append never waited on the conversation")

    async def scenario() -> None:
        async with AsyncPostgresStore.from_conn_string(_dsn(dsn, application)) as store:
            history = ChatHistory(store)
            await history.aappend("warm", _exchange("w"))
            if hang_up == "anyio cancel scope":
                async with anyio.create_task_group() as group:
                    group.start_soon(history.aappend, "chat", _exchange("x"))
                    await waiting()
                    group.cancel_scope.cancel()
            else:
                task = asyncio.ensure_future(history.aappend("chat", _exchange("x")))
                await waiting()
                for _ in range(3):
                    task.cancel()
                    await asyncio.sleep(0)
                with pytest.raises(asyncio.CancelledError):
                    await task
            assert not store.conn.closed
            await store.aput(("profile",), "u", {"v": 1})
            assert (await history.aappend("other", _exchange("o"))).appended == 2
            assert await history.acount("chat") == 0

    try:
        asyncio.run(scenario())
    finally:
        holder.close()


def test_an_agent_keeps_its_memory_after_a_slow_read(dsn: str, table_lock: Any) -> None:
    model = RecordingChatModel()
    reports: list[HistoryReport] = []
    node = AgentNode(
        model,
        use_graph_chat_history=True,
        toggles=HistoryToggles(env={"ORCHEO_GRAPH_CHAT_HISTORY_READ_TIMEOUT_SECONDS": "0.3"}),
        on_report=reports.append,
    )
    with PostgresStore.from_conn_string(dsn) as store:
        graph = build_graph(node, store)
        graph.invoke(telegram_callback(1, "one", message_id=1), new_thread())
        table_lock.take()
        graph.invoke(telegram_callback(1, "locked", message_id=2), new_thread())
        table_lock.release()
        graph.invoke(telegram_callback(1, "three", message_id=3), new_thread())
    assert [[m.content for m in call] for call in model.calls] == [
        ["one"],
        ["locked"],  # the read timed out: the run answered in memory, stored nothing
        ["one", "echo: one", "three"],
    ]
    assert [r.fallbacks for r in reports] == [(), ("read_timeout",), ()]
