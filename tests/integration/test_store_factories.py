"""The store and checkpointer factories open real backends, set them up and close them."""

from __future__ import annotations

import socket
import sqlite3
import uuid
from pathlib import Path
from typing import Any, TypedDict

import filelock
import psycopg
import pytest
from langgraph.graph import START, StateGraph
from langgraph.store.base import BaseStore

from agent_history import (
    ConfigError,
    HistorySettings,
    StoreUnavailable,
    create_checkpointer,
    create_checkpointer_sync,
    create_graph_store,
    create_graph_store_sync,
    stores,
)
from agent_history.stores import backend_of

SENTINEL = "S3ntinel-Pa55word"


def test_sync_store_round_trips(store: BaseStore, backend: str, ns: tuple[str, ...]) -> None:
    assert backend_of(store) == backend
    store.put(ns, "probe", {"text": "héllo ✓"})
    item = store.get(ns, "probe")
    assert item is not None and item.value == {"text": "héllo ✓"}


async def test_async_store_round_trips(
    astore: BaseStore, backend: str, ns: tuple[str, ...]
) -> None:
    assert backend_of(astore) == backend
    await astore.aput(ns, "probe", {"n": 1})
    item = await astore.aget(ns, "probe")
    assert item is not None and item.value == {"n": 1}


def test_sqlite_store_persists_to_the_configured_file(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "store.sqlite"
    settings = HistorySettings(graph_store_backend="sqlite", graph_store_sqlite_path=path)
    with create_graph_store_sync(settings) as store:
        store.put(("a",), "k", {"v": 1})
    assert path.exists()
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT prefix, key FROM store").fetchall()
    assert rows == [("a", "k")]
    with create_graph_store_sync(settings) as reopened:
        item = reopened.get(("a",), "k")
        assert item is not None and item.value == {"v": 1}


async def _open_and_close(
    mode: str, open_sync: Any, open_async: Any, settings: HistorySettings
) -> None:
    """Open (and close) through the sync or the async factory."""
    if mode == "sync":
        with open_sync(settings):
            return
    async with open_async(settings):
        return


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_sqlite_lock_file_that_cannot_be_created_names_the_variable(
    mode: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Root ignores directory permissions, so the refusal is injected where the lock is taken.
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(filelock.FileLock, "acquire", refuse)
    monkeypatch.setattr(filelock.AsyncFileLock, "acquire", refuse)
    settings = HistorySettings(
        graph_store_backend="sqlite", checkpoint_sqlite_path=tmp_path / "ro" / "cp.sqlite"
    )
    with pytest.raises(ConfigError, match="ORCHEO_CHECKPOINT_SQLITE_PATH: cannot create lock"):
        await _open_and_close(mode, create_checkpointer_sync, create_checkpointer, settings)
    assert not (tmp_path / "ro" / "cp.sqlite").exists()  # nothing was opened or created


def test_setup_lock_held_too_long_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "store.sqlite"
    settings = HistorySettings(graph_store_backend="sqlite", graph_store_sqlite_path=path)
    monkeypatch.setattr("agent_history.stores._setup_wait", lambda settings: 0.05)
    holder = filelock.FileLock(f"{path}.setup-lock")  # another opener, stuck in setup
    expected = "ORCHEO_GRAPH_STORE_SQLITE_PATH: another process"
    with holder, pytest.raises(ConfigError, match=expected), create_graph_store_sync(settings):
        pass
    assert not path.exists()
    with create_graph_store_sync(settings) as store:  # once it lets go, opening works
        store.put(("a",), "k", {"v": 1})


class _State(TypedDict):
    count: int


def _bump(state: _State) -> dict[str, Any]:
    return {"count": state["count"] + 1}


def test_graph_compiles_with_both_factories(persistent_settings: HistorySettings) -> None:
    builder = StateGraph(_State)
    builder.add_node("bump", _bump)
    builder.add_edge(START, "bump")
    thread = {"configurable": {"thread_id": uuid.uuid4().hex}}
    with (
        create_checkpointer_sync(persistent_settings) as saver,
        create_graph_store_sync(persistent_settings) as store,
    ):
        graph = builder.compile(checkpointer=saver, store=store)
        assert graph.invoke({"count": 1}, thread) == {"count": 2}
        assert graph.get_state(thread).values == {"count": 2}


async def test_async_graph_compiles_with_both_factories(
    persistent_settings: HistorySettings,
) -> None:
    builder = StateGraph(_State)
    builder.add_node("bump", _bump)
    builder.add_edge(START, "bump")
    thread = {"configurable": {"thread_id": uuid.uuid4().hex}}
    async with (
        create_checkpointer(persistent_settings) as saver,
        create_graph_store(persistent_settings) as store,
    ):
        graph = builder.compile(checkpointer=saver, store=store)
        assert await graph.ainvoke({"count": 41}, thread) == {"count": 42}


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _unreachable_settings() -> HistorySettings:
    dsn = f"postgresql://app:{SENTINEL}@127.0.0.1:{_closed_port()}/chatdb"
    return HistorySettings(
        graph_store_backend="postgres", postgres_dsn=dsn, postgres_connect_timeout=2
    )


def test_unreachable_postgres_fails_fast_without_the_password() -> None:
    settings = _unreachable_settings()
    with pytest.raises(StoreUnavailable) as caught, create_graph_store_sync(settings):
        pass
    message = str(caught.value)
    assert "127.0.0.1" in message and "chatdb" in message
    assert "ORCHEO_POSTGRES_DSN" in message
    assert SENTINEL not in message
    assert SENTINEL not in repr(caught.value)


async def test_unreachable_postgres_fails_fast_async() -> None:
    settings = _unreachable_settings()
    with pytest.raises(StoreUnavailable) as caught:
        async with create_checkpointer(settings):
            pass
    assert SENTINEL not in str(caught.value)


@pytest.mark.postgres
def test_wrong_password_is_reported_without_it(pg_server: Any) -> None:
    dsn = pg_server.dsn().replace(pg_server.password, SENTINEL)
    settings = HistorySettings(graph_store_backend="postgres", postgres_dsn=dsn)
    with pytest.raises(StoreUnavailable) as caught, create_graph_store_sync(settings):
        pass
    assert "authentication" in str(caught.value)
    assert SENTINEL not in str(caught.value)


@pytest.mark.postgres
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_postgres_setup_lock_held_too_long_fails_with_a_clear_reason(
    mode: str, fresh_pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("agent_history.stores._PG_SETUP_WAIT_SECONDS", 0.05)
    settings = HistorySettings(graph_store_backend="postgres", postgres_dsn=fresh_pg_dsn)
    with psycopg.connect(fresh_pg_dsn, autocommit=True) as holder:  # a stuck opener
        holder.execute("SELECT pg_advisory_lock(%s)", (stores._PG_SETUP_LOCK_ID,))
        with pytest.raises(StoreUnavailable, match="another process held the setup lock"):
            await _open_and_close(mode, create_graph_store_sync, create_graph_store, settings)
    # The holder is gone: setup goes through.
    with create_graph_store_sync(settings) as store:
        store.put(("a",), "k", {"v": 1})
