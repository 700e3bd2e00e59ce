"""Seeing where an async SQLite store's connection is, through its statement trace."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from agent_history.settings import HistorySettings


def patient_sqlite(tmp_path: Path) -> HistorySettings:
    """Settings of a SQLite store in ``tmp_path`` that waits up to 30 s for another
    writer's lock (so a test decides when a waiting write goes on)."""
    return HistorySettings(
        graph_store_backend="sqlite",
        graph_store_sqlite_path=tmp_path / "store.sqlite",
        graph_store_sqlite_busy_timeout=30,
    )


async def write_begun(store: Any) -> threading.Event:
    """An event set when ``store``'s connection (an `AsyncSqliteStore`'s) starts a write
    transaction: the unit of work is running, waiting for the lock if another writer
    holds it. The trace stays on the connection while the store is open."""
    begun = threading.Event()

    def trace(statement: str) -> None:
        if statement == "BEGIN IMMEDIATE":
            begun.set()

    await store.conn.set_trace_callback(trace)
    return begun
