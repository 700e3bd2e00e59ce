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
