"""Seeing where an async SQLite store's connection is, through its statement trace."""

from __future__ import annotations

import threading
from typing import Any


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
