"""`agent-history doctor` reports the switches in force, the triggers and the audit file."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from agent_history.cli import app

PREFIX = "ORCHEO_GRAPH_CHAT_HISTORY_"


def test_doctor_reports_triggers_node_modes_and_the_audit_file(tmp_path: Path) -> None:
    flags = tmp_path / "flags.json"
    flags.write_text(
        json.dumps({"nodes": {"support": {"mode": "shadow"}}, "triggers": {"write_p95_seconds": 3}})
    )
    env = {
        "ORCHEO_GRAPH_STORE_BACKEND": "sqlite",
        "ORCHEO_GRAPH_STORE_SQLITE_PATH": str(tmp_path / "s.sqlite"),
        "ORCHEO_CHECKPOINT_SQLITE_PATH": str(tmp_path / "c.sqlite"),
        PREFIX + "FLAGS_FILE": str(flags),
        PREFIX + "TRIGGER_ERROR_RATE": "0.1",
        PREFIX + "TRIGGER_ACTION": "read_only",
        PREFIX + "AUDIT_FILE": str(tmp_path / "audit.jsonl"),
    }
    result = CliRunner().invoke(app, ["doctor", "--json"], env=env)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["triggers"] == (
        "error rate > 10% or write p95 > 3s over 60s (>= 20 calls) sets read_only for 300s, "
        "then probes"
    )
    assert report["node_modes"] == {"support": "shadow"}
    assert report["audit_file"] == str(tmp_path / "audit.jsonl")
    off = CliRunner().invoke(
        app,
        ["doctor", "--json"],
        env={k: v for k, v in env.items() if "TRIGGER" not in k and "FLAGS" not in k},
    )
    assert json.loads(off.stdout)["triggers"].startswith("off")


def test_doctor_refuses_nan_thresholds(tmp_path: Path) -> None:
    env = {
        "ORCHEO_GRAPH_STORE_SQLITE_PATH": str(tmp_path / "s.sqlite"),
        "ORCHEO_CHECKPOINT_SQLITE_PATH": str(tmp_path / "c.sqlite"),
        PREFIX + "BREAKER_FAILURE_RATIO": "nan",
    }
    result = CliRunner().invoke(app, ["doctor"], env=env)
    assert result.exit_code == 2
    assert f"{PREFIX}BREAKER_FAILURE_RATIO" in result.output and "Traceback" not in result.output
