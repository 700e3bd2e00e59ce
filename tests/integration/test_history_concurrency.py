"""Concurrent appends from several processes and threads lose and duplicate nothing."""

from __future__ import annotations

import multiprocessing
import uuid
from collections import defaultdict
from typing import Any

import pytest
from benchmarks.naive_history import NaiveHistory

from agent_history.history import ChatHistory
from agent_history.settings import HistorySettings
from agent_history.stores import create_graph_store_sync
from tests.support.workers import append_writers

PROCESSES, WRITERS, APPENDS = 2, 8, 250


def _values(settings: HistorySettings) -> dict[str, Any]:
    values: dict[str, Any] = {
        "graph_store_backend": settings.graph_store_backend.value,
        "graph_store_sqlite_path": str(settings.graph_store_sqlite_path),
        "graph_store_sqlite_busy_timeout": 60.0,
    }
    if settings.postgres_dsn is not None:
        values["postgres_dsn"] = settings.dsn
    return values


def _run(settings: HistorySettings, ns: tuple[str, ...], key: str, naive: bool) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(
            target=append_writers,
            args=(_values(settings), ns, key, p, WRITERS, APPENDS, naive),
        )
        for p in range(PROCESSES)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=300)
    assert [proc.exitcode for proc in procs] == [0] * PROCESSES


def test_cross_process_appends_are_exact(persistent_settings: HistorySettings) -> None:
    ns, key = ("concurrency", uuid.uuid4().hex[:8]), "wecom_dm:shared"
    _run(persistent_settings, ns, key, naive=False)
    with create_graph_store_sync(persistent_settings) as store:
        turns = list(ChatHistory(store, namespace=ns).read(key))
    total = PROCESSES * WRITERS * APPENDS
    assert len(turns) == total
    assert [t.seq for t in turns] == list(range(1, total + 1))
    contents = [t.content for t in turns]
    assert len(set(contents)) == total
    per_writer: dict[str, list[int]] = defaultdict(list)
    for text in contents:
        writer, i = text.rsplit("-", 1)
        per_writer[writer].append(int(i))
    assert len(per_writer) == PROCESSES * WRITERS
    assert all(order == list(range(APPENDS)) for order in per_writer.values())


@pytest.mark.parametrize("persistent_backend", ["sqlite"], indirect=True)
def test_naive_read_modify_write_loses_turns_under_the_same_load(
    persistent_settings: HistorySettings,
) -> None:
    # Shows the race the atomic append exists for, so the test above can fail.
    ns, key = ("naive", uuid.uuid4().hex[:8]), "wecom_dm:shared"
    _run(persistent_settings, ns, key, naive=True)
    with create_graph_store_sync(persistent_settings) as store:
        stored = NaiveHistory(store, namespace=ns).all(key)
    assert len(stored) < PROCESSES * WRITERS * APPENDS
