"""`purge`, `import` and `migrate` racing another writer of the same conversations lose
and duplicate nothing (issue: check-then-write in separate transactions).

Each race is forced, not hoped for. The other writer is a process of its own, and it
writes exactly between the moment the operator command starts and the moment it takes
the conversation's lock:

- SQLite: a trace callback on the command's connection sees ``BEGIN IMMEDIATE`` before
  the lock is requested, and lets the other process append (or import, or migrate) and
  commit right then;
- PostgreSQL: the other process holds the conversation's lock with its write not yet
  committed; once the command is seen waiting for that lock (``pg_locks``), it commits.

A command that checks outside its transaction decides on the state before that write and
deletes or duplicates it; one that checks under the lock sees it.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from langgraph.store.base import BaseStore

from agent_history.history import ChatHistory
from agent_history.retention import idle_conversations, purge_idle
from agent_history.settings import HistorySettings
from agent_history.stores import create_graph_store_sync
from agent_history.transfer import import_jsonl, migrate_history
from tests.reliability.conftest import Record
from tests.support.agent_graphs import settings_values
from tests.support.operator_workers import DONE, READY, hold_then_commit, write_when_told

TIMEOUT = 120.0
CONVERSATIONS, TURNS = 4, 60


def _ctx() -> Any:
    return multiprocessing.get_context("spawn")


@contextmanager
def _process(target: Callable[..., None], *args: Any) -> Iterator[Any]:
    """Start ``target(*args, conn)`` in a process; yield our end once it says ready."""
    ctx = _ctx()
    ours, theirs = ctx.Pipe()
    proc = ctx.Process(target=target, args=(*args, theirs))
    proc.start()
    theirs.close()
    try:
        assert ours.poll(TIMEOUT), "the other writer did not start"
        assert ours.recv() == READY
        yield ours
    finally:
        if proc.is_alive():
            with suppress(OSError):
                ours.send("stop")
        proc.join(TIMEOUT)
        if proc.is_alive():
            proc.kill()
            proc.join()
    assert proc.exitcode == 0, f"the other writer failed (exit {proc.exitcode})"


def _ask(conn: Any, message: str) -> None:
    conn.send(message)
    assert conn.poll(TIMEOUT), "the other writer did not answer"
    assert conn.recv() == DONE


def _on_first_begin(store: BaseStore, action: Callable[[], None]) -> list[str]:
    """Run ``action`` once, when the store's connection first starts ``BEGIN IMMEDIATE``
    (before it asks for the write lock)."""
    fired: list[str] = []

    def trace(statement: str) -> None:
        if not fired and statement.strip().upper().startswith("BEGIN IMMEDIATE"):
            fired.append(statement)
            action()

    store.conn.set_trace_callback(trace)  # type: ignore[attr-defined]
    return fired


def _wait_until_blocked(dsn: str) -> None:
    """Until a session waits for an advisory lock (a conversation's lock)."""
    deadline = time.monotonic() + TIMEOUT
    with psycopg.connect(dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            ).fetchone()
            if row and row[0]:
                return
            time.sleep(0.005)  # polling an observable condition, not a guess at timing
    raise AssertionError("the command never waited for the conversation's lock")


def _in_thread(work: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(work())
        except BaseException as exc:  # re-raised by the test
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def _race(
    settings: HistorySettings,
    store: BaseStore,
    action: str,
    args: dict[str, Any],
    command: Callable[[], Any],
) -> Any:
    """Run ``command`` while another process does ``action`` at the worst moment."""
    if settings.graph_store_backend.value == "sqlite":
        values = settings_values(settings)
        with _process(write_when_told, values, action, args) as other:
            fired = _on_first_begin(store, lambda: _ask(other, "go"))
            result = command()
            store.conn.set_trace_callback(None)  # type: ignore[attr-defined]
            assert fired, "the command never took a write lock"
        return result
    with _process(hold_then_commit, settings.dsn, action, args) as other:
        thread, outcome = _in_thread(command)
        _wait_until_blocked(settings.dsn)
        _ask(other, "commit")
        thread.join(TIMEOUT)
    assert outcome, "the command did not finish"
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]


def _export_file(tmp_path: Path, namespace: tuple[str, ...]) -> tuple[Path, dict[str, list[str]]]:
    """An export of conversations without message ids (nothing to dedupe by but seq)."""
    expected: dict[str, list[str]] = {}
    rows = []
    for c in range(CONVERSATIONS):
        key = f"telegram:{c}"
        expected[key] = [f"{key} turn {s}" for s in range(1, TURNS + 1)]
        for seq, text in enumerate(expected[key], start=1):
            role = "user" if seq % 2 else "assistant"
            rows.append({"namespace": list(namespace), "key": key, "seq": seq, "role": role,
                         "content": text, "id": None, "ts": None})  # fmt: skip
    path = tmp_path / f"export-{uuid.uuid4().hex[:6]}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path, expected


def _assert_exact(history: ChatHistory, expected: dict[str, list[str]]) -> int:
    """Every conversation holds exactly its turns, in order; returns duplicates found."""
    duplicated = 0
    for key, contents in expected.items():
        turns = list(history.read(key))
        duplicated += max(0, len(turns) - len(contents))
        assert [t.content for t in turns] == contents, key
        assert [t.seq for t in turns] == list(range(1, len(contents) + 1))
    return duplicated


def test_purge_keeps_a_conversation_written_after_the_listing(
    persistent_settings: HistorySettings, record_figures: Record
) -> None:
    ns = ("purge_race", uuid.uuid4().hex[:8])
    with create_graph_store_sync(persistent_settings) as store:
        history = ChatHistory(store, namespace=ns)
        history.append("telegram:active", [{"role": "user", "content": "old"}] * 2)
        history.append("telegram:idle", [{"role": "user", "content": "old"}] * 3)
        cutoff = datetime.now(UTC)
        listed = [info.key for info in idle_conversations(history, cutoff)]
        assert listed == ["telegram:active", "telegram:idle"]
        args = {"namespace": ns, "key": "telegram:active", "text": "written after the listing"}
        report = _race(
            persistent_settings, store, "append", args,
            lambda: purge_idle(history, listed, cutoff),
        )  # fmt: skip
        assert report.kept == ["telegram:active"]
        assert [i.key for i in report.deleted] == ["telegram:idle"]
        contents = [t.content for t in history.read("telegram:active")]
        assert contents == ["old", "old", "written after the listing"]
        assert history.count("telegram:idle") == 0
    record_figures(
        scenario="purge racing an append",
        backend=persistent_settings.graph_store_backend.value,
        races_forced=1,
        acknowledged_turns_lost=0,
    )


def test_import_racing_another_import_writes_each_turn_once(
    persistent_settings: HistorySettings, tmp_path: Path, record_figures: Record
) -> None:
    ns = ("import_race", uuid.uuid4().hex[:8])
    path, expected = _export_file(tmp_path, ns)
    with create_graph_store_sync(persistent_settings) as store:
        plan, report = _race(
            persistent_settings, store, "import", {"namespace": ns, "path": str(path)},
            lambda: import_jsonl(store, lambda: path.open(encoding="utf-8")),
        )  # fmt: skip
        assert plan.ok and not report.rejected
        assert (report.written, report.present) == (0, CONVERSATIONS * TURNS)
        duplicated = _assert_exact(ChatHistory(store, namespace=ns), expected)
    record_figures(
        scenario="import racing an import",
        backend=persistent_settings.graph_store_backend.value,
        turns=CONVERSATIONS * TURNS,
        lost=0,
        duplicated=duplicated,
    )


def test_migrate_racing_another_migrate_copies_each_turn_once(
    persistent_settings: HistorySettings, tmp_path: Path, record_figures: Record
) -> None:
    ns = ("migrate_race", uuid.uuid4().hex[:8])
    source_settings = HistorySettings(
        graph_store_backend="sqlite", graph_store_sqlite_path=tmp_path / "source.sqlite"
    )
    path, expected = _export_file(tmp_path, ns)
    with create_graph_store_sync(source_settings) as source_store:
        assert import_jsonl(source_store, lambda: path.open(encoding="utf-8"))[0].ok
    args = {"namespace": ns, "source": settings_values(source_settings)}
    with (
        create_graph_store_sync(source_settings) as source_store,
        create_graph_store_sync(persistent_settings) as store,
    ):
        source = ChatHistory(source_store, namespace=ns)
        target = ChatHistory(store, namespace=ns)
        report = _race(
            persistent_settings, store, "migrate", args, lambda: migrate_history(source, target)
        )
        assert report.ok and report.turns_copied == 0
        duplicated = _assert_exact(target, expected)
    record_figures(
        scenario="migrate racing a migrate",
        backend=persistent_settings.graph_store_backend.value,
        turns=CONVERSATIONS * TURNS,
        lost=0,
        duplicated=duplicated,
    )


def _cli(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "agent_history.cli", *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_two_imports_and_two_migrations_at_once_from_the_cli(
    persistent_settings: HistorySettings, tmp_path: Path, record_figures: Record
) -> None:
    ns = ("cli_race", uuid.uuid4().hex[:8])
    path, expected = _export_file(tmp_path, ns)
    env = {**os.environ, "ORCHEO_GRAPH_STORE_SQLITE_BUSY_TIMEOUT": "60"}
    env["ORCHEO_GRAPH_STORE_BACKEND"] = persistent_settings.graph_store_backend.value
    env["ORCHEO_GRAPH_STORE_SQLITE_PATH"] = str(persistent_settings.graph_store_sqlite_path)
    if persistent_settings.postgres_dsn is not None:
        env["ORCHEO_POSTGRES_DSN"] = persistent_settings.dsn
    with create_graph_store_sync(persistent_settings):
        pass  # set up once: concurrent first set-up is another test's subject
    imports = [_cli(["import", str(path), "--json"], env) for _ in range(2)]
    results = [proc.communicate(timeout=TIMEOUT) for proc in imports]
    assert [p.returncode for p in imports] == [0, 0], results
    written = sum(json.loads(out)["turns_written"] for out, _ in results)
    assert written == CONVERSATIONS * TURNS
    # Two migrations of the imported conversations into a SQLite file, at once.
    target_path = tmp_path / "target.sqlite"
    migrate = ["migrate", "--from-backend", persistent_settings.graph_store_backend.value,
               "--to-backend", "sqlite", "--to-sqlite-path", str(target_path), "-n",
               ".".join(ns), "--json"]  # fmt: skip
    with create_graph_store_sync(HistorySettings(graph_store_sqlite_path=target_path)):
        pass
    migrations = [_cli(migrate, env) for _ in range(2)]
    outputs = [proc.communicate(timeout=TIMEOUT) for proc in migrations]
    assert [p.returncode for p in migrations] == [0, 0], outputs
    assert all("Traceback" not in err for _, err in [*results, *outputs])
    copied = [json.loads(out) for out, _ in outputs]
    assert all(summary["verified"] for summary in copied)
    assert sum(summary["turns_copied"] for summary in copied) == CONVERSATIONS * TURNS
    with create_graph_store_sync(persistent_settings) as store:
        duplicated = _assert_exact(ChatHistory(store, namespace=ns), expected)
    with create_graph_store_sync(HistorySettings(graph_store_sqlite_path=target_path)) as store:
        duplicated += _assert_exact(ChatHistory(store, namespace=ns), expected)
    record_figures(
        scenario="two CLI imports and two CLI migrations at once",
        backend=persistent_settings.graph_store_backend.value,
        turns=CONVERSATIONS * TURNS,
        processes=4,
        lost=0,
        duplicated=duplicated,
        crashed=0,
    )
