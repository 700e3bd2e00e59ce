"""The driver for LangGraph's `AsyncSqliteStore`: the SQLite procedures, run on the
connection's own aiosqlite thread.

aiosqlite runs every call of a connection on one worker thread, in order. A unit of work
(a whole append transaction, or a tail query) is handed to that thread as one function
(`sqlite_base`), so it costs one hop instead of one per statement, and it holds the
store's lock, as LangGraph's own calls do. The deadline goes with the function; a caller
that is cancelled interrupts its statement (``sqlite3.Connection.interrupt``), and its
transaction, still queued or waiting for another writer's lock, commits nothing.

This uses aiosqlite's ``Connection._execute`` (run a function on the connection's
thread), a private method present in every aiosqlite release since 0.11; without it the
driver hands over to the generic one with a warning.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from typing import Any, TypeVar, cast

from langgraph.store.base import BaseStore
from langgraph.store.sqlite.aio import AsyncSqliteStore

from agent_history import budget
from agent_history.history.drivers import sqlite_base
from agent_history.history.drivers.base import (
    AsyncPerform,
    AsyncStoreDriver,
    HistoryDriver,
    PageCursor,
    TtlPolicy,
    children_bounds,
    children_page,
    namespace_text,
    uses_own_io,
    warn_once,
)
from agent_history.history.drivers.generic import GenericDriver
from agent_history.history.drivers.sqlite import schema_fallback
from agent_history.history.steps import Request, Steps

__all__ = ["AsyncSqliteDriver"]

T = TypeVar("T")


def _on_worker(work: Callable[[sqlite3.Connection], T], conn: Any, deadline: float | None) -> T:
    with budget.deadline_at(deadline):
        return work(conn._conn)


class AsyncSqliteDriver(AsyncStoreDriver):
    """`AsyncSqliteStore` (see the module)."""

    name = "sqlite-async"
    backend = "sqlite"
    atomic = True

    def __init__(self, store: BaseStore) -> None:
        super().__init__(store)
        self._state: sqlite_base.SqliteState | None = None
        self._fallback: HistoryDriver | None = None

    @classmethod
    def accepts(cls, store: BaseStore) -> bool:
        return uses_own_io(store, AsyncSqliteStore)

    @property
    def sqlite(self) -> AsyncSqliteStore:
        return cast(AsyncSqliteStore, self.store)

    async def _use(
        self, work: Callable[[sqlite3.Connection, sqlite_base.SqliteState, threading.Event], T]
    ) -> T:
        """Run ``work(connection, state, abandoned)`` on the connection's thread, under the
        store's lock, within the deadline; ``abandoned`` is set when the caller is
        cancelled (a transaction then commits nothing, see `sqlite_base.transaction`)."""
        store = self.sqlite
        if not store.is_setup:
            await store.setup()
        async with budget.enforced():
            await store.lock.acquire()
        try:
            conn = store.conn
            state = self._state
            if state is None:
                ttl = TtlPolicy.of(store, False)
                state = await conn._execute(  # type: ignore[no-untyped-call]
                    _on_worker, lambda c: sqlite_base.inspect(c, ttl), conn, None
                )
                self._state = state
            abandoned = threading.Event()
            job = conn._execute(  # type: ignore[no-untyped-call]
                _on_worker, lambda c: work(c, state, abandoned), conn, budget.current_deadline()
            )
            try:
                return await job  # type: ignore[no-any-return]
            except asyncio.CancelledError:
                # Our function may still be queued or running on the worker (waiting for
                # another writer's lock): it must not commit, and its statement stops.
                abandoned.set()
                conn._conn.interrupt()
                raise
        finally:
            store.lock.release()

    async def _target(self) -> HistoryDriver | None:
        if self._fallback is not None:
            return self._fallback
        if not hasattr(self.sqlite.conn, "_execute"):
            warn_once(self.store, "history_aiosqlite_unsupported", fallback="generic")
            self._fallback = GenericDriver(self.store, self.backend)
            return self._fallback
        if self._state is None:
            await self._use(lambda conn, state, abandoned: None)
        state = self._state
        assert state is not None
        if not state.schema_known:
            self._fallback = schema_fallback(
                self.store, self.backend, state.schema_version, sqlite_base.STORE_SCHEMA_VERSION
            )
        return self._fallback

    async def arun(self, namespace: tuple[str, ...], steps: Steps[T]) -> T:
        fallback = await self._target()
        if fallback is not None:
            return await fallback.arun(namespace, steps)
        prefix = namespace_text(namespace)
        return await self._use(
            lambda conn, state, abandoned: sqlite_base.transaction(
                conn, prefix, steps, state, abandoned
            )
        )

    async def aread(self, namespace: tuple[str, ...], steps: Steps[T]) -> T:
        fallback = await self._target()
        if fallback is not None:
            return await fallback.aread(namespace, steps)
        prefix = namespace_text(namespace)
        return await self._use(
            lambda conn, state, abandoned: sqlite_base.read(conn, prefix, steps, state)
        )

    def areader(self, namespace: tuple[str, ...]) -> AsyncPerform:
        prefix = namespace_text(namespace)

        async def perform(request: Request) -> Any:
            fallback = await self._target()
            if fallback is not None:
                return await fallback.areader(namespace)(request)
            return await self._use(
                lambda conn, state, abandoned: sqlite_base.read_one(conn, prefix, request, state)
            )

        return perform

    async def anamespace_page(
        self, namespace: tuple[str, ...], cursor: PageCursor, size: int
    ) -> tuple[list[tuple[str, ...]], PageCursor]:
        fallback = await self._target()
        if fallback is not None:
            return await fallback.anamespace_page(namespace, cursor, size)
        low, high = children_bounds(namespace, cursor)
        found = await self._use(
            lambda conn, state, abandoned: sqlite_base.next_prefixes(conn, low, high, size, state)
        )
        return children_page(namespace, found, size)

    def describe(self) -> dict[str, Any]:
        state = self._state
        return {
            "driver": self.name if self._fallback is None else "generic (schema unknown)",
            "store_schema_version": state.schema_version if state else None,
        }
