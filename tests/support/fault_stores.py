"""Stores for fault injection: wrap a real store and fail, hang or record on demand."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterable
from typing import Any

from langgraph.store.base import BaseStore, GetOp, Op, PutOp, Result
from langgraph.store.memory import InMemoryStore


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


def head_put(ops: list[Op]) -> bool:
    """Whether ``ops`` write a conversation's head (the last write of an append)."""
    return any(isinstance(op, PutOp) and op.key == "head" for op in ops)


def seeded_failures(seed: int, rate: float) -> Callable[[list[Op]], bool]:
    """A rule failing about ``rate`` of all batch calls, reproducibly."""
    draw = random.Random(seed)
    return lambda ops: draw.random() < rate


class _Flaky:
    """Fails a batch before doing any of it when ``rule(ops)`` says so."""

    rule: Callable[[list[Op]], bool]
    failures: int

    def _fault(self, ops: list[Op]) -> None:
        if self.rule(ops):
            self.failures += 1
            raise ConnectionError("store unreachable")


class FlakyStore(_Flaky, BaseStore):
    """A store without transactions (a network store losing its connection between two
    calls), wrapping an in-memory one: the generic driver's kind of store."""

    def __init__(self, rule: Callable[[list[Op]], bool]) -> None:
        self.inner = InMemoryStore()
        self.rule, self.failures = rule, 0

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        listed = list(ops)
        self._fault(listed)
        return self.inner.batch(listed)

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        return self.batch(ops)


class FlakyMemoryStore(_Flaky, InMemoryStore):
    """`FlakyStore` as a subclass of `InMemoryStore` (its own driver, not the generic one)."""

    def __init__(self, rule: Callable[[list[Op]], bool]) -> None:
        super().__init__()
        self.rule, self.failures = rule, 0

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        listed = list(ops)
        self._fault(listed)
        return super().batch(listed)

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        return self.batch(ops)


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
