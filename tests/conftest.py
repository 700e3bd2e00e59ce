"""Shared fixtures: a throwaway PostgreSQL server and stores parametrised over backends."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from langgraph.store.base import BaseStore

from agent_history.settings import HistorySettings
from agent_history.stores import create_graph_store, create_graph_store_sync
from tests.support.postgres_server import PostgresServer, PostgresServerError

BACKENDS = [
    "memory",
    "sqlite",
    pytest.param("postgres", marks=pytest.mark.postgres),
]
PERSISTENT_BACKENDS = [
    "sqlite",
    pytest.param("postgres", marks=pytest.mark.postgres),
]

_postgres_outcomes: dict[str, int] = {"passed": 0, "failed": 0, "skipped": 0}


@pytest.fixture(autouse=True)
def _no_benchmark_dsn_from_the_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    """A benchmark DSN exported in the developer's shell must not point the suite's
    benchmark runs at that database (the tests that read it set it themselves)."""
    monkeypatch.delenv("AGENT_HISTORY_BENCH_POSTGRES_DSN", raising=False)


_postgres_version: list[str] = []


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """Start a throwaway PostgreSQL server once per session.

    Under CI=true a server that cannot start fails the tests that need it; elsewhere
    they are skipped with the reason. Tests that need a server of their own (fresh
    databases, stopping it for an outage) use this even when an external DSN is given.
    """
    server = PostgresServer()
    try:
        server.start()
    except (PostgresServerError, OSError) as exc:
        server.remove()
        message = f"throwaway PostgreSQL server could not start: {exc}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    _postgres_version.append(server.version())
    try:
        yield server
    finally:
        server.remove()


@pytest.fixture(scope="session")
def pg_dsn(request: pytest.FixtureRequest) -> str:
    """DSN of a database for this test session: ``AGENT_HISTORY_TEST_POSTGRES_DSN`` (a
    scratch database on a server of your own; no server is started for it) or a database
    created on the throwaway server."""
    external = os.environ.get("AGENT_HISTORY_TEST_POSTGRES_DSN")
    if external:
        return external
    server: PostgresServer = request.getfixturevalue("pg_server")
    return server.create_database("agent_history_tests")


@pytest.fixture
def fresh_pg_dsn(pg_server: PostgresServer) -> str:
    """DSN of a brand-new, empty database for one test."""
    return pg_server.create_database("t_" + uuid.uuid4().hex[:16])


def settings_for(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> HistorySettings:
    """Settings pointing at ``backend``: a temp SQLite file, or the session's Postgres."""
    values: dict[str, Any] = {
        "graph_store_backend": backend,
        "graph_store_sqlite_path": tmp_path / "store.sqlite",
        "checkpoint_sqlite_path": tmp_path / "checkpoints.sqlite",
    }
    if backend == "postgres":
        values["postgres_dsn"] = request.getfixturevalue("pg_dsn")
        values["postgres_pool_max_size"] = 20
    return HistorySettings(**values)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=PERSISTENT_BACKENDS)
def persistent_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def settings(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> HistorySettings:
    return settings_for(backend, tmp_path, request)


@pytest.fixture
def persistent_settings(
    persistent_backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> HistorySettings:
    return settings_for(persistent_backend, tmp_path, request)


@pytest.fixture
def store(settings: HistorySettings) -> Iterator[BaseStore]:
    """A set-up sync graph store of each backend."""
    with create_graph_store_sync(settings) as opened:
        yield opened


@pytest.fixture
async def astore(settings: HistorySettings) -> AsyncIterator[BaseStore]:
    """A set-up async graph store of each backend."""
    async with create_graph_store(settings) as opened:
        yield opened


@pytest.fixture
def ns() -> tuple[str, ...]:
    """A namespace unique to the test, so tests sharing the Postgres database never meet."""
    return ("agent_chat_history", "t" + uuid.uuid4().hex[:12])


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if "postgres" not in report.keywords:
        return
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        _postgres_outcomes[report.outcome] += 1


def pytest_terminal_summary(terminalreporter: Any) -> None:
    counts = ", ".join(f"{n} {k}" for k, n in _postgres_outcomes.items())
    servers = [f"PostgreSQL {v}" for v in _postgres_version[:1]]
    if os.environ.get("AGENT_HISTORY_TEST_POSTGRES_DSN"):
        servers.append("AGENT_HISTORY_TEST_POSTGRES_DSN")
    server = " + ".join(servers) or "PostgreSQL not started"
    terminalreporter.write_line(f"postgres tests: {counts} (server: {server})")
