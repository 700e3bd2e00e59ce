"""Checks of the numbers and names a `ChatHistory` call is given, one verdict on every
backend: a count, sequence number or size is a whole number (not a bool, not 1.5), a
budget a positive number of seconds, and each mistake an `InvalidArgument` naming it.

Counts above `MAX_COUNT` mean "every turn" and are clamped to it, so ``tail(key, 2**70)``
reads the whole conversation on every backend (SQLite takes 64-bit integers only).
"""

from __future__ import annotations

import math
import operator
from typing import Any

from agent_history.errors import InvalidArgument

__all__ = ["MAX_COUNT", "budget_arg", "count_arg"]

MAX_COUNT = 2**31
"""The largest count or sequence number a call uses; larger counts are clamped to it."""


def _whole(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise InvalidArgument(f"{name} must be a whole number, not a bool")
    try:
        return operator.index(value)
    except TypeError:
        raise InvalidArgument(
            f"{name} must be a whole number (got {type(value).__name__})"
        ) from None


def count_arg(name: str, value: Any, *, minimum: int = 0, clamp: bool = True) -> int:
    """``value`` as a whole number of at least ``minimum``; above `MAX_COUNT` it is clamped
    to it (a count or a position to read from), or refused with ``clamp=False`` (a size or
    version that is stored).

    Raises:
        InvalidArgument: ``value`` is not a whole number, is below ``minimum``, or (without
            ``clamp``) above `MAX_COUNT`.
    """
    count = _whole(name, value)
    if count < minimum or (not clamp and count > MAX_COUNT):
        bound = f">= {minimum}" if clamp else f"from {minimum} to {MAX_COUNT}"
        raise InvalidArgument(f"{name} must be {bound} (got {count})")
    return min(count, MAX_COUNT)


def budget_arg(value: Any) -> float | None:
    """``value`` as a time budget in seconds: None (no limit of its own) or a positive,
    finite number.

    Raises:
        InvalidArgument: anything else (0, a negative number, NaN, infinity, text).
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgument(
            f"budget must be a number of seconds or None (got {type(value).__name__})"
        )
    if not math.isfinite(value) or value <= 0:
        raise InvalidArgument(f"budget must be a positive number of seconds (got {value})")
    return float(value)
