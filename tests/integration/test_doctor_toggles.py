"""`agent-history doctor` reports the switches in force, the triggers and the audit file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent_history.cli import app
from agent_history.toggles import HistoryToggles

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


def _env(tmp_path: Path, **values: str) -> dict[str, str]:
    (tmp_path / "s.sqlite").touch()  # an existing store (a new one is a warning of its own)
    return {
        "ORCHEO_GRAPH_STORE_BACKEND": "sqlite",
        "ORCHEO_GRAPH_STORE_SQLITE_PATH": str(tmp_path / "s.sqlite"),
        "ORCHEO_CHECKPOINT_SQLITE_PATH": str(tmp_path / "c.sqlite"),
        **{PREFIX + k.upper(): v for k, v in values.items()},
    }


def test_doctor_refuses_an_audit_file_no_process_could_append_to(tmp_path: Path) -> None:
    """At run time each process would warn once and keep no audit trail at all: the
    deploy-time check says so first (exit 2, naming the variable)."""
    (tmp_path / "a-directory").mkdir()
    cases = {
        str(tmp_path / "missing-dir" / "audit.jsonl"): "No such file or directory",
        str(tmp_path / "a-directory"): "Is a directory",
    }
    for path, reason in cases.items():
        result = CliRunner().invoke(app, ["doctor"], env=_env(tmp_path, audit_file=path))
        assert result.exit_code == 2, result.output
        assert f"{PREFIX}AUDIT_FILE" in result.output and reason in result.output
        assert "Traceback" not in result.output
    # A file that does not exist yet in a writable directory is fine, and doctor leaves
    # it to the service to create (as its own user, with its own permissions).
    fine = tmp_path / "audit.jsonl"
    result = CliRunner().invoke(app, ["doctor"], env=_env(tmp_path, audit_file=str(fine)))
    assert result.exit_code == 0, result.output
    assert not fine.exists()


def test_a_bad_trigger_action_is_named_in_plain_words(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["doctor"], env=_env(tmp_path, trigger_action="shadow", trigger_error_rate="0.1")
    )
    assert result.exit_code == 2
    assert f"{PREFIX}TRIGGER_ACTION: must be read_only or off (got 'shadow')" in " ".join(
        result.output.split()
    )
    assert "HistoryMode" not in result.output
    flags = tmp_path / "flags.json"
    flags.write_text(json.dumps({"triggers": {"action": "shadow"}}))
    toggles = HistoryToggles(env={PREFIX + "FLAGS_FILE": str(flags)})
    toggles.current()
    problem = toggles.flags_file_problem()
    assert problem is not None and "triggers.action: must be read_only or off" in problem
    assert "HistoryMode" not in problem


def test_doctor_warns_of_a_latency_trigger_its_budget_keeps_from_firing(tmp_path: Path) -> None:
    env = _env(tmp_path, trigger_read_p95_seconds="3", trigger_write_p95_seconds="3")
    result = CliRunner().invoke(app, ["doctor", "--json"], env=env)
    assert result.exit_code == 0, result.output  # a warning, not an invalid configuration
    [warning] = json.loads(result.stdout)["warnings"]
    assert warning.startswith(
        f"{PREFIX}TRIGGER_READ_P95_SECONDS=3 can never fire: calls are cut at "
        f"{PREFIX}READ_TIMEOUT_SECONDS=2"
    )  # the write budget (5 s) leaves the write trigger room
    text = CliRunner().invoke(app, ["doctor"], env={**env, PREFIX + "READ_TIMEOUT_SECONDS": "5"})
    assert text.exit_code == 0 and "warning" not in text.output
    lower = CliRunner().invoke(app, ["doctor"], env=_env(tmp_path, trigger_read_p95_seconds="1.5"))
    assert "warning" not in lower.output
    # At the budget it fires (a call cut there lasts a little longer): no warning.
    equal = CliRunner().invoke(app, ["doctor"], env=_env(tmp_path, trigger_read_p95_seconds="2"))
    assert "warning" not in equal.output


def test_doctor_warns_of_node_modes_a_global_rollback_does_not_reach(tmp_path: Path) -> None:
    """Phase 3 leaves opted-in nodes at their own read_write: a global read_only (rollback
    step 2) does not reach them, and doctor says so instead of reporting read_only alone."""
    flags = tmp_path / "flags.json"
    flags.write_text(
        json.dumps(
            {
                "mode": "read_only",
                "nodes": {"support": {"mode": "read_write"}, "sales": {"mode": "read_only"}},
            }
        )
    )
    env = _env(tmp_path, FLAGS_FILE=str(flags))
    result = CliRunner().invoke(app, ["doctor", "--json"], env=env)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["mode"] == "read_only"
    assert report["warnings"] == [
        "node 'support' keeps its own mode read_write (flags file nodes or code), which "
        "overrides the global mode read_only; set its mode too, or use mode off"
    ]
    flags.write_text(json.dumps({"mode": "off", "nodes": {"support": {"mode": "read_write"}}}))
    quiet = CliRunner().invoke(app, ["doctor", "--json"], env=env)
    assert json.loads(quiet.stdout)["warnings"] == []  # off reaches every node


@pytest.mark.parametrize(
    ("value", "disabled"),
    [
        ("support_agent, billing_agent", ["billing_agent", "support_agent"]),
        ('["support_agent", "billing agent"]', ["billing agent", "support_agent"]),
        ("support_agent billing_agent", None),
        ("support_agent;billing_agent", None),
        ('"support_agent"', None),
        ('["support_agent"', None),
        ("(support_agent,billing_agent)", None),
        ("support_agent|billing_agent", None),
        ("support_agent\uff0cbilling_agent", None),  # a full-width comma
        ('\ufeff["support_agent"]', ["support_agent"]),
    ],
)
def test_disabled_nodes_in_another_list_syntax_disable_them_or_are_refused(
    tmp_path: Path, value: str, disabled: list[str] | None
) -> None:
    """Rollback step 1 with the list written as JSON, or with spaces or semicolons: each
    was read as node names that no graph has, so the nodes went on writing while doctor
    said ok. A JSON list is read as one; the others are refused, naming the variable."""
    env = _env(tmp_path, disabled_nodes=value)
    result = CliRunner().invoke(app, ["doctor", "--json"], env=env)
    if disabled is None:
        assert result.exit_code == 2, result.output
        assert result.output.startswith(f"error: {PREFIX}DISABLED_NODES: ")
        return
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["disabled_nodes"] == disabled
    toggles = HistoryToggles(env={PREFIX + "DISABLED_NODES": value})
    for node in disabled:
        assert toggles.decide(node, node_enabled=True).reason == "node_disabled"


def test_doctor_warns_of_variables_under_its_prefixes_it_does_not_read(tmp_path: Path) -> None:
    """A rollback with a typo in the variable's name (``..._MDOE=off``) changes nothing:
    doctor said ok without a word. It now names the variable and the one meant."""
    env = {
        **_env(tmp_path, mdoe="off", disabled_node="billing"),
        "ORCHEO_GRAPH_STORE_SQLITE_PAHT": "/srv/store.sqlite",
        PREFIX + "MODE": " ",
        "ORCHEO_OTHER_PROGRAM_SETTING": "1",  # not under agent-history's prefixes
    }
    result = CliRunner().invoke(app, ["doctor", "--json"], env=env)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["mode"] == "read_write" and report["disabled_nodes"] == []
    assert report["warnings"] == [
        f"{PREFIX}DISABLED_NODE is not a variable agent-history reads "
        f"(did you mean {PREFIX}DISABLED_NODES?): it has no effect",
        f"{PREFIX}MDOE is not a variable agent-history reads "
        f"(did you mean {PREFIX}MODE?): it has no effect",
        "ORCHEO_GRAPH_STORE_SQLITE_PAHT is not a variable agent-history reads "
        "(did you mean ORCHEO_GRAPH_STORE_SQLITE_PATH?): it has no effect",
        f"{PREFIX}MODE is set but empty: read as unset, so the mode is read_write",
    ]
    clean = CliRunner().invoke(app, ["doctor", "--json"], env=_env(tmp_path))
    assert json.loads(clean.stdout)["warnings"] == []


def test_doctor_on_a_sqlite_path_with_no_file_says_it_made_an_empty_store(
    tmp_path: Path,
) -> None:
    """A mistyped store path passed every check: doctor's set-up made an empty store
    there and said ok. It still passes (a first deployment has no file yet), and says so."""
    env = _env(tmp_path)
    (tmp_path / "s.sqlite").unlink()
    first = CliRunner().invoke(app, ["doctor", "--json"], env=env)
    assert first.exit_code == 0, first.output
    path = tmp_path / "s.sqlite"
    assert json.loads(first.stdout)["warnings"] == [
        f"ORCHEO_GRAPH_STORE_SQLITE_PATH: {path} did not exist: doctor created an empty "
        "store there; if the workers' conversations are elsewhere, the path is wrong"
    ]
    again = CliRunner().invoke(app, ["doctor", "--json"], env=env)
    assert json.loads(again.stdout)["warnings"] == []
