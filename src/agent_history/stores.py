"""Factories that open, set up and close LangGraph stores and checkpointers from settings.

``create_graph_store`` / ``create_checkpointer`` are async context managers;
``create_graph_store_sync`` / ``create_checkpointer_sync`` are their sync twins.
Every object they yield has had ``setup()`` run, and everything they opened is
closed on exit.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import aiosqlite
import psycopg
from filelock import AsyncFileLock, FileLock
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.postgres import PostgresSaver
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from langgraph.store.base import BaseStore
from langgraph.store.memory import InMemoryStore
from langgraph.store.postgres import AsyncPostgresStore, PostgresStore
from langgraph.store.sqlite import SqliteStore
from langgraph.store.sqlite.aio import AsyncSqliteStore
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from agent_history.dsn import describe_dsn, scrub_dsn_password
from agent_history.errors import ConfigError, StoreUnavailable
from agent_history.settings import Backend, HistorySettings, env_var

__all__ = [
    "backend_of",
    "check_postgres_reachable",
    "create_checkpointer",
    "create_checkpointer_sync",
    "create_graph_store",
    "create_graph_store_sync",
]

_PG_CONN_KWARGS: dict[str, Any] = {
    "autocommit": True,
    "prepare_threshold": 0,
    "row_factory": dict_row,
}


def backend_of(store: object) -> str:
    """Name the backend of a store object: ``memory``, ``sqlite``, ``postgres`` or ``other``."""
    if isinstance(store, InMemoryStore):
        return Backend.MEMORY.value
    if isinstance(store, SqliteStore | AsyncSqliteStore):
        return Backend.SQLITE.value
    if isinstance(store, PostgresStore | AsyncPostgresStore):
        return Backend.POSTGRES.value
    return "other"


def _prepare_sqlite_path(path: Path, field: str) -> str:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            env_var(field), f"cannot create directory {path.parent}: {exc.strerror}"
        ) from None
    return str(path)


def _sqlite_connection(path: Path, field: str, timeout: float) -> sqlite3.Connection:
    target = _prepare_sqlite_path(path, field)
    try:
        conn = sqlite3.connect(
            target, check_same_thread=False, isolation_level=None, timeout=timeout
        )
        # WAL lets readers in other processes proceed while one process writes.
        conn.execute("PRAGMA journal_mode=WAL")
    except sqlite3.Error as exc:
        raise ConfigError(env_var(field), f"cannot open SQLite file {target}: {exc}") from None
    return conn


async def _async_sqlite_connection(
    path: Path, field: str, busy_timeout: float
) -> aiosqlite.Connection:
    target = _prepare_sqlite_path(path, field)
    try:
        conn = await aiosqlite.connect(target, isolation_level=None, timeout=busy_timeout)
        await conn.execute("PRAGMA journal_mode=WAL")
    except sqlite3.Error as exc:
        raise ConfigError(env_var(field), f"cannot open SQLite file {target}: {exc}") from None
    return conn


# Setup runs migrations: "read the applied version, apply the rest". Two processes that
# open a new database at once would both apply them, and one would fail, so setup is
# serialised across processes: a lock file beside a SQLite database, a session-level
# advisory lock on Postgres (held on its own connection, so a pool of one still works).
_PG_SETUP_LOCK_ID = 0x616768_5345  # "agh" + "SE": one lock per database for setup


def _sqlite_setup_lock_path(path: Path) -> str:
    return str(path) + ".setup-lock"


@contextmanager
def _postgres_setup_lock(settings: HistorySettings) -> Iterator[None]:
    try:
        conn = psycopg.connect(
            settings.dsn, autocommit=True, connect_timeout=settings.postgres_connect_timeout
        )
    except psycopg.Error as exc:
        raise _unreachable(settings, exc) from None
    with conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_PG_SETUP_LOCK_ID,))
        yield  # closing the session releases the lock


@asynccontextmanager
async def _apostgres_setup_lock(settings: HistorySettings) -> AsyncIterator[None]:
    try:
        conn = await psycopg.AsyncConnection.connect(
            settings.dsn, autocommit=True, connect_timeout=settings.postgres_connect_timeout
        )
    except psycopg.Error as exc:
        raise _unreachable(settings, exc) from None
    async with conn:
        await conn.execute("SELECT pg_advisory_lock(%s)", (_PG_SETUP_LOCK_ID,))
        yield


def _unreachable(settings: HistorySettings, exc: BaseException) -> StoreUnavailable:
    reason = scrub_dsn_password(str(exc).strip().splitlines()[0] if str(exc) else "", settings.dsn)
    return StoreUnavailable(
        f"cannot connect to PostgreSQL at {describe_dsn(settings.dsn)} "
        f"({env_var('postgres_dsn')}): {reason or type(exc).__name__}"
    )


def check_postgres_reachable(settings: HistorySettings) -> None:
    """Connect once to the configured server, raising `StoreUnavailable` quickly if it is down."""
    try:
        with psycopg.connect(settings.dsn, connect_timeout=settings.postgres_connect_timeout):
            pass
    except psycopg.Error as exc:
        raise _unreachable(settings, exc) from None


async def _acheck_postgres_reachable(settings: HistorySettings) -> None:
    try:
        conn = await psycopg.AsyncConnection.connect(
            settings.dsn, connect_timeout=settings.postgres_connect_timeout
        )
        await conn.close()
    except psycopg.Error as exc:
        raise _unreachable(settings, exc) from None


def _pool_kwargs(settings: HistorySettings) -> dict[str, Any]:
    return {
        "min_size": settings.postgres_pool_min_size,
        "max_size": settings.postgres_pool_max_size,
        "timeout": settings.postgres_pool_timeout,
        "max_idle": settings.postgres_pool_max_idle,
        "kwargs": {**_PG_CONN_KWARGS, "connect_timeout": settings.postgres_connect_timeout},
        "open": False,
    }


@contextmanager
def _postgres_pool(
    settings: HistorySettings,
) -> Iterator[ConnectionPool[psycopg.Connection[DictRow]]]:
    check_postgres_reachable(settings)
    pool: ConnectionPool[psycopg.Connection[DictRow]] = ConnectionPool(
        settings.dsn, **_pool_kwargs(settings)
    )
    try:
        pool.open(wait=True, timeout=settings.postgres_pool_timeout)
    except Exception as exc:
        pool.close()
        raise _unreachable(settings, exc) from None
    try:
        yield pool
    finally:
        pool.close()


@asynccontextmanager
async def _apostgres_pool(
    settings: HistorySettings,
) -> AsyncIterator[AsyncConnectionPool[psycopg.AsyncConnection[DictRow]]]:
    await _acheck_postgres_reachable(settings)
    pool: AsyncConnectionPool[psycopg.AsyncConnection[DictRow]] = AsyncConnectionPool(
        settings.dsn, **_pool_kwargs(settings)
    )
    try:
        await pool.open(wait=True, timeout=settings.postgres_pool_timeout)
    except Exception as exc:
        await pool.close()
        raise _unreachable(settings, exc) from None
    try:
        yield pool
    finally:
        await pool.close()


@contextmanager
def create_graph_store_sync(settings: HistorySettings | None = None) -> Iterator[BaseStore]:
    """Open the configured graph store for sync code, set it up, and close it on exit.

    Args:
        settings: Storage settings; read from the environment when omitted.

    Returns:
        A context manager yielding an `InMemoryStore`, `SqliteStore` or `PostgresStore`.
    """
    settings = settings or HistorySettings()
    backend = settings.graph_store_backend
    if backend is Backend.MEMORY:
        yield InMemoryStore()
    elif backend is Backend.SQLITE:
        conn = _sqlite_connection(
            settings.graph_store_sqlite_path,
            "graph_store_sqlite_path",
            settings.graph_store_sqlite_busy_timeout,
        )
        try:
            store = SqliteStore(conn)
            with FileLock(_sqlite_setup_lock_path(settings.graph_store_sqlite_path)):
                store.setup()
            yield store
        finally:
            conn.close()
    else:
        with _postgres_pool(settings) as pool:
            pg_store = PostgresStore(conn=pool)
            with _postgres_setup_lock(settings):
                pg_store.setup()
            yield pg_store


@asynccontextmanager
async def create_graph_store(settings: HistorySettings | None = None) -> AsyncIterator[BaseStore]:
    """Open the configured graph store for async code, set it up, and close it on exit.

    Args:
        settings: Storage settings; read from the environment when omitted.

    Returns:
        An async context manager yielding an `InMemoryStore`, `AsyncSqliteStore`
        or `AsyncPostgresStore`.
    """
    settings = settings or HistorySettings()
    backend = settings.graph_store_backend
    if backend is Backend.MEMORY:
        yield InMemoryStore()
    elif backend is Backend.SQLITE:
        conn = await _async_sqlite_connection(
            settings.graph_store_sqlite_path,
            "graph_store_sqlite_path",
            settings.graph_store_sqlite_busy_timeout,
        )
        try:
            store = AsyncSqliteStore(conn)
            async with AsyncFileLock(_sqlite_setup_lock_path(settings.graph_store_sqlite_path)):
                await store.setup()
            yield store
        finally:
            await conn.close()
    else:
        async with _apostgres_pool(settings) as pool:
            pg_store = AsyncPostgresStore(conn=pool)
            async with _apostgres_setup_lock(settings):
                await pg_store.setup()
            yield pg_store


@contextmanager
def create_checkpointer_sync(
    settings: HistorySettings | None = None,
) -> Iterator[BaseCheckpointSaver[Any]]:
    """Open the configured LangGraph checkpointer for sync code (set up, closed on exit)."""
    settings = settings or HistorySettings()
    backend = settings.effective_checkpoint_backend
    if backend is Backend.MEMORY:
        yield InMemorySaver()
    elif backend is Backend.SQLITE:
        conn = _sqlite_connection(
            settings.checkpoint_sqlite_path,
            "checkpoint_sqlite_path",
            settings.graph_store_sqlite_busy_timeout,
        )
        try:
            saver = SqliteSaver(conn)
            with FileLock(_sqlite_setup_lock_path(settings.checkpoint_sqlite_path)):
                saver.setup()
            yield saver
        finally:
            conn.close()
    else:
        with _postgres_pool(settings) as pool:
            pg_saver = PostgresSaver(conn=pool)
            with _postgres_setup_lock(settings):
                pg_saver.setup()
            yield pg_saver


@asynccontextmanager
async def create_checkpointer(
    settings: HistorySettings | None = None,
) -> AsyncIterator[BaseCheckpointSaver[Any]]:
    """Open the configured LangGraph checkpointer for async code (set up, closed on exit)."""
    settings = settings or HistorySettings()
    backend = settings.effective_checkpoint_backend
    if backend is Backend.MEMORY:
        yield InMemorySaver()
    elif backend is Backend.SQLITE:
        conn = await _async_sqlite_connection(
            settings.checkpoint_sqlite_path,
            "checkpoint_sqlite_path",
            settings.graph_store_sqlite_busy_timeout,
        )
        try:
            saver = AsyncSqliteSaver(conn)
            async with AsyncFileLock(_sqlite_setup_lock_path(settings.checkpoint_sqlite_path)):
                await saver.setup()
            yield saver
        finally:
            await conn.close()
    else:
        async with _apostgres_pool(settings) as pool:
            pg_saver = AsyncPostgresSaver(conn=pool)
            async with _apostgres_setup_lock(settings):
                await pg_saver.setup()
            yield pg_saver
