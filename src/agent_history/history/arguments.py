"""Checks of the numbers and names a `ChatHistory` call (or a surface's settings) is
given, one verdict on every backend: a count, sequence number or size is a whole number
(not a bool, not 1.5), a budget a positive number of seconds, a flag a bool, a text a
string, and each mistake an `InvalidArgument` naming it.

Counts above `MAX_COUNT` mean "every turn" and are clamped to it, so ``tail(key, 2**70)``
reads the whole conversation on every backend (SQLite takes 64-bit integers only).
"""

from __future__ import annotations

import functools
import logging
import math
import numbers
import operator
from collections.abc import Iterable, Mapping
from typing import Any

from agent_history import observability as obs
from agent_history.errors import InvalidArgument, InvalidNamespace
from agent_history.history.naming import validate_namespace
from agent_history.keys import candidate_problem, format_field, is_key_template

__all__ = [
    "MAX_COUNT",
    "RESERVED_FIELDS",
    "budget_arg",
    "count_arg",
    "flag_arg",
    "items_arg",
    "key_candidates_arg",
    "key_template_arg",
    "namespace_arg",
    "seconds_arg",
    "text_arg",
    "texts_arg",
    "value_field_arg",
]

MAX_COUNT = 2**31
"""The largest count or sequence number a call uses; larger counts are clamped to it."""

RESERVED_FIELDS = frozenset({"seq", "role", "id", "ts", "enc", "type", "lc"})
"""Record fields a turn's content cannot be kept in (the record's own)."""


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
    return seconds_arg("budget", value, or_none=True)


def seconds_arg(name: str, value: Any, *, zero: bool = False, or_none: bool = False) -> float:
    """``value`` as a finite number of seconds, positive (or, with ``zero``, at least 0).

    Raises:
        InvalidArgument: a bool, text, NaN, infinity, or a number out of range.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):  # numpy's too
        none = " or None" if or_none else ""
        raise InvalidArgument(
            f"{name} must be a number of seconds{none} (got {type(value).__name__})"
        )
    seconds = float(value)
    if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not zero):
        bound = "a number of seconds >= 0" if zero else "a positive number of seconds"
        raise InvalidArgument(f"{name} must be {bound} (got {seconds})")
    return seconds


def flag_arg(name: str, value: Any) -> bool:
    """``value`` as a flag: True or False only (``"false"`` from a config file is text,
    and would otherwise count as true); numpy's bool is one.

    Raises:
        InvalidArgument: anything but a bool.
    """
    if isinstance(value, bool):
        return value
    kind = type(value)
    if kind.__module__ == "numpy" and kind.__name__ in ("bool", "bool_"):  # numpy's bool
        return bool(value)
    raise InvalidArgument(f"{name} must be True or False (got {kind.__name__})")


def text_arg(name: str, value: Any) -> str:
    """``value`` as text.

    Raises:
        InvalidArgument: anything but a string.
    """
    if not isinstance(value, str):
        raise InvalidArgument(f"{name} must be text (got {type(value).__name__})")
    return value


def items_arg(name: str, value: Any, what: str) -> tuple[Any, ...]:
    """``value`` as a tuple of its items (a list, a tuple, any collection of ``what``).

    Raises:
        InvalidArgument: a string (which would otherwise be read as one item per
            character), bytes, a mapping, or something that is not a collection.
    """
    if isinstance(value, str | bytes | Mapping) or not isinstance(value, Iterable):
        raise InvalidArgument(f"{name} must be a list of {what}, not {type(value).__name__}")
    return tuple(value)


def texts_arg(name: str, value: Any) -> tuple[str, ...]:
    """``value`` as a tuple of texts (see `items_arg`).

    Raises:
        InvalidArgument: not a collection (a string included), or an item that is not a
            string.
    """
    texts = items_arg(name, value, "strings")
    for index, item in enumerate(texts):
        if not isinstance(item, str):
            raise InvalidArgument(f"{name}: item {index} is not a string")
    return texts


def value_field_arg(name: str, value: Any) -> str:
    """``value`` as the record field that holds a turn's content.

    Raises:
        InvalidArgument: not text, empty, or one of the record's own fields
            (`RESERVED_FIELDS`).
    """
    field = text_arg(name, value)
    if not field or field in RESERVED_FIELDS:
        raise InvalidArgument(f"{name} {field!r} is empty or reserved")
    return field


def namespace_arg(namespace: Any) -> tuple[str, ...]:
    """``history_namespace`` checked (`naming.validate_namespace`), as a tuple of labels.

    Raises:
        InvalidNamespace: naming ``history_namespace`` and the problem.
    """
    try:
        return validate_namespace(namespace)
    except InvalidNamespace as exc:
        raise InvalidNamespace(f"history_namespace: {exc}") from None


def _format_field_arg(name: str, value: Any) -> str:
    text = text_arg(name, value)
    field = format_field(text)
    if field is not None:
        raise InvalidArgument(
            f"{name} holds {field!r}, a placeholder of another template language (a format "
            "field): every chat would share one conversation; a template writes values as "
            "{{ name }}"
        )
    return text


def key_candidates_arg(name: str, value: Any) -> tuple[str, ...]:
    """Key candidates as configured: a collection (not one string) of texts, none holding
    a placeholder of another template language (`keys.format_field`), and at least one
    that could give a key.
    A candidate that never can (`keys.candidate_problem`) beside one that can is
    reported with a warning (later candidates serve, as they did).

    Raises:
        InvalidArgument: naming ``name`` (and the candidate's position).
    """
    texts = tuple(
        _format_field_arg(f"{name}[{i}]", t) for i, t in enumerate(texts_arg(name, value))
    )
    if not texts:
        raise InvalidArgument(f"{name} is empty: no run could have a key")
    problems = [(i, candidate_problem(text)) for i, text in enumerate(texts)]
    dead = [(i, problem) for i, problem in problems if problem is not None]
    if len(dead) == len(texts):
        index, problem = dead[0]
        raise InvalidArgument(f"{name}[{index}] {problem} (and no candidate could give a key)")
    for index, problem in dead:
        _warn_once("history_key_candidate_unusable", f"{name}[{index}]", str(problem), texts[index])
    return texts


@functools.lru_cache(maxsize=256)
def _warn_once(event: str, setting: str, problem: str, text: str) -> None:
    """Warn once per process about a setting (settings are checked again per run); the
    warning names the setting, never its text (``text`` only keys the cache)."""
    del text
    obs.log_event(event, setting=setting, problem=problem, level=logging.WARNING)


def key_template_arg(name: str, value: Any) -> str:
    """``history_key_template`` as configured: no placeholder of another template
    language, and a literal
    that is a key or a template the sandbox accepts (every run goes through it).

    Raises:
        InvalidArgument: naming ``name``.
    """
    text = _format_field_arg(name, value)
    problem = candidate_problem(text)
    if problem is not None:
        raise InvalidArgument(f"{name} {problem}")
    if is_key_template(text) and "conversation_key" not in text:
        # Every chat that shares the other values shares one conversation.
        problem = "does not use conversation_key: the candidates are ignored"
        _warn_once("history_key_template_constant", name, problem, text)
    return text
