"""Normalising chat messages: LangChain messages, role/content dicts and stored turns."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)

__all__ = [
    "ASSISTANT",
    "USER",
    "MergedPayload",
    "MessageLike",
    "apply_reset",
    "content_of",
    "has_tool_calls",
    "merge_history",
    "message_id_of",
    "role_of",
    "text_of",
    "to_message",
    "trim_window",
]

USER = "user"
ASSISTANT = "assistant"

MessageLike = BaseMessage | Mapping[str, Any]
"""A LangChain message or a mapping with ``role`` (or ``type``) and ``content``."""

_ROLE_ALIASES = {
    "user": USER,
    "human": USER,
    "assistant": ASSISTANT,
    "ai": ASSISTANT,
    "bot": ASSISTANT,
    "system": "system",
    "developer": "system",
    "tool": "tool",
    "function": "tool",
}


def role_of(message: MessageLike) -> str:
    """The normalised role: ``user``, ``assistant``, ``system``, ``tool`` or ``unknown``."""
    if isinstance(message, BaseMessage):
        raw = message.type
    else:
        raw = str(message.get("role") or message.get("type") or "")
    return _ROLE_ALIASES.get(raw.lower(), "unknown")


def content_of(message: MessageLike) -> Any:
    """The message content: a string or a list of content blocks, unchanged."""
    if isinstance(message, BaseMessage):
        return message.content
    content = message.get("content")
    return "" if content is None else content


def message_id_of(message: MessageLike) -> str | None:
    """The channel or LangChain message id, used to store a re-delivered turn once."""
    if isinstance(message, BaseMessage):
        raw = message.id
    else:
        raw = message.get("id") or message.get("message_id")
    return None if raw in (None, "") else str(raw)


def has_tool_calls(message: MessageLike) -> bool:
    """Whether an assistant message is an intermediate tool-call step."""
    if isinstance(message, AIMessage):
        return bool(message.tool_calls)
    return isinstance(message, Mapping) and bool(message.get("tool_calls"))


def to_message(role: str, content: Any, message_id: str | None = None) -> BaseMessage:
    """Build the LangChain message for a stored or dict turn."""
    if role == USER:
        return HumanMessage(content=content, id=message_id)
    if role == ASSISTANT:
        return AIMessage(content=content, id=message_id)
    if role == "system":
        return SystemMessage(content=content, id=message_id)
    if role == "tool":
        return ToolMessage(content=content, id=message_id, tool_call_id=message_id or "")
    return HumanMessage(content=content, id=message_id)


def text_of(message: MessageLike) -> str:
    """The plain text of a message (text blocks joined), for comparisons, never for logs."""
    content = content_of(message)
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [
            str(block.get("text", "")) if isinstance(block, Mapping) else str(block)
            for block in content
        ]
        return " ".join(part for part in parts if part)
    return str(content)


def _same_turn(stored: BaseMessage, current: BaseMessage) -> bool:
    return role_of(stored) == role_of(current) and stored.content == current.content


@dataclass(frozen=True, slots=True)
class MergedPayload:
    """The messages a model receives for one run, and what happened on the way."""

    messages: list[BaseMessage]
    """Chat turns in order, at most ``max_messages`` (system messages excluded)."""
    system: list[BaseMessage]
    """System messages found in the thread; they go first and do not count."""
    stored_in_payload: int
    """How many of ``messages`` came from the stored history."""
    new_turns: list[BaseMessage]
    """Thread messages that are not replays of stored turns (candidates to append)."""
    dropped_by_reset: int
    """Messages ignored because a later reset command cut them off."""
    truncated: int
    """Messages cut by the ``max_messages`` window."""


def trim_window(messages: Sequence[BaseMessage], max_messages: int) -> list[BaseMessage]:
    """The newest ``max_messages`` messages, never starting on an orphaned tool result."""
    window = list(messages[-max_messages:]) if max_messages > 0 else []
    while window and role_of(window[0]) == "tool":
        window.pop(0)
    return window


def apply_reset(
    messages: Sequence[BaseMessage], reset_command: str
) -> tuple[list[BaseMessage], int]:
    """Drop every message up to and including the latest user turn equal to ``reset_command``.

    When the reset is the very last message it is kept alone, so the model can acknowledge
    it. Returns the remaining messages and how many were dropped.
    """
    command = reset_command.strip()
    if not command:
        return list(messages), 0
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if role_of(message) == USER and text_of(message).strip() == command:
            if index == len(messages) - 1:
                return [message], index
            return list(messages[index + 1 :]), index + 1
    return list(messages), 0


def merge_history(
    stored: Sequence[BaseMessage],
    thread: Sequence[BaseMessage],
    *,
    max_messages: int,
    reset_command: str = "",
) -> MergedPayload:
    """Merge the stored tail with the current thread into the model payload.

    Overlap is removed first by message id (a thread message with the id of a stored turn
    is that turn), then by content: the longest run of stored turns that ends the stored
    tail and starts the thread (as a checkpointed thread replays) is kept once. Then the
    reset command applies and the result is trimmed to the newest ``max_messages``.

    Args:
        stored: The stored tail, oldest first.
        thread: The current thread's messages, oldest first.
        max_messages: Window size for chat turns; system messages are not counted.
        reset_command: User text that clears the history before it ("" disables).

    Returns:
        The payload and the bookkeeping the node reports.
    """
    system = [m for m in thread if role_of(m) == "system"]
    chat = [m for m in thread if role_of(m) != "system"]
    thread_ids = {m.id for m in chat if m.id}
    stored_ids = {m.id for m in stored if m.id}
    remaining = [m for m in stored if not (m.id and m.id in thread_ids)]
    overlap = 0
    for size in range(min(len(remaining), len(chat)), 0, -1):
        tail, head = remaining[-size:], chat[:size]
        if all(_same_turn(s, c) for s, c in zip(tail, head, strict=True)):
            overlap = size
            break
    if overlap:
        remaining = remaining[:-overlap]
    new_turns = [
        m for m in chat[overlap:] if not (m.id and m.id in stored_ids) and role_of(m) != "tool"
    ]
    merged = [*remaining, *chat]
    after_reset, dropped = apply_reset(merged, reset_command)
    window = trim_window(after_reset, max_messages)
    from_store = max(0, len(remaining) - dropped)
    return MergedPayload(
        messages=window,
        system=system,
        stored_in_payload=max(0, from_store - (len(after_reset) - len(window))),
        new_turns=new_turns,
        dropped_by_reset=dropped,
        truncated=len(after_reset) - len(window),
    )
