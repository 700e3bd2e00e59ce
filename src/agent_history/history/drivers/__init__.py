"""History drivers: one per kind of store, chosen once per store.

`driver_for` picks the first driver in `DRIVERS` that accepts the store, or the generic
one, and keeps it for the store's lifetime (every `ChatHistory` on a store shares its
driver, with what it learnt: schema checked, per-conversation locks). Adding a backend
is one module with a `HistoryDriver` subclass, listed in `DRIVERS`.
"""

from __future__ import annotations

import threading
import weakref

from langgraph.store.base import BaseStore
from langgraph.store.postgres import AsyncPostgresStore, PostgresStore
from langgraph.store.sqlite import AsyncSqliteStore, SqliteStore

from agent_history.history.drivers.base import (
    AppendRequest,
    AsyncPerform,
    HistoryDriver,
    SyncPerform,
    TtlPolicy,
    namespace_text,
    warn_once,
)
from agent_history.history.drivers.generic import GenericDriver
from agent_history.history.drivers.memory import MemoryDriver
from agent_history.history.drivers.postgres import PostgresDriver
from agent_history.history.drivers.postgres_async import AsyncPostgresDriver
from agent_history.history.drivers.postgres_pipeline import AsyncPipelineDriver, PipelineDriver
from agent_history.history.drivers.sqlite import SqliteDriver
from agent_history.history.drivers.sqlite_async import AsyncSqliteDriver

__all__ = [
    "DRIVERS",
    "AppendRequest",
    "AsyncPerform",
    "HistoryDriver",
    "SyncPerform",
    "TtlPolicy",
    "driver_for",
    "namespace_text",
    "use_driver",
]

DRIVERS: tuple[type[HistoryDriver], ...] = (
    MemoryDriver,
    SqliteDriver,
    AsyncSqliteDriver,
    PipelineDriver,
    AsyncPipelineDriver,
    PostgresDriver,
    AsyncPostgresDriver,
)
"""The specialised drivers, tried in order; any other store gets `GenericDriver`."""

_SQL_STORES = (SqliteStore, AsyncSqliteStore, PostgresStore, AsyncPostgresStore)

_chosen: weakref.WeakKeyDictionary[BaseStore, HistoryDriver] = weakref.WeakKeyDictionary()
_guard = threading.Lock()


def driver_for(store: BaseStore) -> HistoryDriver:
    """The driver of ``store`` (made on first use, then the same object)."""
    try:
        return _chosen[store]
    except KeyError:
        pass
    with _guard:
        found = _chosen.get(store)
        if found is None:
            kind = next((d for d in DRIVERS if d.accepts(store)), GenericDriver)
            found = kind(store)
            if kind is GenericDriver and isinstance(store, _SQL_STORES):
                warn_once(
                    store,
                    "history_sql_path_off",
                    store_class=type(store).__name__,
                    reason="the store class overrides batch or abatch",
                    driver="generic",
                )
            _chosen[store] = found
        return found


def use_driver(store: BaseStore, driver: HistoryDriver) -> None:
    """Make ``driver`` the driver of ``store``, before anything uses it: for a store that
    wraps another and must keep the wrapped store's driver (as the rollback drill's
    counting store does, so it runs the SQL path production runs)."""
    with _guard:
        _chosen[store] = driver
