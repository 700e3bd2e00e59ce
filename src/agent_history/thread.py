"""Reading the current thread's chat messages out of workflow state."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.messages import BaseMessage, HumanMessage, convert_to_messages

from agent_history.messages import USER, role_of, text_of

__all__ = ["IncomingMessage", "as_mapping", "current_thread", "incoming_message"]

_MESSAGE_FIELDS = ("message", "user_message", "query", "prompt")
_TEXT_FIELDS = ("text", "content", "message", "query", "prompt")
_ID_FIELDS = ("message_id", "msgid", "msg_id", "id", "update_id")


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
    return {}


class IncomingMessage:
    """The user message a callback delivered, with the channel's message id if it has one."""

    __slots__ = ("message_id", "text")

    def __init__(self, text: str, message_id: str | None) -> None:
        self.text = text
        self.message_id = message_id


def _from_payload(payload: Any, outer: Mapping[str, Any]) -> IncomingMessage | None:
    if isinstance(payload, str):
        message_id = next((str(outer[f]) for f in _ID_FIELDS[:3] if outer.get(f)), None)
        return IncomingMessage(payload, message_id) if payload.strip() else None
    if isinstance(payload, Mapping):
        text = next((payload[f] for f in _TEXT_FIELDS if isinstance(payload.get(f), str)), None)
        if text is None or not text.strip():
            return None
        message_id = next(
            (str(payload[f]) for f in _ID_FIELDS if payload.get(f) not in (None, "")), None
        )
        return IncomingMessage(text, message_id)
    return None


def incoming_message(inputs: Mapping[str, Any]) -> IncomingMessage | None:
    """The latest user message in ``inputs``: ``message``, ``user_message``, ``query``,
    ``prompt`` or ``listener.message``, as text or as a dict with ``text``/``content``."""
    for field in _MESSAGE_FIELDS:
        found = _from_payload(inputs.get(field), inputs)
        if found:
            return found
    listener = inputs.get("listener")
    if isinstance(listener, Mapping):
        return _from_payload(listener.get("message"), listener)
    return None


def _to_messages(raw: Any) -> list[BaseMessage]:
    if not isinstance(raw, Sequence) or isinstance(raw, str | bytes) or not raw:
        return []
    try:
        return list(convert_to_messages(list(raw)))
    except (ValueError, TypeError, NotImplementedError):
        return []


def current_thread(
    state: Any,
) -> tuple[list[BaseMessage], IncomingMessage | None, BaseMessage | None]:
    """The current thread's messages, the delivered user message, and the message added
    to the thread for it (None when the thread already had it).

    ``state["messages"]`` wins when present; otherwise ``inputs.history`` is used. The
    delivered message (from ``inputs``) is added as the latest user turn unless the
    thread already ends with the same user text, so it is never duplicated.
    """
    mapping = as_mapping(state)
    inputs = as_mapping(mapping.get("inputs") or {})
    thread = _to_messages(mapping.get("messages")) or _to_messages(inputs.get("history"))
    incoming = incoming_message(inputs)
    added: BaseMessage | None = None
    if incoming is not None:
        if thread and role_of(thread[-1]) == USER and text_of(thread[-1]) == incoming.text:
            if incoming.message_id:
                # The channel's id identifies the turn across re-deliveries; the id the
                # graph gave the state message does not.
                thread[-1] = thread[-1].model_copy(update={"id": incoming.message_id})
        else:
            # Without a channel id the turn still gets a stable id, shared by the stored
            # turn and the checkpointed thread, so later runs recognise it.
            added = HumanMessage(incoming.text, id=incoming.message_id or str(uuid.uuid4()))
            thread.append(added)
    return thread, incoming, added
