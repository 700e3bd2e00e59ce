"""Normalising chat messages: LangChain messages, role/content dicts and stored turns."""

from __future__ import annotations

from collections.abc import Mapping
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
    "MessageLike",
    "content_of",
    "message_id_of",
    "role_of",
    "to_message",
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
