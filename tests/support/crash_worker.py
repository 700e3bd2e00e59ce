"""A victim process for crash tests: appends turns in a loop until it is killed.

It runs under multiprocessing (fork server or spawn), so it must stay importable by name.
"""

from __future__ import annotations

from multiprocessing.connection import Connection
from typing import Any

from agent_history.history import ChatHistory
from agent_history.settings import HistorySettings
from agent_history.stores import create_graph_store_sync

__all__ = ["READY", "append_until_killed", "role_for"]

READY = -1
"""Sent once the store is open, before the first append."""


def role_for(i: int) -> str:
    """Turn ``t{i}`` alternates user and assistant, so a stored role can be checked."""
    return "user" if i % 2 == 0 else "assistant"


def append_until_killed(
    settings_values: dict[str, Any],
    namespace: tuple[str, ...],
    key: str,
    planned: int,
    chunk_size: int,
    acks: Connection,
) -> None:
    """Append ``t0``, ``t1``, ... one turn per call; send ``i`` only after append returned."""
    settings = HistorySettings(**settings_values)
    with create_graph_store_sync(settings) as store:
        history = ChatHistory(store, namespace=namespace, chunk_size=chunk_size)
        acks.send(READY)
        for i in range(planned):
            history.append(key, [{"role": role_for(i), "content": f"t{i}"}])
            acks.send(i)
