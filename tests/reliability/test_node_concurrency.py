"""Callbacks for one Telegram chat delivered at once from several processes: each turn once."""

from __future__ import annotations

import contextlib
import multiprocessing
import queue
import random
import sqlite3
import threading
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from agent_history import AgentNode
from agent_history.errors import ConfigError
from agent_history.history import ChatHistory
from agent_history.settings import HistorySettings
from agent_history.stores import create_graph_store_sync
from agent_history.testing import RecordingChatModel
from tests.reliability.conftest import Record, trials
from tests.support.agent_graphs import (
    build_graph,
    new_thread,
    settings_values,
    telegram_callback,
    toggles,
)
from tests.support.node_workers import deliver_callbacks

PROCESSES, THREADS = 3, 2
JOIN_TIMEOUT = 300.0


def _plan(rng: random.Random, messages: int, redeliveries: int) -> list[list[tuple[str, str]]]:
    """Spread distinct messages over every deliverer, plus exact re-deliveries of some of
    them, mostly by another deliverer (so original and copy race each other)."""
    deliverers = PROCESSES * THREADS
    plan: list[list[tuple[str, str]]] = [[] for _ in range(deliverers)]
    originals = [(f"m{i}", f"message {i} ✓") for i in range(messages)]
    owner: dict[str, int] = {}
    for callback in originals:
        slot = rng.randrange(deliverers)
        owner[callback[0]] = slot
        plan[slot].append(callback)
    for callback in rng.sample(originals, redeliveries):
        slot = rng.randrange(deliverers)
        batch = plan[slot]
        batch.insert(rng.randint(0, len(batch)), callback)
    return plan


def _values(settings: HistorySettings) -> dict[str, Any]:
    return settings_values(settings, graph_store_sqlite_busy_timeout=120.0)


def test_concurrent_deliveries_store_every_turn_once(
    persistent_settings: HistorySettings, record_figures: Record
) -> None:
    rng = random.Random()
    seed = rng.randrange(2**32)
    rng.seed(seed)
    messages = max(12, 2 * trials())
    redeliveries = max(4, messages // 3)
    chat = int(uuid.uuid4().int % 10**9)
    plans = _plan(rng, messages, redeliveries)
    # No set-up beforehand: the workers open a store that does not exist yet, all at once.
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(PROCESSES * THREADS)
    results = ctx.Queue()
    procs = [
        ctx.Process(
            target=deliver_callbacks,
            args=(
                _values(persistent_settings),
                chat,
                plans[p * THREADS : (p + 1) * THREADS],
                start,
                results,
            ),
        )
        for p in range(PROCESSES)
    ]
    for proc in procs:
        proc.start()
    outcomes: list[dict[str, Any]] = []
    try:
        for _ in procs:
            status, payload = results.get(timeout=JOIN_TIMEOUT)
            assert status == "ok", payload
            outcomes.extend(payload)
    except queue.Empty:
        raise AssertionError("a delivering process did not report back") from None
    finally:
        start.abort()  # releases workers still waiting when another one failed early
        for proc in procs:
            proc.join(JOIN_TIMEOUT)
            if proc.is_alive():
                proc.kill()
    assert [proc.exitcode for proc in procs] == [0] * PROCESSES

    # Every callback was answered, from the history, and written without a fallback.
    delivered = sum(len(batch) for batch in plans)
    assert len(outcomes) == delivered == messages + redeliveries
    # Every callback, re-deliveries included, was answered about its own message.
    assert all(o["answer"] == f"echo: {o['text']}" for o in outcomes)
    assert all(o["fallbacks"] == [] for o in outcomes), [o["fallbacks"] for o in outcomes]
    assert all(o["key"] == f"telegram:{chat}" for o in outcomes)
    # Each turn was appended by exactly one run; the copies were recognised.
    assert sum(o["appended"] for o in outcomes) == 2 * messages
    assert sum(o["duplicates"] for o in outcomes) >= 1

    with create_graph_store_sync(persistent_settings) as store:
        turns = list(ChatHistory(store).read(f"telegram:{chat}"))
    ids = Counter(t.id for t in turns)
    assert all(count == 1 for count in ids.values()), ids.most_common(3)
    assert {t.id for t in turns if t.role == "user"} == {f"m{i}" for i in range(messages)}
    assert len(turns) == 2 * messages
    assert [t.seq for t in turns] == list(range(1, len(turns) + 1))
    by_id = {t.id: t for t in turns}
    replies = Counter(t.content for t in turns if t.role == "assistant")
    for i in range(messages):
        user = by_id[f"m{i}"]
        assert (user.role, user.content) == ("user", f"message {i} ✓")
        # Exactly one answer to each message, stored with it by the run that first
        # answered it (an exchange is appended whole).
        assert replies[f"echo: message {i} ✓"] == 1
        assert turns[user.seq].content == f"echo: message {i} ✓"
    record_figures(
        scenario="node_concurrency",
        backend=persistent_settings.graph_store_backend.value,
        seed=seed,
        processes=PROCESSES,
        threads_per_process=THREADS,
        callbacks=delivered,
        redeliveries=redeliveries,
        stored_turns=len(turns),
        duplicates_skipped=sum(o["duplicates"] for o in outcomes),
        lost=0,
        duplicated=0,
    )


def test_redelivery_after_other_messages_answers_the_redelivered_message(
    persistent_settings: HistorySettings,
) -> None:
    model = RecordingChatModel()
    chat = int(uuid.uuid4().int % 10**9)
    with create_graph_store_sync(persistent_settings) as store:
        graph = build_graph(AgentNode(model, use_graph_chat_history=True, toggles=toggles()), store)
        for mid, text in [("m1", "first"), ("m2", "second")]:
            graph.invoke(telegram_callback(chat, text, mid), new_thread())
        # The channel retries the first webhook (e.g. our first answer was slow).
        out = graph.invoke(telegram_callback(chat, "first", "m1"), new_thread())
        stored = [t.content for t in ChatHistory(store).read(f"telegram:{chat}")]
    assert stored == ["first", "echo: first", "second", "echo: second"]  # stored once
    # The model answered the re-delivered message, with the history as it stood then.
    assert out["messages"][-1].content == "echo: first"
    assert [m.content for m in model.calls[-1]] == ["first"]


def _log_statements(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Log every statement of every new SQLite connection as (thread name, statement)."""
    log: list[tuple[str, str]] = []
    real_connect = sqlite3.connect

    def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn = real_connect(*args, **kwargs)
        conn.set_trace_callback(
            lambda statement: log.append((threading.current_thread().name, statement))
        )
        return conn

    monkeypatch.setattr(sqlite3, "connect", connect)
    return log


def _new_file_settings(tmp_path: Path) -> HistorySettings:
    return HistorySettings(
        graph_store_backend="sqlite", graph_store_sqlite_path=tmp_path / "new.sqlite"
    )


def test_unserialised_setup_really_races(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The fault the next test guards against, made certain: with the setup lock taken
    # away, a second worker that sets the file up between the first one reading "no
    # migration applied" and applying them makes the first one fail.
    monkeypatch.setattr(
        "agent_history.stores._sqlite_setup_lock",
        lambda lock, field, wait: contextlib.nullcontext(),
    )
    settings = _new_file_settings(tmp_path)
    real_connect = sqlite3.connect
    state = {"read": False, "second_opened": False}
    second_errors: list[BaseException] = []

    def second_worker() -> None:
        # Runs start to finish inside the first worker's setup (same thread, own
        # connection: SQLite lets it write while the first one only reads).
        try:
            with create_graph_store_sync(settings):
                pass
        except BaseException as exc:
            second_errors.append(exc)

    def trace(statement: str) -> None:
        if statement.startswith("SELECT v FROM store_migrations"):
            state["read"] = True
        elif state["read"] and not state["second_opened"]:
            state["second_opened"] = True
            second_worker()

    def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn = real_connect(*args, **kwargs)
        if not state["read"]:  # the first worker's connection only
            conn.set_trace_callback(trace)
        return conn

    monkeypatch.setattr(sqlite3, "connect", connect)
    with pytest.raises(ConfigError) as failed, create_graph_store_sync(settings):
        pass
    assert state["second_opened"] and second_errors == []
    assert "UNIQUE constraint failed: store_migrations.v" in str(failed.value)


def test_processes_starting_together_on_a_new_sqlite_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two workers of a service start at the same moment on a file that does not exist
    # yet: opening and setup are serialised, so exactly one of them applies the
    # migrations, the other sees them applied, and both work.
    log = _log_statements(monkeypatch)
    settings = _new_file_settings(tmp_path)
    errors: list[BaseException] = []
    start = threading.Barrier(2, timeout=30)

    def open_store() -> None:
        try:
            start.wait()
            with create_graph_store_sync(settings) as store:
                ChatHistory(store).append("k", [{"role": "user", "content": "hi"}])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_store, name=f"opener-{i}") for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    readers = {name for name, sql in log if sql.startswith("SELECT v FROM store_migrations")}
    migrators = {name for name, sql in log if sql.startswith("INSERT INTO store_migrations")}
    assert readers == {"opener-0", "opener-1"}
    assert len(migrators) == 1, migrators
    with create_graph_store_sync(settings) as store:
        assert [t.content for t in ChatHistory(store).read("k")] == ["hi", "hi"]
