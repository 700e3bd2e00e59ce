"""Value types of the history log: stored turns, append results and conversation info."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, NamedTuple

from langchain_core.messages import BaseMessage

from agent_history.messages import to_message

__all__ = ["AppendResult", "ConversationInfo", "Turn", "decode_content", "encode_content"]

# PostgreSQL's jsonb cannot hold U+0000; content containing it is stored as its
# JSON text with ``enc: "json"`` so every backend round-trips it exactly.
_JSON_ENCODING = "json"


def _has_nul(content: Any) -> bool:
    if isinstance(content, str):
        return "\x00" in content
    if isinstance(content, list):
        return any(_has_nul(item) for item in content)
    if isinstance(content, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in content.items())
    return False


def encode_content(content: Any) -> tuple[Any, str | None]:
    """Return the storable form of ``content`` and its encoding marker (None when plain)."""
    if _has_nul(content):
        return json.dumps(content, ensure_ascii=True), _JSON_ENCODING
    return content, None


def decode_content(stored: Any, encoding: str | None) -> Any:
    """Invert `encode_content`."""
    if encoding == _JSON_ENCODING and isinstance(stored, str):
        return json.loads(stored)
    return stored


class Turn(NamedTuple):
    """One stored chat turn, immutable (a named tuple: every tail read builds dozens)."""

    seq: int
    """Position in the conversation, from 1, contiguous."""
    role: str
    """``user`` or ``assistant``."""
    content: Any
    """Text, or a list of content blocks, exactly as appended."""
    id: str | None = None
    """Message id used for idempotent re-delivery, if the turn had one."""
    ts: str | None = None
    """UTC ISO-8601 time the turn was stored."""

    def to_message(self) -> BaseMessage:
        """The turn as a LangChain message (``HumanMessage`` or ``AIMessage``)."""
        return to_message(self.role, self.content, self.id)

    def to_record(self, value_field: str = "content") -> dict[str, Any]:
        """The JSON record kept inside a chunk item."""
        stored, encoding = encode_content(self.content)
        record: dict[str, Any] = {"seq": self.seq, "role": self.role, value_field: stored}
        if encoding:
            record["enc"] = encoding
        if self.id is not None:
            record["id"] = self.id
        if self.ts is not None:
            record["ts"] = self.ts
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any], value_field: str = "content") -> Turn:
        """Read a chunk record; falls back to ``content`` when ``value_field`` is absent."""
        get = record.get
        stored = record[value_field] if value_field in record else get("content", "")
        encoding = get("enc")
        return cls(
            int(record["seq"]),
            str(get("role", "user")),
            stored if encoding is None else decode_content(stored, encoding),
            get("id"),
            get("ts"),
        )


@dataclass(frozen=True, slots=True)
class AppendResult:
    """What one `ChatHistory.append` call wrote."""

    appended: int
    """Turns written."""
    duplicates: int
    """Turns skipped because their message id was already stored."""
    skipped: int
    """Messages ignored because of their role (system, tool, tool-call steps)."""
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
