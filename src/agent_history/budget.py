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
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from contextvars import ContextVar, Token
from typing import TypeVar

from agent_history.errors import InvalidArgument, StoreTimeout

__all__ = [
    "acall_with_budget",
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


class deadline_at:  # a function to its callers: ``with deadline_at(when):``
    """Run the block under ``deadline`` (or the current one, when it is sooner).

    A class rather than a generator: every history call enters one, so it stays cheap.
    """

    __slots__ = ("_deadline", "_token")

    def __init__(self, deadline: float | None) -> None:
        self._deadline = deadline
        self._token: Token[float | None] | None = None

    def __enter__(self) -> float | None:
        current = _DEADLINE.get()
        deadline = self._deadline
        if deadline is None or (current is not None and current <= deadline):
            return current
        self._token = _DEADLINE.set(deadline)
        return deadline

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            _DEADLINE.reset(self._token)
            self._token = None


def deadline_after(seconds: float | None) -> deadline_at:
    """Run the block with at most ``seconds`` left (None: no new limit).

    Raises:
        InvalidArgument: ``seconds`` is NaN.
    """
    if seconds is None:
        return deadline_at(None)
    if math.isnan(seconds):
        raise InvalidArgument("a time budget cannot be NaN")
    return deadline_at(time.monotonic() + max(0.0, seconds))


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


async def acall_with_budget(call: Callable[[], Awaitable[T]], budget: float) -> T:
    """Async `call_with_budget`: await ``call()`` under a deadline ``budget`` seconds away.

    Prefer it to ``asyncio.wait_for``: the history's drivers see the deadline, so a sync
    store driven from a worker thread stops there too, and PostgreSQL gives up a lock
    wait before its connection has to be shut down.
    """
    with deadline_after(budget):
        return await call()
