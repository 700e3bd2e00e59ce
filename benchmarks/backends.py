"""Open each backend with the systems that run on it; start a throwaway PostgreSQL if asked."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
from langgraph.store.base import BaseStore

from agent_history.settings import HistorySettings
from agent_history.stores import create_graph_store_sync
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

__all__ = ["BACKENDS", "BackendRun", "PostgresTarget", "open_backend", "postgres_target"]

BACKENDS = ("memory", "sqlite", "postgres")


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

    def settle(self) -> None:
        """Bring the database to its steady state after a bulk load (untimed).

        On PostgreSQL that means fresh planner statistics, which autovacuum would gather
        on a live server within a minute or so. Without them the planner may answer
        LangGraph's store GET query by scanning every item of the conversation's
        namespace, which makes the store's reads grow with the conversation.
        """
        if self.name == "postgres" and self.dsn:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                conn.execute("ANALYZE")

    def system(self, name: str) -> HistorySystem | None:
        """The system called ``name``, if it runs on this backend."""
        return next((s for s in self.systems if s.name == name), None)


def _server_version(dsn: str) -> str:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return str(row[0]) if row else "?"


@contextmanager
def postgres_target(dsn: str | None) -> Iterator[PostgresTarget]:
    """Use ``dsn``, or start a throwaway server (removed on exit) and make a database in it."""
    if dsn:
        yield PostgresTarget(dsn, _server_version(dsn), started_here=False)
        return
    # Imported here: the server helper lives with the tests and needs PostgreSQL binaries.
    from tests.support.postgres_server import PostgresServer

    server = PostgresServer()
    try:
        server.start()
        created = server.create_database("agent_history_bench")
        yield PostgresTarget(created, server.version(), started_here=True)
    finally:
        server.remove()


def _settings(name: str, workdir: Path, cfg: BenchConfig, dsn: str | None) -> HistorySettings:
    if name == "postgres":
        # One process, one writer: a small pool, kept open (min = max) so no call waits
        # for a new connection.
        return HistorySettings(
            graph_store_backend="postgres",
            postgres_dsn=dsn,
            postgres_pool_min_size=2,
            postgres_pool_max_size=2,
        )
    return HistorySettings(
        graph_store_backend=name,
        graph_store_sqlite_path=workdir / "store.sqlite",
        checkpoint_sqlite_path=workdir / "checkpoints.sqlite",
        # Writer processes queue for SQLite's one write lock: let them wait.
        graph_store_sqlite_busy_timeout=60.0,
    )


@contextmanager
def open_backend(
    name: str, workdir: Path, cfg: BenchConfig, dsn: str | None = None
) -> Iterator[BackendRun]:
    """Open the store of backend ``name`` and build the systems measured on it."""
    if name == "postgres" and not dsn:
        raise ValueError("the postgres backend needs a DSN")
    chars = cfg.content_chars
    settings = _settings(name, workdir, cfg, dsn)
    with ExitStack() as stack:
        store = stack.enter_context(create_graph_store_sync(settings))
        systems: list[HistorySystem] = [
            OursSystem(name, chars, store),
            OursPlainSystem(name, chars, store),
            NaiveSystem(name, chars, store),
        ]
        if name == "postgres":
            assert dsn is not None
            systems.append(LangchainPostgresSystem(name, chars, dsn))
            systems.append(PostgresFloor(name, chars, dsn))
        elif name == "sqlite":
            systems.append(SqliteFloor(name, chars, workdir / "floor.sqlite"))
        else:
            systems.append(MemoryFloor(name, chars))
        for system in systems:
            stack.callback(system.close)
        yield BackendRun(name, store, systems, dsn, settings)
