"""Run a few graph runs against a flags file in a child process, under a memory limit.

``python -m tests.support.flags_probe <flags path> <sqlite path> [runs] [hostile path]``
prints one JSON object: the answers, each run's decision reason, and the library's warning
events. With a hostile path (a FIFO, a symlink to ``/dev/zero``), the node is made first
(the flags file does not exist yet) and the hostile entry is then renamed to the flags
path, as a file swapped under a running worker; without one, the node is made with the
flags file as it is, and a `ConfigError` from the start-up check is printed as
``{"start_error": ...}``. The parent gives it a timeout and an address-space limit, so a
flags file that blocks or floods memory fails the test instead of the machine.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import sys
from pathlib import Path
from typing import Any

from agent_history import AgentNode, HistoryReport
from agent_history.errors import ConfigError
from agent_history.settings import HistorySettings
from agent_history.stores import create_graph_store_sync
from agent_history.testing import RecordingChatModel
from tests.support.agent_graphs import build_graph, new_thread, telegram_callback, toggles

MEMORY_LIMIT_BYTES = 2 * 1024**3


class _Events(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.events: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.events.append({"event": getattr(record, "event", ""), **getattr(record, "fields", {})})


def main(flags_path: str, sqlite_path: str, runs: int, hostile: str | None) -> dict[str, Any]:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT_BYTES, MEMORY_LIMIT_BYTES))
    handler = _Events()
    logging.getLogger("agent_history").addHandler(handler)
    reports: list[HistoryReport] = []
    try:
        node = AgentNode(
            RecordingChatModel(),
            use_graph_chat_history=True,
            toggles=toggles(flags_file=flags_path),
        )
    except ConfigError as exc:
        return {"start_error": str(exc)}
    if hostile is not None:
        os.rename(hostile, flags_path)
    node.on_report = reports.append
    settings = HistorySettings(
        graph_store_backend="sqlite",
        graph_store_sqlite_path=Path(sqlite_path),
        checkpoint_sqlite_path=Path(sqlite_path + ".cp"),
    )
    answers = []
    with create_graph_store_sync(settings) as store:
        graph = build_graph(node, store)
        for i in range(runs):
            out = graph.invoke(telegram_callback(7, f"hello {i}"), new_thread())
            answers.append(str(out["messages"][-1].content))
    return {
        "answers": answers,
        "reasons": [r.decision_reason for r in reports],
        "events": handler.events,
    }


if __name__ == "__main__":
    runs = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    hostile = sys.argv[4] if len(sys.argv) > 4 else None
    print(json.dumps(main(sys.argv[1], sys.argv[2], runs, hostile)))
