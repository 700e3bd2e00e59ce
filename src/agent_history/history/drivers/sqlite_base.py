"""SQL and ``sqlite3`` procedures shared by the sync and the async SQLite drivers.

Both drivers hand a plain ``sqlite3.Connection`` to these functions: the sync driver
from the caller's thread under the store's lock, the async driver on the connection's
own aiosqlite thread (one hop per unit of work). They write LangGraph's ``store`` table
as its SQLite store does (schema version `STORE_SCHEMA_VERSION`), with one extra rule:
every item of a conversation shares the head's ``expires_at`` (see `base.TtlPolicy`).

A deadline (`agent_history.budget`) becomes SQLite's own limits: the busy timeout is cut
to the time left, and a progress handler interrupts a statement still running at the
deadline, so the call ends in its thread and never outlives its budget.
"""

from __future__ import annotations

import functools
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson

from agent_history import budget
from agent_history import observability as obs
from agent_history.errors import InvalidArgument
from agent_history.history.drivers.base import TtlPolicy, utc_now
from agent_history.history.layout import HEAD_KEY
from agent_history.history.steps import Get, Request, Steps, drive

__all__ = [
    "STORE_SCHEMA_VERSION",
    "Abandoned",
    "SqliteState",
    "inspect",
    "next_prefixes",
    "read",
    "read_one",
    "transaction",
]

T = TypeVar("T")

STORE_SCHEMA_VERSION = 4
"""The last migration of LangGraph's SQLite store (langgraph-checkpoint-sqlite 3.x) these
statements were written for: ``store(prefix, key, value, created_at, updated_at,
expires_at, ttl_minutes)``, primary key ``(prefix, key)``."""

# Chunk keys are zero-padded, so this range holds exactly the chunk items under any
# collation, and an index range scan over (prefix, key) reads the newest ones first.
CHUNK_LOW, CHUNK_HIGH = "chunk:0000000000", "chunk:9999999999"

_UPSERT = (
    "INSERT INTO store (prefix, key, value, created_at, updated_at, expires_at, ttl_minutes) "
    "VALUES (?, ?, ?, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, ?, NULL) "
    "ON CONFLICT (prefix, key) DO UPDATE SET value = excluded.value, "
    "updated_at = CURRENT_TIMESTAMP, expires_at = excluded.expires_at, ttl_minutes = NULL"
)
_DELETE = "DELETE FROM store WHERE prefix = ? AND key = ?"
_HEAD_EXPIRY = "SELECT expires_at FROM store WHERE prefix = ? AND key = 'head'"
# ttl_minutes stays NULL on history items: LangGraph's own reads refresh only items with
# a ttl_minutes, and refreshing one item of a conversation would split its expiry.
_REFRESH = "UPDATE store SET expires_at = ?, ttl_minutes = NULL WHERE prefix = ?"
_VERSION = "SELECT max(v) FROM store_migrations"
_PROGRESS_OPS = 1000
_BUSY_STEP_MS = 100


@dataclass(frozen=True, slots=True)
class SqliteState:
    """What a driver learnt about its connection at first use."""

    schema_version: int | None
    busy_ms: int
    """The connection's own busy timeout, restored after every bounded call."""
    ttl: TtlPolicy

    @property
    def schema_known(self) -> bool:
        return self.schema_version == STORE_SCHEMA_VERSION


def inspect(conn: sqlite3.Connection, ttl: TtlPolicy) -> SqliteState:
    """Read the store's migration version and the connection's busy timeout."""
    try:
        row = conn.execute(_VERSION).fetchone()
        version = int(row[0]) if row and row[0] is not None else None
    except sqlite3.OperationalError:
        version = None
    busy = conn.execute("PRAGMA busy_timeout").fetchone()
    return SqliteState(version, int(busy[0]) if busy else 0, ttl)


# --- deadlines ------------------------------------------------------------------------------


@contextmanager
def bounded(conn: sqlite3.Connection, state: SqliteState) -> Iterator[None]:
    """Apply the current deadline to ``conn`` for the block (see the module)."""
    deadline = budget.current_deadline()
    if deadline is None:
        yield
        return
    left_ms = (deadline - time.monotonic()) * 1000
    if left_ms <= 0:
        raise budget.timeout_error()
    # Rounded down to a step, so the few PRAGMA texts stay in sqlite3's statement cache.
    busy = min(state.busy_ms, max(1, int(left_ms // _BUSY_STEP_MS) * _BUSY_STEP_MS))
    if busy != state.busy_ms:
        conn.execute(f"PRAGMA busy_timeout = {busy}")
    conn.set_progress_handler(lambda: time.monotonic() >= deadline, _PROGRESS_OPS)
    try:
        yield
    except sqlite3.OperationalError as exc:
        text = str(exc)
        past = time.monotonic() >= deadline - 0.001 * _BUSY_STEP_MS
        if "interrupted" in text and past:
            raise budget.timeout_error() from None
        if "locked" in text and busy < state.busy_ms:
            raise budget.timeout_error() from None
        raise
    finally:
        conn.set_progress_handler(None, 0)
        if busy != state.busy_ms:
            conn.execute(f"PRAGMA busy_timeout = {state.busy_ms}")


# --- statements -----------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _select_sql(keys: int, newest: bool) -> str:
    marks = ",".join("?" * keys)
    sql = f"SELECT key, value, expires_at FROM store WHERE prefix = ? AND key IN ({marks})"
    if newest:
        sql += (
            " UNION ALL SELECT key, value, expires_at FROM (SELECT key, value, expires_at"
            " FROM store WHERE prefix = ? AND key BETWEEN ? AND ? ORDER BY key DESC LIMIT ?)"
        )
    return sql


def _select(prefix: str, request: Get) -> tuple[str, tuple[Any, ...]]:
    newest = request.newest_chunks > 0
    params: tuple[Any, ...] = (prefix, *request.keys)
    if newest:
        params += (prefix, CHUNK_LOW, CHUNK_HIGH, request.newest_chunks)
    return _select_sql(len(request.keys), newest), params


def _parse_time(raw: Any) -> datetime | None:
    if raw is None:
        return None
    try:
        parsed = datetime.fromisoformat(str(raw))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _format_time(moment: datetime) -> str:
    # The format of SQLite's CURRENT_TIMESTAMP, which the store's sweeper compares with.
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


class _Conversation:
    """Requests of one unit of work on one conversation, and what they saw of its head."""

    def __init__(self, conn: sqlite3.Connection, prefix: str, state: SqliteState) -> None:
        self.conn = conn
        self.prefix = prefix
        self.state = state
        self.head_expiry: tuple[bool, Any] | None = None
        """(the head exists, its raw ``expires_at``), once known."""
        self.pending: dict[str, dict[str, Any] | None] = {}

    def get(self, request: Request) -> dict[str, Any]:
        if not isinstance(request, Get):
            raise InvalidArgument("a read-only history procedure asked to write")
        rows = self.conn.execute(*_select(self.prefix, request)).fetchall()
        found = {}
        for key, value, expires_at in rows:
            found[key] = orjson.loads(value)
            if key == HEAD_KEY:
                self.head_expiry = (True, expires_at)
        if HEAD_KEY in request.keys and HEAD_KEY not in found:
            self.head_expiry = (False, None)
        return found

    def perform(self, request: Request) -> Any:
        if isinstance(request, Get):
            self.flush()
            return self.get(request)
        self.pending.update(request.items)
        return None

    def _expiry(self) -> Any:
        """The ``expires_at`` for items written now; refreshes the whole conversation
        first when the TTL says so."""
        if self.head_expiry is None:
            row = self.conn.execute(_HEAD_EXPIRY, (self.prefix,)).fetchone()
            self.head_expiry = (row is not None, row[0] if row else None)
        exists, raw = self.head_expiry
        ttl = self.state.ttl
        if ttl.minutes is None:
            return raw
        expiry, refresh = ttl.expiry(_parse_time(raw), exists, utc_now())
        text = None if expiry is None else _format_time(expiry)
        if refresh:
            self.conn.execute(_REFRESH, (text, self.prefix))
        self.head_expiry = (exists, text)
        return text

    def flush(self) -> None:
        if not self.pending:
            return
        upserts = [(k, v) for k, v in self.pending.items() if v is not None]
        deletes = [(self.prefix, k) for k, v in self.pending.items() if v is None]
        self.pending.clear()
        if upserts:
            expiry = self._expiry()
            self.conn.executemany(
                _UPSERT, [(self.prefix, k, orjson.dumps(v), expiry) for k, v in upserts]
            )
        if deletes:
            self.conn.executemany(_DELETE, deletes)

    def refresh_if_due(self) -> None:
        """After a read: push the conversation's expiry back when the TTL says so."""
        ttl = self.state.ttl
        if self.head_expiry is None or not self.head_expiry[0] or not ttl.refresh_on_read:
            return
        if not ttl.needs_refresh(_parse_time(self.head_expiry[1]), utc_now()):
            return
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                self.head_expiry = None  # read again under the write lock
                self._expiry()
                self.conn.execute("COMMIT")
            finally:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
        except sqlite3.Error as exc:  # a read does not fail because its refresh did
            obs.log_event(
                "history_ttl_refresh_failed",
                level=logging.DEBUG,
                error=obs.describe_error(exc),
            )


# --- units of work ----------------------------------------------------------------------------


class Abandoned(Exception):
    """The caller of a unit of work went away (a cancelled task) before it committed."""


def transaction(
    conn: sqlite3.Connection,
    prefix: str,
    steps: Steps[T],
    state: SqliteState,
    abandoned: threading.Event | None = None,
) -> T:
    """Run ``steps`` inside ``BEGIN IMMEDIATE`` and commit.

    IMMEDIATE takes the database's write lock before the first read, so no other writer
    (in any process) can slip in between our read of the head and our write of it.
    ``abandoned``: set when the caller went away (the async driver's cancelled task); a
    unit of work it finds set before its commit rolls back and raises `Abandoned`. Its
    caller was told nothing was written: waiting for another writer's lock, the unit
    would otherwise commit after the caller gave up (a client that hung up).
    """
    with bounded(conn, state):
        _check(abandoned)
        conn.execute("BEGIN IMMEDIATE")
        try:
            conversation = _Conversation(conn, prefix, state)
            result = drive(steps, conversation.perform)
            conversation.flush()
            _check(abandoned)
            conn.execute("COMMIT")
            return result
        except BaseException:
            conn.set_progress_handler(None, 0)  # the rollback must not be interrupted
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise


def _check(abandoned: threading.Event | None) -> None:
    if abandoned is not None and abandoned.is_set():
        raise Abandoned


def read(conn: sqlite3.Connection, prefix: str, steps: Steps[T], state: SqliteState) -> T:
    """Run read-only ``steps``, one query per request, outside a transaction."""
    if budget.current_deadline() is None:  # the common case, without a context manager
        return _read(conn, prefix, steps, state)
    with bounded(conn, state):
        return _read(conn, prefix, steps, state)


def _read(conn: sqlite3.Connection, prefix: str, steps: Steps[T], state: SqliteState) -> T:
    conversation = _Conversation(conn, prefix, state)
    result = drive(steps, conversation.get)
    if state.ttl.refresh_on_read:
        conversation.refresh_if_due()
    return result


def read_one(conn: sqlite3.Connection, prefix: str, request: Request, state: SqliteState) -> Any:
    """Answer one read request (for streamed reads)."""
    with bounded(conn, state):
        conversation = _Conversation(conn, prefix, state)
        found = conversation.get(request)
        conversation.refresh_if_due()
        return found


_NEXT_PREFIX_SQL = (
    "SELECT prefix FROM store WHERE prefix > ? AND prefix < ? ORDER BY prefix LIMIT 1"
)


def next_prefixes(
    conn: sqlite3.Connection, low: str, high: str, size: int, state: SqliteState
) -> list[str]:
    """Up to ``size`` distinct ``prefix`` values strictly between ``low`` and ``high``, in
    order: one primary-key seek each, whatever the conversations hold (a listing by
    offset scanned everything before its page, quadratic over a whole listing)."""
    found: list[str] = []
    with bounded(conn, state):
        while len(found) < size:
            row = conn.execute(_NEXT_PREFIX_SQL, (low, high)).fetchone()
            if row is None:
                break
            low = str(row[0])
            found.append(low)
    return found
