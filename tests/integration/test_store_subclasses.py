"""Subclasses of LangGraph's SQL stores: one that overrides ``batch``/``abatch`` (here a
tenant prefix on every namespace) decides where items live, so the history goes through
it (with one warning that the SQL path is off); one that only adds methods keeps the SQL
path. Two tenants sharing one database never read each other's conversations."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import aiosqlite
import psycopg
import pytest
from langgraph.store.base import GetOp, ListNamespacesOp, Op, PutOp, Result, SearchOp
from langgraph.store.postgres import PostgresStore
from langgraph.store.sqlite import AsyncSqliteStore, SqliteStore
from psycopg.rows import dict_row

from agent_history.history import ChatHistory
from agent_history.history.drivers import driver_for


def _prefixed(tenant: str, ops: Iterable[Op]) -> list[Op]:
    out: list[Op] = []
    for op in ops:
        if isinstance(op, GetOp | PutOp):
            op = op._replace(namespace=(tenant, *op.namespace))
        elif isinstance(op, SearchOp):
            op = op._replace(namespace_prefix=(tenant, *op.namespace_prefix))
        elif not isinstance(op, ListNamespacesOp):
            raise TypeError(op)
        out.append(op)
    return out


class TenantSqliteStore(SqliteStore):
    def __init__(self, conn: Any, tenant: str) -> None:
        super().__init__(conn)
        self.tenant = tenant

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        return super().batch(_prefixed(self.tenant, ops))


class TenantPostgresStore(PostgresStore):
    def __init__(self, conn: Any, tenant: str) -> None:
        super().__init__(conn)
        self.tenant = tenant

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        return super().batch(_prefixed(self.tenant, ops))


class TenantAsyncSqliteStore(AsyncSqliteStore):
    def __init__(self, conn: Any, tenant: str) -> None:
        super().__init__(conn)
        self.tenant = tenant

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        return await super().abatch(_prefixed(self.tenant, ops))


class NamedSqliteStore(SqliteStore):
    """A subclass that adds a method and leaves reads and writes alone."""

    def describe(self) -> str:
        return "mine"


def _exchange(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text, "id": f"u-{text}"}]


def _check_tenants(a: Any, b: Any, caplog: pytest.LogCaptureFixture) -> None:
    ChatHistory(a).append("telegram:42", _exchange("A's private message"))
    ChatHistory(b).append("telegram:42", _exchange("B's message"))
    assert [m.content for m in ChatHistory(a).tail("telegram:42", 5)] == ["A's private message"]
    assert [m.content for m in ChatHistory(b).tail("telegram:42", 5)] == ["B's message"]
    # The items are where the store puts them: its own get finds them.
    head = a.get(("agent_chat_history", "telegram:42"), "head")
    assert head is not None and head.value["last_seq"] == 1
    assert driver_for(a).describe()["driver"] == "generic"
    warnings = [r.getMessage() for r in caplog.records if "history_sql_path_off" in r.getMessage()]
    assert len(warnings) == 2  # once per store
    assert all("A's" not in w and "B's" not in w for w in warnings)


def test_sqlite_subclass_overriding_batch_keeps_tenants_apart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "agent_history")
    conn = sqlite3.connect(
        tmp_path / "shared.sqlite", check_same_thread=False, isolation_level=None
    )
    a, b = TenantSqliteStore(conn, "tenant_a"), TenantSqliteStore(conn, "tenant_b")
    a.setup()
    _check_tenants(a, b, caplog)
    prefixes = {row[0] for row in conn.execute("SELECT DISTINCT prefix FROM store")}
    assert prefixes == {
        "tenant_a.agent_chat_history.telegram:42",
        "tenant_b.agent_chat_history.telegram:42",
    }
    conn.close()


@pytest.mark.postgres
def test_postgres_subclass_overriding_batch_keeps_tenants_apart(
    fresh_pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "agent_history")
    with psycopg.connect(fresh_pg_dsn, autocommit=True, row_factory=dict_row) as conn:
        a, b = TenantPostgresStore(conn, "tenant_a"), TenantPostgresStore(conn, "tenant_b")
        a.setup()
        _check_tenants(a, b, caplog)
        rows = conn.execute("SELECT DISTINCT prefix FROM store ORDER BY prefix").fetchall()
    assert [r["prefix"] for r in rows] == [
        "tenant_a.agent_chat_history.telegram:42",
        "tenant_b.agent_chat_history.telegram:42",
    ]


def test_async_sqlite_subclass_overriding_abatch_keeps_tenants_apart(tmp_path: Path) -> None:
    async def scenario() -> list[str]:
        async with aiosqlite.connect(tmp_path / "shared.sqlite", isolation_level=None) as conn:
            a = TenantAsyncSqliteStore(conn, "tenant_a")
            b = TenantAsyncSqliteStore(conn, "tenant_b")
            await a.setup()
            await ChatHistory(a).aappend("telegram:42", _exchange("A's private message"))
            assert await ChatHistory(b).atail("telegram:42", 5) == []
            assert driver_for(a).describe()["driver"] == "generic"
            cursor = await conn.execute("SELECT DISTINCT prefix FROM store")
            return [row[0] for row in await cursor.fetchall()]

    assert asyncio.run(scenario()) == ["tenant_a.agent_chat_history.telegram:42"]


def test_a_subclass_that_only_adds_methods_keeps_the_sql_path(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "s.sqlite", check_same_thread=False, isolation_level=None)
    store = NamedSqliteStore(conn)
    store.setup()
    history = ChatHistory(store)
    history.append("k", _exchange("hello"))
    assert driver_for(store).describe()["driver"] == "sqlite"
    assert [m.content for m in history.tail("k", 5)] == ["hello"]
    conn.close()
