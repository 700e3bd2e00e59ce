"""PostgreSQL servers set up unlike the default. A server, a proxy or a job that ends idle sessions (``idle_session_timeout``, a managed
database's idle limit, a cron job calling ``pg_terminate_backend``) closes the pool's
connections while they wait. The first call after each quiet spell used to fail on such
a connection: its read fell back, and its exchange was never stored. A connection that
sat idle is now checked before use and replaced when closed.

The quiet spell is not waited out: the idle threshold is set to zero, and the server
ends the pool's sessions itself, waiting until they are gone."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.store.base import TTLConfig
from langgraph.store.postgres import AsyncPostgresStore, PostgresStore
from psycopg.conninfo import make_conninfo
from typer.testing import CliRunner

from agent_history import AgentNode, ChatHistory, HistoryReport
from agent_history.cli import app
from agent_history.errors import StoreUnavailable
from agent_history.history.drivers import postgres_idle
from agent_history.settings import HistorySettings
from agent_history.stores import (
    create_checkpointer,
    create_checkpointer_sync,
    create_graph_store,
    create_graph_store_sync,
)
from agent_history.testing import RecordingChatModel
from tests.support.agent_graphs import build_graph, new_thread, telegram_callback, toggles
from tests.support.postgres_server import end_idle_sessions

pytestmark = pytest.mark.postgres


def _setup(pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> tuple[str, HistorySettings]:
    monkeypatch.setattr(postgres_idle, "CHECK_AFTER_SECONDS", 0.0)
    application = "idle-" + uuid.uuid4().hex[:8]
    dsn = make_conninfo(pg_dsn, application_name=application)
    return application, HistorySettings(graph_store_backend="postgres", postgres_dsn=dsn)


@contextlib.contextmanager
def _scratch_database(pg_dsn: str, prefix: str) -> Iterator[str]:
    """A new database on the test server (its DSN), dropped afterwards."""
    database = prefix + uuid.uuid4().hex[:8]
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        try:
            admin.execute(f'CREATE DATABASE "{database}"')
        except psycopg.errors.InsufficientPrivilege:
            pytest.skip("the test database's role may not create databases")
    try:
        yield make_conninfo(pg_dsn, dbname=database)
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def _read_only(dsn: str) -> None:
    """Make the sessions of ``dsn``'s database read-only, as on a replica."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{conn.info.dbname}" SET default_transaction_read_only = on')


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


def test_a_role_that_may_only_read_and_write_rows_opens_a_set_up_database(pg_dsn: str) -> None:
    """A least-privilege application role (SELECT, INSERT, UPDATE, DELETE; no CREATE): once
    a role that may create tables has opened the database, the factory opens it and the
    history works. Setup used to run LangGraph's ``CREATE TABLE IF NOT EXISTS`` anyway,
    which needs CREATE, so the factory and every CLI command failed for such a role."""
    role, password = "app_" + uuid.uuid4().hex[:8], uuid.uuid4().hex
    database = "least_" + uuid.uuid4().hex[:8]
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        try:
            admin.execute(f'CREATE DATABASE "{database}"')
            admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
        except psycopg.errors.InsufficientPrivilege:
            pytest.skip("the test database's role may not create databases and roles")
    owner_dsn = make_conninfo(pg_dsn, dbname=database)
    app_dsn = make_conninfo(pg_dsn, dbname=database, user=role, password=password)
    try:
        app = HistorySettings(graph_store_backend="postgres", postgres_dsn=app_dsn)
        with pytest.raises(StoreUnavailable) as refused, create_graph_store_sync(app):
            pass  # a new database: the tables cannot be made by this role
        assert "ORCHEO_POSTGRES_DSN" in str(refused.value)
        assert "InsufficientPrivilege" in str(refused.value) and password not in str(refused.value)
        owner = HistorySettings(graph_store_backend="postgres", postgres_dsn=owner_dsn)
        with create_graph_store_sync(owner):
            pass  # the owner sets the database up once
        with psycopg.connect(owner_dsn, autocommit=True) as conn:
            conn.execute(
                f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}"
            )
        with create_graph_store_sync(app) as store:
            history = ChatHistory(store)
            history.append("telegram:1", [HumanMessage("hi", id="1"), AIMessage("hello", id="2")])
            assert [t.content for t in history.read("telegram:1")] == ["hi", "hello"]
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            admin.execute(f"DROP ROLE IF EXISTS {role}")


def test_a_read_only_session_lists_exports_and_counts_conversations(pg_dsn: str) -> None:
    """A read-only replica (a hot standby, or a role with ``default_transaction_read_only``)
    is where operators point ``stats``, ``export`` and a purge's ``--dry-run`` to spare the
    primary. Listing conversations read their heads through LangGraph's own reads, whose
    statement carries an UPDATE (a TTL refresh), so every one of them failed with exit 3
    there. ``doctor``'s probe writes, so it still says the store cannot serve it."""
    with _scratch_database(pg_dsn, "ro_") as dsn:
        settings = HistorySettings(graph_store_backend="postgres", postgres_dsn=dsn)
        with create_graph_store_sync(settings) as store:
            history = ChatHistory(store, namespace=("ops",))
            history.append("telegram:1", [HumanMessage("hi", id="1"), AIMessage("hello", id="2")])
            history.append("wecom:7", [HumanMessage("yo", id="3")])
        _read_only(dsn)
        with create_graph_store_sync(settings) as store:
            assert sorted(ChatHistory(store, namespace=("ops",)).keys()) == [
                "telegram:1",
                "wecom:7",
            ]

        async def listed() -> list[str]:
            async with create_graph_store(settings) as astore:
                return sorted([k async for k in ChatHistory(astore, namespace=("ops",)).akeys()])

        assert asyncio.run(listed()) == ["telegram:1", "wecom:7"]
        # A store refreshing expiries on read (TTL): the refresh is a write, which the
        # replica refuses; the read stands (it used to fail as the store's failure).
        ttl: TTLConfig = {"default_ttl": 60.0, "refresh_on_read": True}
        with PostgresStore.from_conn_string(dsn, ttl=ttl) as ttl_store:
            tail = ChatHistory(ttl_store, namespace=("ops",)).tail("telegram:1", 10)
            assert [m.content for m in tail] == ["hi", "hello"]

        async def atail() -> list[Any]:
            async with AsyncPostgresStore.from_conn_string(dsn, ttl=ttl) as astore:
                return await ChatHistory(astore, namespace=("ops",)).atail("wecom:7", 10)

        assert [m.content for m in asyncio.run(atail())] == ["yo"]
        env = {
            "ORCHEO_GRAPH_STORE_BACKEND": "postgres",
            "ORCHEO_POSTGRES_DSN": dsn,
            "COLUMNS": "200",
        }
        runner = CliRunner()
        stats = runner.invoke(app, ["stats", "-n", "ops", "--json"], env=env)
        assert stats.exit_code == 0, stats.output
        assert '"conversations": 2' in stats.output and '"turns": 3' in stats.output
        exported = runner.invoke(app, ["export", "-n", "ops", "--out", "-"], env=env)
        assert exported.exit_code == 0, exported.output
        lines = [json.loads(line) for line in exported.stdout.splitlines() if line.strip()]
        assert [(line["key"], line["content"]) for line in lines] == [
            ("telegram:1", "hi"),
            ("telegram:1", "hello"),
            ("wecom:7", "yo"),
        ]
        dry = runner.invoke(app, ["purge", "--older-than", "0s", "-n", "ops", "--dry-run"], env=env)
        assert dry.exit_code == 0, dry.output
        assert "would delete 2 conversations" in dry.output
        probe = runner.invoke(app, ["doctor"], env=env)
        assert probe.exit_code == 3 and "read-only" in probe.output
        # The rollout checklist on a replica: no run can store its turns, so durability
        # fails (it passed with "0 turns appended", the runs cut off by the open breaker
        # counted as runs without a key).
        callbacks = Path(__file__).resolve().parents[2] / "docs" / "examples" / "callbacks.jsonl"
        replayed = runner.invoke(app, ["replay", str(callbacks), "--json"], env=env)
        assert replayed.exit_code == 1, replayed.output
        report = json.loads(replayed.stdout)
        durability = next(c for c in report["checks"] if c["name"] == "the store keeps every turn")
        assert not durability["ok"] and "write_failed" in durability["detail"]
        assert "breaker_open" in durability["detail"]


def test_a_read_only_database_this_release_has_not_set_up_says_to_open_its_primary(
    pg_dsn: str,
) -> None:
    """A replica of a database this release has not opened yet cannot be set up from the
    replica: the error says so, instead of pointing at the role's privileges."""
    with _scratch_database(pg_dsn, "ro_new_") as dsn:
        _read_only(dsn)
        settings = HistorySettings(graph_store_backend="postgres", postgres_dsn=dsn)
        with pytest.raises(StoreUnavailable) as refused, create_graph_store_sync(settings):
            pass
        text = str(refused.value)
        assert "ORCHEO_POSTGRES_DSN" in text and "ReadOnlySqlTransaction" in text
        assert "open its primary once with this release" in text and "role" not in text


async def test_a_tenant_schema_without_tables_of_its_own_is_reported_at_start(
    pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """``search_path=tenant_a,public`` while ``tenant_a`` has no tables of its own finds
    ``public``'s, so the tenant shares ``public``'s conversations: set-up says so at start
    (naming both schemas and the fix), sync and async, for the store and the checkpointer.
    Once ``tenant_a`` is opened with its schema alone it has its own tables, and nothing
    is reported."""

    def reported() -> list[tuple[object, ...]]:
        events = [r for r in caplog.records if getattr(r, "event", "") == _ELSEWHERE]
        caplog.clear()
        hint = "open it once with search_path=tenant_a alone"
        assert all(hint in r.getMessage() for r in events)
        return [tuple(getattr(r, "fields", {}).values())[:3] for r in events]

    def settings(dsn: str, path: str | None = None) -> HistorySettings:
        options = {} if path is None else {"options": f"-c search_path={path}"}
        return HistorySettings(
            graph_store_backend="postgres", postgres_dsn=make_conninfo(dsn, **options)
        )

    caplog.set_level(logging.WARNING, logger="agent_history")
    with _scratch_database(pg_dsn, "tenant_") as dsn:
        with (
            create_graph_store_sync(settings(dsn)) as store,
            create_checkpointer_sync(settings(dsn)),
        ):
            ChatHistory(store).append("telegram:1", [HumanMessage("public's", id="1")])
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE SCHEMA tenant_a")
        shared = settings(dsn, "tenant_a,public")
        assert reported() == []
        with create_graph_store_sync(shared) as store:
            assert [t.content for t in ChatHistory(store).read("telegram:1")] == ["public's"]
        async with create_graph_store(shared), create_checkpointer(shared):
            pass
        assert reported() == [
            ("store_migrations", "public", "tenant_a"),
            ("store_migrations", "public", "tenant_a"),
            ("checkpoint_migrations", "public", "tenant_a"),
        ]
        # doctor, which docs send a new tenant to, lists it among its warnings
        env = {"ORCHEO_GRAPH_STORE_BACKEND": "postgres", "ORCHEO_POSTGRES_DSN": shared.dsn}
        checked = CliRunner().invoke(app, ["doctor", "--json"], env=env)
        assert checked.exit_code == 0, checked.output
        assert json.loads(checked.stdout)["warnings"] == [
            "store_migrations is in schema 'public', not in 'tenant_a' (the first schema of "
            "search_path): this store uses 'public''s conversations; open it once with "
            "search_path=tenant_a alone to give 'tenant_a' tables of its own "
            "(docs/configuration.md)"
        ]
        caplog.clear()
        with (
            create_graph_store_sync(settings(dsn, "tenant_a")),
            create_checkpointer_sync(settings(dsn, "tenant_a")),
        ):
            pass
        with create_graph_store_sync(shared) as store:
            assert list(ChatHistory(store).read("telegram:1")) == []
            ChatHistory(store).append("telegram:1", [HumanMessage("tenant's", id="1")])
        with create_graph_store_sync(settings(dsn)) as store:
            assert [t.content for t in ChatHistory(store).read("telegram:1")] == ["public's"]
        assert reported() == []
        checked = CliRunner().invoke(app, ["doctor", "--json"], env=env)
        assert checked.exit_code == 0 and json.loads(checked.stdout)["warnings"] == []


_ELSEWHERE = "postgres_tables_in_later_schema"
