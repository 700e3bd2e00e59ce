"""A store that cannot serve a call raises `StoreUnavailable` from every `ChatHistory` call.

A caller (a web handler listing a transcript, a `RunnableWithMessageHistory` chain)
catches one error whatever the backend, not ``sqlite3.ProgrammingError`` here,
``ValueError('Connection closed')`` there and ``psycopg.OperationalError`` elsewhere.
The driver's error stays attached as the cause; the message carries no message body.
Nothing stored is touched, and `AgentNode` still answers on in-memory messages.
"""

from __future__ import annotations

import logging
import sqlite3
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from langchain_core.messages import HumanMessage

from agent_history import AgentNode, HistoryReport
from agent_history.errors import StoreUnavailable
from agent_history.history import ChatHistory
from agent_history.settings import HistorySettings
from agent_history.stores import create_graph_store, create_graph_store_sync
from agent_history.testing import RecordingChatModel
from tests.support.agent_graphs import build_graph, new_thread, telegram_callback

SECRET = "my card is 4111 1111 1111 1111"


def _sqlite(tmp_path: Path) -> HistorySettings:
    return HistorySettings(
        graph_store_backend="sqlite", graph_store_sqlite_path=tmp_path / "store.sqlite"
    )


def _sync_calls(history: ChatHistory) -> dict[str, Callable[[], Any]]:
    view = history.for_key("k", window=5)
    return {
        "tail": lambda: history.tail("k", 5),
        "tail_turns": lambda: history.tail_turns("k", 5),
        "append": lambda: history.append("k", [HumanMessage(SECRET, id="new")]),
        "count": lambda: history.count("k"),
        "info": lambda: history.info("k"),
        "read": lambda: list(history.read("k")),
        "keys": lambda: list(history.keys()),
        "delete": lambda: history.delete("k"),
        "view.messages": lambda: view.messages,
        "view.add_messages": lambda: view.add_messages([HumanMessage(SECRET)]),
    }


def _assert_unavailable(exc: BaseException, backend: str, cause: type[BaseException]) -> None:
    assert isinstance(exc, StoreUnavailable)
    assert isinstance(exc, ConnectionError)  # what a generic handler catches
    assert str(exc).startswith(f"the {backend} store failed: ")
    assert isinstance(exc.__cause__, cause)
    assert "4111" not in str(exc)


def test_a_closed_sqlite_store_raises_store_unavailable_from_every_call(tmp_path: Path) -> None:
    settings = _sqlite(tmp_path)
    with create_graph_store_sync(settings) as store:
        history = ChatHistory(store)
        history.append("k", [HumanMessage(SECRET, id="u1")])
    # The factory's block is left: the store is closed, the history object lives on.
    for name, call in _sync_calls(history).items():
        with pytest.raises(StoreUnavailable) as raised:
            call()
        _assert_unavailable(raised.value, "sqlite", sqlite3.ProgrammingError), name
    with create_graph_store_sync(settings) as store:
        assert [m.content for m in ChatHistory(store).tail("k", 5)] == [SECRET]


async def test_a_closed_async_sqlite_store_raises_store_unavailable(tmp_path: Path) -> None:
    settings = _sqlite(tmp_path)
    async with create_graph_store(settings) as store:
        history = ChatHistory(store)
        await history.aappend("k", [HumanMessage(SECRET, id="u1")])

    async def akeys() -> list[str]:
        return [key async for key in history.akeys()]

    async def aread() -> list[Any]:
        return [turn async for turn in history.aread("k")]

    calls: dict[str, Callable[[], Awaitable[Any]]] = {
        "atail": lambda: history.atail("k", 5),
        "aappend": lambda: history.aappend("k", [HumanMessage(SECRET, id="new")]),
        "acount": lambda: history.acount("k"),
        "aread": aread,
        "akeys": akeys,
        "view.aget_messages": lambda: history.for_key("k").aget_messages(),
    }
    for name, call in calls.items():
        with pytest.raises(StoreUnavailable) as raised:
            await call()
        # aiosqlite itself says ValueError('Connection closed'): reported like the sync store.
        _assert_unavailable(raised.value, "sqlite", sqlite3.ProgrammingError), name
    async with create_graph_store(settings) as store:
        assert [m.content for m in await ChatHistory(store).atail("k", 5)] == [SECRET]


@pytest.mark.postgres
def test_a_closed_postgres_pool_raises_store_unavailable(pg_dsn: str) -> None:
    settings = HistorySettings(graph_store_backend="postgres", postgres_dsn=pg_dsn)
    namespace = ("faults", uuid.uuid4().hex[:12])
    with create_graph_store_sync(settings) as store:
        history = ChatHistory(store, namespace=namespace)
        history.append("k", [HumanMessage(SECRET, id="u1")])
    for name, call in _sync_calls(history).items():
        with pytest.raises(StoreUnavailable) as raised:
            call()
        _assert_unavailable(raised.value, "postgres", psycopg.Error), name
    with create_graph_store_sync(settings) as store:
        assert ChatHistory(store, namespace=namespace).count("k") == 1


@pytest.mark.postgres
def test_connections_cut_by_the_server_raise_store_unavailable_then_recover(
    fresh_pg_dsn: str,
) -> None:
    """A failover or an administrator ending sessions: the pooled connections die. The
    call that finds its connection dead raises `StoreUnavailable`; the next one works."""
    settings = HistorySettings(
        graph_store_backend="postgres", postgres_dsn=fresh_pg_dsn, postgres_pool_max_size=2
    )
    with create_graph_store_sync(settings) as store:
        history = ChatHistory(store)
        history.append("k", [HumanMessage("first", id="u1")])
        with psycopg.connect(fresh_pg_dsn, autocommit=True) as admin:
            ended = admin.execute(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).fetchone()
        assert ended is not None and ended[0] >= 1
        with pytest.raises(StoreUnavailable) as raised:
            history.append("k", [HumanMessage("second", id="u2")])
        _assert_unavailable(raised.value, "postgres", psycopg.OperationalError)
        # The dead connections were dropped from the pool: a retry succeeds, once.
        history.append("k", [HumanMessage("second", id="u2")])
        history.append("k", [HumanMessage("second", id="u2")])
        assert [m.content for m in history.tail("k", 5)] == ["first", "second"]


def test_agent_node_on_a_closed_store_still_answers_and_logs_no_body(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    reports: list[HistoryReport] = []
    node = AgentNode(
        RecordingChatModel(),
        use_graph_chat_history=True,
        write_backoff_seconds=0,
        on_report=reports.append,
    )
    with create_graph_store_sync(_sqlite(tmp_path)) as store:
        graph = build_graph(node, store)
    with caplog.at_level(logging.WARNING, logger="agent_history"):
        out = graph.invoke(telegram_callback(7, SECRET, message_id=1), new_thread())
    assert out["messages"][-1].content == f"echo: {SECRET}"
    assert reports[-1].fallbacks[0] == "read_failed"
    assert reports[-1].appended == 0
    logged = [r.getMessage() for r in caplog.records]
    assert any("history_fallback" in m and "StoreUnavailable" in m for m in logged), logged
    assert not any("4111" in m for m in logged)


@pytest.mark.postgres
@pytest.mark.parametrize("target", ["file", "stdout"])
def test_export_that_loses_its_store_mid_way_exits_3_whatever_the_target(
    fresh_pg_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: str
) -> None:
    """`StoreUnavailable` is a `ConnectionError`, so an `OSError`: writing to a file must
    not report it as "cannot write FILE" (exit 2, a wrong target) but as the store (3)."""
    from typer.testing import CliRunner

    import agent_history.cli.data as data
    from agent_history.cli import app

    settings = HistorySettings(graph_store_backend="postgres", postgres_dsn=fresh_pg_dsn)
    with create_graph_store_sync(settings) as store:
        history = ChatHistory(store)
        for i in range(3):
            history.append(f"c{i}", [HumanMessage(f"q{i}", id=f"h{i}")])
    export = data.export_jsonl

    def cut_after_the_first(*args: Any, on_progress: Any = None, **kwargs: Any) -> Any:
        def progress(*values: Any) -> None:
            on_progress(*values)
            with psycopg.connect(fresh_pg_dsn, autocommit=True) as admin:  # a failover
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )

        return export(*args, on_progress=progress, **kwargs)

    monkeypatch.setattr(data, "export_jsonl", cut_after_the_first)
    out = tmp_path / "all.jsonl"
    env = {"ORCHEO_GRAPH_STORE_BACKEND": "postgres", "ORCHEO_POSTGRES_DSN": fresh_pg_dsn}
    args = ["export", "-o", str(out)] if target == "file" else ["export"]
    result = CliRunner().invoke(app, args, env=env)
    assert result.exit_code == 3, result.output
    assert "the postgres store failed" in " ".join(result.output.split())
    assert "cannot write" not in result.output
    assert not out.exists() and not (tmp_path / ".all.jsonl.partial").exists()
