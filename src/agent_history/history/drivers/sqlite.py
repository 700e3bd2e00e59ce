"""The driver for LangGraph's sync `SqliteStore`: SQL on the store's own connection.

A unit of work takes the store's lock (which LangGraph's own calls take too), then runs
in the caller's thread: an append is one ``BEGIN IMMEDIATE`` transaction, a tail one
query. Async calls run the same code in a worker thread. No call outlives its deadline
(see `sqlite_base.bounded`), so closing the connection after the store's lock is free
never races a statement (`stores` closes it that way).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar, cast

from langgraph.store.base import BaseStore
from langgraph.store.sqlite import SqliteStore

from agent_history import budget
from agent_history.history.drivers import sqlite_base
from agent_history.history.drivers.base import (
    HistoryDriver,
    PageCursor,
    SyncPerform,
    SyncStoreDriver,
    TtlPolicy,
    children_bounds,
    children_page,
    namespace_text,
    uses_own_io,
    warn_once,
)
from agent_history.history.drivers.generic import GenericDriver
from agent_history.history.steps import Request, Steps

__all__ = ["SqliteDriver", "schema_fallback"]

T = TypeVar("T")


def schema_fallback(
    store: BaseStore, backend: str, found: int | None, expected: int
) -> GenericDriver:
    """Warn once that the store's schema is not the one the SQL was written for, and
    return the generic driver that replaces the SQL path."""
    warn_once(
        store,
        "history_store_schema_unknown",
        backend=backend,
        found_version=found,
        expected_version=expected,
        fallback="generic",
    )
    return GenericDriver(store, backend)


class SqliteDriver(SyncStoreDriver):
    """`SqliteStore` (see the module)."""

    name = "sqlite"
    backend = "sqlite"
    atomic = True

    def __init__(self, store: BaseStore) -> None:
        super().__init__(store)
        self._state: sqlite_base.SqliteState | None = None
        self._fallback: HistoryDriver | None = None
        self._ready = threading.Lock()

    @classmethod
    def accepts(cls, store: BaseStore) -> bool:
        return uses_own_io(store, SqliteStore)

    @property
    def sqlite(self) -> SqliteStore:
        return cast(SqliteStore, self.store)

    def _use(self, work: Callable[[Any, sqlite_base.SqliteState], T]) -> T:
        """Run ``work(connection, state)`` under the store's lock, within the deadline."""
        store = self.sqlite
        if not store.is_setup:
            store.setup()
        left = budget.remaining()
        if not store.lock.acquire(timeout=-1 if left is None else max(0.0, left)):
            raise budget.timeout_error()
        try:
            state = self._state
            if state is None:
                state = sqlite_base.inspect(store.conn, TtlPolicy.of(store, False))
                self._state = state
            return work(store.conn, state)
        finally:
            store.lock.release()

    def _target(self) -> HistoryDriver | None:
        """The generic driver when the store's schema is unknown, else None (SQL path)."""
        if self._state is None:
            with self._ready:
                if self._state is None:
                    self._use(lambda conn, state: None)
        state = self._state
        assert state is not None
        if not state.schema_known and self._fallback is None:
            self._fallback = schema_fallback(
                self.store, self.backend, state.schema_version, sqlite_base.STORE_SCHEMA_VERSION
            )
        return self._fallback

    def run(self, namespace: tuple[str, ...], steps: Steps[T]) -> T:
        fallback = self._target()
        if fallback is not None:
            return fallback.run(namespace, steps)
        prefix = namespace_text(namespace)
        return self._use(lambda conn, state: sqlite_base.transaction(conn, prefix, steps, state))

    def read(self, namespace: tuple[str, ...], steps: Steps[T]) -> T:
        fallback = self._target()
        if fallback is not None:
            return fallback.read(namespace, steps)
        prefix = namespace_text(namespace)
        return self._use(lambda conn, state: sqlite_base.read(conn, prefix, steps, state))

    def reader(self, namespace: tuple[str, ...]) -> SyncPerform:
        fallback = self._target()
        if fallback is not None:
            return fallback.reader(namespace)
        prefix = namespace_text(namespace)

        def perform(request: Request) -> Any:
            return self._use(lambda conn, state: sqlite_base.read_one(conn, prefix, request, state))

        return perform

    def namespace_page(
        self, namespace: tuple[str, ...], cursor: PageCursor, size: int
    ) -> tuple[list[tuple[str, ...]], PageCursor]:
        fallback = self._target()
        if fallback is not None:
            return fallback.namespace_page(namespace, cursor, size)
        low, high = children_bounds(namespace, cursor)
        found = self._use(
            lambda conn, state: sqlite_base.next_prefixes(conn, low, high, size, state)
        )
        return children_page(namespace, found, size)

    def describe(self) -> dict[str, Any]:
        state = self._state
        return {
            "driver": self.name if self._fallback is None else "generic (schema unknown)",
            "store_schema_version": state.schema_version if state else None,
        }
