"""Drivers that perform history requests against each kind of store, atomically for appends.

`BaseStore` has no compare-and-swap, so an append (read head, write chunk and head) must
run under a lock that every writer of the conversation respects:

- SQLite: ``BEGIN IMMEDIATE`` on the store's own connection takes the database write
  lock, which also excludes writers in other processes;
- PostgreSQL: a transaction on one of the store's connections, serialised per
  conversation by ``pg_advisory_xact_lock``, which also excludes other processes;
- the in-memory store: a per-conversation lock in this process (the data lives here);
- any other store: the same in-process lock plus a re-read that detects a concurrent
  writer from another process (best effort, see `ChatHistory`).
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import orjson
from langgraph.store.base import BaseStore, GetOp, PutOp
from langgraph.store.memory import InMemoryStore
from langgraph.store.postgres import AsyncPostgresStore, PostgresStore
from langgraph.store.sqlite import SqliteStore
from langgraph.store.sqlite.aio import AsyncSqliteStore
from psycopg import AsyncConnection, Connection
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb, set_json_loads
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from agent_history.history.steps import Get, Request

__all__ = [
    "AsyncPerform",
    "SyncPerform",
    "async_reader",
    "async_transaction",
    "is_atomic",
    "namespace_text",
    "store_aperform",
    "store_perform",
    "sync_reader",
    "sync_transaction",
]

SyncPerform = Callable[[Request], Any]
AsyncPerform = Callable[[Request], Awaitable[Any]]

_SQL_UPSERT_SQLITE = (
    "INSERT INTO store (prefix, key, value, created_at, updated_at) "
    "VALUES (?, ?, ?, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP) "
    "ON CONFLICT (prefix, key) DO UPDATE SET value = excluded.value, "
    "updated_at = CURRENT_TIMESTAMP"
)
_SQL_DELETE_SQLITE = "DELETE FROM store WHERE prefix = ? AND key = ?"
_SQL_DELETE_PG = "DELETE FROM store WHERE prefix = %s AND key = ANY(%s)"
_SQL_LOCK_PG = "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))"


def namespace_text(namespace: tuple[str, ...]) -> str:
    """The ``prefix`` column value LangGraph's SQL stores use for a namespace."""
    return ".".join(namespace)


def is_atomic(store: BaseStore) -> bool:
    """Whether appends to ``store`` are atomic for every writer that can reach its data.

    True for SQLite and PostgreSQL stores (a database transaction, across processes) and
    for the in-memory store (its data lives in this process, guarded by a lock).
    """
    if isinstance(store, PostgresStore):
        return store.pipe is None
    return isinstance(store, SqliteStore | AsyncSqliteStore | AsyncPostgresStore | InMemoryStore)


# --- plain store I/O (reads, and writes under an in-process lock) -----------------------


def _get_ops(namespace: tuple[str, ...], keys: tuple[str, ...]) -> list[GetOp]:
    return [GetOp(namespace, key) for key in keys]


def _put_ops(namespace: tuple[str, ...], items: Mapping[str, Any]) -> list[PutOp]:
    return [PutOp(namespace, key, value, index=False) for key, value in items.items()]


def _found(keys: tuple[str, ...], results: list[Any]) -> dict[str, dict[str, Any]]:
    return {key: item.value for key, item in zip(keys, results, strict=True) if item is not None}


def store_perform(store: BaseStore, namespace: tuple[str, ...]) -> SyncPerform:
    """Perform requests with the store's own ``batch`` (no transaction)."""

    def perform(request: Request) -> Any:
        if isinstance(request, Get):
            return _found(request.keys, store.batch(_get_ops(namespace, request.keys)))
        store.batch(_put_ops(namespace, request.items))
        return None

    return perform


def store_aperform(store: BaseStore, namespace: tuple[str, ...]) -> AsyncPerform:
    """Perform requests with the store's own ``abatch`` (no transaction)."""

    async def perform(request: Request) -> Any:
        if isinstance(request, Get):
            results = await store.abatch(_get_ops(namespace, request.keys))
            return _found(request.keys, results)
        await store.abatch(_put_ops(namespace, request.items))
        return None

    return perform


_thread_locks: weakref.WeakKeyDictionary[Any, dict[tuple[str, ...], threading.Lock]] = (
    weakref.WeakKeyDictionary()
)
_thread_locks_guard = threading.Lock()


def _conversation_lock(store: BaseStore, namespace: tuple[str, ...]) -> threading.Lock:
    with _thread_locks_guard:
        per_store = _thread_locks.setdefault(store, {})
        return per_store.setdefault(namespace, threading.Lock())


# --- SQLite ---------------------------------------------------------------------------

# Chunk keys are zero-padded, so this range holds exactly the chunk items under any
# collation, and an index range scan over (prefix, key) reads the newest ones first.
_CHUNK_LOW, _CHUNK_HIGH = "chunk:0000000000", "chunk:9999999999"


def _sqlite_select(prefix: str, request: Get) -> tuple[str, tuple[Any, ...]]:
    marks = ",".join("?" * len(request.keys))
    sql = f"SELECT key, value FROM store WHERE prefix = ? AND key IN ({marks})"
    params: tuple[Any, ...] = (prefix, *request.keys)
    if request.newest_chunks > 0:
        sql += (
            " UNION ALL SELECT key, value FROM (SELECT key, value FROM store"
            " WHERE prefix = ? AND key BETWEEN ? AND ? ORDER BY key DESC LIMIT ?)"
        )
        params += (prefix, _CHUNK_LOW, _CHUNK_HIGH, request.newest_chunks)
    return sql, params


def _sqlite_get(cur: sqlite3.Cursor, prefix: str, request: Get) -> dict[str, Any]:
    cur.execute(*_sqlite_select(prefix, request))
    return {key: orjson.loads(value) for key, value in cur.fetchall()}


def _sqlite_put_rows(
    prefix: str, items: Mapping[str, Any]
) -> tuple[list[tuple[str, str, bytes]], list[tuple[str, str]]]:
    upserts = [(prefix, k, orjson.dumps(v)) for k, v in items.items() if v is not None]
    deletes = [(prefix, k) for k, v in items.items() if v is None]
    return upserts, deletes


def _sqlite_ready(store: SqliteStore) -> None:
    if not store.is_setup:
        store.setup()


@contextmanager
def _sqlite_transaction(store: SqliteStore, namespace: tuple[str, ...]) -> Iterator[SyncPerform]:
    _sqlite_ready(store)
    prefix = namespace_text(namespace)
    with store.lock:
        cur = store.conn.cursor()
        try:
            # IMMEDIATE takes the write lock now, so no other writer (in any process)
            # can slip in between our read of the head and our write of it.
            cur.execute("BEGIN IMMEDIATE")

            def perform(request: Request) -> Any:
                if isinstance(request, Get):
                    return _sqlite_get(cur, prefix, request)
                upserts, deletes = _sqlite_put_rows(prefix, request.items)
                cur.executemany(_SQL_UPSERT_SQLITE, upserts)
                cur.executemany(_SQL_DELETE_SQLITE, deletes)
                return None

            try:
                yield perform
            except BaseException:
                if store.conn.in_transaction:
                    cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")
        finally:
            cur.close()


def _sqlite_reader(store: SqliteStore, namespace: tuple[str, ...]) -> SyncPerform:
    prefix = namespace_text(namespace)

    def perform(request: Request) -> Any:
        if not isinstance(request, Get):
            raise TypeError("read-only driver")
        _sqlite_ready(store)
        with store.lock:
            cur = store.conn.cursor()
            try:
                return _sqlite_get(cur, prefix, request)
            finally:
                cur.close()

    return perform


async def _asqlite_get(conn: Any, prefix: str, request: Get) -> dict[str, Any]:
    async with conn.execute(*_sqlite_select(prefix, request)) as cur:
        rows = await cur.fetchall()
    return {key: orjson.loads(value) for key, value in rows}


@asynccontextmanager
async def _asqlite_transaction(
    store: AsyncSqliteStore, namespace: tuple[str, ...]
) -> AsyncIterator[AsyncPerform]:
    if not store.is_setup:
        await store.setup()
    prefix = namespace_text(namespace)
    conn = store.conn
    async with store.lock:
        await conn.execute("BEGIN IMMEDIATE")

        async def perform(request: Request) -> Any:
            if isinstance(request, Get):
                return await _asqlite_get(conn, prefix, request)
            upserts, deletes = _sqlite_put_rows(prefix, request.items)
            await conn.executemany(_SQL_UPSERT_SQLITE, upserts)
            await conn.executemany(_SQL_DELETE_SQLITE, deletes)
            return None

        try:
            yield perform
        except BaseException:
            if conn.in_transaction:
                await conn.execute("ROLLBACK")
            raise
        await conn.execute("COMMIT")


def _asqlite_reader(store: AsyncSqliteStore, namespace: tuple[str, ...]) -> AsyncPerform:
    prefix = namespace_text(namespace)

    async def perform(request: Request) -> Any:
        if not isinstance(request, Get):
            raise TypeError("read-only driver")
        if not store.is_setup:
            await store.setup()
        async with store.lock:
            return await _asqlite_get(store.conn, prefix, request)

    return perform


# --- PostgreSQL -----------------------------------------------------------------------


def _pg_select(prefix: str, request: Get) -> tuple[str, tuple[Any, ...]]:
    sql = "SELECT key, value FROM store WHERE prefix = %s AND key = ANY(%s)"
    params: tuple[Any, ...] = (prefix, list(request.keys))
    if request.newest_chunks > 0:
        sql += (
            " UNION ALL (SELECT key, value FROM store WHERE prefix = %s"
            " AND key BETWEEN %s AND %s ORDER BY key DESC LIMIT %s)"
        )
        params += (prefix, _CHUNK_LOW, _CHUNK_HIGH, request.newest_chunks)
    return sql, params


def _pg_write(prefix: str, items: Mapping[str, Any]) -> list[tuple[str, tuple[Any, ...]]]:
    """At most two statements for any number of items: one upsert, one delete."""
    statements: list[tuple[str, tuple[Any, ...]]] = []
    upserts = [(k, v) for k, v in items.items() if v is not None]
    deletes = [k for k, v in items.items() if v is None]
    if upserts:
        rows = ",".join(["(%s, %s, %s, now(), now())"] * len(upserts))
        params = tuple(p for k, v in upserts for p in (prefix, k, Jsonb(v)))
        statements.append(
            (
                "INSERT INTO store (prefix, key, value, created_at, updated_at) "
                f"VALUES {rows} ON CONFLICT (prefix, key) DO UPDATE "
                "SET value = EXCLUDED.value, updated_at = now()",
                params,
            )
        )
    if deletes:
        statements.append((_SQL_DELETE_PG, (prefix, deletes)))
    return statements


def _orjson_cursor(cur: Any) -> Any:
    set_json_loads(orjson.loads, cur)
    return cur


@contextmanager
def _pg_connection(store: PostgresStore) -> Iterator[Connection[Any]]:
    conn = store.conn
    if isinstance(conn, ConnectionPool):
        with conn.connection() as pooled:
            yield pooled
    else:
        # One shared connection: the store's lock keeps other users out of our transaction.
        with store.lock:
            yield conn


@contextmanager
def _pg_transaction(store: PostgresStore, namespace: tuple[str, ...]) -> Iterator[SyncPerform]:
    prefix = namespace_text(namespace)
    pending: dict[str, Any] = {}
    with (
        _pg_connection(store) as conn,
        # Pipeline mode sends BEGIN, the lock and the first read in one round trip, and
        # the writes with COMMIT in a second one.
        conn.pipeline(),
        conn.transaction(),
        conn.cursor(row_factory=dict_row) as cur,
    ):
        _orjson_cursor(cur)
        cur.execute(_SQL_LOCK_PG, (prefix,))

        def flush() -> None:
            # Writes are sent together, once, when the transaction next reads or ends.
            for sql, params in _pg_write(prefix, pending):
                cur.execute(sql, params)
            pending.clear()

        def perform(request: Request) -> Any:
            if isinstance(request, Get):
                flush()
                cur.execute(*_pg_select(prefix, request))
                return {row["key"]: row["value"] for row in cur.fetchall()}
            pending.update(request.items)
            return None

        yield perform
        flush()


def _pg_reader(store: PostgresStore, namespace: tuple[str, ...]) -> SyncPerform:
    prefix = namespace_text(namespace)

    def perform(request: Request) -> Any:
        if not isinstance(request, Get):
            raise TypeError("read-only driver")
        with _pg_connection(store) as conn, conn.cursor(row_factory=dict_row) as cur:
            _orjson_cursor(cur).execute(*_pg_select(prefix, request))
            return {row["key"]: row["value"] for row in cur.fetchall()}

    return perform


@asynccontextmanager
async def _apg_connection(store: AsyncPostgresStore) -> AsyncIterator[AsyncConnection[Any]]:
    conn = store.conn
    if isinstance(conn, AsyncConnectionPool):
        async with conn.connection() as pooled:
            yield pooled
    else:
        async with store.lock:
            yield conn


@asynccontextmanager
async def _apg_transaction(
    store: AsyncPostgresStore, namespace: tuple[str, ...]
) -> AsyncIterator[AsyncPerform]:
    prefix = namespace_text(namespace)
    pending: dict[str, Any] = {}
    async with (
        _apg_connection(store) as conn,
        conn.pipeline(),
        conn.transaction(),
        conn.cursor(row_factory=dict_row) as cur,
    ):
        _orjson_cursor(cur)
        await cur.execute(_SQL_LOCK_PG, (prefix,))

        async def flush() -> None:
            for sql, params in _pg_write(prefix, pending):
                await cur.execute(sql, params)
            pending.clear()

        async def perform(request: Request) -> Any:
            if isinstance(request, Get):
                await flush()
                await cur.execute(*_pg_select(prefix, request))
                return {row["key"]: row["value"] for row in await cur.fetchall()}
            pending.update(request.items)
            return None

        yield perform
        await flush()


def _apg_reader(store: AsyncPostgresStore, namespace: tuple[str, ...]) -> AsyncPerform:
    prefix = namespace_text(namespace)

    async def perform(request: Request) -> Any:
        if not isinstance(request, Get):
            raise TypeError("read-only driver")
        async with _apg_connection(store) as conn, conn.cursor(row_factory=dict_row) as cur:
            await _orjson_cursor(cur).execute(*_pg_select(prefix, request))
            return {row["key"]: row["value"] for row in await cur.fetchall()}

    return perform


# --- dispatch -------------------------------------------------------------------------


def sync_reader(store: BaseStore, namespace: tuple[str, ...]) -> SyncPerform:
    """Reads for one conversation: one SQL query per request on SQLite and PostgreSQL
    (honouring the ``newest_chunks`` hint), the store's ``batch`` otherwise."""
    if isinstance(store, SqliteStore):
        return _sqlite_reader(store, namespace)
    if isinstance(store, PostgresStore) and store.pipe is None:
        return _pg_reader(store, namespace)
    return store_perform(store, namespace)


def async_reader(store: BaseStore, namespace: tuple[str, ...]) -> AsyncPerform:
    """Async `sync_reader`."""
    if isinstance(store, AsyncSqliteStore):
        return _asqlite_reader(store, namespace)
    if isinstance(store, AsyncPostgresStore):
        return _apg_reader(store, namespace)
    return store_aperform(store, namespace)


@contextmanager
def sync_transaction(store: BaseStore, namespace: tuple[str, ...]) -> Iterator[SyncPerform]:
    """An atomic unit of work on one conversation, for sync code.

    Async-only stores are driven on their own event loop from this thread.
    """
    if isinstance(store, SqliteStore):
        with _sqlite_transaction(store, namespace) as perform:
            yield perform
    elif isinstance(store, PostgresStore) and store.pipe is None:
        with _pg_transaction(store, namespace) as perform:
            yield perform
    else:
        with _conversation_lock(store, namespace):
            yield store_perform(store, namespace)


_async_locks: weakref.WeakKeyDictionary[Any, dict[tuple[int, tuple[str, ...]], asyncio.Lock]] = (
    weakref.WeakKeyDictionary()
)


def _async_conversation_lock(store: BaseStore, namespace: tuple[str, ...]) -> asyncio.Lock:
    loop_id = id(asyncio.get_running_loop())
    per_store = _async_locks.setdefault(store, {})
    return per_store.setdefault((loop_id, namespace), asyncio.Lock())


@asynccontextmanager
async def async_transaction(
    store: BaseStore, namespace: tuple[str, ...]
) -> AsyncIterator[AsyncPerform]:
    """An atomic unit of work on one conversation, for async code."""
    if isinstance(store, AsyncSqliteStore):
        async with _asqlite_transaction(store, namespace) as perform:
            yield perform
    elif isinstance(store, AsyncPostgresStore):
        async with _apg_transaction(store, namespace) as perform:
            yield perform
    elif isinstance(store, InMemoryStore):
        # The in-memory store never suspends, so the thread lock is held across no await
        # point that could let another coroutine of this loop block on it.
        with _conversation_lock(store, namespace):
            perform = store_perform(store, namespace)

            async def aperform(request: Request) -> Any:
                return perform(request)

            yield aperform
    else:
        async with _async_conversation_lock(store, namespace):
            yield store_aperform(store, namespace)
