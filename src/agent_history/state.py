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
    return {}
