"""Clients that hang up (a cancelled ``ainvoke``) never cost the async PostgreSQL pool a
connection, nor hand a dead one to another request.

A webhook server cancels the task of a client that went away, at any moment. Two moments
broke other requests: a cancellation while the run handed its connection back to the pool
(``putconn`` waits for the pool's lock under load) left the connection neither in the
pool nor closed, and the pool never replaced it, so a few hang-ups emptied it for every
chat; and a cancellation that shut a connection's socket while its statement was already
answered let the statement end cleanly, so the dead connection went back to the pool and
failed the next request ("consuming input failed"). The moments are reached through
observable states (``pg_stat_activity``, the pool's lock waiters), not sleeps.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
import pytest
from langchain_core.messages import HumanMessage
from langgraph.store.postgres import AsyncPostgresStore
from psycopg_pool import AsyncConnectionPool

from agent_history.history import ChatHistory
from agent_history.history.drivers import driver_for, namespace_text
from agent_history.history.drivers.postgres_async import AsyncPostgresDriver
from agent_history.settings import HistorySettings
from agent_history.stores import create_checkpointer, create_graph_store
from tests.support.postgres_server import waiting_on_a_lock

pytestmark = pytest.mark.postgres

BOUND = 2000  # most event-loop turns a state may take to show (a bound, not a clock)


async def _until(condition: Callable[[], Awaitable[bool] | bool]) -> None:
    for _ in range(BOUND):
        found = condition()
        if await found if isinstance(found, Awaitable) else found:
            return
        await asyncio.sleep(0.005)  # yield to the loop while the state is polled
    raise AssertionError("the state never showed")


def _settings(dsn: str, application: str, pool: int) -> HistorySettings:
    sep = "&" if "?" in dsn else "?"
    return HistorySettings(
        graph_store_backend="postgres",
        postgres_dsn=f"{dsn}{sep}application_name={application}",
        postgres_pool_min_size=pool,
        postgres_pool_max_size=pool,
    )


def _socket_shut(conn: Any) -> bool:
    """Whether ``conn``'s socket was shut down (a peek sees the end of the stream)."""
    with socket.socket(fileno=os.dup(conn.fileno())) as sock:
        try:
            return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False


def _pool(store: Any) -> AsyncConnectionPool[Any]:
    assert isinstance(store, AsyncPostgresStore)
    pool = store.conn
    assert isinstance(pool, AsyncConnectionPool)
    return pool


async def test_hanging_up_while_the_connection_goes_back_loses_no_connection(
    fresh_pg_dsn: str,
) -> None:
    application = "hangup-" + uuid.uuid4().hex[:8]
    async with create_graph_store(_settings(fresh_pg_dsn, application, 2)) as store:
        pool = _pool(store)
        history = ChatHistory(store)
        await history.aappend("warm", [HumanMessage("warm", id="w")])
        for attempt in range(2):  # the pool holds 2: two lost connections emptied it
            key = f"telegram:{attempt}"
            prefix = namespace_text(history.conversation_namespace(key))
            with psycopg.connect(fresh_pg_dsn) as holder:
                # The conversation's lock is held elsewhere: the append waits, connection lent.
                holder.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (prefix,))
                task = asyncio.create_task(
                    history.aappend(key, [HumanMessage("hi", id=f"m{attempt}")])
                )
                await _until(
                    lambda: asyncio.to_thread(waiting_on_a_lock, fresh_pg_dsn, application)
                )
                # The pool's lock is busy (as under load) when the append ends...
                await pool._lock.acquire()
                try:
                    holder.commit()
                    await _until(lambda: bool(pool._lock._waiters))
                    task.cancel()  # ... and the client hangs up while it waits for it
                    outcome = await asyncio.gather(task, return_exceptions=True)
                finally:
                    pool._lock.release()
            assert isinstance(outcome[0], asyncio.CancelledError)
            await _until(lambda: pool.get_stats()["pool_available"] == 2)
        # Every connection is back: other chats are served at once, in parallel too.
        keys = [f"fresh:{i}" for i in range(4)]
        await asyncio.gather(
            *(history.aappend(k, [HumanMessage(k, id=k)], budget=10) for k in keys)
        )
        assert [await history.acount(k) for k in keys] == [1, 1, 1, 1]
        # The appends the clients hung up on were committed whole, once.
        assert [await history.acount(f"telegram:{i}") for i in range(2)] == [1, 1]


async def test_a_connection_shut_by_a_hang_up_is_never_lent_again(fresh_pg_dsn: str) -> None:
    """The statement was answered before the hang-up shut its socket and ends cleanly:
    the connection must still be replaced, not lent to the next request."""
    application = "shut-" + uuid.uuid4().hex[:8]
    async with create_graph_store(_settings(fresh_pg_dsn, application, 1)) as store:
        pool = _pool(store)
        driver = driver_for(store)
        assert isinstance(driver, AsyncPostgresDriver)
        answered = asyncio.Event()
        resume = asyncio.Event()
        used: list[Any] = []

        async def work(conn: Any) -> int:
            row = await (await conn.execute("SELECT 1")).fetchone()
            used.append(conn)
            answered.set()
            await resume.wait()  # the answer is in; the client hangs up now
            return int(row[0])

        task = asyncio.create_task(driver._use(work))
        await answered.wait()
        task.cancel()
        await _until(lambda: _socket_shut(used[0]))  # the hang-up shut the socket down
        resume.set()  # and the statement, answered already, ends cleanly
        assert isinstance(
            (await asyncio.gather(task, return_exceptions=True))[0], asyncio.CancelledError
        )
        await _until(lambda: pool.get_stats()["pool_available"] == 1)
        # The next request gets a working connection, not the shut one.
        history = ChatHistory(store)
        await history.aappend("next", [HumanMessage("next", id="n")], budget=10)
        assert [m.content for m in await history.atail("next", 1)] == ["next"]
        async with pool.connection() as conn:
            assert conn is not used[0]


async def test_the_checkpointer_pool_keeps_its_connections_through_hang_ups(
    fresh_pg_dsn: str,
) -> None:
    """LangGraph's checkpointer (and store) use ``pool.connection()``, whose hand-back
    psycopg_pool runs in the caller's task: the factories' pools finish it anyway."""
    settings = _settings(fresh_pg_dsn, "ckpt-" + uuid.uuid4().hex[:8], 2)
    settings = settings.model_copy(update={"checkpoint_backend": "postgres"})
    async with create_checkpointer(settings) as saver:
        pool = getattr(saver, "conn", None)
        assert isinstance(pool, AsyncConnectionPool)

        async def use(inside: asyncio.Event, release: asyncio.Event) -> None:
            async with pool.connection() as conn:
                await conn.execute("SELECT 1")
                inside.set()
                await release.wait()

        for _ in range(2):
            inside, release = asyncio.Event(), asyncio.Event()
            task = asyncio.create_task(use(inside, release))
            await inside.wait()
            await pool._lock.acquire()  # busy when the connection goes back
            try:
                release.set()
                await _until(lambda: bool(pool._lock._waiters))
                task.cancel()  # the client hangs up during the hand-back
                outcome = await asyncio.gather(task, return_exceptions=True)
            finally:
                pool._lock.release()
            assert isinstance(outcome[0], asyncio.CancelledError)
            await _until(lambda: pool.get_stats()["pool_available"] == 2)
        config = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
        assert await saver.aget_tuple(config) is None  # and it still serves
