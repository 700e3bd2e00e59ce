"""The baseline this project improves on: one store item per conversation holding the whole
list, rewritten by read-modify-write on every turn (no lock, no compare-and-swap)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langgraph.store.base import BaseStore


class NaiveHistory:
    """Read-modify-write history: O(length) per turn, and concurrent writers lose turns."""

    def __init__(self, store: BaseStore, namespace: Sequence[str] = ("naive_chat_history",)):
        self.store = store
        self.namespace = tuple(namespace)

    def append(self, key: str, turns: Sequence[dict[str, Any]]) -> None:
        item = self.store.get(self.namespace, key)
        messages = list(item.value["messages"]) if item else []
        messages.extend(turns)
        self.store.put(self.namespace, key, {"messages": messages}, index=False)

    def tail(self, key: str, n: int) -> list[dict[str, Any]]:
        item = self.store.get(self.namespace, key)
        return list(item.value["messages"][-n:]) if item else []

    def all(self, key: str) -> list[dict[str, Any]]:
        return self.tail(key, 10**12)
