"""A store's own errors, as the library's: `ChatHistory` raises `StoreUnavailable`.

A caller of `ChatHistory` (or of its `BaseChatMessageHistory` view) catches one error
for a store that cannot serve a call, whatever the backend: a closed store, an
unreachable or restarted server, an exhausted pool, a file that cannot be written. The
driver's error stays attached as ``__cause__``; the message keeps only what
`redaction.safe_error_text` keeps (class, SQLSTATE or SQLite error name, known phrases),
since a driver's text can quote the data that failed. The library's own errors
(`StoreTimeout`, `InvalidMessage`, ...) pass unchanged.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from agent_history.errors import StoreUnavailable
from agent_history.redaction import safe_error_text

__all__ = ["STORE_ERRORS", "store_faults"]

STORE_ERRORS: tuple[type[Exception], ...] = (sqlite3.Error, psycopg.Error)
"""The drivers' error families (psycopg's includes its pool's: ``PoolTimeout``,
``PoolClosed``)."""


@contextmanager
def store_faults(backend: str) -> Iterator[None]:
    """Raise a driver's error from the block as `StoreUnavailable` (see the module)."""
    try:
        yield
    except STORE_ERRORS as exc:
        raise StoreUnavailable(f"the {backend} store failed: {safe_error_text(exc)}") from exc
    except ValueError as exc:
        if not _raised_by_aiosqlite(exc):
            raise
        # aiosqlite's closed connection ("Connection closed", "no active connection"),
        # from the store's own calls (the async SQLite driver reports it as SQLite does).
        closed = sqlite3.ProgrammingError("Cannot operate on a closed database.")
        closed.__cause__ = exc
        raise StoreUnavailable(f"the {backend} store failed: {safe_error_text(closed)}") from closed


_CLOSED = ("Connection closed", "no active connection")
"""aiosqlite's words for a closed connection."""


def _raised_by_aiosqlite(exc: BaseException) -> bool:
    """Whether ``exc`` is aiosqlite's closed-connection error: its words, raised in
    aiosqlite's own code (a C function's ValueError, e.g. a value SQLite cannot bind,
    would show aiosqlite's frame too, with other words)."""
    if str(exc) not in _CLOSED:
        return False
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return str(tb.tb_frame.f_globals.get("__name__", "")).startswith("aiosqlite")
