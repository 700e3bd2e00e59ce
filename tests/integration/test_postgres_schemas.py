"""Tenants in schemas of one PostgreSQL database (``options=-c search_path=...`` in the
DSN): each schema gets its own LangGraph tables, migrations and functions, as LangGraph's
own ``setup()`` makes them, and conversations never cross.

The set-up looked tables up through the whole search_path. With ``tenant_c,public`` (a
path that also reaches the extensions in ``public``) a new tenant found ``public``'s, got
no tables of its own, and its conversations went into the default tenant's, both ways.
And a tenant whose LangGraph store was in its own schema recorded this project's
migrations in ``public``'s table while it created the functions in its own schema:
``public``'s appends then failed for good, calling functions it was told it had.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from langchain_core.messages import HumanMessage
from langgraph.store.postgres import PostgresStore
from psycopg.conninfo import make_conninfo

from agent_history.history import ChatHistory
from agent_history.history.drivers import driver_for
from agent_history.history.drivers.postgres_base import APPEND_FUNCTION, MIGRATIONS
from agent_history.settings import HistorySettings
from agent_history.stores import (
    create_checkpointer,
    create_checkpointer_sync,
    create_graph_store,
    create_graph_store_sync,
)

pytestmark = pytest.mark.postgres

ALL = list(range(len(MIGRATIONS)))


@pytest.fixture
def db(fresh_pg_dsn: str) -> Iterator[str]:
    with psycopg.connect(fresh_pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA tenant_b")
        conn.execute("CREATE SCHEMA tenant_c")
    yield fresh_pg_dsn


def _tenant(dsn: str, schema: str) -> HistorySettings:
    dsn = make_conninfo(dsn, options=f"-c search_path={schema},public")
    return HistorySettings(graph_store_backend="postgres", postgres_dsn=dsn)


def _default(dsn: str) -> HistorySettings:
    return HistorySettings(graph_store_backend="postgres", postgres_dsn=dsn)


def _sql(dsn: str, text: str, *params: Any) -> list[Any]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(text, params or None)
        return cur.fetchall() if cur.description else []


def _versions(dsn: str, schema: str) -> list[int]:
    return [v for (v,) in _sql(dsn, f"SELECT v FROM {schema}.agent_history_migrations ORDER BY v")]


def _tail(settings: HistorySettings) -> list[Any]:
    with create_graph_store_sync(settings) as store:
        return [m.content for m in ChatHistory(store).tail("k", 10)]


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_a_new_tenant_schema_gets_its_own_tables_and_history(
    db: str, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    with create_graph_store_sync(_default(db)) as store:
        ChatHistory(store).append("k", [HumanMessage("from public", id="p1")])
    tenant = _tenant(db, "tenant_c")
    with caplog.at_level(logging.WARNING, logger="agent_history"):
        if mode == "sync":
            with create_graph_store_sync(tenant) as store:
                ChatHistory(store).append("k", [HumanMessage("from C", id="c1")])
                assert driver_for(store).name == "postgres"
            with create_checkpointer_sync(tenant):
                pass
        else:
            async with create_graph_store(tenant) as astore:
                await ChatHistory(astore).aappend("k", [HumanMessage("from C", id="c1")])
                assert driver_for(astore).name == "postgres-async"
            async with create_checkpointer(tenant):
                pass
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert _tail(tenant) == ["from C"]
    assert _tail(_default(db)) == ["from public"]
    tables = {
        name
        for (name,) in _sql(db, "SELECT tablename FROM pg_tables WHERE schemaname = 'tenant_c'")
    }
    assert {"store", "store_migrations", "agent_history_migrations"} <= tables
    assert "checkpoint_migrations" in tables
    assert _versions(db, "tenant_c") == ALL == _versions(db, "public")
    owners = _sql(
        db,
        "SELECT n.nspname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
        "WHERE p.proname = %s ORDER BY 1",
        APPEND_FUNCTION,
    )
    assert owners == [("public",), ("tenant_c",)]


def test_a_tenant_with_its_own_store_leaves_the_default_tenants_migrations_alone(
    db: str,
) -> None:
    """``public`` was set up by an older release (migrations up to 2); tenant B's
    LangGraph store is in its own schema, and this release opens tenant B first."""
    with create_graph_store_sync(_default(db)):
        pass
    _sql(db, "DELETE FROM public.agent_history_migrations WHERE v > 2")
    for version in range(3, len(MIGRATIONS)):
        _sql(db, f"DROP FUNCTION public.agent_history_append_v{version}")
    with PostgresStore.from_conn_string(_tenant(db, "tenant_b").dsn) as plain:
        plain.setup()  # LangGraph's own set-up, in tenant_b
    with create_graph_store_sync(_tenant(db, "tenant_b")) as store:
        ChatHistory(store).append("k", [HumanMessage("from B", id="b1")])
    assert _versions(db, "public") == [0, 1, 2]
    assert _versions(db, "tenant_b") == ALL
    # The default tenant, opened by this release: it gets its own migrations.
    with create_graph_store_sync(_default(db)) as store:
        ChatHistory(store).append("k", [HumanMessage("from public", id="p1")])
    assert _versions(db, "public") == ALL
    assert _tail(_default(db)) == ["from public"]
    assert _tail(_tenant(db, "tenant_b")) == ["from B"]


@pytest.mark.parametrize("opened_by", ["factory", "first use"])
def test_recorded_migrations_whose_functions_are_missing_are_applied_again(
    db: str, opened_by: str, caplog: pytest.LogCaptureFixture
) -> None:
    """What an older release left in ``public`` after opening a tenant like the one
    above: every version recorded, the newest functions missing. Appends failed for good
    (the recorded version said there was nothing to apply)."""
    with create_graph_store_sync(_default(db)):
        pass
    for version in range(3, len(MIGRATIONS)):
        _sql(db, f"DROP FUNCTION public.agent_history_append_v{version}")
    with caplog.at_level(logging.WARNING, logger="agent_history"):
        if opened_by == "factory":
            with create_graph_store_sync(_default(db)) as store:
                result = ChatHistory(store).append("k", [HumanMessage("hi", id="h1")])
        else:
            with PostgresStore.from_conn_string(db) as store:
                result = ChatHistory(store).append("k", [HumanMessage("hi", id="h1")])
                assert driver_for(store).name == "postgres"
    assert (result.appended, result.total) == (1, 1)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert _versions(db, "public") == ALL
    assert _tail(_default(db)) == ["hi"]
