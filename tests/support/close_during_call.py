"""Run one `AgentNode` turn whose append overruns its budget, then go on serving.

Usage: ``python -m tests.support.close_during_call PATH TAG close|keep``. Another process
holds the SQLite file's write lock, so the append waits; its write budget (1 s) is
shorter than the store's busy timeout (5 s). The script prints a JSON line with what the
run reported and waits for a line on stdin (meanwhile the lock holder commits), then
serves a few more turns, as a host would, and prints a last JSON line. With ``close`` it
leaves the factory's ``with`` block before waiting and serves the later turns on a
store opened again; with ``keep`` it serves them on the same store.

A call that kept running in a thread of its own after its budget would still be waiting
for the lock: with ``close`` it then runs its statement on a closed connection (the
process can crash, exit 139), with ``keep`` it writes the turns of a run that already
reported that it stored nothing.
"""

from __future__ import annotations

import json
import sys
import time
from contextlib import ExitStack
from pathlib import Path

from agent_history import AgentNode, HistoryReport
from agent_history.settings import HistorySettings
from agent_history.stores import create_graph_store_sync
from agent_history.testing import RecordingChatModel
from tests.support.agent_graphs import build_graph, new_thread, telegram_callback, toggles

LATER_TURNS = 3


def main(path: str, tag: str, mode: str) -> None:
    settings = HistorySettings(
        graph_store_backend="sqlite",
        graph_store_sqlite_path=Path(path),
        graph_store_sqlite_busy_timeout=5.0,
    )
    reports: list[HistoryReport] = []
    node = AgentNode(
        RecordingChatModel(),
        use_graph_chat_history=True,
        toggles=toggles(read_timeout_seconds="1", write_timeout_seconds="1"),
        write_attempts=1,
        on_report=reports.append,
    )
    with ExitStack() as stack:
        store = stack.enter_context(create_graph_store_sync(settings))
        started = time.monotonic()
        out = build_graph(node, store).invoke(
            telegram_callback(7, f"while locked {tag}", message_id=f"{tag}-m"), new_thread()
        )
        first = {
            "run_seconds": round(time.monotonic() - started, 3),
            "answer": out["messages"][-1].content,
            "fallbacks": list(reports[-1].fallbacks),
            "appended": reports[-1].appended,
        }
        if mode == "close":
            stack.close()
        print(json.dumps(first), flush=True)
        sys.stdin.readline()  # the lock holder commits meanwhile
        if mode == "close":
            store = stack.enter_context(create_graph_store_sync(settings))
        graph = build_graph(node, store)
        for i in range(LATER_TURNS):
            message = telegram_callback(7, f"later {tag}-{i}", message_id=f"{tag}-l{i}")
            graph.invoke(message, new_thread())
    later = [list(r.fallbacks) for r in reports[1:]]
    print(json.dumps({"later_fallbacks": later, "appended": [r.appended for r in reports[1:]]}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
