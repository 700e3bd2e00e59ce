"""The codec reads LangChain's message classes field by field instead of dumping them:
what it reads must be what ``model_dump`` gives, for every field a message can carry."""

from __future__ import annotations

import datetime as dt
import functools
from decimal import Decimal
from typing import Any

import pytest
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from pydantic import BaseModel
from pydantic_core import to_jsonable_python

from agent_history.history import codec
from agent_history.history.codec import message_fields, message_parts
from agent_history.history.records import Turn, make_record, message_from_record


class _Meta(BaseModel):
    at: dt.datetime
    score: Decimal


_ODD: dict[str, Any] = {
    "when": dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
    "raw": b"\x00\xff",
    "model": _Meta(at=dt.datetime(2026, 1, 2, tzinfo=dt.UTC), score=Decimal("1.5")),
    "nested": {"list": [1, 2.5, None, {"deep": True}]},
}


def _messages() -> list[BaseMessage]:
    call = {"name": "lookup", "args": {"q": "x"}, "id": "call-1"}
    return [
        HumanMessage("hi"),
        HumanMessage("hi", id="h1", name="ann", additional_kwargs=dict(_ODD)),
        HumanMessage([{"type": "text", "text": "a"}, "b"], id="h2", custom_field=7),
        AIMessage("", id="a1", tool_calls=[call]),
        AIMessage(
            "done",
            id="a2",
            response_metadata={"model": "m", **_ODD},
            usage_metadata={"input_tokens": 1, "output_tokens": 2, "total_tokens": 3},
            invalid_tool_calls=[{"name": "x", "args": "{", "id": "c2", "error": "bad"}],
            provider_extra={"k": [1, 2]},
        ),
        AIMessage("x", additional_kwargs={"tool_calls": []}, example=True),
        SystemMessage("be brief", id="s1"),
        ToolMessage("42", tool_call_id="call-1", artifact={"rows": [1]}, status="error"),
        ChatMessage("note", role="critic", id="c1"),
        ChatMessage("answer", role="assistant", extra_thing=None),
        FunctionMessage("out", name="fn"),
    ]


@pytest.mark.parametrize("message", _messages(), ids=lambda m: f"{type(m).__name__}")
def test_fields_read_are_what_model_dump_gives(message: BaseMessage) -> None:
    fields = message_fields(message)
    assert fields.keys() == message.model_dump().keys()
    as_json = functools.partial(to_jsonable_python, bytes_mode="base64")
    assert as_json(fields) == as_json(message.model_dump())


@pytest.mark.parametrize("message", _messages(), ids=lambda m: f"{type(m).__name__}")
def test_parts_are_those_of_the_dumped_message(
    message: BaseMessage, monkeypatch: pytest.MonkeyPatch
) -> None:
    fast = message_parts(message)
    monkeypatch.setattr(codec, "_DUMPED_AS_SET", frozenset())
    assert message_parts(message) == fast


def test_every_class_read_field_by_field_has_nothing_model_dump_would_change() -> None:
    for cls in codec._DUMPED_AS_SET:
        assert not cls.model_computed_fields, cls
        assert all(
            f.alias is None and f.serialization_alias is None for f in cls.model_fields.values()
        ), cls
        assert cls.__pydantic_decorators__.field_serializers == {}, cls
        assert cls.__pydantic_decorators__.model_serializers == {}, cls


def test_a_subclass_is_dumped_by_pydantic() -> None:
    class Tagged(HumanMessage):
        tag: str = "t"

    message = Tagged("hi", tag="x")
    assert message_fields(message) == message.model_dump()
    assert message_fields(message) is not message.__dict__


def test_the_stored_fields_do_not_alias_the_message() -> None:
    message = AIMessage("x", response_metadata={"a": {"b": 1}})
    *_, extra = message_parts(message)
    extra["response_metadata"]["a"]["b"] = 2
    assert message.response_metadata == {"a": {"b": 1}}


def _stored(message: BaseMessage, value_field: str) -> dict[str, Any]:
    role, content, message_id, kind, extra = message_parts(message)
    return make_record(1, role, content, message_id, "2026-01-01", kind, extra, value_field)


_PLAIN_AND_ODD: list[BaseMessage] = [
    *_messages(),
    HumanMessage("nul \x00 and \ud83d", id="h3"),  # stored encoded
    AIMessage([{"type": "text", "text": "a"}], id="a3"),
    AIMessage("no id"),
]


@pytest.mark.parametrize("value_field", ["content", "text"])
@pytest.mark.parametrize("message", _PLAIN_AND_ODD, ids=lambda m: f"{type(m).__name__}")
def test_a_record_reads_back_as_the_message_it_stored(
    message: BaseMessage, value_field: str
) -> None:
    """The tail's reader (`message_from_record`, with its shortcut for text questions and
    answers) gives what the general reader (`Turn.to_message`) gives, for every class."""
    record = _stored(message, value_field)
    quick = message_from_record(record, value_field)
    general = Turn.from_record(record, value_field).to_message()
    assert type(quick) is type(general) is type(message)
    assert quick.model_dump() == general.model_dump()
    assert (quick.content, quick.id) == (message.content, message.id)


@pytest.mark.parametrize(
    "record",
    [
        {"seq": 1, "type": "human", "content": 5},
        {"seq": 1, "type": "ai", "content": None, "id": "x"},
        {"seq": 1, "type": "human", "content": "hi", "id": ["x"]},
        {"seq": 1, "type": "ai", "content": "hi", "lc": "not an object"},
        {"seq": 1, "type": "human", "content": "hi", "enc": "rot13"},
    ],
)
def test_a_record_pydantic_refuses_is_refused_by_both_readers(record: dict[str, Any]) -> None:
    """What a tail skips as unreadable (quarantined) is what every reader refuses."""
    with pytest.raises((ValueError, TypeError)):
        Turn.from_record(record).to_message()
    with pytest.raises((ValueError, TypeError)):
        message_from_record(record)
