"""Synthetic chat turns: deterministic text of a fixed size, alternating user and assistant."""

from __future__ import annotations

from typing import Any

__all__ = ["Turn", "synthetic_turns", "turn_pair"]

Turn = dict[str, Any]
"""A role/content dict (plus an optional ``id``), the form every system accepts."""

_FILLER = "The quick brown fox jumps over the lazy dog; pack my box with five dozen jugs. " * 8


def _text(label: str, chars: int) -> str:
    return (label + " " + _FILLER)[:chars]


def synthetic_turns(first_seq: int, count: int, chars: int) -> list[Turn]:
    """``count`` turns numbered from ``first_seq``: odd numbers are user turns."""
    return [
        {
            "role": "user" if seq % 2 else "assistant",
            "content": _text(f"turn {seq}:", chars),
        }
        for seq in range(first_seq, first_seq + count)
    ]


def turn_pair(tag: str, chars: int) -> list[Turn]:
    """One user turn and its assistant reply, with message ids as `AgentNode` gives them.

    Ids make the append take our idempotent path (an id lookup per turn), which is what
    production appends do; systems without ids ignore them.
    """
    return [
        {"role": "user", "content": _text(f"user {tag}:", chars), "id": f"{tag}:u"},
        {"role": "assistant", "content": _text(f"reply {tag}:", chars), "id": f"{tag}:a"},
    ]
