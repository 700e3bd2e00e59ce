"""Workflow state of any shape (a dict, a pydantic model, a dataclass or a plain object),
read as a mapping: what key templates and the incoming message look into."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

__all__ = ["as_mapping"]


def as_mapping(value: Any) -> Mapping[str, Any]:
    """A read-only mapping view of workflow state (dict, pydantic model or plain object)."""
    if isinstance(value, Mapping):
        return value
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        dumped = dump()
        if isinstance(dumped, Mapping):
            return dumped
    if hasattr(value, "__dict__"):
        return dict(vars(value))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        # ``@dataclass(slots=True)``: no ``__dict__``, its fields are its data
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, tuple) and hasattr(value, "_asdict"):
        return dict(value._asdict())  # a NamedTuple: its fields by name
    return _slots_of(value)


def _slots_of(value: Any) -> dict[str, Any]:
    """The attributes a slotted class (an attrs class, a class with ``__slots__``) has
    set, by name."""
    fields: dict[str, Any] = {}
    for cls in type(value).__mro__:
        slots = cls.__dict__.get("__slots__", ())
        for name in (slots,) if isinstance(slots, str) else slots:
            if name not in fields and name not in ("__dict__", "__weakref__"):
                try:
                    fields[name] = getattr(value, name)
                except AttributeError:  # declared, never set
                    continue
    return fields
