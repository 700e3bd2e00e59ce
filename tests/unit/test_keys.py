"""Key resolution: channel defaults, candidate order, validation reasons, sandboxing."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from agent_history.keys import (
    DEFAULT_HISTORY_KEY_CANDIDATES,
    KEY_PATTERN,
    KeyRejectReason,
    channel_of,
    resolve_history_key,
    validate_history_key,
)

R = KeyRejectReason


@pytest.mark.parametrize(
    ("state", "key"),
    [
        ({"inputs": {"platform": "telegram", "message": {"chat_id": 42}}}, "telegram:42"),
        ({"inputs": {"listener": {"platform": "wecom", "message": {"chat_id": "c1"}}}}, "wecom:c1"),
        ({"results": {"telegram_events_parser": {"chat_id": -100123}}}, "telegram:-100123"),
        (
            {"results": {"wecom_cs_sync": {"open_kf_id": "wk1", "external_userid": "wm2"}}},
            "wecom_cs:wk1:wm2",
        ),
        (
            {"results": {"wecom_ai_bot_events_parser": {"chat_type": "single", "user": "bob"}}},
            "wecom_aibot:single:bob",
        ),
        ({"results": {"wecom_events_parser": {"user": "alice"}}}, "wecom_dm:alice"),
    ],
)
def test_channel_defaults(state: dict[str, Any], key: str) -> None:
    resolution = resolve_history_key(state)
    assert resolution.key == key and resolution.ok
    assert resolution.channel == channel_of(key)


def test_first_valid_candidate_wins_in_declared_order() -> None:
    state = {
        "results": {
            "resolve_history_key": {"session_key": "custom-7"},
            "telegram_events_parser": {"chat_id": 1},
        }
    }
    custom = ["{{results.resolve_history_key.session_key}}", *DEFAULT_HISTORY_KEY_CANDIDATES]
    assert resolve_history_key(state, candidates=custom).key == "custom-7"
    assert resolve_history_key(state).key == "telegram:1"


def test_config_literal_and_key_template() -> None:
    config = {"configurable": {"history_key": "cfg-1", "__pregel_secret": object()}}
    assert (
        resolve_history_key({}, config, candidates=["{{config.configurable.history_key}}"]).key
        == "cfg-1"
    )
    assert resolve_history_key({}, candidates=["support-room-1"]).key == "support-room-1"
    templated = resolve_history_key(
        {"results": {"telegram_events_parser": {"chat_id": 5}}},
        key_template="tenant-a:{{conversation_key}}",
    )
    assert (templated.key, templated.conversation_key) == ("tenant-a:telegram:5", "telegram:5")
    assert (
        resolve_history_key({}, config, candidates=["{{config.configurable.__pregel_secret}}"]).key
        is None
    )


def test_every_reason_code_in_order() -> None:
    state = {"results": {"x": {"blank": "  ", "bad": "a b", "long": "k" * 300, "none": None}}}
    resolution = resolve_history_key(
        state,
        candidates=["{{results.x.missing}}", "{{results.x.none}}", "{{results.x.blank}}", "{{results.x.bad}}",
                    "{{results.x.long}}", "{{ results.x.bad | wordcount }}", "telegram:{{results.x.blank}}", "ok-key"],
    )  # fmt: skip
    assert resolution.key == "ok-key"
    assert [r.reason for r in resolution.rejected] == [
        R.UNRESOLVED_TEMPLATE, R.UNRESOLVED_TEMPLATE, R.EMPTY, R.INVALID_CHARS,
        R.TOO_LONG, R.RENDER_ERROR, R.UNRESOLVED_TEMPLATE,
    ]  # fmt: skip
    assert all("a b" not in r.detail and "kkkk" not in r.detail for r in resolution.rejected)


def test_key_template_failure_rejects_the_key() -> None:
    resolution = resolve_history_key(
        {}, candidates=["a"], key_template="{{tenant}}:{{conversation_key}}"
    )
    assert resolution.key is None and resolution.rejected[-1].reason is R.UNRESOLVED_TEMPLATE


def test_validate_history_key() -> None:
    assert validate_history_key("telegram:1") is None
    assert validate_history_key("") is R.EMPTY
    assert validate_history_key("x{{y}}") is R.UNRESOLVED_TEMPLATE
    assert validate_history_key("a/b") is R.INVALID_CHARS
    assert validate_history_key("a" * 257) is R.TOO_LONG
    assert validate_history_key("a" * 256) is None


def test_pydantic_and_object_state() -> None:
    class Parser(BaseModel):
        chat_id: int

    class State(BaseModel):
        results: dict[str, Parser]

    assert (
        resolve_history_key(State(results={"telegram_events_parser": Parser(chat_id=9)})).key
        == "telegram:9"
    )


class _Trap(dict):  # type: ignore[type-arg]
    """State whose methods would record being called by a template."""

    touched: list[str] = []

    def items(self) -> Any:  # the copy into plain data calls this, which is expected
        return super().items()

    def keys(self) -> Any:
        _Trap.touched.append("keys")
        return super().keys()


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ config.__class__ }}",
        "{{ inputs['__class__'] }}",
        "{% for i in range(10**9) %}x{% endfor %}",
        "{% for i in range(99999) %}{% for j in range(99999) %}x{% endfor %}{% endfor %}",
        "{{ 'a' * 10**9 }}",
        "{{ lipsum(10**6) }}",
        "{{ inputs.keys() }}",
        "{% set x = 1 %}{{ x }}",
        "{{ range(10) | list }}",
        "{{" + "x" * 1_000_000 + "}}",
    ],
)
def test_template_abuse_fails_closed(template: str) -> None:
    state = {"inputs": _Trap(a=1)}
    resolution = resolve_history_key(state, candidates=[template])
    assert resolution.key is None
    assert resolution.rejected[0].reason in (R.RENDER_ERROR, R.TOO_LONG)
    assert _Trap.touched == []


@settings(max_examples=150, deadline=None)
@given(
    candidates=st.lists(
        st.text(max_size=40) | st.sampled_from(list(DEFAULT_HISTORY_KEY_CANDIDATES)), max_size=5
    ),
    state=st.recursive(
        st.none() | st.integers() | st.text(max_size=20),
        lambda inner: st.dictionaries(
            st.sampled_from(
                [
                    "inputs",
                    "results",
                    "message",
                    "chat_id",
                    "platform",
                    "telegram_events_parser",
                    "user",
                ]
            ),
            inner,
            max_size=4,
        ),
        max_leaves=12,
    ),
)
def test_resolution_never_raises_and_is_valid_or_explained(
    candidates: list[str], state: Any
) -> None:
    resolution = resolve_history_key(
        state if isinstance(state, dict) else {"inputs": state}, candidates=candidates
    )
    if resolution.key is not None:
        assert KEY_PATTERN.match(resolution.key) and len(resolution.key) <= 256
        assert len(resolution.rejected) == candidates.index(resolution.candidate)
    else:
        assert len(resolution.rejected) == len(candidates)
        assert all(isinstance(r.reason, KeyRejectReason) for r in resolution.rejected)


def test_replace_filter_works_within_key_bounds() -> None:
    state = {"inputs": {"room": "Sales Team"}}
    resolution = resolve_history_key(
        state, candidates=["room:{{ inputs.room | replace(' ', '_') | lower }}"]
    )
    assert resolution.key == "room:sales_team"
    once = resolve_history_key(state, candidates=["{{ 'a-b-c' | replace('-', '_', 1) }}"])
    assert once.key == "a_b-c"


def test_replace_filter_refuses_to_grow_past_any_key() -> None:
    bomb = "{{ 'aaaaaaaaaa'" + " | replace('', 'aaaaaaaaaa')" * 3 + " }}"
    [rejection] = resolve_history_key({}, candidates=[bomb]).rejected
    assert rejection.reason == KeyRejectReason.TOO_LONG
