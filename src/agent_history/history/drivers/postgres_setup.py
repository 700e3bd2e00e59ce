"""PostgreSQL set-up: the schema check, the project's migrations and the setup lock.

`stores` runs `migrate` right after LangGraph's own ``setup()``, under the same setup
lock; a driver whose store was opened some other way checks the versions at first use
(`inspect_sync` / `inspect_async`) and applies what is missing itself, under that lock.
The lock is a session advisory lock taken by polling ``pg_try_advisory_lock``: a session
waiting for it is never inside a statement, so it holds no snapshot that the holder's
``CREATE INDEX CONCURRENTLY`` (in LangGraph's migrations) would wait for.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from dataclasses import dataclass
from typing import Any

import psycopg
from langgraph.store.base import BaseStore
from psycopg import AsyncConnection, Connection

from agent_history import budget
from agent_history import observability as obs
from agent_history.history.drivers import postgres_base as sql
from agent_history.history.drivers.base import warn_once
from agent_history.history.drivers.generic import GenericDriver

__all__ = [
    "SETUP_WAIT_SECONDS",
    "TABLES_ELSEWHERE",
    "PostgresState",
    "SetupLockTimeout",
    "aacquire_setup_lock",
    "acquire_setup_lock",
    "ainspect",
    "amigrate",
    "inspect_sync",
    "migrate",
]

SETUP_WAIT_SECONDS = 30.0
"""Longest wait for another process's set-up (it takes milliseconds once tables exist)."""
_POLL_FIRST, _POLL_MAX = 0.005, 0.1


class SetupLockTimeout(TimeoutError):
    """Another session held the setup lock for longer than the wait allowed."""


@dataclass(frozen=True, slots=True)
class PostgresState:
    """What a driver found in its database at first use."""

    store_schema: int | None
    """LangGraph's store migration version (None: the store is not set up)."""
    own_schema: int | None
    """The version of this project's migrations (None: none applied)."""
    error: str | None = None
    """Why this project's migrations could not be applied, if they could not."""

    @property
    def usable(self) -> bool:
        """Whether the SQL path may run: LangGraph's schema is the one the SQL was
        written for, and this project's migrations are applied, or newer ones (a newer
        deploy installed them: migrations only add or fix functions and keep their
        signatures, so this code's functions are still there and still right)."""
        return (
            self.store_schema == sql.STORE_SCHEMA_VERSION
            and self.own_schema is not None
            and self.own_schema >= len(sql.MIGRATIONS) - 1
        )

    def fallback(self, store: BaseStore, backend: str) -> GenericDriver:
        """Warn once why the SQL path is off, and return the generic driver."""
        fields: dict[str, object]
        if self.store_schema != sql.STORE_SCHEMA_VERSION:
            event, fields = (
                "history_store_schema_unknown",
                {
                    "found_version": self.store_schema,
                    "expected_version": sql.STORE_SCHEMA_VERSION,
                },
            )
        else:
            event, fields = "history_migration_failed", {"error": self.error}
        warn_once(store, event, backend=backend, fallback="generic", **fields)
        return GenericDriver(store, backend)

    def describe(self) -> dict[str, Any]:
        return {
            "store_schema_version": self.store_schema,
            "history_schema_version": self.own_schema,
        }


def _poll_delays(wait: float) -> Any:
    deadline = time.monotonic() + wait
    delay = _POLL_FIRST
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        yield min(left, delay * (0.5 + random.random()))
        delay = min(_POLL_MAX, delay * 2)


def acquire_setup_lock(conn: Connection[Any], wait: float) -> None:
    """Take the setup lock on ``conn`` (a session lock; closing the session or
    ``SETUP_UNLOCK_SQL`` releases it).

    Raises:
        SetupLockTimeout: it was held elsewhere for longer than ``wait`` seconds.
    """
    for delay in _poll_delays(wait):
        row = conn.execute(sql.SETUP_TRY_LOCK_SQL).fetchone()
        if row is not None and _first(row):
            return
        time.sleep(delay)
    raise SetupLockTimeout(f"setup lock held elsewhere for more than {wait:g}s")


async def aacquire_setup_lock(conn: AsyncConnection[Any], wait: float) -> None:
    """Async `acquire_setup_lock`."""
    for delay in _poll_delays(wait):
        cur = await conn.execute(sql.SETUP_TRY_LOCK_SQL)
        row = await cur.fetchone()
        if row is not None and _first(row):
            return
        await asyncio.sleep(delay)
    raise SetupLockTimeout(f"setup lock held elsewhere for more than {wait:g}s")


def _columns(row: Any) -> list[Any]:
    """A row's values, whatever the connection's row factory."""
    if row is None:
        return []
    return list(row.values()) if isinstance(row, dict) else list(row)


def _first(row: Any) -> Any:
    return _columns(row)[0]


# The migrations table is made only when it is not there: a role without CREATE (a
# least-privilege application role, a read-only standby) opens a set-up database.
_TABLE_EXISTS = "SELECT to_regclass(%s) IS NOT NULL"
_CREATE_MIGRATIONS = f"CREATE TABLE IF NOT EXISTS {sql.MIGRATIONS_TABLE} (v INTEGER PRIMARY KEY)"


def _records_all(version: Any, migrations: int) -> bool:
    """Whether a ``max(v)`` row records LangGraph's ``migrations`` (versions from 0)."""
    value = None if version is None else _first(version)
    return value is not None and int(value) >= migrations - 1


TABLES_ELSEWHERE = "postgres_tables_in_later_schema"
"""The warning set-up logs when it uses LangGraph's tables in a later schema of
``search_path`` than the one it would create them in."""

# The schema an unqualified name finds the table in, beside the one it would be made in.
_TABLE_SCHEMA = (
    "SELECT n.nspname, current_schema() FROM pg_class c"
    " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass(%s)"
)


def _warn_if_elsewhere(row: Any, table: str) -> None:
    """Warn when set-up is skipped for tables (``row`` of `_TABLE_SCHEMA`) that are not in
    the schema it would create them in: a tenant's ``search_path=tenant_a,public`` while
    ``tenant_a`` has none of LangGraph's tables shares ``public``'s."""
    schema, first = _columns(row)
    if schema != first and not str(first).startswith("pg_temp_"):
        obs.log_event(
            TABLES_ELSEWHERE,
            table=table,
            schema=schema,
            first_schema=first,
            hint=(
                f"open it once with search_path={_identifier(str(first))} alone to give "
                f"{first!r} tables of its own (docs/configuration.md)"
            ),
        )


def _identifier(name: str) -> str:
    """``name`` as ``search_path`` takes it (quoted unless a plain lower-case name)."""
    if re.fullmatch(r"[a-z_][a-z0-9_$]*", name):
        return name
    return '"' + name.replace('"', '""') + '"'


def langgraph_current(conn: Connection[Any], table: str, migrations: int) -> bool:
    """Whether LangGraph's migrations table ``table`` records all ``migrations`` (its
    ``setup()`` would change nothing, and needs CREATE to say so)."""
    row = conn.execute(_TABLE_SCHEMA, (table,), prepare=False).fetchone()
    if row is None:
        return False
    version = conn.execute(f"SELECT max(v) FROM {table}", prepare=False).fetchone()
    if not _records_all(version, migrations):
        return False
    _warn_if_elsewhere(row, table)
    return True


async def alanggraph_current(conn: AsyncConnection[Any], table: str, migrations: int) -> bool:
    """Async `langgraph_current`."""
    row = await (await conn.execute(_TABLE_SCHEMA, (table,), prepare=False)).fetchone()
    if row is None:
        return False
    version = await (await conn.execute(f"SELECT max(v) FROM {table}", prepare=False)).fetchone()
    if not _records_all(version, migrations):
        return False
    _warn_if_elsewhere(row, table)
    return True


def migrate(conn: Connection[Any]) -> int:
    """Apply this project's missing migrations; the caller holds the setup lock.

    Returns:
        The version now applied.
    """
    if not _first(conn.execute(_TABLE_EXISTS, (sql.MIGRATIONS_TABLE,), prepare=False).fetchone()):
        conn.execute(_CREATE_MIGRATIONS, prepare=False)
    row = conn.execute(sql.OWN_VERSION_SQL, prepare=False).fetchone()
    current = None if row is None else _first(row)
    for version, text in sql.migration_statements(current):
        with conn.transaction():
            conn.execute(text, prepare=False)
            conn.execute(sql.RECORD_VERSION_SQL, (version,), prepare=False)
        current = version
    return -1 if current is None else int(current)


async def amigrate(conn: AsyncConnection[Any]) -> int:
    """Async `migrate`."""
    exists = await (
        await conn.execute(_TABLE_EXISTS, (sql.MIGRATIONS_TABLE,), prepare=False)
    ).fetchone()
    if not _first(exists):
        await conn.execute(_CREATE_MIGRATIONS, prepare=False)
    cur = await conn.execute(sql.OWN_VERSION_SQL, prepare=False)
    row = await cur.fetchone()
    current = None if row is None else _first(row)
    for version, text in sql.migration_statements(current):
        async with conn.transaction():
            await conn.execute(text, prepare=False)
            await conn.execute(sql.RECORD_VERSION_SQL, (version,), prepare=False)
        current = version
    return -1 if current is None else int(current)


def _versions(rows: list[Any]) -> int | None:
    value = _first(rows[0]) if rows else None
    return None if value is None else int(value)


def _lock_wait() -> float:
    left = budget.remaining()
    return SETUP_WAIT_SECONDS if left is None else max(0.0, min(SETUP_WAIT_SECONDS, left))


def inspect_sync(conn: Connection[Any]) -> PostgresState:
    """Read both schema versions; apply this project's migrations when LangGraph's schema
    is the expected one and ours is behind."""
    row = conn.execute(sql.INSPECT_SQL, prepare=False).fetchone()
    has_store, has_own = _columns(row) or [False, False]
    if not has_store:
        return PostgresState(None, None)
    store_v = _versions(conn.execute(sql.STORE_VERSION_SQL, prepare=False).fetchall())
    own_v = (
        _versions(conn.execute(sql.OWN_VERSION_SQL, prepare=False).fetchall()) if has_own else None
    )
    if store_v != sql.STORE_SCHEMA_VERSION or _current(own_v):
        return PostgresState(store_v, own_v)
    try:
        acquire_setup_lock(conn, _lock_wait())
        try:
            own_v = migrate(conn)
        finally:
            conn.execute(sql.SETUP_UNLOCK_SQL, prepare=False)
    except (psycopg.Error, SetupLockTimeout) as exc:
        _log_migration_failure(exc)
        return PostgresState(store_v, own_v, obs.describe_error(exc))
    return PostgresState(store_v, own_v)


async def ainspect(conn: AsyncConnection[Any]) -> PostgresState:
    """Async `inspect_sync`."""
    row = await (await conn.execute(sql.INSPECT_SQL, prepare=False)).fetchone()
    has_store, has_own = _columns(row) or [False, False]
    if not has_store:
        return PostgresState(None, None)
    store_v = _versions(await (await conn.execute(sql.STORE_VERSION_SQL, prepare=False)).fetchall())
    own_v = None
    if has_own:
        own_v = _versions(await (await conn.execute(sql.OWN_VERSION_SQL, prepare=False)).fetchall())
    if store_v != sql.STORE_SCHEMA_VERSION or _current(own_v):
        return PostgresState(store_v, own_v)
    try:
        await aacquire_setup_lock(conn, _lock_wait())
        try:
            own_v = await amigrate(conn)
        finally:
            await conn.execute(sql.SETUP_UNLOCK_SQL, prepare=False)
    except (psycopg.Error, SetupLockTimeout) as exc:
        _log_migration_failure(exc)
        return PostgresState(store_v, own_v, obs.describe_error(exc))
    return PostgresState(store_v, own_v)


def _current(own: int | None) -> bool:
    """Whether this project's migrations need nothing applied (they are this code's, or
    a newer deploy's)."""
    return own is not None and own >= len(sql.MIGRATIONS) - 1


def _log_migration_failure(exc: BaseException) -> None:
    obs.log_event("history_migration_failed", level=logging.DEBUG, error=obs.describe_error(exc))
