"""Subprocess entry points for cross-process tests (importable under the spawn start method)."""

from __future__ import annotations

import threading
from typing import Any

from benchmarks.naive_history import NaiveHistory
from langchain_core.messages import HumanMessage

from agent_history.history import ChatHistory
from agent_history.settings import HistorySettings
from agent_history.stores import create_graph_store_sync


def append_writers(
    settings_values: dict[str, Any],
    namespace: tuple[str, ...],
    key: str,
    proc: int,
    writers: int,
    appends: int,
    naive: bool = False,
) -> None:
    """Run ``writers`` threads, each appending ``appends`` single turns tagged with its name."""
    settings = HistorySettings(**settings_values)
    with create_graph_store_sync(settings) as store:
        history = ChatHistory(store, namespace=namespace)
        baseline = NaiveHistory(store, namespace=namespace)
        start = threading.Barrier(writers)
        errors: list[BaseException] = []

        def write(writer: int) -> None:
            start.wait()
            try:
                for i in range(appends):
                    text = f"p{proc}-w{writer}-{i}"
                    if naive:
                        baseline.append(key, [{"role": "user", "content": text}])
                    else:
                        history.append(key, [HumanMessage(text)])
            except BaseException as exc:  # surfaced through the exit code below
                errors.append(exc)

        threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
