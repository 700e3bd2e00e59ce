"""Open each backend with the systems that run on it; start a throwaway PostgreSQL if asked.

Everything a run writes to a store lives under a namespace of its own
(``("agent_history_bench", <run id>)``, `bench_namespace`), so a database that also
holds an application's conversations is never read or changed by the benchmark. On
PostgreSQL that namespace, like the benchmark's own tables, is removed when the backend
is done, also when a measurement fails or the run is interrupted; in memory and in the
temporary SQLite file the whole store goes with the run.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from langgraph.store.base import BaseStore
from psycopg import sql

from agent_history.dsn import describe_dsn, parse_dsn
from agent_history.errors import ConfigError
from agent_history.redaction import safe_error_text
from agent_history.settings import Backend, HistorySettings
from agent_history.stores import create_graph_store_sync
from benchmarks.connections import CONNECT_TIMEOUT_S, connect
from benchmarks.modes import BenchConfig
from benchmarks.systems import (
    HistorySystem,
    LangchainPostgresSystem,
    MemoryFloor,
    NaiveSystem,
    OursPlainSystem,
    OursSystem,
    PostgresFloor,
    SqliteFloor,
)

__all__ = [
    "BACKENDS",
    "NAMESPACE_ROOT",
    "BackendRun",
    "BackendUnavailable",
    "PostgresTarget",
    "bench_namespace",
    "check_postgres",
    "connect",
    "dsn_problem",
    "open_backend",
    "postgres_target",
    "remove_namespace",
]

BACKENDS = ("memory", "sqlite", "postgres")
NAMESPACE_ROOT = "agent_history_bench"
"""First label of every namespace the benchmark writes to."""
_CLEANUP_STATEMENT_TIMEOUT = "60s"
"""Longest the removal of the run's rows may wait (a table locked by someone else)."""

Log = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def bench_namespace() -> tuple[str, str]:
    """A namespace no application uses and no other run shares."""
    return (NAMESPACE_ROOT, uuid.uuid4().hex[:12])


class BackendUnavailable(Exception):
    """A requested backend cannot be measured at all (unreachable server, no server
    binaries). The message is safe to print: it carries no password or DSN text."""


@dataclass(frozen=True, slots=True)
class PostgresTarget:
    """A database to benchmark in, and the server's version."""

    dsn: str
    version: str
    started_here: bool


@dataclass(slots=True)
class BackendRun:
    """One backend's store and the systems measured on it, in report order."""

    name: str
    store: BaseStore
    systems: list[HistorySystem]
    dsn: str | None = None
    settings: HistorySettings | None = None
    """How the store was opened (writer processes open their own from it)."""
    namespace: tuple[str, ...] = field(default_factory=bench_namespace)
    """The run's own namespace: every item the benchmark writes is under it."""

    def settle(self) -> None:
        """Bring the database to its steady state after a bulk load (untimed).

        On PostgreSQL that means fresh planner statistics of LangGraph's ``store``
        table and of the systems' own tables, which autovacuum would gather on a live
        server within a minute or so. Without them the planner may answer LangGraph's
        store GET query by scanning every item of the conversation's namespace, which
        makes the store's reads grow with the conversation. No other table of the
        database is analyzed.
        """
        if self.name == "postgres" and self.dsn:
            tables = ["store", *(t for s in self.systems for t in s.tables)]
            statement = sql.SQL("ANALYZE {}").format(
                sql.SQL(", ").join(sql.Identifier(t) for t in tables)
            )
            with connect(self.dsn, autocommit=True) as conn:
                conn.execute(statement)

    def system(self, name: str) -> HistorySystem | None:
        """The system called ``name``, if it runs on this backend."""
        return next((s for s in self.systems if s.name == name), None)


def _unreachable(dsn: str, exc: BaseException) -> BackendUnavailable:
    return BackendUnavailable(
        f"cannot connect to PostgreSQL at {describe_dsn(dsn)}: {safe_error_text(exc, dsn)}"
    )


def _server_version(dsn: str) -> str:
    try:
        with connect(dsn, autocommit=True) as conn:
            row = conn.execute("SHOW server_version").fetchone()
    except psycopg.Error as exc:
        raise _unreachable(dsn, exc) from None
    return str(row[0]) if row else "?"


def dsn_problem(dsn: str | None, option: str = "--postgres-dsn") -> str | None:
    """What is wrong with the DSN given as ``option``, checked as the library checks
    ``ORCHEO_POSTGRES_DSN`` (libpq's parser); None when it parses. The message names the
    problem, never any part of the DSN."""
    if dsn is None:
        return None
    if not dsn.strip():
        return f"{option}: is empty"
    try:
        parse_dsn(dsn.strip(), option)
        HistorySettings(graph_store_backend="postgres", postgres_dsn=dsn.strip())
    except ConfigError as exc:
        return str(exc)
    return None


def check_postgres(dsn: str | None) -> None:
    """Fail before anything is measured when PostgreSQL cannot be: ``dsn`` does not
    connect, or without one, no server binaries to start a throwaway server with.

    Raises:
        BackendUnavailable: with a message safe to print.
    """
    if dsn:
        _server_version(dsn)
        return
    try:
        from tests.support.postgres_server import find_pg_bin

        find_pg_bin()
    except Exception as exc:  # the helper is missing, or no binaries
        raise BackendUnavailable(f"cannot start a throwaway PostgreSQL server: {exc}") from None


@contextmanager
def postgres_target(dsn: str | None) -> Iterator[PostgresTarget]:
    """Use ``dsn``, or start a throwaway server (removed on exit) and make a database in it.

    Raises:
        BackendUnavailable: the database cannot be reached or the server not started.
    """
    if dsn:
        yield PostgresTarget(dsn, _server_version(dsn), started_here=False)
        return
    # Imported here: the server helper lives with the tests and needs PostgreSQL binaries.
    from tests.support.postgres_server import PostgresServer, PostgresServerError

    try:
        server = PostgresServer()
    except PostgresServerError as exc:
        raise BackendUnavailable(f"cannot start a throwaway PostgreSQL server: {exc}") from None
    try:
        try:
            server.start()
            created = server.create_database("agent_history_bench")
            version = server.version()
        except (PostgresServerError, OSError, psycopg.Error) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            reason = first if isinstance(exc, PostgresServerError) else safe_error_text(exc)
            raise BackendUnavailable(
                f"cannot start a throwaway PostgreSQL server: {reason}"
            ) from None
        yield PostgresTarget(created, version, started_here=True)
    finally:
        server.remove()


def remove_namespace(dsn: str, namespace: tuple[str, ...]) -> int:
    """Delete every item under ``namespace`` from LangGraph's ``store`` table, on a
    connection of its own (the store's may be mid-call when a run is interrupted);
    returns how many rows went. Only rows whose namespace is ``namespace`` or starts
    with it are touched."""
    prefix = ".".join(namespace)
    with connect(dsn, autocommit=True) as conn:
        conn.execute(f"SET statement_timeout = '{_CLEANUP_STATEMENT_TIMEOUT}'")
        cur = conn.execute(
            "DELETE FROM store WHERE prefix = %s OR starts_with(prefix, %s)",
            (prefix, prefix + "."),
        )
        return max(cur.rowcount, 0)


def _remove_quietly(dsn: str, namespace: tuple[str, ...], log: Log) -> None:
    """`remove_namespace`, reported; a failure is logged with what to delete by hand."""
    label = ".".join(namespace)
    by_hand = (
        f"delete them with DELETE FROM store WHERE prefix = '{label}' "
        f"OR starts_with(prefix, '{label}.')"
    )
    log(f"[postgres] removing the benchmark's items (namespace {label})")
    try:
        removed = remove_namespace(dsn, namespace)
    except Exception as exc:
        log(
            f"[postgres] could not remove the benchmark's items ({safe_error_text(exc, dsn)}): {by_hand}"
        )
        return
    except BaseException:  # Ctrl-C or SIGTERM while the delete waited: say what is left
        log(f"[postgres] stopped before the benchmark's items were removed: {by_hand}")
        raise
    log(f"[postgres] removed the benchmark's {removed} items (namespace {label})")


def _close_quietly(system: HistorySystem, dsn: str | None, log: Log) -> None:
    try:
        system.close()
    except Exception as exc:
        log(f"[{system.backend}] {system.name}: could not clean up: {safe_error_text(exc, dsn)}")
    except BaseException:  # Ctrl-C or SIGTERM during the clean-up
        log(f"[{system.backend}] {system.name}: stopped before its clean-up ended")
        raise


def _settings(name: str, workdir: Path, cfg: BenchConfig, dsn: str | None) -> HistorySettings:
    if name == "postgres":
        # One process, one writer: a small pool, kept open (min = max) so no call waits
        # for a new connection.
        return HistorySettings(
            graph_store_backend="postgres",
            postgres_dsn=dsn,
            postgres_pool_min_size=2,
            postgres_pool_max_size=2,
            postgres_connect_timeout=CONNECT_TIMEOUT_S,
        )
    return HistorySettings(
        graph_store_backend=Backend(name),
        graph_store_sqlite_path=workdir / "store.sqlite",
        checkpoint_sqlite_path=workdir / "checkpoints.sqlite",
        # Writer processes queue for SQLite's one write lock: let them wait.
        graph_store_sqlite_busy_timeout=60.0,
    )


@contextmanager
def open_backend(
    name: str,
    workdir: Path,
    cfg: BenchConfig,
    dsn: str | None = None,
    *,
    namespace: tuple[str, ...] | None = None,
    log: Log = _stderr,
) -> Iterator[BackendRun]:
    """Open the store of backend ``name`` and build the systems measured on it.

    Every system writes under ``namespace`` (a fresh `bench_namespace` by default). On
    PostgreSQL, the namespace's items and the systems' own tables are removed on exit,
    whatever ends the block.
    """
    if name == "postgres" and not dsn:
        raise ValueError("the postgres backend needs a DSN")
    namespace = namespace or bench_namespace()
    chars = cfg.content_chars
    settings = _settings(name, workdir, cfg, dsn)
    with ExitStack() as stack:
        if dsn is not None:
            # Registered first, so it runs last: after the store's pool is closed, no
            # connection of the run still holds a lock on the rows.
            stack.callback(_remove_quietly, dsn, namespace, log)
        store = stack.enter_context(create_graph_store_sync(settings))
        systems: list[HistorySystem] = []

        def add(system: HistorySystem) -> None:
            systems.append(system)
            stack.callback(_close_quietly, system, dsn, log)

        add(OursSystem(name, chars, store, namespace=(*namespace, "ours")))
        add(OursPlainSystem(name, chars, store, namespace=(*namespace, "ours")))
        add(NaiveSystem(name, chars, store, namespace=(*namespace, "naive")))
        if name == "postgres":
            assert dsn is not None
            add(LangchainPostgresSystem(name, chars, dsn))
            add(PostgresFloor(name, chars, dsn))
        elif name == "sqlite":
            add(SqliteFloor(name, chars, workdir / "floor.sqlite"))
        else:
            add(MemoryFloor(name, chars))
        yield BackendRun(name, store, systems, dsn, settings, namespace)
