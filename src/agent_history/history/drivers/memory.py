"""The driver for LangGraph's `InMemoryStore`: its data lives in this process, so a
per-conversation lock of this process makes appends atomic for every writer."""

from __future__ import annotations

import bisect
import sys
from typing import Any, TypeVar

from langgraph.store.base import BaseStore
from langgraph.store.memory import InMemoryStore

from agent_history import budget
from agent_history.history.drivers.base import (
    AppendRequest,
    AsyncPerform,
    PageCursor,
    SyncPerform,
)
from agent_history.history.drivers.generic import GenericDriver
from agent_history.history.records import AppendResult
from agent_history.history.steps import Request, Steps, drive

__all__ = ["MemoryDriver"]

T = TypeVar("T")


class MemoryDriver(GenericDriver):
    """`InMemoryStore`: the store's own ``batch`` under a lock of this process.

    The store never waits on I/O, so calls run in the caller's thread (also from async
    code: the lock is held across no await); a deadline bounds only the wait for the
    conversation's lock.
    """

    name = "memory"
    atomic = True

    def __init__(self, store: BaseStore) -> None:
        super().__init__(store, "memory")

    @classmethod
    def accepts(cls, store: BaseStore) -> bool:
        return isinstance(store, InMemoryStore)

    def _run_locked(self, namespace: tuple[str, ...], steps: Steps[T]) -> T:
        lock = self._lock(namespace)
        left = budget.remaining()
        if not lock.acquire(timeout=-1 if left is None else max(0.0, left)):
            raise budget.timeout_error()
        try:
            return drive(steps, self.perform(namespace))
        finally:
            lock.release()

    def run(self, namespace: tuple[str, ...], steps: Steps[T]) -> T:
        return self._run_locked(namespace, steps)

    def reader(self, namespace: tuple[str, ...]) -> SyncPerform:
        return self.perform(namespace)

    def read(self, namespace: tuple[str, ...], steps: Steps[T]) -> T:
        return drive(steps, self.perform(namespace))

    def append(self, namespace: tuple[str, ...], request: AppendRequest) -> AppendResult:
        return self._run_locked(namespace, request.steps())

    async def arun(self, namespace: tuple[str, ...], steps: Steps[T]) -> T:
        return self._run_locked(namespace, steps)

    def areader(self, namespace: tuple[str, ...]) -> AsyncPerform:
        perform = self.perform(namespace)

        async def aperform(request: Request) -> Any:
            return perform(request)

        return aperform

    async def aread(self, namespace: tuple[str, ...], steps: Steps[T]) -> T:
        return drive(steps, self.perform(namespace))

    async def aappend(self, namespace: tuple[str, ...], request: AppendRequest) -> AppendResult:
        return self._run_locked(namespace, request.steps())

    def namespace_page(
        self, namespace: tuple[str, ...], cursor: PageCursor, size: int
    ) -> tuple[list[tuple[str, ...]], PageCursor]:
        """A page past the previous page's last label (the cursor), from the store's whole
        listing (which costs what a listing by offset costs here): conversations created
        or deleted during a listing never make it list another one twice or skip it."""
        depth = len(namespace) + 1
        every = self.store.list_namespaces(prefix=namespace, max_depth=depth, limit=sys.maxsize)
        labels = sorted(ns[-1] for ns in every if len(ns) == depth)
        start = 0 if cursor is None else bisect.bisect_right(labels, str(cursor))
        page = labels[start : start + size]
        return [(*namespace, label) for label in page], (page[-1] if len(page) >= size else None)

    async def anamespace_page(
        self, namespace: tuple[str, ...], cursor: PageCursor, size: int
    ) -> tuple[list[tuple[str, ...]], PageCursor]:
        return self.namespace_page(namespace, cursor, size)
