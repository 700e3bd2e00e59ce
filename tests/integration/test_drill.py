"""`agent-history drill`, run in-process against a SQLite file and the test PostgreSQL
server: it passes on a sound build, fails naming the switch on a build that ignores one,
never touches the production namespace or the process environment, and leaves nothing
behind, also when it fails."""

from __future__ import annotations

import functools
import gc
import json
import os
import re
import weakref
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from langgraph.store.memory import InMemoryStore
from typer.testing import CliRunner

from agent_history.cli import app
from agent_history.drill import SCRATCH_PREFIX, SWITCHES, DrillStore
from agent_history.history import ChatHistory
from agent_history.history.drivers import driver_for
from agent_history.history.drivers.generic import GenericDriver
from agent_history.history.drivers.postgres import PostgresDriver
from agent_history.history.drivers.sqlite import SqliteDriver
from agent_history.settings import HistorySettings
from agent_history.stores import create_graph_store_sync
from agent_history.toggles import HistoryDecision, HistoryMode, HistoryToggles
from agent_history.transfer import conversation_checksum

runner = CliRunner()
ROWS = ("baseline", *SWITCHES)


def _env(settings: HistorySettings) -> dict[str, str]:
    env = {
        "ORCHEO_GRAPH_STORE_BACKEND": settings.graph_store_backend.value,
        "ORCHEO_GRAPH_STORE_SQLITE_PATH": str(settings.graph_store_sqlite_path),
        "ORCHEO_CHECKPOINT_SQLITE_PATH": str(settings.checkpoint_sqlite_path),
    }
    if settings.postgres_dsn is not None:
        env["ORCHEO_POSTGRES_DSN"] = settings.dsn
    return env


def _drill(settings: HistorySettings, *args: str, **extra: str) -> Any:
    return runner.invoke(app, ["drill", *args], env={**_env(settings), **extra})


def _left_behind(settings: HistorySettings, namespace: tuple[str, ...]) -> list[Any]:
    with create_graph_store_sync(settings) as store:
        return [*store.list_namespaces(prefix=namespace), *store.search(namespace, limit=5)]


@pytest.fixture
def sqlite_settings(tmp_path: Path) -> HistorySettings:
    return HistorySettings(
        graph_store_sqlite_path=tmp_path / "store.sqlite",
        checkpoint_sqlite_path=tmp_path / "checkpoints.sqlite",
    )


def test_drill_passes_on_the_configured_store_and_touches_nothing_else(
    persistent_settings: HistorySettings, tmp_path: Path
) -> None:
    key = f"telegram:{os.getpid()}"
    with create_graph_store_sync(persistent_settings) as store:
        history = ChatHistory(store)  # the production namespace, agent_chat_history
        history.delete(key)
        history.append(key, [{"role": "user", "content": "keep me", "id": f"{key}-1"}])
        before = conversation_checksum(list(history.read(key)))
    audit = tmp_path / "operator-audit.jsonl"
    flags = tmp_path / "operator-flags.json"
    flags.write_text('{"mode": "off"}')
    environ = dict(os.environ)

    # The operator's own switches say "off": the drill neither reads nor changes them.
    result = _drill(
        persistent_settings,
        "--json",
        ORCHEO_GRAPH_CHAT_HISTORY_MODE="off",
        ORCHEO_GRAPH_CHAT_HISTORY_FLAGS_FILE=str(flags),
        ORCHEO_GRAPH_CHAT_HISTORY_AUDIT_FILE=str(audit),
    )

    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ok"] is True and report["problems"] == []
    assert report["backend"] == persistent_settings.graph_store_backend.value
    assert report["conversations"] == 3 and report["runs"] >= 3 * (1 + 2 * len(SWITCHES))
    assert [row["switch"] for row in report["switches"]] == list(ROWS)
    for row in report["switches"]:
        assert row["ok"] and row["failed"] == 0 and row["lost"] == 0, row
        assert row["runs"] >= 3 and row["problems"] == []
        assert (row["effect_ms"] is None) == (row["switch"] == "baseline"), row
    namespace = tuple(report["namespace"].split("."))
    assert namespace[0] == SCRATCH_PREFIX and report["namespace_removed"] is True
    assert _left_behind(persistent_settings, namespace) == []
    with create_graph_store_sync(persistent_settings) as store:
        history = ChatHistory(store)
        assert conversation_checksum(list(history.read(key))) == before
        history.delete(key)
    assert not audit.exists()  # the operator's audit file was not written
    assert flags.read_text() == '{"mode": "off"}'
    assert dict(os.environ) == environ


def test_drill_passes_on_the_in_memory_store(tmp_path: Path) -> None:
    # The in-memory store keeps an empty entry for a namespace whose items are all
    # deleted: what counts as removed is that no item is left.
    result = runner.invoke(
        app,
        ["drill", "--json"],
        env={
            "ORCHEO_GRAPH_STORE_BACKEND": "memory",
            "ORCHEO_CHECKPOINT_SQLITE_PATH": str(tmp_path / "checkpoints.sqlite"),
        },
    )

    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ok"] is True and report["backend"] == "memory"
    assert report["namespace_removed"] is True and report["problems"] == []


def test_drill_table_fits_80_columns_and_names_every_switch(
    sqlite_settings: HistorySettings,
) -> None:
    result = _drill(sqlite_settings, COLUMNS="80")

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), max(lines, key=len)
    assert lines[0].startswith("rollback drill on sqlite: 3 conversations, ")
    header = "\n".join(lines[1:5])
    for words in ("switch", "time until", "effect (ms)", "runs during", "the flip", "failed"):
        assert words in header
    rows = {line.split()[0]: line.split()[1:] for line in lines if line.split()[:1] != []}
    for name in ROWS:
        effect, runs, failed, lost, verdict = rows[name]
        assert (failed, lost, verdict) == ("0", "0", "ok"), rows[name]
        assert int(runs) >= 3
        assert effect == "-" if name == "baseline" else effect.replace(",", "").isdigit()
    assert lines[-1] == "every switch took effect"
    assert "FAIL" not in result.stdout
    note = result.stderr.strip()
    assert note.startswith(f"scratch namespace {SCRATCH_PREFIX}.d") and note.endswith(" removed")
    namespace = tuple(note.split()[2].split("."))
    assert _left_behind(sqlite_settings, namespace) == []


def _writes_when_read_only(original: Any) -> Any:
    def decide(self: HistoryToggles, node_name: str, **kwargs: Any) -> HistoryDecision:
        decision: HistoryDecision = original(self, node_name, **kwargs)
        if decision.mode is HistoryMode.READ_ONLY:
            return replace(decision, write=True)
        return decision

    return decide


def _ignores_off(original: Any) -> Any:
    def decide(self: HistoryToggles, node_name: str, **kwargs: Any) -> HistoryDecision:
        decision: HistoryDecision = original(self, node_name, **kwargs)
        if decision.reason == "master_off":
            return HistoryDecision(HistoryMode.READ_WRITE, True, True, True, "mode:read_write")
        return decision

    return decide


def _shadow_reads_store(original: Any) -> Any:
    def decide(self: HistoryToggles, node_name: str, **kwargs: Any) -> HistoryDecision:
        decision: HistoryDecision = original(self, node_name, **kwargs)
        if decision.mode is HistoryMode.SHADOW:
            return replace(decision, payload_from_store=True)
        return decision

    return decide


@pytest.mark.parametrize(
    ("broken", "failing", "problem"),
    [
        (_writes_when_read_only, {"read_only", "flags_file"}, "wrote the store"),
        (_ignores_off, {"off"}, "touched the store"),
        (_shadow_reads_store, {"shadow"}, "sent stored turns to the model"),
    ],
)
def test_a_build_that_ignores_a_switch_fails_the_drill_naming_it(
    sqlite_settings: HistorySettings,
    monkeypatch: pytest.MonkeyPatch,
    broken: Any,
    failing: set[str],
    problem: str,
) -> None:
    monkeypatch.setattr(HistoryToggles, "decide", broken(HistoryToggles.decide))

    result = _drill(sqlite_settings)

    assert result.exit_code == 1, result.output
    lines = result.stdout.splitlines()
    verdicts = {line.split()[0]: line.split()[-1] for line in lines if line.split()[:1] != []}
    assert {name for name in ROWS if verdicts[name] == "FAIL"} == failing
    for name in failing:
        assert f"FAIL {name}: no run showed the effect" in lines
        # Every run under the switch (at least 3; one more if the workload outpaced the
        # drill's controller) shows the fault.
        found = [re.fullmatch(rf"FAIL {name}: (\d+) runs {problem}", line) for line in lines]
        assert [int(m.group(1)) >= 3 for m in found if m] == [True], lines
    assert lines[-1] == "the drill failed"
    assert result.stderr.strip().endswith(" removed")
    assert _left_behind(sqlite_settings, (SCRATCH_PREFIX,)) == []


def test_a_build_that_stops_writing_after_a_rollback_loses_turns(
    sqlite_settings: HistorySettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = HistoryToggles.decide
    seen_read_only: list[bool] = []

    def decide(self: HistoryToggles, node_name: str, **kwargs: Any) -> HistoryDecision:
        decision = original(self, node_name, **kwargs)
        if decision.mode is HistoryMode.READ_ONLY:
            seen_read_only.append(True)
        if seen_read_only and decision.mode is HistoryMode.READ_WRITE:
            return replace(decision, write=False)  # "read_write" that no longer writes
        return decision

    monkeypatch.setattr(HistoryToggles, "decide", decide)

    result = _drill(sqlite_settings, "--json")

    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    rows = {row["switch"]: row for row in report["switches"]}
    assert rows["off"]["ok"] and rows["off"]["lost"] == 0
    after = rows["read_only"]
    # Each run after the return (at least 3; more when the workload outpaced the drill's
    # controller before the next flip) lost its message and its answer.
    found = [
        re.fullmatch(r"(\d+) runs did not write the store after the return", problem)
        for problem in after["problems"]
    ]
    counts = [int(m.group(1)) for m in found if m]
    assert len(counts) == 1 and counts[0] >= 3, after["problems"]
    assert not after["ok"] and after["failed"] == 0 and after["lost"] == 2 * counts[0]
    assert report["namespace_removed"] is True


def test_the_scratch_namespace_is_removed_when_the_drill_breaks_half_way(
    sqlite_settings: HistorySettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: Any) -> None:
        raise RuntimeError("half-way")

    monkeypatch.setattr("agent_history.drill._Drill._breaker", broken)

    result = _drill(sqlite_settings)

    assert result.exit_code == 1
    assert result.stderr.startswith("error: unexpected RuntimeError")
    assert "Traceback" not in result.output
    assert _left_behind(sqlite_settings, (SCRATCH_PREFIX,)) == []


def test_the_drill_runs_the_stores_own_driver(
    persistent_settings: HistorySettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The drill counts store calls through a wrapper store; history on it must still take
    the store's own driver (SQL of its own on SQLite and PostgreSQL), the path production
    runs, and never the generic `BaseStore` path a wrapper would otherwise get."""
    calls: Counter[str] = Counter()
    for cls in (SqliteDriver, PostgresDriver, GenericDriver):
        for method in ("run", "read", "append"):
            original = getattr(cls, method)

            def spy(self: Any, *args: Any, _original: Any = original, _name: str = "") -> Any:
                calls[_name] += 1
                return _original(self, *args)

            monkeypatch.setattr(cls, method, functools.partialmethod(spy, _name=cls.__name__))

    result = _drill(persistent_settings, "--json")

    assert result.exit_code == 0, result.output
    own = (
        "SqliteDriver"
        if persistent_settings.graph_store_backend.value == "sqlite"
        else ("PostgresDriver")
    )
    assert calls[own] > 50, calls
    assert calls["GenericDriver"] == 0, calls
    assert json.loads(result.stdout)["backend"] == persistent_settings.graph_store_backend.value


def test_a_drill_store_is_not_kept_alive_by_its_driver() -> None:
    """Drivers are kept per store in a weak mapping; the drill's counting driver must hold
    its store weakly too, or every drill run would stay in memory."""
    wrapper = DrillStore(InMemoryStore())
    assert driver_for(wrapper).backend == "memory"
    gone = weakref.ref(wrapper)
    del wrapper
    gc.collect()
    assert gone() is None
