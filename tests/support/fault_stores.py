"""Stores for fault injection: wrap a real store and fail, hang or record on demand."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

from langgraph.store.base import BaseStore, GetOp, Op, PutOp, Result


class InjectedStoreError(RuntimeError):
    """The fault a `FaultyStore` raises."""


class FaultyStore(BaseStore):
    """Delegates to ``inner``; reads and/or writes fail or hang while the switches say so."""

    def __init__(self, inner: BaseStore) -> None:
        self.inner = inner
        self.fail_reads = False
        self.fail_writes = False
        self.hang: threading.Event | None = None
        self.calls: list[str] = []

    def _check(self, ops: list[Op]) -> None:
        kinds = {
            "put" if isinstance(op, PutOp) else "get" if isinstance(op, GetOp) else "other"
            for op in ops
        }
        self.calls.extend(sorted(kinds))
        if self.hang is not None:
            self.hang.wait(30)
        if self.fail_reads and "get" in kinds:
            raise InjectedStoreError("injected read failure")
        if self.fail_writes and "put" in kinds:
            raise InjectedStoreError("injected write failure")

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        listed = list(ops)
        self._check(listed)
        return self.inner.batch(listed)

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        listed = list(ops)
        self._check(listed)
        return await self.inner.abatch(listed)


class UntouchableStore(BaseStore):
    """Records any use; the test asserts ``touched`` stayed empty."""

    def __init__(self) -> None:
        self.touched: list[str] = []

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        self.touched.append("batch")
        raise AssertionError("the store must not be touched")

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        self.touched.append("abatch")
        raise AssertionError("the store must not be touched")

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(name)
