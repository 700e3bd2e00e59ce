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


def _matches(stored: Sequence[BaseMessage], chat: Sequence[BaseMessage]) -> list[bool]:
    """Which thread messages are stored turns: by id, else by the content overlap of a
    thread that starts by replaying the end of the stored tail."""
    stored_ids = {m.id for m in stored if m.id}
    by_id = [bool(m.id and m.id in stored_ids) for m in chat]
    if any(by_id):
        return by_id
    for size in range(min(len(stored), len(chat)), 0, -1):
        if all(_same_turn(s, c) for s, c in zip(stored[-size:], chat[:size], strict=True)):
            return [True] * size + [False] * (len(chat) - size)
    return by_id


def _as_of_redelivered(
    stored: Sequence[BaseMessage], chat: Sequence[BaseMessage], newer: Sequence[BaseMessage]
) -> Sequence[BaseMessage]:
    """When the message to answer is a re-delivered user turn already stored, the stored
    history as it stood when that turn arrived, so the model answers it and not a newer one."""
    if newer or not chat or role_of(chat[-1]) != USER or not chat[-1].id:
        return stored
    for index in range(len(stored) - 1, -1, -1):
        if stored[index].id == chat[-1].id:
            return stored[: index + 1]
    return stored


def merge_history(
    stored: Sequence[BaseMessage],
    thread: Sequence[BaseMessage],
    *,
    max_messages: int,
    reset_command: str = "",
) -> MergedPayload:
    """Merge the stored tail with the current thread into the model payload.

    The store holds the conversation in order, so the stored tail is the backbone: thread
    messages that are stored turns (same id, or a thread that replays the end of the tail)
    are taken from it once; thread messages before the first such match are older and go
    first; the others are new and go last. When the thread ends on a re-delivered user
    turn that is already stored, stored turns after it are left out, so the model answers
    that turn. Then the reset command applies and the result is trimmed to the newest
    ``max_messages``.

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
    matched = _matches(stored, chat)
    first = matched.index(True) if any(matched) else 0
    older = [m for m, hit in zip(chat[:first], matched[:first], strict=True) if not hit]
    newer = [m for m, hit in zip(chat[first:], matched[first:], strict=True) if not hit]
    stored = _as_of_redelivered(stored, chat, newer)
    merged = [*older, *stored, *newer]
    after_reset, dropped = apply_reset(merged, reset_command)
    window = trim_window(after_reset, max_messages)
    cut = dropped + len(after_reset) - len(window)  # everything is cut from the front
    stored_end = len(older) + len(stored)
    return MergedPayload(
        messages=window,
        system=system,
        stored_in_payload=max(0, stored_end - max(cut, len(older))),
        new_turns=[m for m in newer if role_of(m) != "tool"],
        dropped_by_reset=dropped,
        truncated=len(after_reset) - len(window),
    )
