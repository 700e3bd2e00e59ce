"""The benchmark suite's smoke mode runs end to end and writes complete results.

No timing is asserted: the numbers depend on the machine. What must hold is that every
system was measured on every backend it runs on, and that our history lost no turn.
"""

from __future__ import annotations

import json
import math
import uuid
from pathlib import Path

import psycopg
import pytest
from benchmarks import run as bench
from benchmarks.modes import MODES

from tests.support.postgres_server import PostgresServer

pytestmark = pytest.mark.postgres

SYSTEMS = {
    "memory": {"ours", "ours-basestore", "naive", "floor"},
    "sqlite": {"ours", "ours-basestore", "naive", "floor"},
    "postgres": {"ours", "ours-basestore", "naive", "langchain-postgres", "floor"},
}


def test_smoke_run_writes_complete_results(
    pg_server: PostgresServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dsn = pg_server.create_database("bench_" + uuid.uuid4().hex[:12])
    assert bench.main(["--smoke", "--out", str(tmp_path), "--postgres-dsn", dsn]) == 0

    results = json.loads((tmp_path / "results.json").read_text())
    summary = (tmp_path / "results.md").read_text()
    assert summary.startswith("# Store-latency benchmark (smoke run)")
    assert "## Targets" in capsys.readouterr().out
    assert {p.name for p in tmp_path.glob("*.png")} == {
        f"latency_{backend}_{op}.png" for backend in SYSTEMS for op in ("tail", "append")
    }
    meta = results["meta"]
    assert meta["postgres_started_here"] is False  # the session's server was reused
    assert meta["postgres_version"]
    assert meta["cpu_count"] and meta["sqlite_version"] and meta["packages"]["langgraph"]

    cfg = MODES["smoke"]
    cells = {(r["backend"], r["system"], r["op"], r["length"]): r for r in results["latency"]}
    for backend, systems in SYSTEMS.items():
        for system in systems:
            for length in cfg.lengths:
                for op in ("tail", "append"):
                    row = cells.get((backend, system, op, length))
                    assert row is not None, (backend, system, op, length)
                    assert row["n"] >= 1 and math.isfinite(row["p50_ms"])
                assert cells[backend, system, "tail", length]["turns_returned"] == min(
                    length, cfg.tail_n
                )
                assert cells[backend, system, "append", length]["all_appends_stored"]

    ours = [r for r in results["concurrency"] if r["system"] == "ours"]
    assert {(r["backend"], r["writers"], r["keys"]) for r in ours} == {
        (backend, writers, keys)
        for backend in ("sqlite", "postgres")
        for writers in cfg.writers
        for keys in ("one_key", "distinct_keys")
    }
    assert all(r["lost_turns"] == 0 and r["errors"] == 0 for r in ours)
    assert any(r["system"] == "naive" for r in results["concurrency"])

    agent = results["agent_node"]
    if agent["rows"]:
        assert {r["backend"] for r in agent["rows"]} == set(SYSTEMS)
        assert all(r["appended"] == 2 and r["stored_read"] for r in agent["rows"])
    else:
        assert agent["notes"], "a skipped AgentNode measurement must say why"
    assert {t["status"] for t in results["targets"]} <= {"PASS", "MISS", "SKIP"}
    context = [t for t in results["targets"] if t["target"] == "flat context tail"]
    assert [t["backend"] for t in context] == list(SYSTEMS)
    assert all(t["status"] == "SKIP" for t in context)  # smoke lengths stop at 100

    # The run removed what it wrote (its namespace, its own tables); LangGraph's and the
    # history's schema stay.
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM store").fetchone() == (0,)
        tables = {
            str(r[0])
            for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        }
    assert not any(t.startswith(("lc_chat_", "floor_")) for t in tables), tables
