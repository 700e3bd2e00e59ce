"""The store and checkpointer factories open real backends, set them up and close them."""

from __future__ import annotations

import asyncio
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


def test_setup_lock_held_too_long_is_the_store_unavailable_naming_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "store.sqlite"
    settings = HistorySettings(graph_store_backend="sqlite", graph_store_sqlite_path=path)
    monkeypatch.setattr("agent_history.stores._setup_wait", lambda settings: 0.05)
    holder = filelock.FileLock(f"{path}.setup-lock")  # another opener, stuck in setup
    # The store failing now (exit 3), as on PostgreSQL: not a setting to fix (exit 2).
    expected = "another process held the setup lock .* \\(ORCHEO_GRAPH_STORE_SQLITE_PATH\\)"
    with holder, pytest.raises(StoreUnavailable, match=expected), create_graph_store_sync(settings):
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


def _another_apps_database(path: Path) -> bytes:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT)")
    conn.execute("INSERT INTO users (email) VALUES ('ana@example.com')")
    conn.commit()
    conn.close()
    return path.read_bytes()


@pytest.mark.parametrize(
    "table",
    [
        "CREATE TABLE store (id INTEGER PRIMARY KEY, name TEXT, city TEXT)",
        "CREATE TABLE checkpoints (id INTEGER PRIMARY KEY, saved_at TEXT)",
        "CREATE TABLE writes (id INTEGER PRIMARY KEY, body TEXT)",
    ],
)
def test_another_applications_table_named_as_langgraphs_is_still_foreign(
    tmp_path: Path, table: str
) -> None:
    """A small app's own ``store`` (or ``checkpoints``, ``writes``) table is not
    LangGraph's: the file was switched to WAL and given a ``store_migrations`` table by
    read-only commands (``stats``, ``export``, ``purge --dry-run``)."""
    from typer.testing import CliRunner

    from agent_history.cli import app

    path = tmp_path / "app.db"
    conn = sqlite3.connect(path)
    conn.execute(table)
    conn.commit()
    conn.close()
    before = path.read_bytes()
    env = {
        "ORCHEO_GRAPH_STORE_SQLITE_PATH": str(path),
        "ORCHEO_CHECKPOINT_SQLITE_PATH": str(tmp_path / "checkpoints.sqlite"),
    }
    for command in (["stats"], ["export", "-o", str(tmp_path / "out.jsonl")], ["doctor"]):
        result = CliRunner().invoke(app, command, env=env)
        assert result.exit_code == 2, (command, result.output)
        assert "another application's SQLite database" in result.output, result.output
    assert path.read_bytes() == before
    assert not Path(f"{path}-wal").exists()


def test_a_checkpointer_of_langgraph_before_0_2_is_not_foreign(tmp_path: Path) -> None:
    """Its tables stay as they were made (``CREATE TABLE IF NOT EXISTS``)."""
    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TABLE checkpoints (thread_id TEXT NOT NULL, thread_ts TEXT NOT NULL, "
        "parent_ts TEXT, checkpoint BLOB, metadata BLOB, PRIMARY KEY (thread_id, thread_ts))"
    )
    conn.execute(
        "CREATE TABLE writes (thread_id TEXT NOT NULL, thread_ts TEXT NOT NULL, task_id TEXT "
        "NOT NULL, idx INTEGER NOT NULL, channel TEXT NOT NULL, value BLOB, "
        "PRIMARY KEY (thread_id, thread_ts, task_id, idx))"
    )
    conn.commit()
    conn.close()
    settings = HistorySettings(
        graph_store_sqlite_path=path, checkpoint_sqlite_path=tmp_path / "checkpoints.sqlite"
    )
    with create_graph_store_sync(settings) as store:
        store.put(("ns",), "k", {"v": 1})


async def _open_async(settings: HistorySettings) -> None:
    async with create_graph_store(settings):
        pass


def test_another_applications_database_is_refused_and_left_as_it_is(tmp_path: Path) -> None:
    """An operator pointing the store at another application's database (a typo, a
    shared data directory): refused at start naming the variable, the file untouched
    (no store tables added, not switched to WAL), by the factories and the CLI alike."""
    from typer.testing import CliRunner

    from agent_history.cli import app

    path = tmp_path / "app.db"
    before = _another_apps_database(path)
    settings = HistorySettings(
        graph_store_sqlite_path=path, checkpoint_sqlite_path=tmp_path / "checkpoints.sqlite"
    )
    with pytest.raises(ConfigError) as raised, create_graph_store_sync(settings):
        pass
    assert raised.value.variable == "ORCHEO_GRAPH_STORE_SQLITE_PATH"
    assert "another application's SQLite database (tables: users)" in str(raised.value)
    with pytest.raises(ConfigError):
        asyncio.run(_open_async(settings))
    env = {
        "ORCHEO_GRAPH_STORE_SQLITE_PATH": str(path),
        "ORCHEO_CHECKPOINT_SQLITE_PATH": str(tmp_path / "checkpoints.sqlite"),
    }
    for command in (["stats"], ["doctor"], ["purge", "--older-than", "30d", "--dry-run"]):
        result = CliRunner().invoke(app, command, env=env)
        assert result.exit_code == 2, (command, result.output)
    assert path.read_bytes() == before
    assert not Path(f"{path}-wal").exists()
    # A store and a checkpointer sharing one file are not foreign to each other.
    shared = HistorySettings(
        graph_store_sqlite_path=tmp_path / "one.sqlite",
        checkpoint_sqlite_path=tmp_path / "one.sqlite",
    )
    with create_checkpointer_sync(shared), create_graph_store_sync(shared) as store:
        store.put(("a",), "k", {"v": 1})


def test_one_database_through_a_symlink_shares_its_setup_lock(tmp_path: Path) -> None:
    """Workers configured with two spellings of one file (a symlink) must serialise their
    set-up on one lock, or two would migrate a new database at once."""
    real = tmp_path / "data" / "store.sqlite"
    link = tmp_path / "store-link.sqlite"
    real.parent.mkdir()
    real.touch()
    link.symlink_to(real)
    for path in (real, link):
        settings = HistorySettings(
            graph_store_sqlite_path=path, checkpoint_sqlite_path=tmp_path / "c.sqlite"
        )
        with create_graph_store_sync(settings) as store:
            store.put(("a",), str(path), {"v": 1})
    # One lock, beside the file itself, whichever spelling opened it.
    assert set(tmp_path.rglob("*.setup-lock")) == {real.parent / "store.sqlite.setup-lock"}


def test_a_file_fault_at_open_is_a_store_failure_not_a_setting(tmp_path: Path) -> None:
    """The WAL file of a database in use deleted under the service (a clean-up script):
    opening it again fails with an I/O error. That is the store failing (StoreUnavailable,
    CLI exit 3), not a wrong setting (ConfigError, exit 2)."""
    settings = HistorySettings(
        graph_store_sqlite_path=tmp_path / "store.sqlite",
        checkpoint_sqlite_path=tmp_path / "c.sqlite",
    )
    with create_graph_store_sync(settings) as store:
        store.put(("a",), "k", {"v": 1})
        Path(f"{tmp_path / 'store.sqlite'}-wal").unlink()
        with pytest.raises(StoreUnavailable) as raised, create_graph_store_sync(settings):
            pass
    assert "ORCHEO_GRAPH_STORE_SQLITE_PATH" in str(raised.value)
    assert "disk I/O error" in str(raised.value)
