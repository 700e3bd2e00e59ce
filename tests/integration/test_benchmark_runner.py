"""The benchmark runner from its user's side: a database it is pointed at keeps the user's
data, a bad DSN or output directory fails the run at once without leaking the password
or touching earlier results, and SIGTERM cleans up like Ctrl-C.

No timing is asserted: the numbers belong to the machine.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from benchmarks import context_tail
from benchmarks import run as bench
from benchmarks.options import DSN_ENV, target_problem
from psycopg.conninfo import make_conninfo

from agent_history.history import ChatHistory
from agent_history.settings import HistorySettings
from agent_history.stores import create_graph_store_sync
from tests.support.postgres_server import PostgresServer

ROOT = Path(__file__).resolve().parents[2]
OLD_JSON = '{"old": "results"}\n'
OLD_PNG = b"old plot"


def _seed_user_data(dsn: str) -> None:
    """What an application of the library keeps: a conversation under the default
    namespace (the README's chat 42) and an item of its own."""
    settings = HistorySettings(graph_store_backend="postgres", postgres_dsn=dsn)
    with create_graph_store_sync(settings) as store:
        ChatHistory(store).append(
            "telegram:42",
            [
                {"role": "user", "content": "my real chat", "id": "u1"},
                {"role": "assistant", "content": "real answer", "id": "a1"},
            ],
        )
        store.put(("naive_chat_history",), "bob", {"messages": ["the user's own item"]})
        store.put(("agent_chat_history",), "profile", {"name": "Bob"})
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE my_app_table (x int)")
        conn.execute("INSERT INTO my_app_table VALUES (1)")


def _analyzed(dsn: str, table: str) -> bool:
    """Whether ``table`` has been analyzed by an ANALYZE statement (not autovacuum)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT last_analyze IS NOT NULL FROM pg_stat_user_tables WHERE relname = %s",
            (table,),
        ).fetchone()
    return bool(row and row[0])


def _snapshot(dsn: str) -> tuple[list[tuple[Any, ...]], list[str]]:
    """Every row of LangGraph's store table, and the tables of the database."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT prefix, key, value::text FROM store ORDER BY prefix, key"
        ).fetchall()
        tables = [
            str(r[0])
            for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
            )
        ]
    return rows, tables


def _old_results(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(OLD_JSON)
    (out / "latency_postgres_tail.png").write_bytes(OLD_PNG)


def _assert_old_results(out: Path) -> None:
    assert sorted(p.name for p in out.iterdir()) == ["latency_postgres_tail.png", "results.json"]
    assert (out / "results.json").read_text() == OLD_JSON
    assert (out / "latency_postgres_tail.png").read_bytes() == OLD_PNG


# --- a database holding a user's data ----------------------------------------------------------


@pytest.mark.postgres
def test_a_run_leaves_the_users_data_as_it_was_and_removes_its_own(
    fresh_pg_dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _seed_user_data(fresh_pg_dsn)
    before = _snapshot(fresh_pg_dsn)

    args = ["--smoke", "--backends", "postgres", "--postgres-dsn", fresh_pg_dsn]
    assert bench.main([*args, "--out", str(tmp_path)]) == 0

    assert _snapshot(fresh_pg_dsn) == before  # no bench rows, no bench tables left
    assert _analyzed(fresh_pg_dsn, "store")
    assert not _analyzed(fresh_pg_dsn, "my_app_table")  # ANALYZE of its own tables only
    results = json.loads((tmp_path / "results.json").read_text())
    root, run_id = results["meta"]["namespace"]
    assert root == "agent_history_bench" and run_id
    err = capsys.readouterr().err
    assert "removed the benchmark's " in err and f"(namespace agent_history_bench.{run_id})" in err
    agent = results["agent_node"]["rows"]
    assert agent and all(r["appended"] == 2 and r["stored_read"] for r in agent)


# --- a DSN that cannot be used ----------------------------------------------------------------


def _wrong_password(server: PostgresServer) -> tuple[str, str]:
    password = "Wr0ng-" + uuid.uuid4().hex[:10]
    dsn = make_conninfo(server.dsn("postgres"), password=password)
    return dsn, password


@pytest.mark.postgres
def test_a_wrong_password_fails_the_run_before_anything_is_measured(
    pg_server: PostgresServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    _old_results(out)
    dsn, password = _wrong_password(pg_server)

    args = ["--smoke", "--backends", "memory,postgres", "--postgres-dsn", dsn]
    assert bench.main([*args, "--out", str(out)]) == 1

    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert lines[-1] == (
        f"postgres not measured: cannot connect to PostgreSQL at 127.0.0.1:{pg_server.port}"
        "/postgres: OperationalError: password authentication failed; "
        f"nothing written to {out}"
    )
    assert not any(line.startswith("[memory]") for line in lines)  # failed before measuring
    assert password not in captured.err
    _assert_old_results(out)


@pytest.mark.parametrize(
    ("dsn", "problem"),
    [
        (
            "postgresql://app:Sup3r Secret@db.internal/agents",
            "has a space inside a URI part (write it as %20)",
        ),
        (
            "postgres//app:Sup3r-Secret@@db.internal",
            "is neither a postgresql:// URI nor key=value pairs (a '=' is missing)",
        ),
        ("   ", "is empty"),
    ],
)
def test_an_unparsable_dsn_is_a_usage_error_that_never_quotes_it(
    dsn: str, problem: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    _old_results(out)

    args = ["--smoke", "--backends", "postgres", "--postgres-dsn", dsn]
    assert bench.main([*args, "--out", str(out)]) == 2

    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"python -m benchmarks.run: error: --postgres-dsn: {problem}\n"
    assert "Sup3r" not in captured.err
    _assert_old_results(out)


# --- the output directory ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["file", "results.json is a directory"])
def test_an_unusable_out_is_refused_at_start_in_one_line(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if kind == "file":
        out = tmp_path / "results-file"
        out.write_text("keep me\n")
        expected = f"--out {out}: exists and is not a directory"
    else:
        out = tmp_path / "out"
        (out / "results.json").mkdir(parents=True)
        expected = f"--out {out}: results.json exists and is not a file"

    assert bench.main(["--smoke", "--backends", "memory", "--out", str(out)]) == 2

    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"python -m benchmarks.run: error: {expected}\n"
    if kind == "file":
        assert out.read_text() == "keep me\n"
    else:
        assert [p.name for p in out.iterdir()] == ["results.json"]


@pytest.mark.parametrize(
    ("backends", "message"),
    [
        ("", "--backends: empty (choose from memory, sqlite, postgres)"),
        (" , ", "--backends: empty (choose from memory, sqlite, postgres)"),
        ("memory,redis", "--backends: unknown redis (choose from memory, sqlite, postgres)"),
    ],
)
def test_backends_option_errors_say_what_is_wrong(
    backends: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert bench.main(["--smoke", "--backends", backends, "--out", str(out)]) == 2
    assert capsys.readouterr().err == f"python -m benchmarks.run: error: {message}\n"
    assert not out.exists()
    # The context benchmark run alone checks its options the same way.
    assert context_tail.main(["--quick", "--backends", backends]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"python -m benchmarks.context_tail: error: {message}\n"


# --- the DSN from the environment (out of the process list) -------------------------------


@pytest.mark.postgres
def test_the_dsn_can_come_from_the_environment_and_stays_out_of_the_command_line(
    fresh_pg_dsn: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _seed_user_data(fresh_pg_dsn)
    before = _snapshot(fresh_pg_dsn)
    monkeypatch.setenv(DSN_ENV, f"  {fresh_pg_dsn}  ")
    monkeypatch.setenv("ORCHEO_POSTGRES_DSN", "postgresql://app:not-this-one@192.0.2.1/app")

    argv = ["--smoke", "--backends", "postgres", "--out", str(tmp_path)]
    assert bench.main(argv) == 0

    results = json.loads((tmp_path / "results.json").read_text())
    assert {r["backend"] for r in results["latency"]} == {"postgres"}
    assert results["meta"]["postgres_started_here"] is False  # no throwaway server
    assert _snapshot(fresh_pg_dsn) == before  # measured in that database, then cleaned up
    _, run_id = results["meta"]["namespace"]
    assert f"(namespace agent_history_bench.{run_id})" in capsys.readouterr().err


@pytest.mark.postgres
def test_the_option_wins_over_the_environment(
    pg_server: PostgresServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "out"
    _old_results(out)
    monkeypatch.setenv(DSN_ENV, pg_server.dsn("postgres"))
    dsn, password = _wrong_password(pg_server)

    args = ["--smoke", "--backends", "postgres", "--postgres-dsn", dsn, "--out", str(out)]
    assert bench.main(args) == 1

    err = capsys.readouterr().err
    assert "password authentication failed" in err and password not in err
    _assert_old_results(out)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("postgresql://app:Sup3r Secret@db.internal/agents", "has a space inside a URI part"),
        ("postgres//app:Sup3r-Secret@@db.internal", "is neither a postgresql:// URI"),
    ],
)
def test_a_bad_dsn_in_the_environment_is_named_by_its_variable(
    value: str,
    problem: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "out"
    _old_results(out)
    monkeypatch.setenv(DSN_ENV, value)

    assert bench.main(["--smoke", "--backends", "memory", "--out", str(out)]) == 2

    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"python -m benchmarks.run: error: {DSN_ENV}: {problem}")
    assert captured.err.count("\n") == 1 and "Sup3r" not in captured.err
    _assert_old_results(out)


def test_results_json_holds_every_verdict_results_md_shows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Backend names in any case, as ORCHEO_GRAPH_STORE_BACKEND takes them.
    assert bench.main(["--smoke", "--backends", "MEMORY", "--out", str(tmp_path)]) == 0

    results = json.loads((tmp_path / "results.json").read_text())
    summary = (tmp_path / "results.md").read_text()
    assert results["meta"]["backends"] == ["memory"]
    assert {"target": "flat context tail", "backend": "memory", "status": "SKIP"}.items() <= (
        results["targets"][-1].items()
    )
    shown = re.findall(r"^(PASS|MISS|SKIP)  (\S+)\s+(.*)$", summary, re.M)
    assert shown == [
        (t["status"], t["backend"], f"{t['target']}: {t['detail']}") for t in results["targets"]
    ]
    assert "\n\n## Tail under a token budget" in summary
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "latency_memory_append.png",
        "latency_memory_tail.png",
        "results.json",
        "results.md",
    ]
    assert capsys.readouterr().out == summary + "\n"


# --- SIGTERM ----------------------------------------------------------------------------------


@pytest.fixture
def scratch_tmpdir() -> Iterator[Path]:
    """A TMPDIR for the run the test starts, so its temporary directories can be
    counted; traversable by the account a throwaway server runs as."""
    path = Path(tempfile.mkdtemp(prefix="bench-term-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _marked(marker: bytes) -> list[int]:
    """Processes whose environment carries ``marker``: the run and everything it
    started (writer processes, a throwaway server)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


def _gone(marker: bytes, within_s: float) -> list[int]:
    """The marked processes still alive after ``within_s`` (a process that has been
    told to exit, such as multiprocessing's resource tracker, may take a moment)."""
    deadline = time.monotonic() + within_s
    while (left := _marked(marker)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


@pytest.mark.postgres
@pytest.mark.parametrize("database", ["throwaway server", "given database"])
def test_sigterm_mid_run_leaves_no_process_directory_or_row_behind(
    database: str,
    pg_server: PostgresServer,
    scratch_tmpdir: Path,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    out = tmp_path / "out"
    _old_results(out)
    marker = f"bench-term-{uuid.uuid4().hex}"
    env = {**os.environ, "TMPDIR": str(scratch_tmpdir), "AGENT_HISTORY_BENCH_TEST": marker}
    args = ["--smoke", "--backends", "postgres", "--out", str(out)]
    dsn = ""
    if database == "given database":
        dsn = request.getfixturevalue("fresh_pg_dsn")
        _seed_user_data(dsn)
        before = _snapshot(dsn)
        args += ["--postgres-dsn", dsn]

    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.run", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        progress = []
        for line in proc.stderr:  # until the writer processes are at work
            progress.append(line)
            if "writer processes" in line:
                break
        else:
            pytest.fail("the run ended before its writers started:\n" + "".join(progress))
        running = _marked(marker.encode())
        # The run itself and its two writer processes at least (plus the server's).
        assert len(running) >= 3
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    assert proc.returncode == 143, stderr
    assert stdout == ""
    assert stderr.splitlines()[-1] == f"terminated (SIGTERM); nothing written to {out}"
    assert _gone(marker.encode(), within_s=10.0) == []
    assert list(scratch_tmpdir.iterdir()) == []
    _assert_old_results(out)
    if dsn:
        assert _snapshot(dsn) == before


@pytest.mark.postgres
def test_a_stop_while_the_clean_up_waits_says_what_to_delete(
    fresh_pg_dsn: str, tmp_path: Path
) -> None:
    # A row of the run is locked by another session (an admin's open transaction), so the
    # clean-up DELETE waits; the operator stops the run: it must say what is left.
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.run", "--smoke", "--backends", "postgres",
         "--postgres-dsn", fresh_pg_dsn, "--out", str(out)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    locker = psycopg.connect(fresh_pg_dsn)
    watcher = psycopg.connect(fresh_pg_dsn, autocommit=True)
    try:
        assert proc.stderr is not None
        lines = []
        for line in proc.stderr:  # the last measurement: the run's items are all written
            lines.append(line)
            if "AgentNode len     10" in line:
                break
        else:
            pytest.fail("the run ended early:\n" + "".join(lines))
        row = locker.execute(
            "SELECT prefix FROM store WHERE starts_with(prefix, 'agent_history_bench.') "
            "LIMIT 1 FOR UPDATE"
        ).fetchone()
        assert row is not None
        run_namespace = ".".join(str(row[0]).split(".")[:2])
        for line in proc.stderr:  # until the clean-up has begun
            lines.append(line)
            if "removing the benchmark's items" in line:
                break
        for _ in range(4000):  # until its DELETE waits for the locked row
            waiting = watcher.execute(
                "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND query LIKE 'DELETE FROM store%%'"
            ).fetchone()
            if waiting:
                break
            time.sleep(0.005)  # polling the server's view, not waiting for a time
        else:
            pytest.fail("the clean-up never waited for the locked row")
        proc.send_signal(signal.SIGTERM)
        rest = proc.stderr.read()
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        locker.rollback()
        locker.close()
    assert proc.returncode == 143
    assert (
        "stopped before the benchmark's items were removed: delete them with DELETE FROM store "
        f"WHERE prefix = '{run_namespace}' OR starts_with(prefix, '{run_namespace}.')"
    ) in rest
    # What it names is exactly what is left.
    left = watcher.execute(
        "SELECT count(*) FROM store WHERE prefix = %s OR starts_with(prefix, %s)",
        (run_namespace, run_namespace + "."),
    ).fetchone()
    total = watcher.execute("SELECT count(*) FROM store").fetchone()
    watcher.close()
    assert left is not None and total is not None and left[0] == total[0] > 0


@pytest.mark.parametrize("blank", ["", "  "])
def test_a_blank_dsn_variable_is_as_good_as_unset(blank: str) -> None:
    args = bench._parse(["--backends", "memory,postgres"])
    assert target_problem(args, {DSN_ENV: blank}) is None
    assert args.postgres_dsn is None  # a throwaway server, as without the variable
    assert args.backends == ["memory", "postgres"]
