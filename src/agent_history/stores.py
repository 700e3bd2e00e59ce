"""Factories that open, set up and close LangGraph stores and checkpointers from settings.

``create_graph_store`` / ``create_checkpointer`` are async context managers;
``create_graph_store_sync`` / ``create_checkpointer_sync`` are their sync twins.
Every object they yield has had ``setup()`` run, and everything they opened is
closed on exit.
"""

from __future__ import annotations

import errno
import os
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, ExitStack, asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, Protocol, TypeVar

import aiosqlite
import psycopg
from filelock import AsyncFileLock, FileLock, Timeout
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

from agent_history.dsn import describe_dsn
from agent_history.errors import AgentHistoryError, ConfigError, StoreUnavailable
from agent_history.history.drivers import driver_for
from agent_history.history.drivers.postgres_base import SETUP_LOCK_ID
from agent_history.history.drivers.postgres_setup import (
    SETUP_WAIT_SECONDS,
    SetupLockTimeout,
    aacquire_setup_lock,
    acquire_setup_lock,
    alanggraph_current,
    amigrate,
    langgraph_current,
    migrate,
)
from agent_history.pg_pools import HangupSafePool
from agent_history.redaction import safe_error_text, safe_reason
from agent_history.settings import Backend, HistorySettings, env_var

__all__ = [
    "backend_of",
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


def backend_of(store: BaseStore) -> str:
    """Name the backend of a store: ``memory``, ``sqlite``, ``postgres`` or ``other``
    (its history driver's, see `history.drivers`)."""
    return driver_for(store).backend


def _prepare_sqlite_path(path: Path, field: str) -> str:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            env_var(field), f"cannot create directory {path.parent}: {exc.strerror}"
        ) from None
    if path.is_dir():
        raise ConfigError(env_var(field), f"{path} is a directory: give the file's path in it")
    return str(path)


# Setup runs migrations: "read the applied version, apply the rest". Two processes that
# open a new database at once would both apply them, and one would fail, so opening and
# setup are serialised across processes: a lock file beside a SQLite database (switching
# a new file to WAL needs it too), a session-level advisory lock on PostgreSQL (held on a
# connection of its own, so a pool of one still works).
class _SetUp(Protocol):
    def setup(self) -> None: ...


class _AsyncSetUp(Protocol):
    async def setup(self) -> None: ...


_S = TypeVar("_S", bound=_SetUp)
_AS = TypeVar("_AS", bound=_AsyncSetUp)


def _setup_wait(settings: HistorySettings) -> float:
    # Setup takes milliseconds; waiting longer than this means another process is stuck.
    return max(30.0, settings.graph_store_sqlite_busy_timeout)


def _sqlite_target(settings: HistorySettings, field: str) -> tuple[str, str]:
    """The database path (parent directories created) and its setup lock file, beside
    the file the path resolves to: two spellings of one database (a symlink) share it."""
    target = _prepare_sqlite_path(getattr(settings, field), field)
    return target, os.path.realpath(target) + ".setup-lock"


# SQLite errors that say the file is fine but cannot be used now (a fault, not a setting).
_FAULTS = ("SQLITE_IOERR", "SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_FULL")


def _cannot_open(field: str, target: str, exc: sqlite3.Error) -> ConfigError | StoreUnavailable:
    problem = f"cannot open SQLite file {target}: {exc}"
    error = str(getattr(exc, "sqlite_errorname", ""))
    if error.startswith("SQLITE_CORRUPT"):
        # The file is a database, damaged (a copy of a live file, a full disk): the store
        # failed, as when a read meets the damage later; no setting will mend it.
        return StoreUnavailable(
            f"{env_var(field)}: {problem} (the file is damaged: see sqlite3 {target} "
            "'PRAGMA integrity_check', and restore it from a backup)"
        )
    if error.startswith(_FAULTS):
        return StoreUnavailable(f"{env_var(field)}: {problem}")
    return ConfigError(env_var(field), problem)


# Tables LangGraph's SQLite store and checkpointer make (one file may hold both), with
# room for the ones a later release of theirs adds under the same prefixes.
_LANGGRAPH_TABLES = frozenset({"writes", "vector_migrations"})
_LANGGRAPH_PREFIXES = ("store", "checkpoint")
# Columns LangGraph's tables have that another application's table of the same name
# would not (a small app's own ``store`` table): such a table is foreign.
_LANGGRAPH_COLUMNS = {
    "store": {"prefix", "key", "value"},
    "store_migrations": {"v"},
    # (columns every schema of LangGraph's checkpointer had, the one before 0.2 included)
    "checkpoints": {"thread_id", "checkpoint"},
    "writes": {"thread_id", "task_id"},
}


def _refuse_a_foreign_database(target: str, field: str) -> None:
    """Refuse a SQLite database that holds tables of another application: setting it up
    would add the store's tables to it and switch it to WAL for good. (A file that is not
    a database at all is refused when it is opened.)"""
    if not os.path.isfile(target) or os.path.getsize(target) == 0:
        return
    try:
        probe = sqlite3.connect(f"{Path(target).resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error:
        return
    try:
        rows = probe.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        ).fetchall()
        columns = {
            str(name): {
                str(row[1]) for row in probe.execute("SELECT * FROM pragma_table_info(?)", (name,))
            }
            for (name,) in rows
            if name in _LANGGRAPH_COLUMNS
        }
    except sqlite3.Error:
        return  # not a database, or busy: the normal open reports it
    finally:
        probe.close()
    names = {str(name) for (name,) in rows}
    foreign = sorted(
        n
        for n in names
        if (n not in _LANGGRAPH_TABLES and not n.startswith(_LANGGRAPH_PREFIXES))
        or not _LANGGRAPH_COLUMNS.get(n, set()) <= columns.get(n, set())
    )
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise ConfigError(
            env_var(field),
            f"{target} is another application's SQLite database (tables: {shown}); it was "
            "left as it is: give the graph store a file of its own",
        )


# A lock file that cannot be made for these reasons is the filesystem failing now, not a
# setting to fix: the store is unavailable (CLI exit 3), as a read-only database is.
_FAILING_NOW = frozenset({errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EIO})


def _cannot_lock(field: str, lock: str, exc: OSError, wait: float) -> AgentHistoryError:
    if isinstance(exc, Timeout):
        return StoreUnavailable(
            f"another process held the setup lock {lock} ({env_var(field)}) for more than {wait:g}s"
        )
    problem = f"cannot create lock file {lock}: {exc.strerror or exc}"
    if exc.errno in _FAILING_NOW:
        return StoreUnavailable(f"{env_var(field)}: {problem}")
    return ConfigError(env_var(field), problem)


def _check_lock_file(lock: str, field: str, wait: float) -> None:
    """Create the lock file up front: filelock retries every error but EACCES and EROFS
    until its timeout, so a lock file that cannot exist (ENOENT under /proc, ENOSPC, ...)
    would be reported after the whole wait as held by another process."""
    try:
        os.close(os.open(lock, os.O_RDWR | os.O_CREAT, 0o644))
    except OSError as exc:
        raise _cannot_lock(field, lock, exc, wait) from None


@contextmanager
def _sqlite_setup_lock(lock: str, field: str, wait: float) -> Iterator[None]:
    _check_lock_file(lock, field, wait)
    file_lock = FileLock(lock, timeout=wait)
    try:
        file_lock.acquire()
    except OSError as exc:  # filelock.Timeout is a TimeoutError, an OSError
        raise _cannot_lock(field, lock, exc, wait) from None
    try:
        yield
    finally:
        file_lock.release()


@asynccontextmanager
async def _async_sqlite_setup_lock(lock: str, field: str, wait: float) -> AsyncIterator[None]:
    _check_lock_file(lock, field, wait)
    file_lock = AsyncFileLock(lock, timeout=wait)
    try:
        await file_lock.acquire()
    except OSError as exc:
        raise _cannot_lock(field, lock, exc, wait) from None
    try:
        yield
    finally:
        await file_lock.release()


@contextmanager
def _sqlite_opened(
    settings: HistorySettings, field: str, factory: Callable[[sqlite3.Connection], _S]
) -> Iterator[_S]:
    """Connect in WAL mode and build and set up ``factory(conn)`` under the setup lock;
    close the connection on exit."""
    target, lock = _sqlite_target(settings, field)
    with _sqlite_setup_lock(lock, field, _setup_wait(settings)):
        _refuse_a_foreign_database(target, field)
        try:
            conn = sqlite3.connect(
                target,
                check_same_thread=False,
                isolation_level=None,
                timeout=settings.graph_store_sqlite_busy_timeout,
            )
        except sqlite3.Error as exc:
            raise _cannot_open(field, target, exc) from None
        try:
            # WAL lets readers in other processes proceed while one process writes.
            conn.execute("PRAGMA journal_mode=WAL")
            opened = factory(conn)
            opened.setup()
        except sqlite3.Error as exc:
            conn.close()
            raise _cannot_open(field, target, exc) from None
        except BaseException:
            conn.close()
            raise
    try:
        yield opened
    finally:
        _close_when_idle(opened, conn)


def _close_when_idle(opened: object, conn: sqlite3.Connection) -> None:
    """Close ``conn`` once no call uses it: LangGraph's stores and savers, and the
    history drivers, use the connection only while holding the object's lock, and every
    such call ends by its deadline or the busy timeout. Closing under a statement that
    another thread is running would make that thread fail, or crash the process."""
    lock = getattr(opened, "lock", None)
    if lock is None:
        conn.close()
        return
    with lock:
        conn.close()


async def _aclose_when_idle(opened: object, conn: aiosqlite.Connection) -> None:
    """The async twin of `_close_when_idle` (the lock is an `asyncio.Lock`)."""
    lock = getattr(opened, "lock", None)
    if lock is None:
        await conn.close()
        return
    async with lock:
        await conn.close()


@asynccontextmanager
async def _async_sqlite_opened(
    settings: HistorySettings, field: str, factory: Callable[[aiosqlite.Connection], _AS]
) -> AsyncIterator[_AS]:
    """The async twin of `_sqlite_opened`."""
    target, lock = _sqlite_target(settings, field)
    async with _async_sqlite_setup_lock(lock, field, _setup_wait(settings)):
        _refuse_a_foreign_database(target, field)
        try:
            conn = await aiosqlite.connect(
                target, isolation_level=None, timeout=settings.graph_store_sqlite_busy_timeout
            )
        except sqlite3.Error as exc:
            raise _cannot_open(field, target, exc) from None
        try:
            await conn.execute("PRAGMA journal_mode=WAL")
            opened = factory(conn)
            await opened.setup()
        except sqlite3.Error as exc:
            await conn.close()
            raise _cannot_open(field, target, exc) from None
        except BaseException:
            await conn.close()
            raise
    try:
        yield opened
    finally:
        await _aclose_when_idle(opened, conn)


_PG_SETUP_LOCK_ID = SETUP_LOCK_ID  # one advisory lock per database, for setup
# The wait is bounded like SQLite's. The lock is polled with pg_try_advisory_lock, so a
# waiting session is never inside a statement: it holds no snapshot, which the holder's
# CREATE INDEX CONCURRENTLY (in LangGraph's migrations) would otherwise wait for while
# the waiter waits for the holder.
_PG_SETUP_WAIT_SECONDS = SETUP_WAIT_SECONDS


def _setup_lock_held(settings: HistorySettings) -> StoreUnavailable:
    return StoreUnavailable(
        f"another process held the setup lock of PostgreSQL at {describe_dsn(settings.dsn)} "
        f"({env_var('postgres_dsn')}) for more than {_PG_SETUP_WAIT_SECONDS:g}s"
    )


@contextmanager
def _postgres_setup_lock(settings: HistorySettings) -> Iterator[psycopg.Connection[Any]]:
    try:
        conn = psycopg.connect(
            settings.dsn, autocommit=True, connect_timeout=settings.postgres_connect_timeout
        )
    except psycopg.Error as exc:
        raise _unreachable(settings, exc) from None
    with conn:
        try:
            acquire_setup_lock(conn, _PG_SETUP_WAIT_SECONDS)
        except SetupLockTimeout:
            raise _setup_lock_held(settings) from None
        yield conn  # closing the session releases the lock


@asynccontextmanager
async def _apostgres_setup_lock(
    settings: HistorySettings,
) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    try:
        conn = await psycopg.AsyncConnection.connect(
            settings.dsn, autocommit=True, connect_timeout=settings.postgres_connect_timeout
        )
    except psycopg.Error as exc:
        raise _unreachable(settings, exc) from None
    async with conn:
        try:
            await aacquire_setup_lock(conn, _PG_SETUP_WAIT_SECONDS)
        except SetupLockTimeout:
            raise _setup_lock_held(settings) from None
        yield conn


def _unreachable(settings: HistorySettings, exc: BaseException) -> StoreUnavailable:
    # The driver's text can quote what it was given (a password as written, a host); only
    # phrases from a fixed vocabulary go into the message.
    reason = safe_reason(exc)
    return StoreUnavailable(
        f"cannot connect to PostgreSQL at {describe_dsn(settings.dsn)} "
        f"({env_var('postgres_dsn')}): {reason or type(exc).__name__}"
    )


def _pool_kwargs(settings: HistorySettings) -> dict[str, Any]:
    """The pool settings. Pools of the history store check no connection when lending
    it (a round trip per call on the hot path): a call that finds its connection broken
    drains the pool instead (the drivers)."""
    return {
        "min_size": settings.postgres_pool_min_size,
        "max_size": settings.postgres_pool_max_size,
        "timeout": settings.postgres_pool_timeout,
        "max_idle": settings.postgres_pool_max_idle,
        "kwargs": {**_PG_CONN_KWARGS, "connect_timeout": settings.postgres_connect_timeout},
        "open": False,
    }


# The history's appends lock the conversation, then read its head: under a database
# default of REPEATABLE READ or SERIALIZABLE the statement's snapshot predates the lock,
# and concurrent appends to one conversation fail with serialization errors. LangGraph's
# statements are written for READ COMMITTED too, PostgreSQL's own default.
_READ_COMMITTED = "SET default_transaction_isolation TO 'read committed'"


def _read_committed(conn: psycopg.Connection[Any]) -> None:
    conn.execute(_READ_COMMITTED)


async def _aread_committed(conn: psycopg.AsyncConnection[Any]) -> None:
    await conn.execute(_READ_COMMITTED)


@contextmanager
def _postgres_pool(
    settings: HistorySettings, checked: bool = False
) -> Iterator[ConnectionPool[psycopg.Connection[DictRow]]]:
    """The pool; ``checked``: each connection is checked before it is lent (LangGraph's
    checkpointer raises out of the run on a connection a server restart broke)."""
    check = ConnectionPool.check_connection if checked else None
    pool: ConnectionPool[psycopg.Connection[DictRow]] = ConnectionPool(
        settings.dsn, check=check, configure=_read_committed, **_pool_kwargs(settings)
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
    settings: HistorySettings, checked: bool = False
) -> AsyncIterator[AsyncConnectionPool[psycopg.AsyncConnection[DictRow]]]:
    """The async twin of `_postgres_pool`."""
    check = AsyncConnectionPool.check_connection if checked else None
    # A client hanging up must not cost the pool a connection (see `pg_pools`).
    pool: AsyncConnectionPool[psycopg.AsyncConnection[DictRow]] = HangupSafePool(
        settings.dsn, check=check, configure=_aread_committed, **_pool_kwargs(settings)
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
def _setting_up(settings: HistorySettings) -> Iterator[None]:
    """Report a failed setup as the store's (`StoreUnavailable`, CLI exit 3), naming the
    variable and what the server said, never the password."""
    try:
        yield
    except psycopg.Error as exc:
        if isinstance(exc, psycopg.errors.ReadOnlySqlTransaction):
            # A replica (or a read-only default) of a database this release has not set
            # up yet: its primary must be opened once, by this release.
            hint = "a read-only database, a replica?: open its primary once with this release"
        else:
            hint = "a role that may create tables in the schema must open a new database once"
        raise StoreUnavailable(
            f"cannot set up the tables at {describe_dsn(settings.dsn)} "
            f"({env_var('postgres_dsn')}): {safe_error_text(exc, settings.dsn)} ({hint})"
        ) from None


def _migrations_of(opened: object, history_schema: bool) -> tuple[str, int]:
    """LangGraph's migrations table of the store (or of the checkpointer) and how many
    migrations its release has (0 when it does not say: setup then always runs)."""
    table = "store_migrations" if history_schema else "checkpoint_migrations"
    migrations = getattr(opened, "MIGRATIONS", None)
    return table, len(migrations) if isinstance(migrations, list | tuple) else 0


@contextmanager
def _postgres_opened(
    settings: HistorySettings,
    factory: Callable[[ConnectionPool[psycopg.Connection[DictRow]]], _S],
    history_schema: bool = False,
) -> Iterator[_S]:
    """Open the pool and build and set up ``factory(pool)`` under the setup lock, whose
    connection, made first, is also the fail-fast check that the server is reachable;
    with ``history_schema`` (the store), apply the history's own migrations there too;
    without (the checkpointer), the pool checks each connection it lends."""
    with ExitStack() as stack:
        with _postgres_setup_lock(settings) as lock_conn:
            pool = _postgres_pool(settings, checked=not history_schema)
            opened = factory(stack.enter_context(pool))
            table, migrations = _migrations_of(opened, history_schema)
            with _setting_up(settings):
                if not (migrations and langgraph_current(lock_conn, table, migrations)):
                    opened.setup()
                if history_schema:
                    migrate(lock_conn)
        yield opened


@asynccontextmanager
async def _apostgres_opened(
    settings: HistorySettings,
    factory: Callable[[AsyncConnectionPool[psycopg.AsyncConnection[DictRow]]], _AS],
    history_schema: bool = False,
) -> AsyncIterator[_AS]:
    """The async twin of `_postgres_opened`."""
    async with AsyncExitStack() as stack:
        async with _apostgres_setup_lock(settings) as lock_conn:
            pool = _apostgres_pool(settings, checked=not history_schema)
            opened = factory(await stack.enter_async_context(pool))
            table, migrations = _migrations_of(opened, history_schema)
            with _setting_up(settings):
                if not (migrations and await alanggraph_current(lock_conn, table, migrations)):
                    await opened.setup()
                if history_schema:
                    await amigrate(lock_conn)
        yield opened


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
        with _sqlite_opened(settings, "graph_store_sqlite_path", SqliteStore) as store:
            yield store
    else:
        with _postgres_opened(
            settings, lambda pool: PostgresStore(conn=pool), history_schema=True
        ) as pg_store:
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
        async with _async_sqlite_opened(
            settings, "graph_store_sqlite_path", AsyncSqliteStore
        ) as astore:
            yield astore
    else:
        async with _apostgres_opened(
            settings, lambda pool: AsyncPostgresStore(conn=pool), history_schema=True
        ) as apg_store:
            yield apg_store


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
        with _sqlite_opened(settings, "checkpoint_sqlite_path", SqliteSaver) as saver:
            yield saver
    else:
        with _postgres_opened(settings, lambda pool: PostgresSaver(conn=pool)) as pg_saver:
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
        async with _async_sqlite_opened(
            settings, "checkpoint_sqlite_path", AsyncSqliteSaver
        ) as asaver:
            yield asaver
    else:
        async with _apostgres_opened(
            settings, lambda pool: AsyncPostgresSaver(conn=pool)
        ) as apg_saver:
            yield apg_saver
