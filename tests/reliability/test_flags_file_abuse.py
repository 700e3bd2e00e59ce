"""Hostile or broken flags files: no run raises, blocks or floods memory; doctor exits 2.

Each attack swaps a good flags file (``read_only``) for a bad one between runs of a real
graph on a real SQLite store: the runs keep answering under the last good flags, the
problem is logged once, and ``agent-history doctor`` names it and exits 2.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from langgraph.store.base import BaseStore
from typer.testing import CliRunner

from agent_history import AgentNode, HistoryReport
from agent_history.cli import app
from agent_history.errors import ConfigError
from agent_history.flags_file import MAX_FLAGS_FILE_BYTES
from agent_history.settings import HistorySettings
from agent_history.stores import create_graph_store_sync
from agent_history.testing import RecordingChatModel
from agent_history.toggles import HistoryMode, HistoryToggles, load_toggle_config
from tests.reliability.conftest import Record, examples
from tests.support.agent_graphs import build_graph, new_thread, telegram_callback, toggles

REPO = Path(__file__).resolve().parents[2]
FLAGS_VAR = "ORCHEO_GRAPH_CHAT_HISTORY_FLAGS_FILE"
PROBE_TIMEOUT = 60.0  # a run takes milliseconds; only a blocked read gets near this
DEEP = 100_000

WRONG_TYPES = {
    "disabled_nodes_number": '{"disabled_nodes": 5}',
    "nodes_number": '{"nodes": 5}',
    "node_modes_list": '{"node_modes": [1]}',
    "node_spec_number": '{"nodes": {"agent": 5}}',
    "node_mode_list": '{"nodes": {"agent": {"mode": ["off"]}}}',
    "disabled_nodes_numbers": '{"disabled_nodes": [1, 2]}',
    "mode_number": '{"mode": 5}',
    "mode_unknown": '{"mode": "sideways"}',
    "top_level_list": "[1, 2]",
    "top_level_string": '"off"',
    "unknown_key": '{"disabled_node": ["agent"]}',
    "trigger_rate_string": '{"triggers": {"error_rate": "high"}}',
    # Converted, these were 0.1, 1 call, 2 calls, 1 second: a trigger fired on the first
    # failing call of a fresh worker while doctor called the file valid.
    "trigger_rate_numeric_string": '{"triggers": {"error_rate": "0.1"}}',
    "trigger_min_calls_true": '{"triggers": {"error_rate": 0.5, "min_calls": true}}',
    "trigger_min_calls_float": '{"triggers": {"min_calls": 2.0}}',
    "trigger_p95_true": '{"triggers": {"read_p95_seconds": true}}',
    "trigger_window_true": '{"triggers": {"window_seconds": true}}',
    "trigger_rate_too_big": '{"triggers": {"error_rate": 1e999}}',
    "trigger_action_shadow": '{"triggers": {"error_rate": 0.1, "action": "shadow"}}',
    "nan_literal": '{"triggers": {"error_rate": NaN}}',
    "not_utf8": b'{"mode": "\xff\xfe"}',
}
DEEPLY_NESTED = {
    "json_lists": "[" * DEEP + "]" * DEEP,
    "json_objects": '{"a":' * DEEP + "1" + "}" * DEEP,
    "json_inside_a_field": '{"nodes": {"agent": {"mode": ' + "[" * 900 + "]" * 900 + "}}}",
}


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[BaseStore]:
    settings = HistorySettings(
        graph_store_backend="sqlite",
        graph_store_sqlite_path=tmp_path / "store.sqlite",
        checkpoint_sqlite_path=tmp_path / "checkpoints.sqlite",
    )
    with create_graph_store_sync(settings) as store:
        yield store


class Runs:
    """A graph whose node reads the flags file at ``path`` on every run."""

    def __init__(self, store: BaseStore, path: Path, toggles_: HistoryToggles | None = None):
        self.path = path
        self.reports: list[HistoryReport] = []
        self.toggles = toggles_ or toggles(flags_file=str(path))
        node = AgentNode(
            RecordingChatModel(),
            use_graph_chat_history=True,
            toggles=self.toggles,
            on_report=self.reports.append,
        )
        self.graph = build_graph(node, store)
        self.stamp = 1_000_000_000

    def write(self, content: str | bytes) -> None:
        data = content.encode() if isinstance(content, str) else content
        self.path.write_bytes(data)
        self.stamp += 1_000_000_000  # a distinct mtime without waiting for the clock
        os.utime(self.path, ns=(self.stamp, self.stamp))

    def run(self, text: str) -> HistoryReport:
        out = self.graph.invoke(telegram_callback(5, text), new_thread())
        assert out["messages"][-1].content == f"echo: {text}"
        return self.reports[-1]


def _invalid_events(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [
        r.__dict__["fields"]
        for r in caplog.records
        if r.__dict__.get("event") == "flags_file_invalid"
    ]


def _doctor(flags: Path, tmp_path: Path) -> Any:
    env = {
        "ORCHEO_GRAPH_STORE_BACKEND": "sqlite",
        "ORCHEO_GRAPH_STORE_SQLITE_PATH": str(tmp_path / "doctor.sqlite"),
        "ORCHEO_CHECKPOINT_SQLITE_PATH": str(tmp_path / "doctor-cp.sqlite"),
        FLAGS_VAR: str(flags),
    }
    return CliRunner().invoke(app, ["doctor"], env=env)


@pytest.mark.parametrize("case", sorted({**WRONG_TYPES, **DEEPLY_NESTED}))
def test_bad_flags_keep_the_last_good_ones_and_doctor_exits_2(
    case: str,
    sqlite_store: BaseStore,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    record_figures: Record,
) -> None:
    content = {**WRONG_TYPES, **DEEPLY_NESTED}[case]
    runs = Runs(sqlite_store, tmp_path / "flags.json")
    runs.write('{"mode": "read_only", "disabled_nodes": ["billing"]}')
    assert runs.run("before").decision_reason == "mode:read_only"
    with caplog.at_level(logging.WARNING, logger="agent_history"):
        runs.write(content)
        reasons = [runs.run(f"after {i}").decision_reason for i in range(3)]
    assert reasons == ["mode:read_only"] * 3  # the last good flags stay in force
    events = _invalid_events(caplog)
    assert len(events) == 1, events  # logged once, not on every run
    assert events[0]["path"] == str(runs.path) and events[0]["variable"] == FLAGS_VAR
    result = _doctor(runs.path, tmp_path)
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    assert f"{FLAGS_VAR}: {runs.path}:" in result.output.replace("\n", "")
    record_figures(attack=f"flags file: {case}", runs=4, failed_runs=0, doctor_exit=2)


@pytest.mark.parametrize("name", ["flags.json", "flags.toml"])
@pytest.mark.parametrize("content", ["", " \n\t\n"])
def test_an_emptied_flags_file_keeps_the_rollback_in_force(
    name: str,
    content: str,
    sqlite_store: BaseStore,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``echo 'mode = "read_write"' > flags.toml`` empties the file before it writes: a
    worker that reads it in between must not lift an ``off`` (an empty TOML document is
    valid TOML, with no keys). Empty is invalid in both formats; doctor says so."""
    runs = Runs(sqlite_store, tmp_path / name)
    runs.write('mode = "off"\n' if name.endswith(".toml") else '{"mode": "off"}')
    assert runs.run("before").decision_reason == "master_off"
    with caplog.at_level(logging.WARNING, logger="agent_history"):
        runs.write(content)
        assert runs.run("during").decision_reason == "master_off"
    assert len(_invalid_events(caplog)) == 1
    result = _doctor(runs.path, tmp_path)
    assert result.exit_code == 2 and "empty" in result.output, result.output
    runs.write("# no flags\n" if name.endswith(".toml") else "{}")
    assert runs.run("after").decision_reason == "mode:read_write"


def test_doctor_names_the_field_and_the_problem(tmp_path: Path) -> None:
    flags = tmp_path / "flags.json"
    flags.write_text('{"disabled_nodes": 5}')
    output = " ".join(_doctor(flags, tmp_path).output.split())
    assert "disabled_nodes" in output and "list of node names" in output
    flags.write_text('{"node_modes": {"agent": "loud"}}')
    output = " ".join(_doctor(flags, tmp_path).output.split())
    assert "node_modes.agent" in output and "read_write" in output


@pytest.mark.parametrize(
    "content",
    [
        "[triggers]\nerror_rate = nan\n",
        "[triggers]\nread_p95_seconds = inf\n",
        "[triggers]\nwindow_seconds = -inf\n",
        "mode = " + "[" * 5000 + "]" * 5000 + "\n",
    ],
)
def test_toml_nan_inf_and_nesting_are_configuration_errors(content: str, tmp_path: Path) -> None:
    flags = tmp_path / "flags.toml"
    flags.write_text(content)
    with pytest.raises(ConfigError) as caught:
        load_toggle_config({FLAGS_VAR: str(flags)})
    assert caught.value.variable == FLAGS_VAR
    toggles_ = toggles(flags_file=str(flags))
    assert toggles_.decide("agent", node_enabled=True).mode is HistoryMode.READ_WRITE
    assert toggles_.flags_file_problem() is not None


@pytest.mark.parametrize("name", ["flags.toml", "flags.TOML", "Flags.Toml"])
def test_a_toml_file_is_read_as_toml_whatever_the_case_of_its_extension(
    name: str, tmp_path: Path
) -> None:
    flags = tmp_path / name
    flags.write_text('mode = "read_only"\n[triggers]\nerror_rate = 0.2\nmin_calls = 5\n')
    config = load_toggle_config({FLAGS_VAR: str(flags)})
    assert config.mode is HistoryMode.READ_ONLY
    assert (config.triggers.error_rate, config.triggers.min_calls) == (0.2, 5)


def test_nan_thresholds_never_make_a_trigger_that_cannot_fire(tmp_path: Path) -> None:
    flags = tmp_path / "flags.json"
    flags.write_text('{"triggers": {"error_rate": 0.1}}')
    toggles_ = toggles(flags_file=str(flags))
    assert toggles_.current().triggers.error_rate == 0.1
    flags.write_text(json.dumps({"triggers": {"error_rate": math.nan}}))  # NaN token
    os.utime(flags, ns=(2_000_000_000, 2_000_000_000))
    assert toggles_.current().triggers.error_rate == 0.1  # the last good threshold


def test_oversized_file_is_refused_without_reading_it_all(
    sqlite_store: BaseStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    runs = Runs(sqlite_store, tmp_path / "flags.json")
    runs.write('{"mode": "read_only"}')
    runs.run("before")
    with caplog.at_level(logging.WARNING, logger="agent_history"):
        runs.write('{"disabled_nodes": [' + ",".join(['"n"'] * MAX_FLAGS_FILE_BYTES) + "]}")
        assert runs.run("after").decision_reason == "mode:read_only"
    assert "larger than" in _invalid_events(caplog)[0]["error"]


def _probe(flags: Path, tmp_path: Path, hostile: Path | None = None) -> dict[str, Any]:
    """Three runs in a child process with a timeout and a 2 GiB address-space limit;
    ``hostile`` is moved to ``flags`` once the node is made (see `flags_probe`)."""
    started = time.monotonic()
    args = [str(flags), str(tmp_path / "p.sqlite"), "3"]
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.support.flags_probe",
            *args,
            *([str(hostile)] if hostile else []),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=PROBE_TIMEOUT,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    result: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
    result["seconds"] = time.monotonic() - started
    return result


def test_a_fifo_as_flags_file_never_blocks_a_run(tmp_path: Path, record_figures: Record) -> None:
    flags, fifo = tmp_path / "flags.json", tmp_path / "fifo"
    os.mkfifo(fifo)
    try:
        result = _probe(flags, tmp_path, hostile=fifo)
    finally:
        # Should a reader be stuck in open(), a writer end lets it go.
        fd = os.open(flags, os.O_RDWR | os.O_NONBLOCK)
        os.close(fd)
    assert result["answers"] == ["echo: hello 0", "echo: hello 1", "echo: hello 2"]
    assert result["reasons"] == ["mode:read_write"] * 3
    invalid = [e for e in result["events"] if e["event"] == "flags_file_invalid"]
    assert [e["error"] for e in invalid] == ["is not a regular file"]
    record_figures(
        attack="flags file: FIFO", runs=3, failed_runs=0, seconds=round(result["seconds"], 2)
    )


def test_a_symlink_to_dev_zero_is_refused_in_bounded_memory(
    tmp_path: Path, record_figures: Record
) -> None:
    flags, zero = tmp_path / "flags.json", tmp_path / "zero"
    zero.symlink_to("/dev/zero")
    result = _probe(flags, tmp_path, hostile=zero)
    assert result["answers"] == ["echo: hello 0", "echo: hello 1", "echo: hello 2"]
    invalid = [e for e in result["events"] if e["event"] == "flags_file_invalid"]
    assert [e["error"] for e in invalid] == ["is not a regular file"]
    record_figures(
        attack="flags file: symlink to /dev/zero", runs=3, failed_runs=0, memory_limit_gib=2
    )


@pytest.mark.parametrize("kind", ["fifo", "dev_zero"])
def test_a_fifo_or_dev_zero_at_start_fails_the_start_without_blocking(
    kind: str, tmp_path: Path
) -> None:
    flags = tmp_path / "flags.json"
    if kind == "fifo":
        os.mkfifo(flags)
    else:
        flags.symlink_to("/dev/zero")
    try:
        result = _probe(flags, tmp_path)
    finally:
        if kind == "fifo":
            os.close(os.open(flags, os.O_RDWR | os.O_NONBLOCK))
    assert result["start_error"] == f"{FLAGS_VAR}: {flags}: is not a regular file"


def test_doctor_on_a_fifo_and_dev_zero_exits_2(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    zero = tmp_path / "zero.json"
    zero.symlink_to("/dev/zero")
    for flags in (fifo, zero):
        result = _doctor(flags, tmp_path)
        assert result.exit_code == 2
        assert "is not a regular file" in result.output


def test_a_symlink_to_a_regular_file_is_followed(sqlite_store: BaseStore, tmp_path: Path) -> None:
    """Mounted configuration (e.g. a Kubernetes ConfigMap) is a symlink to a regular file."""
    target = tmp_path / "real.json"
    target.write_text('{"mode": "read_only"}')
    link = tmp_path / "flags.json"
    link.symlink_to(target)
    assert Runs(sqlite_store, link).run("x").decision_reason == "mode:read_only"


_SCHEMA_KEYS = ["mode", "disabled_nodes", "node_modes", "nodes", "triggers", "agent", "error_rate"]
_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.sampled_from(["off", "OFF", "read_only", "shadow", "read_write", "agent", "a,b"]),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(
            st.sampled_from(_SCHEMA_KEYS) | st.text(max_size=10), children, max_size=5
        )
    ),
    max_leaves=30,
)


@settings(
    max_examples=examples(150),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(content=_json)
def test_arbitrary_json_as_flags_file_never_fails_a_run(
    content: Any, sqlite_store: BaseStore, tmp_path: Path
) -> None:
    (tmp_path / "fuzz.json").unlink(missing_ok=True)  # the last example's file, at start
    runs = Runs(sqlite_store, tmp_path / "fuzz.json")
    runs.write(json.dumps(content))
    report = runs.run("fuzz")
    assert report.decision_reason.startswith(("mode:", "master_off", "node_disabled", "node_mode"))
    try:
        config = load_toggle_config({FLAGS_VAR: str(runs.path)})
    except ConfigError as exc:
        assert exc.variable == FLAGS_VAR
        assert runs.toggles.flags_file_problem() is not None
    else:
        assert runs.toggles.flags_file_problem() is None
        assert runs.toggles.current().mode is config.mode
