"""Synthetic chat turns: deterministic text of a fixed size, alternating user and assistant."""

from __future__ import annotations

from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage

__all__ = ["Turn", "as_dict", "synthetic_turns", "turn_pair"]

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


def turn_pair(tag: str, chars: int) -> list[BaseMessage]:
    """One user message and its assistant reply, as `AgentNode` appends them: LangChain
    messages with ids. Every system gets them so (built inside the timed call, for all
    alike) and stores what it keeps of them.

    Ids make the append take our idempotent path (an id lookup per turn), which is what
    production appends do; systems without ids ignore them.
    """
    return [
        HumanMessage(_text(f"user {tag}:", chars), id=f"{tag}:u"),
        AIMessage(_text(f"reply {tag}:", chars), id=f"{tag}:a"),
    ]


def as_dict(message: BaseMessage) -> Turn:
    """The role/content dict a list-in-one-item history keeps of a message."""
    role = "user" if message.type == "human" else "assistant"
    return {"role": role, "content": message.content, "id": message.id}
