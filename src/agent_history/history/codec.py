"""One codec for stored turns, identical on every backend.

Write side: a LangChain message (or a role/content dict) becomes a record with
LangChain's own serialisation (`message_to_dict`): its type, content and every field
that differs from the default (``tool_calls``, ``tool_call_id``, ``name``,
``additional_kwargs``, ``response_metadata``, ``usage_metadata``, ...). Values are
validated first: content must be a string or a list of content blocks, and everything
must be JSON. What JSON backends would not give back exactly (U+0000 and lone surrogates
in strings, integers outside 64 bits, non-finite floats and floats in exponent form,
which PostgreSQL's ``jsonb`` turns into integers) is stored as JSON text with
``"enc": "json"``, so every backend returns the same value.

Read side: records written by any version (plain ``role``/``content`` records included)
become messages again; a record that cannot be read is skipped with a warning and a
metric (`quarantine`), never raised, never logged with its body.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
    messages_from_dict,
)
from pydantic_core import to_jsonable_python

from agent_history import observability as obs
from agent_history.errors import InvalidMessage
from agent_history.messages import is_context_summary, role_of

__all__ = [
    "ASSISTANT",
    "ENCODING_JSON",
    "MAX_DEPTH",
    "TOOL",
    "USER",
    "HistoryScope",
    "build_message",
    "check_content",
    "check_rebuilds",
    "decode_value",
    "dict_message",
    "encode_value",
    "in_scope",
    "is_final_answer",
    "is_plain",
    "message_fields",
    "message_parts",
    "messages_of",
    "quarantine",
    "role_for_type",
    "role_of_message",
    "type_fits_role",
]

USER = "user"
ASSISTANT = "assistant"
TOOL = "tool"
ENCODING_JSON = "json"
MAX_DEPTH = 64
"""Deepest nesting of lists and objects a stored value may have."""

HistoryScope = Literal["turns", "full"]
"""``turns``: user turns and final assistant answers; ``full``: every message of the run."""

_ROLE_OF_TYPE = {
    "human": USER,
    "ai": ASSISTANT,
    "AIMessageChunk": ASSISTANT,
    "HumanMessageChunk": USER,
    "tool": TOOL,
    "ToolMessageChunk": TOOL,
    "system": "system",
}
_CHAT_TYPES = frozenset({"chat", "ChatMessageChunk"})
"""`ChatMessage` types: the role is the message's ``role`` field, not its type."""
_TYPE_OF_ROLE = {USER: "human", ASSISTANT: "ai", TOOL: "tool", "system": "system"}
# Fields written by message_to_dict that the record holds elsewhere.
_OWN_FIELDS = frozenset({"content", "id", "type"})
_UNSAFE_TEXT = re.compile("[\x00\ud800-\udfff]")
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1


def role_for_type(kind: str) -> str:
    """The stored role of a LangChain message type (``human`` -> ``user``, ...)."""
    return _ROLE_OF_TYPE.get(kind, "unknown")


def role_of_message(message: BaseMessage) -> str:
    """The stored role of ``message``: its type's, or for a `ChatMessage` its ``role`` read
    as a dict's is (``user``/``human``, ``assistant``/``ai``/``bot``, ``system``); a chat
    message with another role (``tool`` without a call id, ``critic``) is ``unknown``; a
    context summary (`messages.is_context_summary`) is ``system``, never stored."""
    if is_context_summary(message):
        return "system"
    if message.type not in _CHAT_TYPES:
        return role_for_type(message.type)
    role = role_of({"role": str(getattr(message, "role", ""))})
    return role if role in (USER, ASSISTANT, "system") else "unknown"


def type_fits_role(kind: str, role: str) -> bool:
    """Whether a stored turn's LangChain type can carry its role (imports check it)."""
    return role_for_type(kind) == role or (kind in _CHAT_TYPES and role in (USER, ASSISTANT))


def _walk(value: Any, depth: int, where: str) -> bool:
    """Validate ``value`` as JSON; True when every backend stores it as is."""
    if depth > MAX_DEPTH:
        raise InvalidMessage(f"{where}: nested deeper than {MAX_DEPTH} levels")
    if value is None or isinstance(value, bool):
        return True
    if isinstance(value, str):
        return _UNSAFE_TEXT.search(value) is None
    if isinstance(value, int):
        return _INT_MIN <= value <= _INT_MAX
    if isinstance(value, float):
        # repr is what JSON encoders write; an exponent makes jsonb return an integer.
        return math.isfinite(value) and "e" not in repr(value)
    if isinstance(value, list):
        plain = True
        for item in value:
            plain = _walk(item, depth + 1, where) and plain
        return plain
    if isinstance(value, dict):
        plain = True
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidMessage(f"{where}: object keys must be strings")
            # Both walked, always: a key that is not plain (a lone surrogate) must not
            # spare its value the checks (a nested non-string key, too deep a nesting).
            key_plain = _walk(key, depth + 1, where)
            plain = _walk(item, depth + 1, where) and key_plain and plain
        return plain
    raise InvalidMessage(f"{where}: {type(value).__name__} is not a JSON value")


def is_plain(value: Any, where: str = "value") -> bool:
    """Whether ``value`` is stored as is (True) or as JSON text (False).

    Raises:
        InvalidMessage: ``value`` is not JSON (a set, bytes, an object, a non-string key)
            or is nested deeper than `MAX_DEPTH`.
    """
    return _walk(value, 0, where)


def encode_value(value: Any) -> str:
    """The JSON text form of a value that is not plain (exact for big integers, NaN,
    U+0000 and lone surrogates)."""
    return json.dumps(value, ensure_ascii=True, allow_nan=True)


def decode_value(text: Any) -> Any:
    """Invert `encode_value`."""
    if not isinstance(text, str):
        raise ValueError("an encoded value must be JSON text")
    return json.loads(text)


def check_content(content: Any, where: str) -> None:
    """Raise `InvalidMessage` unless ``content`` is a string or a list of content blocks."""
    if isinstance(content, str):
        return
    if isinstance(content, list) and all(isinstance(b, str | dict) for b in content):
        return
    raise InvalidMessage(
        f"{where}: content must be a string or a list of content blocks "
        f"(got {type(content).__name__})"
    )


@functools.cache
def _defaults(message_class: type[BaseMessage]) -> dict[str, Any]:
    """Each optional field's default, per message class (pydantic rebuilds them per call)."""
    defaults: dict[str, Any] = {}
    for name, spec in message_class.model_fields.items():
        if not spec.is_required():
            defaults[name] = spec.get_default(call_default_factory=True)
    return defaults


_NO_DEFAULT = object()


def _non_default(message: BaseMessage, data: Mapping[str, Any]) -> dict[str, Any]:
    defaults = _defaults(type(message))
    return {
        name: value
        for name, value in data.items()
        if name not in _OWN_FIELDS and defaults.get(name, _NO_DEFAULT) != value
    }


# LangChain's own message classes dump (``model_dump``) as their fields as they are set:
# they have no alias, serializer or computed field (a test holds this for each). Reading
# the fields directly spares a dump per message on every append; any other class (an
# application's subclass, say) is dumped by pydantic.
_DUMPED_AS_SET = frozenset(
    {AIMessage, ChatMessage, FunctionMessage, HumanMessage, SystemMessage, ToolMessage}
)


def message_fields(message: BaseMessage) -> dict[str, Any]:
    """The message's fields by name, as ``message.model_dump()`` has them, except that
    for LangChain's own classes a pydantic model nested in a field's value stays a model
    (`message_parts` makes it JSON as a dump would) and nothing is copied: read the
    result, never change it."""
    if type(message) in _DUMPED_AS_SET:
        extra = message.__pydantic_extra__
        return {**message.__dict__, **extra} if extra else message.__dict__
    return message.model_dump()


_TOKEN_COUNTS = ("input_tokens", "output_tokens", "total_tokens")
"""The counts LangChain's ``UsageMetadata`` requires."""


def message_parts(message: BaseMessage) -> tuple[str, Any, str | None, str, dict[str, Any]]:
    """``(role, content, id, type, other fields)`` of a message, as stored.

    The content is kept exactly (or refused, see `check_content`). The other fields
    (metadata a provider or a tool attached: times, decimals, bytes, objects) are made
    JSON the way pydantic serialises them (ISO times, decimals as text, bytes as base64,
    other objects as ``<unserialisable Type>``), so one odd field never costs the turn.
    """
    kind = str(message.type)
    extra = _non_default(message, message_fields(message))
    usage = extra.get("usage_metadata")
    if isinstance(usage, Mapping) and not usage.keys() & _TOKEN_COUNTS:
        # LangChain's response cache marks a hit ``{"total_cost": 0}`` on an answer whose
        # model reported no usage, which `AIMessage` refuses: a hit spent no tokens.
        extra = {**extra, "usage_metadata": {**dict.fromkeys(_TOKEN_COUNTS, 0), **usage}}
    if extra:
        try:
            extra = _jsonable(extra)
        except (UnicodeError, ValueError, TypeError) as exc:
            raise InvalidMessage(
                f"message fields cannot be made JSON ({type(exc).__name__})"
            ) from None
    return role_of_message(message), message.content, message.id, kind, extra


def _jsonable(value: Any) -> Any:
    """``value`` made JSON by pydantic (see `message_parts`).

    pydantic cannot take a dict key holding a lone surrogate (what ``json.loads`` gives for
    a provider's ``"\\ud83d"``, half an emoji): around such a key the containers are
    rebuilt here, and pydantic makes JSON of everything else, keys included."""
    try:
        return to_jsonable_python(value, bytes_mode="base64", fallback=_placeholder)
    except UnicodeEncodeError:
        if isinstance(value, dict):
            return {_jsonable_key(key): _jsonable(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [_jsonable(item) for item in value]
        raise


def _jsonable_key(key: Any) -> Any:
    if isinstance(key, str):
        return key
    return next(iter(to_jsonable_python({key: None}, fallback=_placeholder)))


def _placeholder(value: Any) -> str:
    return f"<unserialisable {type(value).__name__}>"


_COMMON_TYPES: dict[str, type[BaseMessage]] = {
    "human": HumanMessage,
    "ai": AIMessage,
    "tool": ToolMessage,
    "system": SystemMessage,
}


def build_message(
    role: str, content: Any, message_id: str | None, kind: str | None, extra: Mapping[str, Any]
) -> BaseMessage:
    """The LangChain message for a stored turn (records of every format)."""
    if kind:
        data = {**extra, "content": content, "id": message_id, "type": kind}
        cls = _COMMON_TYPES.get(kind)
        if cls is not None:  # what `messages_from_dict` does, without its dispatch
            return cls(**data)
        return messages_from_dict([{"type": kind, "data": data}])[0]
    # Records written before messages kept their type: role and content only.
    if role == ASSISTANT:
        return AIMessage(content=content, id=message_id)
    if role == "system":
        return SystemMessage(content=content, id=message_id)
    if role == TOOL:
        return ToolMessage(content=content, id=message_id, tool_call_id=message_id or "")
    return HumanMessage(content=content, id=message_id)


def check_rebuilds(
    role: str, content: Any, message_id: str | None, kind: str, extra: Mapping[str, Any], where: str
) -> None:
    """Refuse a message whose stored form cannot be built again: one changed after it was
    made (attribute assignment, ``model_construct``) into what its class rejects, such as
    tool-call arguments given as text. Stored, every read would skip it. A question or an
    answer with no field beyond content and id always builds, so it is not tried.

    Raises:
        InvalidMessage: the class rejects the stored fields (named by error class only:
            pydantic's messages quote the values).
    """
    if not extra and kind in ("human", "ai"):
        return
    try:
        build_message(role, content, message_id, kind, extra)
    except (ValueError, TypeError, KeyError) as exc:  # pydantic's errors are ValueErrors
        raise InvalidMessage(
            f"{where}: the message cannot be read back as stored ({type(exc).__name__})"
        ) from None


def dict_message(message: Mapping[str, Any], where: str = "message") -> BaseMessage | None:
    """A role/content dict as a LangChain message (with its ``id``, ``name`` and, for a
    tool result, ``status``), or a message LangChain serialised (``messages_to_dict``:
    ``{"type": ..., "data": {...}}``, as its file, Redis and SQL histories keep them);
    None for roles that are not chat.

    Raises:
        InvalidMessage: the dict has no ``content`` (an assistant's with ``tool_calls``
            may leave it out), or its fields do not make a message.
    """
    if "content" not in message and isinstance(message.get("data"), Mapping):
        try:
            serialised = messages_from_dict([dict(message)])[0]
        except Exception as exc:  # pydantic's errors quote the body: the class only
            raise InvalidMessage(
                f"{where}: not a message LangChain serialised ({type(exc).__name__})"
            ) from None
        check_content(serialised.content, where)
        return serialised
    role = role_of(message)
    if "content" not in message and not (role == ASSISTANT and message.get("tool_calls")):
        raise InvalidMessage(f"{where}: a role/content dict needs a 'content' field")
    content = message.get("content")
    raw_id = message.get("id")
    if raw_id in (None, ""):
        raw_id = message.get("message_id")
    fields: dict[str, Any] = {"id": None if raw_id in (None, "") else str(raw_id)}
    if isinstance(message.get("name"), str):  # (a sender's number as name: left out)
        fields["name"] = message["name"]
    content = "" if content is None else content
    check_content(content, where)
    if role == USER:
        return HumanMessage(content=content, **fields)
    if role == ASSISTANT:
        try:
            return AIMessage(content=content, tool_calls=message.get("tool_calls") or [], **fields)
        except (ValueError, TypeError, AttributeError):  # pydantic's errors are ValueErrors
            raise InvalidMessage(f"{where}: tool_calls must be a list of tool calls") from None
    if role == TOOL and message.get("tool_call_id"):
        status = message.get("status") or "success"
        if status not in ("success", "error"):
            raise InvalidMessage(f"{where}: status must be 'success' or 'error'")
        return ToolMessage(
            content=content, tool_call_id=str(message["tool_call_id"]), status=status, **fields
        )
    if role == "system":
        return SystemMessage(content=content, **fields)
    return None


def is_final_answer(message: BaseMessage) -> bool:
    """An assistant message that ends an exchange (it asks for no tool): an `AIMessage`,
    or a `ChatMessage` with the assistant role."""
    return role_of_message(message) == ASSISTANT and not getattr(message, "tool_calls", None)


def in_scope(message: BaseMessage, scope: HistoryScope) -> bool:
    """Whether ``scope`` keeps ``message`` in the transcript (system messages never)."""
    role = role_of_message(message)
    if role in ("system", "unknown"):
        return False
    if scope == "full":
        return True
    # A chat message cannot ask for a tool: with the assistant role it is an answer.
    chat_answer = message.type in _CHAT_TYPES
    return role == USER or (role == ASSISTANT and (chat_answer or is_final_answer(message)))


def messages_of(
    items: Sequence[BaseMessage | Mapping[str, Any]], scope: HistoryScope
) -> tuple[list[tuple[int, BaseMessage]], int, list[str]]:
    """The messages ``scope`` keeps, with their positions; how many it skipped; and the
    types of the skipped items that no scope stores (a role that is not a chat role, such
    as ``ChatMessage(role="critic")``, a ``FunctionMessage``, a ``RemoveMessage``, a dict
    with an unknown role).

    Raises:
        InvalidMessage: an item's content is not a string or a list of content blocks.
    """
    kept: list[tuple[int, BaseMessage]] = []
    skipped = 0
    unsupported: list[str] = []
    for index, item in enumerate(items):
        if isinstance(item, BaseMessage):
            check_content(item.content, f"message {index}")
            message: BaseMessage | None = item
        elif isinstance(item, Mapping):
            message = dict_message(item, f"message {index}")
        else:
            raise InvalidMessage(f"message {index}: {type(item).__name__} is not a message")
        if message is None or not in_scope(message, scope):
            skipped += 1
            if message is None or role_of_message(message) == "unknown":
                unsupported.append(type(item).__name__)
            continue
        kept.append((index, message))
    return kept, skipped, unsupported


def quarantine(reason: str, *, namespace: Iterable[str] = (), seq: object = None) -> None:
    """Report a stored record that cannot be read (skipped, never raised, no body)."""
    obs.METRICS.inc(obs.QUARANTINED_RECORDS)
    obs.log_event(
        "history_record_quarantined",
        namespace="/".join(namespace) or None,
        seq=seq,
        reason=reason,
        level=logging.WARNING,
    )
