"""Subprocess entry point: deliver webhook callbacks through a graph with `AgentNode`.

Importable under the spawn start method; results travel back through a queue.
"""

from __future__ import annotations

import threading
import traceback
from typing import Any

from agent_history import AgentNode, HistoryReport
from agent_history.settings import HistorySettings
from agent_history.stores import create_graph_store_sync
from agent_history.testing import RecordingChatModel
from tests.support.agent_graphs import (
    build_graph,
    new_thread,
    report_dict,
    telegram_callback,
    toggles,
)

__all__ = ["deliver_callbacks"]

START_TIMEOUT = 300.0


def deliver_callbacks(
    settings_values: dict[str, Any],
    chat_id: int,
    deliveries: list[list[tuple[str, str]]],
    start: Any,
    results: Any,
) -> None:
    """Run one thread per entry of ``deliveries``; each delivers its (message id, text)
    callbacks in order, after every thread of every process has reached ``start``.

    Puts ``("ok", [outcome, ...])`` or ``("error", traceback)`` on ``results``; an outcome
    is ``{"mid", "text", "answer", **report}``.
    """
    try:
        settings = HistorySettings(**settings_values)
        outcomes: list[dict[str, Any]] = []
        guard = threading.Lock()
        errors: list[str] = []
        with create_graph_store_sync(settings) as store:
            # Generous budgets: under this load a timed-out read would skip the append.
            node_toggles = toggles(read_timeout_seconds="120", write_timeout_seconds="120")

            def deliver(batch: list[tuple[str, str]]) -> None:
                reports: list[HistoryReport] = []
                node = AgentNode(
                    RecordingChatModel(),
                    use_graph_chat_history=True,
                    toggles=node_toggles,
                    write_backoff_seconds=0.01,
                    on_report=reports.append,
                )
                graph = build_graph(node, store)
                try:
                    start.wait(START_TIMEOUT)
                    for mid, text in batch:
                        out = graph.invoke(telegram_callback(chat_id, text, mid), new_thread())
                        outcome = {
                            "mid": mid,
                            "text": text,
                            "answer": out["messages"][-1].content,
                            **report_dict(reports[-1]),
                        }
                        with guard:
                            outcomes.append(outcome)
                except BaseException:
                    errors.append(traceback.format_exc())

            threads = [threading.Thread(target=deliver, args=(b,)) for b in deliveries]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        results.put(("error", errors[0]) if errors else ("ok", outcomes))
    except BaseException:
        results.put(("error", traceback.format_exc()))
        raise
