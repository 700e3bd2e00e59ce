"""Value types of the history log: stored turns, append results and conversation info."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage

from agent_history.history.arguments import RESERVED_FIELDS
from agent_history.history.codec import (
    ENCODING_JSON,
    build_message,
    decode_value,
    encode_value,
    is_plain,
)

__all__ = [
    "AppendResult",
    "ConversationInfo",
    "RunToken",
    "Turn",
    "decode_content",
    "encode_content",
    "is_utc_time",
    "message_from_record",
]


def is_utc_time(value: Any) -> bool:
    """Whether ``value`` is an ISO-8601 time with a UTC offset (a stored ``ts`` or
    ``updated_at``)."""
    if not isinstance(value, str) or not value.isprintable():
        return False  # isprintable: Python 3.11's parser stops at a NUL, taking what came before
    try:
        return datetime.fromisoformat(value).tzinfo is not None
    except ValueError:
        return False


def encode_content(content: Any) -> tuple[Any, str | None]:
    """Return the storable form of ``content`` and its encoding marker (None when plain)."""
    if is_plain(content, "content"):
        return content, None
    return encode_value(content), ENCODING_JSON


def decode_content(stored: Any, encoding: str | None) -> Any:
    """Invert `encode_content`."""
    if encoding == ENCODING_JSON:
        return decode_value(stored)
    return stored


class RunToken(NamedTuple):
    """What an answered user message's id entry records of the run that answered it
    (see `layout.plan_append`)."""

    answer: str
    """The id of the latest answer stored for it (the run token)."""
    first: str | None = None
    """The id of the first message of the pass that stored that answer, when a later
    pass of the run stored it (None: the pass that stored the question)."""


class Turn(NamedTuple):
    """One stored message, immutable (a named tuple: every tail read builds dozens)."""

    seq: int
    """Position in the conversation, from 1, contiguous."""
    role: str
    """``user``, ``assistant`` or ``tool``."""
    content: Any
    """Text, or a list of content blocks, exactly as appended."""
    id: str | None = None
    """Message id: the id the message has in the graph state, and its identity here."""
    ts: str | None = None
    """UTC ISO-8601 time the turn was stored."""
    kind: str | None = None
    """LangChain message type (``human``, ``ai``, ``tool``); None in records written
    before full-fidelity storage."""
    extra: dict[str, Any] | None = None
    """Every other message field that differs from its default (``tool_calls``,
    ``tool_call_id``, ``name``, ``additional_kwargs``, ``usage_metadata``, ...)."""

    def to_message(self) -> BaseMessage:
        """The turn as the LangChain message it was appended as."""
        return build_message(self.role, self.content, self.id, self.kind, self.extra or {})

    def to_record(self, value_field: str = "content") -> dict[str, Any]:
        """The JSON record kept inside a chunk item.

        Raises:
            InvalidMessage: the content or a field is not JSON.
        """
        return make_record(
            self.seq, self.role, self.content, self.id, self.ts, self.kind, self.extra,
            value_field,
        )  # fmt: skip

    @classmethod
    def from_record(cls, record: dict[str, Any], value_field: str = "content") -> Turn:
        """Read a chunk record (of any format); falls back to ``content`` when
        ``value_field`` is absent.

        Raises:
            ValueError, KeyError, TypeError: the record is malformed (see `codec.quarantine`).
        """
        return cls(*_fields(record, value_field))


def message_from_record(record: dict[str, Any], value_field: str = "content") -> BaseMessage:
    """The LangChain message a chunk record holds, without an intermediate `Turn` (a
    tail builds dozens).

    Raises:
        ValueError, KeyError, TypeError: the record is malformed, or pydantic rejects the
            message (see `codec.quarantine`).
    """
    kind = record.get("type")
    cls = _FIELDLESS.get(kind) if isinstance(kind, str) else None
    if cls is not None and value_field in record and "lc" not in record and "enc" not in record:
        # Most records: a question or an answer as text, with no field beyond its id.
        return cls(content=record[value_field], id=id_or_none(record.get("id")))
    _, role, content, message_id, _, kind, extra = _fields(record, value_field)
    return build_message(role, content, message_id, kind, extra or {})


_FIELDLESS: dict[str, type[BaseMessage]] = {"human": HumanMessage, "ai": AIMessage}
"""Message classes whose records need nothing but content and id (`message_from_record`
builds them as `codec.build_message` does, without its steps)."""


def id_or_none(message_id: Any) -> Any:
    """``message_id``, with ``""`` read as no id (as `messages.message_id_of` does).

    Earlier releases stored an empty id as an id: every id-less message after the first
    was then taken for a duplicate, and an export holding one did not import."""
    return None if message_id == "" else message_id


def _own_field(record: dict[str, Any]) -> Any:
    """The content of a record written with a value field the reader was not told: the
    record's one field that is not a record field of its own ("" when there is none)."""
    own = [name for name in record if name not in RESERVED_FIELDS]
    return record[own[0]] if len(own) == 1 else ""


def _fields(
    record: dict[str, Any], value_field: str
) -> tuple[int, str, Any, str | None, str | None, str | None, dict[str, Any] | None]:
    """A record's turn fields, decoded: ``(seq, role, content, id, ts, type, extra)``."""
    get = record.get
    if value_field in record:
        stored = record[value_field]
    elif "content" in record:
        stored = record["content"]
    else:  # written with another `history_value_field` (an operator command reading it)
        stored = _own_field(record)
    extra = get("lc")
    encoding = get("enc")
    if encoding == ENCODING_JSON:
        stored = decode_value(stored)
        extra = decode_value(extra) if extra is not None else None
    elif encoding is not None:
        raise ValueError("unknown record encoding")
    if extra is not None and not isinstance(extra, dict):
        raise TypeError("record fields must be an object")
    return (
        int(record["seq"]), str(get("role", "user")), stored, id_or_none(get("id")), get("ts"),
        get("type"), extra,
    )  # fmt: skip


def make_record(
    seq: int,
    role: str,
    content: Any,
    message_id: str | None,
    ts: str | None,
    kind: str | None,
    extra: dict[str, Any] | None,
    value_field: str,
    plain: bool | None = None,
) -> dict[str, Any]:
    """Build a chunk record; ``plain`` may carry an earlier `codec.is_plain` verdict on
    content and fields together.

    Raises:
        InvalidMessage: the content or a field is not JSON.
    """
    if plain is None:
        plain = is_plain(content, "content") & is_plain(extra, "message fields")
    record: dict[str, Any] = {"seq": seq, "role": role}
    if plain:
        record[value_field] = content
        if extra:
            record["lc"] = extra
    else:
        record[value_field] = encode_value(content)
        if extra:
            record["lc"] = encode_value(extra)
        record["enc"] = ENCODING_JSON
    if message_id is not None:
        record["id"] = message_id
    if ts is not None:
        record["ts"] = ts
    if kind is not None:
        record["type"] = kind
    return record


@dataclass(frozen=True, slots=True)
class AppendResult:
    """What one `ChatHistory.append` call wrote."""

    appended: int
    """Turns written."""
    duplicates: int
    """Turns skipped because their message id was already stored, or because the
    exchange's user message (``anchor_id``) was."""
    skipped: int
    """Messages the history's scope leaves out (system messages; in the ``turns`` scope
    also tool results and assistant tool-call steps)."""
    first_seq: int | None
    """Sequence number of the first written turn, None when nothing was written."""
    last_seq: int | None
    """Sequence number of the last written turn, None when nothing was written."""
    total: int
    """Turns in the conversation after the append."""
    conflicts: int = 0
    """Best-effort path only: concurrent writes detected and retried."""


@dataclass(frozen=True, slots=True)
class ConversationInfo:
    """Summary of one conversation, read from its head item."""

    key: str
    turns: int
    created_at: str
    updated_at: str
    chunk_size: int
