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
import select
import signal
import sqlite3
import subprocess
import sys
import weakref
from collections import Counter
from collections.abc import Callable, Iterator
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
NAMESPACE = re.compile(rf"{SCRATCH_PREFIX}\.d[0-9a-f]{{12}}")


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
    assert result.stderr == f"scratch namespace {report['namespace']} removed\n"
    assert _left_behind(persistent_settings, namespace) == []
    with create_graph_store_sync(persistent_settings) as store:
        history = ChatHistory(store)
        assert conversation_checksum(list(history.read(key))) == before
        history.delete(key)
    assert not audit.exists()  # the operator's audit file was not written
    assert flags.read_text() == '{"mode": "off"}'
    assert dict(os.environ) == environ
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # its own handler is gone


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
    note, error = result.stderr.splitlines()
    assert re.fullmatch(rf"scratch namespace {NAMESPACE.pattern} removed", note), note
    assert error.startswith("error: unexpected RuntimeError")
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


# --- whatever ends the drill: the real command in a process of its own --------------------

REPO = Path(__file__).resolve().parents[2]
LINE_TIMEOUT = 60.0
PAUSE_AT = 40  # a store call of the workload: the baseline or the first switches


def _read_line(stream: Any) -> str:
    ready, _, _ = select.select([stream], [], [], LINE_TIMEOUT)
    assert ready, "no answer"
    return str(stream.readline().strip())


class _PausedDrill:
    """`agent-history drill` in a process of its own whose store pauses mid-drill
    (`tests.support.drill_pause`) until `go`."""

    def __init__(self, env: dict[str, str], pause: str) -> None:
        ready_read, ready_write = os.pipe()
        go_read, self._go = os.pipe()
        full = {**os.environ, **env}
        full.pop("AGENT_HISTORY_DEBUG", None)
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "tests.support.drill_pause",
                str(ready_write), str(go_read), pause,
            ],
            cwd=REPO, env=full, pass_fds=(ready_write, go_read),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        os.close(ready_write)
        os.close(go_read)
        self._ready = ready_read

    def wait_paused(self) -> str:
        """The next line the paused store wrote (read unbuffered: one line at a time)."""
        line = b""
        while not line.endswith(b"\n"):
            ready, _, _ = select.select([self._ready], [], [], LINE_TIMEOUT)
            assert ready, "the drill did not pause"
            byte = os.read(self._ready, 1)
            assert byte, "the drill ended without pausing"
            line += byte
        return line.decode().strip()

    def go(self) -> None:
        os.write(self._go, b"go\n")

    def finish(self) -> tuple[int, str, str]:
        out, err = self.process.communicate(timeout=300)
        return self.process.returncode, out, err

    def close(self) -> None:
        """Nothing left running or open, also after a failed assertion."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate(timeout=LINE_TIMEOUT)
        os.close(self._go)
        os.close(self._ready)


@pytest.fixture
def paused_drill() -> Iterator[Callable[..., _PausedDrill]]:
    """Start a paused drill: ``paused_drill(env)`` pauses at the ``PAUSE_AT``th store
    call, ``paused_drill(env, f"{PAUSE_AT}+main")`` also at the main thread's first one
    after it."""
    started: list[_PausedDrill] = []

    def start(env: dict[str, str], pause: str = str(PAUSE_AT)) -> _PausedDrill:
        started.append(_PausedDrill(env, pause))
        assert started[-1].wait_paused() == "paused"
        return started[-1]

    yield start
    for drill in started:
        drill.close()


def _drill_rows(path: Path) -> int:
    """Items under any drill namespace, counted in the SQLite file itself."""
    conn = sqlite3.connect(path)
    try:
        query = "SELECT count(*) FROM store WHERE prefix LIKE ?"
        return int(conn.execute(query, (SCRATCH_PREFIX + ".%",)).fetchone()[0])
    finally:
        conn.close()


@pytest.fixture
def process_env(sqlite_settings: HistorySettings, tmp_path: Path) -> dict[str, str]:
    """The drill's SQLite file, and a temporary directory of its own to look into."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    return {**_env(sqlite_settings), "TMPDIR": str(temp)}


@pytest.mark.parametrize(
    ("sent", "code", "reason"),
    [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")],
    ids=["SIGINT", "SIGTERM"],
)
def test_a_signal_mid_drill_removes_the_scratch_namespace_and_says_so(
    sqlite_settings: HistorySettings,
    process_env: dict[str, str],
    paused_drill: Callable[..., _PausedDrill],
    sent: signal.Signals,
    code: int,
    reason: str,
) -> None:
    drill = paused_drill(process_env)
    path = Path(sqlite_settings.graph_store_sqlite_path)
    assert _drill_rows(path) > 0  # mid-drill: the scratch conversations exist
    temp = Path(process_env["TMPDIR"])
    assert [p.name[:20] for p in temp.iterdir()] == ["agent-history-drill-"]

    drill.process.send_signal(sent)
    drill.go()
    returncode, out, err = drill.finish()

    assert returncode == code, err
    assert out == ""
    lines = err.splitlines()
    assert len(lines) >= 2 and lines[-1] == f"error: {reason}", err
    removed = re.fullmatch(rf"scratch namespace ({NAMESPACE.pattern}) removed", lines[-2])
    assert removed, lines
    assert "Traceback" not in err and "drill turn" not in err  # no message text
    assert _drill_rows(path) == 0
    assert _left_behind(sqlite_settings, tuple(removed.group(1).split("."))) == []
    assert list(temp.iterdir()) == []


def test_a_second_sigterm_does_not_cut_the_clean_up_short(
    sqlite_settings: HistorySettings,
    process_env: dict[str, str],
    paused_drill: Callable[..., _PausedDrill],
) -> None:
    drill = paused_drill(process_env, f"{PAUSE_AT}+main")
    path = Path(sqlite_settings.graph_store_sqlite_path)
    drill.process.send_signal(signal.SIGTERM)
    drill.go()
    # The main thread's next store call is the clean-up's (the workload has stopped).
    assert drill.wait_paused() == "paused main"
    assert _drill_rows(path) > 0

    drill.process.send_signal(signal.SIGTERM)  # e.g. a supervisor that asks twice
    drill.go()
    returncode, out, err = drill.finish()

    assert returncode == 143, err
    assert out == ""
    lines = err.splitlines()
    assert len(lines) >= 2 and lines[-1] == "error: terminated", err
    assert re.fullmatch(rf"scratch namespace {NAMESPACE.pattern} removed", lines[-2]), lines
    assert _drill_rows(path) == 0
    assert list(Path(process_env["TMPDIR"]).iterdir()) == []


def test_a_store_failing_mid_drill_exits_3_naming_the_namespace_and_how_to_remove_it(
    sqlite_settings: HistorySettings,
    process_env: dict[str, str],
    paused_drill: Callable[..., _PausedDrill],
) -> None:
    path = Path(sqlite_settings.graph_store_sqlite_path)
    env = {**process_env, "ORCHEO_GRAPH_STORE_SQLITE_BUSY_TIMEOUT": "0.05"}
    drill = paused_drill(env)
    # Another process takes the write lock mid-drill and keeps it until the drill ended.
    holder = subprocess.Popen(
        [sys.executable, "-m", "tests.support.sqlite_lock_holder", str(path), "holder", "row", "{}"],
        cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert _read_line(holder.stdout) == "locked"
        drill.go()
        returncode, out, err = drill.finish()
        assert holder.stdin is not None
        holder.stdin.write("commit\n")
        holder.stdin.flush()
        assert _read_line(holder.stdout) == "committed"
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.communicate(timeout=LINE_TIMEOUT)

    assert returncode == 3, err
    assert out == ""  # no verdict on a drill whose store failed
    *_, note, error = err.splitlines()
    assert error.startswith("error: the sqlite store failed: OperationalError [SQLITE_BUSY]")
    left = re.fullmatch(
        rf"FAIL drill: scratch namespace ({NAMESPACE.pattern}) not removed; "
        r"remove it with: (agent-history purge .*)",
        note,
    )
    assert left, note
    namespace, command = left.groups()
    assert command == f"agent-history purge -n {namespace} --older-than 0s"
    assert "Traceback" not in err and "drill turn" not in err  # no message text
    assert list(Path(process_env["TMPDIR"]).iterdir()) == []
    assert _drill_rows(path) > 0

    # The lock released, the command given removes every item the drill left.
    purge = subprocess.run(
        [sys.executable, "-m", "agent_history.cli", *command.split()[1:]],
        cwd=REPO, env={**os.environ, **process_env}, input="y\n",
        capture_output=True, text=True, timeout=LINE_TIMEOUT,
    )  # fmt: skip
    assert purge.returncode == 0, purge.stderr
    listing, *conversations, deleted = purge.stdout.splitlines()
    assert listing.startswith("3 conversations idle since before ")
    assert [line.split()[0] for line in conversations] == [
        "telegram:1001",
        "telegram:1002",
        "telegram:1003",
    ]
    assert deleted.strip().startswith("deleted 3 conversations idle since before ")
    assert _drill_rows(path) == 0
    assert _left_behind(sqlite_settings, tuple(namespace.split("."))) == []


@pytest.mark.postgres
def test_the_clean_up_stops_at_its_budget_when_the_store_hangs(
    fresh_pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An operator's `LOCK TABLE store` (or a hung server) must not hold a drill's
    clean-up, and with it the process, forever: each delete has a budget, and the
    clean-up then reports the namespace as not removed."""
    import psycopg

    from agent_history import drill as drill_module
    from agent_history.errors import StoreTimeout

    settings = HistorySettings(graph_store_backend="postgres", postgres_dsn=fresh_pg_dsn)
    namespace = (SCRATCH_PREFIX, "dtest")
    monkeypatch.setattr(drill_module, "_CLEANUP_BUDGET_SECONDS", 0.5)
    with create_graph_store_sync(settings) as store:
        ChatHistory(store, namespace=namespace).append(
            "telegram:1001", [{"role": "user", "content": "x"}]
        )
        with psycopg.connect(fresh_pg_dsn) as holder:
            holder.execute("LOCK TABLE store IN ACCESS EXCLUSIVE MODE")
            with pytest.raises(StoreTimeout):
                drill_module._remove_namespace(store, namespace, ["telegram:1001"])
            holder.rollback()
        assert drill_module._remove_namespace(store, namespace, ["telegram:1001"])


def test_a_store_failing_during_the_drill_exits_3_not_blaming_the_switches(
    sqlite_settings: HistorySettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process held SQLite's write lock past the busy timeout for a few appends:
    the runs fell back to memory, and the drill failed switch rows ("turns lost") and
    exited 1, "a switch failed". The store failed: it exits 3, naming the error."""
    original = SqliteDriver.append
    calls = Counter[str]()

    def append(self: SqliteDriver, namespace: tuple[str, ...], request: Any) -> Any:
        calls["append"] += 1
        if calls["append"] <= 3:
            busy = sqlite3.OperationalError("database is locked")
            busy.sqlite_errorname = "SQLITE_BUSY"  # type: ignore[attr-defined]
            raise busy
        return original(self, namespace, request)

    monkeypatch.setattr(SqliteDriver, "append", append)

    result = _drill(sqlite_settings)

    assert result.exit_code == 3, result.output
    lines = result.stdout.splitlines()
    assert "FAIL store: OperationalError [SQLITE_BUSY] x 3" in lines
    assert lines[-1] == "the store failed during the drill: the rows are no verdict on the switches"
    assert result.stderr.strip().endswith(" removed")
    assert _left_behind(sqlite_settings, (SCRATCH_PREFIX,)) == []
    report = json.loads(_drill(sqlite_settings, "--json").stdout)  # the store is sound again
    assert report["ok"] is True and report["store_failures"] == []
