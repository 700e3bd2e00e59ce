"""Running summaries written from two processes at once on one conversation: one summary
version per covered seq, and no dropped turn lost or summarised twice."""

from __future__ import annotations

import multiprocessing
import queue
import uuid
from typing import Any

from langchain_core.messages import get_buffer_string

from agent_history.history import ChatHistory
from agent_history.settings import HistorySettings
from agent_history.stores import create_graph_store_sync
from tests.support.agent_graphs import settings_values
from tests.support.summary_workers import summarising_callbacks

PROCESSES, THREADS, CALLBACKS = 2, 2, 15
JOIN_TIMEOUT = 300.0


def _run(settings: HistorySettings, chat: int) -> list[dict[str, Any]]:
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(PROCESSES * THREADS)
    results = ctx.Queue()
    values = settings_values(settings, graph_store_sqlite_busy_timeout=120.0)
    procs = [
        ctx.Process(
            target=summarising_callbacks,
            args=(
                values,
                chat,
                [[f"p{p} t{t} #{i}" for i in range(CALLBACKS)] for t in range(THREADS)],
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
        raise AssertionError("a process did not report back") from None
    finally:
        start.abort()
        for proc in procs:
            proc.join(JOIN_TIMEOUT)
            if proc.is_alive():
                proc.kill()
    assert [proc.exitcode for proc in procs] == [0] * PROCESSES
    return outcomes


def test_concurrent_summaries_one_version_per_covered_seq_none_lost(
    persistent_settings: HistorySettings,
) -> None:
    chat = uuid.uuid4().int % 10**9
    outcomes = _run(persistent_settings, chat)
    runs = PROCESSES * THREADS * CALLBACKS
    assert len(outcomes) == runs
    assert sum(o["appended"] for o in outcomes) == 2 * runs
    assert not [o for o in outcomes if o["outcome"] == "failed"]

    with create_graph_store_sync(persistent_settings) as store:
        history = ChatHistory(store)
        key = f"telegram:{chat}"
        stored = history.to_messages(list(history.read(key)))
        summary = history.summary(key)
    assert len(stored) == 2 * runs
    assert summary is not None
    # One version per covered seq: every write that succeeded covered a seq no other did,
    # and the stored version counts exactly those writes.
    written = sorted(o["written"] for o in outcomes if o["outcome"] == "written")
    assert len(written) == len(set(written)) == summary.version
    assert written[-1] == summary.covers_seq
    assert summary.covers_seq >= 2 * runs - 20  # it kept up with the conversation
    # None lost, none twice: each version added exactly the turns after the previous one
    # (the summariser echoes them), so the summary is the transcript up to covers_seq.
    transcript = get_buffer_string(
        stored[: summary.covers_seq], human_prefix="User", ai_prefix="Assistant"
    )
    assert summary.text == transcript
    assert summary.turns == summary.covers_seq and summary.skipped == 0
