"""Time budgets for store calls: one deadline per call, honoured by the history drivers.

A hung store must not stall the agent, and a call that overran its budget must not go
on running against a connection that someone may close. So a budget is not a thread
that is abandoned when time is up: it is a deadline (``time.monotonic()``) carried in a
context variable, which every history driver turns into its database's own limits
(SQLite busy timeout and progress handler, PostgreSQL lock timeout, a socket shut down
at the deadline, a bounded wait on a pooled connection) and checks between requests.
The call returns, or raises `StoreTimeout`, in the caller's own thread.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar
from typing import TypeVar

from agent_history.errors import StoreTimeout

__all__ = [
    "call_with_budget",
    "current_deadline",
    "deadline_after",
    "deadline_at",
    "enforced",
    "remaining",
    "run_with_deadline",
    "timeout_error",
]

T = TypeVar("T")

_DEADLINE: ContextVar[float | None] = ContextVar("agent_history_deadline", default=None)


def current_deadline() -> float | None:
    """The deadline (``time.monotonic()`` seconds) of the call in progress, if any."""
    return _DEADLINE.get()


def remaining() -> float | None:
    """Seconds left before the current deadline (may be negative), None without one."""
    deadline = _DEADLINE.get()
    return None if deadline is None else deadline - time.monotonic()


def timeout_error(what: str = "store call") -> StoreTimeout:
    """The error for a call that reached its deadline."""
    return StoreTimeout(f"{what} exceeded its time budget")


@contextmanager
def deadline_at(deadline: float | None) -> Iterator[float | None]:
    """Run the block under ``deadline`` (or the current one, when it is sooner)."""
    current = _DEADLINE.get()
    if deadline is None or (current is not None and current <= deadline):
        yield current
        return
    token = _DEADLINE.set(deadline)
    try:
        yield deadline
    finally:
        _DEADLINE.reset(token)


@contextmanager
def deadline_after(seconds: float | None) -> Iterator[float | None]:
    """Run the block with at most ``seconds`` left (None: no new limit).

    Raises:
        ValueError: ``seconds`` is NaN.
    """
    if seconds is None:
        yield _DEADLINE.get()
        return
    if math.isnan(seconds):
        raise ValueError("a time budget cannot be NaN")
    with deadline_at(time.monotonic() + max(0.0, seconds)) as deadline:
        yield deadline


@asynccontextmanager
async def enforced() -> AsyncIterator[None]:
    """Cancel the block at the current deadline and raise `StoreTimeout` (for awaits
    that cannot be bounded otherwise)."""
    left = remaining()
    if left is None:
        yield
        return
    timeout = asyncio.timeout(left)
    try:
        async with timeout:
            yield
    except TimeoutError:
        if timeout.expired():
            raise timeout_error() from None
        raise


async def run_with_deadline(call: Awaitable[T], deadline: float | None) -> T:
    """Await ``call`` under ``deadline``: carries a caller's deadline into a task on
    another event loop, whose context does not inherit the caller's."""
    with deadline_at(deadline):
        return await call


def call_with_budget(fn: Callable[[], T], budget: float) -> T:
    """Run ``fn`` in this thread under a deadline ``budget`` seconds away.

    `ChatHistory` calls made inside ``fn`` honour the deadline and raise `StoreTimeout`
    when it passes (the call is stopped, not left running); appends are idempotent by
    message id, so retrying a timed-out append stores nothing twice. ``fn`` must be such
    a call (or otherwise bounded): nothing else is interrupted.
    """
    with deadline_after(budget):
        return fn()
