"""A call cut off at its deadline, or by a caller that hung up, ends on the server too.

The pool's connection is shut down at the deadline and the pool opens another. Its server
session used to run on while it waited (for a table a migration holds, say) until the
wait was over: one server connection more per call cut off, which at a few calls a
second exhausted ``max_connections`` during a one-minute lock, for every client of the
database. The sessions are counted in ``pg_stat_activity`` while the lock is still held.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from langchain_core.messages import HumanMessage

from agent_history.errors import StoreTimeout
from agent_history.history import ChatHistory
from agent_history.settings import HistorySettings
from agent_history.stores import create_graph_store, create_graph_store_sync
from tests.support.postgres_server import waiting_on_a_lock

pytestmark = pytest.mark.postgres

POOL = 2
CUT = 6  # calls cut off: three times the pool
BOUND = 2000  # most polls a state may take to show (a bound, not a clock)


def _settings(dsn: str, application: str) -> HistorySettings:
    sep = "&" if "?" in dsn else "?"
    return HistorySettings(
        graph_store_backend="postgres",
        postgres_dsn=f"{dsn}{sep}application_name={application}",
        postgres_pool_min_size=1,
        postgres_pool_max_size=POOL,
    )


def _sessions(dsn: str, application: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as pg:
        row = pg.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (application,)
        ).fetchone()
    assert row is not None
    return int(row[0])


def _until(condition: Callable[[], bool]) -> None:
    for _ in range(BOUND):
        if condition():
            return
        time.sleep(0.005)  # poll the observable state
    raise AssertionError("the state never showed")


@pytest.fixture
def table_lock(fresh_pg_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """Another session holding the ``store`` table (a migration, ``VACUUM FULL``)."""
    with psycopg.connect(fresh_pg_dsn) as conn:
        yield conn
        conn.rollback()


def _lock(conn: psycopg.Connection[Any]) -> None:
    conn.execute("LOCK TABLE store IN ACCESS EXCLUSIVE MODE")


def test_sync_calls_cut_at_their_deadline_leave_no_session_behind(
    fresh_pg_dsn: str, table_lock: psycopg.Connection[Any]
) -> None:
    application = "cut-" + uuid.uuid4().hex[:8]
    with create_graph_store_sync(_settings(fresh_pg_dsn, application)) as store:
        history = ChatHistory(store)
        history.append("chat", [HumanMessage("hi", id="h1")])
        _lock(table_lock)
        for attempt in range(CUT):
            with pytest.raises(StoreTimeout):
                if attempt % 2:
                    history.tail("chat", 5, budget=0.3)
                else:
                    history.append("chat", [HumanMessage("more", id=f"m{attempt}")], budget=0.3)
        # Still locked: no session of the store waits on it any more.
        _until(lambda: not waiting_on_a_lock(fresh_pg_dsn, application))
        assert _sessions(fresh_pg_dsn, application) <= POOL
        table_lock.rollback()
        assert [m.content for m in history.tail("chat", 5, budget=5)] == ["hi"]
        assert history.count("chat") == 1


def test_async_calls_cut_or_hung_up_leave_no_session_behind(
    fresh_pg_dsn: str, table_lock: psycopg.Connection[Any]
) -> None:
    application = "acut-" + uuid.uuid4().hex[:8]

    async def scenario() -> None:
        async with create_graph_store(_settings(fresh_pg_dsn, application)) as store:
            history = ChatHistory(store)
            await history.aappend("chat", [HumanMessage("hi", id="h1")])
            _lock(table_lock)
            for _ in range(CUT):
                with pytest.raises(StoreTimeout):
                    await history.atail("chat", 5, budget=0.3)
            # A client that hangs up while its call waits on the table.
            task = asyncio.ensure_future(history.atail("chat", 5))
            for _ in range(BOUND):
                if await asyncio.to_thread(waiting_on_a_lock, fresh_pg_dsn, application):
                    break
                await asyncio.sleep(0.005)  # yield to the loop while the state is polled
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            for _ in range(BOUND):
                if not await asyncio.to_thread(waiting_on_a_lock, fresh_pg_dsn, application):
                    break
                await asyncio.sleep(0.005)
            else:
                raise AssertionError("a cut call's session still waits on the table")
            assert await asyncio.to_thread(_sessions, fresh_pg_dsn, application) <= POOL
            table_lock.rollback()
            assert [m.content for m in await history.atail("chat", 5, budget=5)] == ["hi"]

    asyncio.run(scenario())
