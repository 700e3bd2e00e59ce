"""Processes starting together on a new PostgreSQL database must not deadlock in set-up.

LangGraph's migrations run ``CREATE INDEX CONCURRENTLY``, which waits for every
transaction holding an older snapshot. A process waiting for the setup lock inside a
statement holds such a snapshot while the lock's holder runs that migration: the holder
waits for the waiter, the waiter for the holder, until the waiter's lock timeout (30 s)
fails it. The lock is now taken by polling ``pg_try_advisory_lock``, so a waiter is
never inside a statement.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from langgraph.checkpoint.postgres import PostgresSaver
from langgraph.store.postgres import PostgresStore

from agent_history import stores
from tests.reliability.conftest import Record, trials
from tests.support.postgres_server import PostgresServer

pytestmark = pytest.mark.postgres

REPO = Path(__file__).resolve().parents[2]
WAIT = 30.0
MIGRATION_LOCK_TIMEOUT = "5s"


def _opener(dsn: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.support.open_stores", dsn],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_waiter(holder: psycopg.Connection[tuple[object, ...]]) -> None:
    """Until another session of this database has asked for the setup lock."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        row = holder.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND query ILIKE '%%advisory_lock%%'"
        ).fetchone()
        if row and row[0]:
            return
        time.sleep(0.01)
    raise AssertionError("the second process never asked for the setup lock")


@pytest.mark.parametrize("kind", ["store", "checkpointer"])
def test_a_process_waiting_for_setup_does_not_block_the_holders_migrations(
    kind: str, fresh_pg_dsn: str, record_figures: Record
) -> None:
    with psycopg.connect(fresh_pg_dsn, autocommit=True) as holder:
        # This test is the first process: it holds the setup lock...
        holder.execute("SELECT pg_advisory_lock(%s)", (stores._PG_SETUP_LOCK_ID,))
        waiter = _opener(fresh_pg_dsn)
        try:
            _wait_for_waiter(holder)
            # ... and runs LangGraph's migrations (CREATE INDEX CONCURRENTLY among them)
            # while the second process waits for the lock. A waiter holding a snapshot
            # would keep the index build waiting until this lock timeout.
            with psycopg.connect(fresh_pg_dsn, autocommit=True) as conn:
                conn.execute(f"SET lock_timeout = '{MIGRATION_LOCK_TIMEOUT}'")
                started = time.monotonic()
                if kind == "store":
                    PostgresStore(conn).setup()
                else:
                    PostgresSaver(conn).setup()
                migration_seconds = time.monotonic() - started
        finally:
            holder.execute("SELECT pg_advisory_unlock(%s)", (stores._PG_SETUP_LOCK_ID,))
            out, err = waiter.communicate(timeout=WAIT + 30)
    assert waiter.returncode == 0, err[-2000:]
    assert out.strip() == "opened"
    record_figures(
        scenario="setup_while_waiting",
        kind=kind,
        migration_seconds=round(migration_seconds, 3),
        waiter_failed=0,
    )


def test_workers_starting_together_on_a_new_database_all_start(
    pg_server: PostgresServer, record_figures: Record
) -> None:
    rounds = max(2, trials() // 10)
    workers = 4
    for _ in range(rounds):
        dsn = pg_server.create_database("t_start_" + str(time.monotonic_ns()))
        procs = [_opener(dsn) for _ in range(workers)]
        results = [p.communicate(timeout=WAIT + 30) for p in procs]
        for proc, (out, err) in zip(procs, results, strict=True):
            assert proc.returncode == 0, err[-2000:]
            assert out.strip() == "opened"
        with psycopg.connect(dsn, autocommit=True) as conn:
            indexes = conn.execute(
                "SELECT indexname FROM pg_indexes WHERE indexname IN "
                "('store_prefix_idx', 'checkpoints_thread_id_idx')"
            ).fetchall()
        assert len(indexes) == 2
    record_figures(scenario="concurrent_start", rounds=rounds, workers=workers, failed_workers=0)
