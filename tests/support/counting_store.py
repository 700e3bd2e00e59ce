"""A store wrapper that counts the items each operation touches (for cost assertions)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from langgraph.store.base import BaseStore, GetOp, Op, PutOp, Result, SearchOp


class CountingStore(BaseStore):
    """Delegates to ``inner`` and counts get/put/search operations."""

    def __init__(self, inner: BaseStore) -> None:
        self.inner = inner
        self.ops: Counter[str] = Counter()

    def _count(self, ops: list[Op]) -> None:
        for op in ops:
            if isinstance(op, GetOp):
                self.ops["get"] += 1
            elif isinstance(op, PutOp):
                self.ops["put"] += 1
            elif isinstance(op, SearchOp):
                self.ops["search"] += 1
            else:
                self.ops["other"] += 1
        self.ops["batches"] += 1

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        listed = list(ops)
        self._count(listed)
        return self.inner.batch(listed)

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        listed = list(ops)
        self._count(listed)
        return await self.inner.abatch(listed)

    def reset(self) -> dict[str, Any]:
        snapshot = dict(self.ops)
        self.ops.clear()
        return snapshot
