"""Each store gets its driver once; a SQL driver checks LangGraph's schema version before
it writes, and a version it was not written for turns the SQL path off (one warning) in
favour of the store's own calls, which stay correct."""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import uuid
from pathlib import Path

import psycopg
import pytest
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.store.memory import InMemoryStore
from langgraph.store.postgres import PostgresStore

from agent_history.health import check_health
from agent_history.history import ChatHistory
from agent_history.history.drivers import driver_for
from agent_history.history.drivers.postgres_base import MIGRATIONS, MIGRATIONS_TABLE
from agent_history.settings import HistorySettings
from agent_history.stores import create_graph_store, create_graph_store_sync
from tests.support.counting_store import CountingStore


def _warnings(caplog: pytest.LogCaptureFixture, event: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if f"event={event}" in r.getMessage()]


def test_a_driver_is_chosen_once_per_store() -> None:
    store = InMemoryStore()
    assert driver_for(store) is driver_for(store)
    assert ChatHistory(store)._driver is ChatHistory(store, namespace=("x",))._driver
    assert driver_for(InMemoryStore()) is not driver_for(store)
    assert driver_for(CountingStore(store)).name == "generic"


def _future_sqlite_schema(path: Path) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("INSERT INTO store_migrations (v) VALUES (5)")  # a migration we never saw
    finally:
        conn.close()


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_unknown_sqlite_schema_falls_back_with_one_warning(
    mode: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = HistorySettings(
        graph_store_backend="sqlite", graph_store_sqlite_path=tmp_path / "s.sqlite"
    )
    with create_graph_store_sync(settings):
        pass
    _future_sqlite_schema(tmp_path / "s.sqlite")
    messages = [HumanMessage("hi", id="u1"), AIMessage("hello", id="a1")]
    with caplog.at_level(logging.WARNING, logger="agent_history"):
        if mode == "sync":
            with create_graph_store_sync(settings) as store:
                history = ChatHistory(store, chunk_size=4)
                assert history.append("k", messages).appended == 2
                assert history.append("k", messages).duplicates == 2
                assert [m.content for m in history.tail("k", 5)] == ["hi", "hello"]
                described = driver_for(store).describe()
        else:
            async with create_graph_store(settings) as astore:
                history = ChatHistory(astore, chunk_size=4)
                assert (await history.aappend("k", messages)).appended == 2
                assert (await history.aappend("k", messages)).duplicates == 2
                assert [m.content for m in await history.atail("k", 5)] == ["hi", "hello"]
                described = driver_for(astore).describe()
    warnings = _warnings(caplog, "history_store_schema_unknown")
    assert len(warnings) == 1, warnings
    assert "found_version=5" in warnings[0] and "expected_version=4" in warnings[0]
    assert described["driver"].startswith("generic")
    assert described["store_schema_version"] == 5


@pytest.mark.postgres
def test_unknown_postgres_schema_falls_back_with_one_warning(
    fresh_pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = HistorySettings(graph_store_backend="postgres", postgres_dsn=fresh_pg_dsn)
    with psycopg.connect(fresh_pg_dsn, autocommit=True) as conn:
        with create_graph_store_sync(settings):
            pass
        conn.execute("INSERT INTO store_migrations (v) VALUES (4)")
        with (
            caplog.at_level(logging.WARNING, logger="agent_history"),
            create_graph_store_sync(settings) as store,
        ):
            history = ChatHistory(store)
            for i in range(3):
                history.append("k", [HumanMessage(f"q{i}", id=f"q{i}"), AIMessage(f"a{i}")])
            assert history.count("k") == 6
            assert [m.content for m in history.tail("k", 2)] == ["q2", "a2"]
            assert driver_for(store).describe()["driver"] == "generic"
            # Correct, but no longer serialised across processes: operators must see it.
            health = check_health(store)
            assert health.status == "degraded" and health.http_status == 200
            assert health.details["degraded_by"] == ["history_driver:generic"]
        warnings = _warnings(caplog, "history_store_schema_unknown")
        assert len(warnings) == 1 and "found_version=4" in warnings[0], warnings


@pytest.mark.postgres
def test_a_store_opened_without_the_factories_gets_the_migrations_at_first_use(
    fresh_pg_dsn: str,
) -> None:
    with PostgresStore.from_conn_string(fresh_pg_dsn) as store:
        store.setup()  # LangGraph's own set-up only
        with psycopg.connect(fresh_pg_dsn, autocommit=True) as conn:
            found = conn.execute("SELECT to_regclass(%s)", (MIGRATIONS_TABLE,)).fetchone()
            assert found == (None,)
            history = ChatHistory(store)
            result = history.append("k", [HumanMessage("hi", id="u1")])
            assert (result.appended, result.total) == (1, 1)
            versions = conn.execute(f"SELECT v FROM {MIGRATIONS_TABLE} ORDER BY v").fetchall()
        assert [v for (v,) in versions] == list(range(len(MIGRATIONS)))
        assert driver_for(store).describe() == {
            "driver": "postgres",
            "store_schema_version": 3,
            "history_schema_version": len(MIGRATIONS) - 1,
        }


@pytest.mark.postgres
def test_the_factory_installs_the_migrations(fresh_pg_dsn: str) -> None:
    settings = HistorySettings(graph_store_backend="postgres", postgres_dsn=fresh_pg_dsn)
    with create_graph_store_sync(settings):
        pass
    with psycopg.connect(fresh_pg_dsn, autocommit=True) as conn:
        versions = conn.execute(f"SELECT v FROM {MIGRATIONS_TABLE} ORDER BY v").fetchall()
        functions = conn.execute(
            "SELECT proname FROM pg_proc WHERE proname LIKE 'agent_history_%%' ORDER BY 1"
        ).fetchall()
    assert [v for (v,) in versions] == list(range(len(MIGRATIONS)))
    # The append an older worker calls stays beside the current one (a rolling deploy).
    assert {(f"agent_history_append_v{v}",) for v in (1, 2, 3)} <= set(functions)
    ns = ("schema", uuid.uuid4().hex[:8])
    with create_graph_store_sync(settings) as store:  # opening again: nothing to apply
        assert ChatHistory(store, namespace=ns).append("k", [HumanMessage("x")]).appended == 1


@pytest.mark.postgres
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_history_migrations_from_a_newer_deploy_keep_the_sql_path(
    fresh_pg_dsn: str, caplog: pytest.LogCaptureFixture, mode: str
) -> None:
    """A rolling deploy: a newer release installed a later migration. Migrations only add
    or fix functions, so this release's are still there: it keeps its SQL path (and its
    per-conversation lock), where a fallback to the generic path would write beside the
    newer workers without that lock."""
    settings = HistorySettings(graph_store_backend="postgres", postgres_dsn=fresh_pg_dsn)
    with create_graph_store_sync(settings):
        pass
    with psycopg.connect(fresh_pg_dsn, autocommit=True) as conn:
        conn.execute(f"INSERT INTO {MIGRATIONS_TABLE} (v) VALUES (%s)", (len(MIGRATIONS) + 3,))
    with caplog.at_level(logging.WARNING, logger="agent_history"):
        if mode == "sync":
            with create_graph_store_sync(settings) as store:
                history = ChatHistory(store)
                history.append("k", [HumanMessage("q", id="q1"), AIMessage("a")])
                assert history.count("k") == 2
                described = driver_for(store).describe()
        else:
            async with create_graph_store(settings) as astore:
                history = ChatHistory(astore)
                await history.aappend("k", [HumanMessage("q", id="q1"), AIMessage("a")])
                assert await history.acount("k") == 2
                described = driver_for(astore).describe()
    assert described["driver"] in ("postgres", "postgres-async")
    assert described["history_schema_version"] == len(MIGRATIONS) + 3
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# A database applies each migration once: a change to an applied one's text would reach
# new databases only, and the two would differ from then on. (The append functions share
# pieces of text: editing one for a new migration must not edit the old ones.)
APPLIED = {
    0: "aecec7cdd3c7",
    1: "11919e6faca3",
    2: "406486d121f7",
    3: "c80a5486752f",
    4: "7c873b37d58f",
}


def test_applied_migrations_keep_their_text() -> None:
    digests = {v: hashlib.sha256(MIGRATIONS[v].encode()).hexdigest()[:12] for v in APPLIED}
    assert digests == APPLIED
