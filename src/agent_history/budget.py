"""Time budgets for store calls: a hung store must not stall the agent."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["call_with_budget"]

T = TypeVar("T")


def call_with_budget(fn: Callable[[], T], budget: float) -> T:
    """Run ``fn`` in a daemon thread and give up after ``budget`` seconds.

    A hung store must not stall the agent; the abandoned call finishes (or not) on its
    own, and appends are idempotent (every appended turn carries an id) so a late
    completion of a timed-out write followed by a retry stores nothing twice.
    """
    outcome: list[Any] = []
    done = threading.Event()

    def target() -> None:
        try:
            outcome.append((True, fn()))
        except BaseException as exc:  # handed to the caller's thread below
            outcome.append((False, exc))
        finally:
            done.set()

    threading.Thread(target=target, name="agent-history-store", daemon=True).start()
    if not done.wait(budget):
        raise TimeoutError(f"store call exceeded its {budget:g}s budget")
    ok, value = outcome[0]
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]
