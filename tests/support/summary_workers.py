"""Subprocess entry point: runs with running summaries on one conversation from several
threads (importable under the spawn start method; results travel back through a queue)."""

from __future__ import annotations

import threading
import traceback
from typing import Any

from agent_history import AgentNode, HistoryReport
from agent_history.settings import HistorySettings
from agent_history.stores import create_graph_store_sync
from agent_history.testing import RecordingChatModel
from tests.support.agent_graphs import build_graph, new_thread, telegram_callback, toggles
from tests.support.summarisers import AccumulatingSummariser

__all__ = ["summarising_callbacks"]

START_TIMEOUT = 300.0


def summarising_callbacks(
    settings_values: dict[str, Any],
    chat_id: int,
    deliveries: list[list[str]],
    start: Any,
    results: Any,
) -> None:
    """One thread per entry of ``deliveries`` sends its texts in order, once every thread
    of every process reached ``start``; every node summarises with an
    `AccumulatingSummariser`. Puts ``("ok", [{"outcome", "written"}, ...])`` (one per run)
    or ``("error", traceback)`` on ``results``."""
    try:
        settings = HistorySettings(**settings_values)
        outcomes: list[dict[str, Any]] = []
        guard = threading.Lock()
        errors: list[str] = []
        with create_graph_store_sync(settings) as store:
            node_toggles = toggles(read_timeout_seconds="120", write_timeout_seconds="120")

            def deliver(texts: list[str]) -> None:
                reports: list[HistoryReport] = []
                node = AgentNode(
                    RecordingChatModel(),
                    use_graph_chat_history=True,
                    toggles=node_toggles,
                    max_messages=4,
                    summary_model=AccumulatingSummariser(),
                    summary_every=4,
                    summary_budget_seconds=120,
                    write_backoff_seconds=0.01,
                    on_report=reports.append,
                )
                graph = build_graph(node, store)
                try:
                    start.wait(START_TIMEOUT)
                    for text in texts:
                        graph.invoke(telegram_callback(chat_id, text), new_thread())
                        report = reports[-1]
                        with guard:
                            outcomes.append(
                                {
                                    "outcome": report.summary_outcome,
                                    "written": report.summary_written_seq,
                                    "appended": report.appended,
                                }
                            )
                except BaseException:
                    errors.append(traceback.format_exc())

            threads = [threading.Thread(target=deliver, args=(d,)) for d in deliveries]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        results.put(("error", errors[0]) if errors else ("ok", outcomes))
    except BaseException:
        results.put(("error", traceback.format_exc()))
        raise
