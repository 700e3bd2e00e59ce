"""Async PostgreSQL pools that keep their connections when a caller is cancelled.

A web server cancels the task of a client that hung up, at any moment. psycopg_pool's
``putconn`` waits for the pool's lock; a cancellation landing there leaves the
connection neither in the pool nor closed, and the pool never replaces it: a few
hang-ups under load empty it for every conversation. Here the hand-back runs in a task of
its own, which the caller's cancellation does not stop (the caller still sees its
``CancelledError`` at once). `HangupSafePool` does it for every user of the pool
(LangGraph's store and checkpointer included, through ``pool.connection()``);
`hand_back` does it for one connection of any pool.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

__all__ = ["HangupSafePool", "hand_back"]

ACT = TypeVar("ACT", bound=AsyncConnection[Any])

_HANDING_BACK: set[asyncio.Future[None]] = set()
"""Hand-backs in flight (the event loop keeps only weak references to tasks)."""


async def _to_the_end(work: Awaitable[None]) -> None:
    task = asyncio.ensure_future(work)
    _HANDING_BACK.add(task)
    task.add_done_callback(_HANDING_BACK.discard)
    await asyncio.shield(task)


async def hand_back(pool: AsyncConnectionPool[Any], conn: AsyncConnection[Any]) -> None:
    """Return ``conn`` to ``pool``, to the end even if the caller is cancelled meanwhile."""
    await _to_the_end(pool.putconn(conn))


class HangupSafePool(AsyncConnectionPool[ACT]):
    """An `AsyncConnectionPool` whose ``putconn`` completes even when its caller is
    cancelled (see the module)."""

    async def putconn(self, conn: ACT) -> None:
        await _to_the_end(super().putconn(conn))
