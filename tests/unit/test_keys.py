"""Key resolution: channel defaults, candidate order, validation reasons, sandboxing."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from agent_history.errors import InvalidKey
from agent_history.keys import (
    DEFAULT_HISTORY_KEY_CANDIDATES,
    KEY_PATTERN,
    KeyRejectReason,
    channel_of,
    escape_key_value,
    require_history_key,
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
    state = {"results": {"x": {"blank": "  ", "bad": "a\x07b", "long": "k" * 300, "none": None}}}
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
    assert all("a\x07b" not in r.detail and "kkkk" not in r.detail for r in resolution.rejected)


def test_key_template_failure_rejects_the_key() -> None:
    resolution = resolve_history_key(
        {}, candidates=["a"], key_template="{{tenant}}:{{conversation_key}}"
    )
    assert resolution.key is None and resolution.rejected[-1].reason is R.UNRESOLVED_TEMPLATE


def test_validate_history_key() -> None:
    assert validate_history_key("telegram:1") is None
    assert validate_history_key("") is R.EMPTY
    assert validate_history_key(" \u3000 ") is R.EMPTY
    assert validate_history_key("x{{y}}") is R.UNRESOLVED_TEMPLATE
    assert validate_history_key("x{#y") is R.UNRESOLVED_TEMPLATE
    assert validate_history_key("a" * 257) is R.TOO_LONG
    assert validate_history_key("a" * 256) is None
    assert validate_history_key("😀" * 256) is None  # characters, not bytes


@pytest.mark.parametrize(
    "key",
    [
        "alice@example.com",
        "tenant.a/user 17",
        "3f2b8c1e-7d4a-4c8e-9b1a-2f6d5e4c3b2a",
        "用户:张三",
        "مرحبا",
        "👩🏽‍🚀 crew",  # a zero-width joiner inside an emoji sequence is not a control
        "50% off",
        " padded ",
        "a.b.c",
        "{}[]()<>|\\\"'`~!?#$^&*+=,;",
    ],
)
def test_free_form_keys_are_valid(key: str) -> None:
    assert validate_history_key(key) is None
    assert require_history_key(key) == key
    resolution = resolve_history_key({}, candidates=[key])  # a literal is the key as written
    assert resolution.key == key


@pytest.mark.parametrize(
    "key",
    ["a\nb", "555\n", "\tx", "a\x00b", "a\x7fb", "a\x85b", "a\u2028b", "\u202eevil", "x\ud800"],
)
def test_control_characters_and_lone_surrogates_are_rejected(key: str) -> None:
    assert validate_history_key(key) is R.INVALID_CHARS
    with pytest.raises(InvalidKey) as caught:
        require_history_key(key)
    assert caught.value.reason == "invalid_chars"
    assert isinstance(caught.value, ValueError)
    assert key not in str(caught.value)
    resolution = resolve_history_key({}, candidates=[key])
    assert resolution.key is None
    assert [r.reason for r in resolution.rejected] == [R.INVALID_CHARS]


# --- values rendered into keys ---------------------------------------------------------------


def _wecom(open_kf_id: Any, external_userid: Any) -> dict[str, Any]:
    return {
        "results": {"wecom_cs_sync": {"open_kf_id": open_kf_id, "external_userid": external_userid}}
    }


def test_values_cannot_forge_a_separator() -> None:
    # Before, both rendered "wecom_cs:kf1:alice:x": one party read the other's history.
    first = resolve_history_key(_wecom("kf1", "alice:x")).key
    second = resolve_history_key(_wecom("kf1:alice", "x")).key
    assert first == "wecom_cs:kf1:alice%3Ax"
    assert second == "wecom_cs:kf1%3Aalice:x"
    state = {"inputs": {"platform": "tg:1", "message": {"chat_id": "2"}}}
    other = {"inputs": {"platform": "tg", "message": {"chat_id": "1:2"}}}
    assert resolve_history_key(state).key != resolve_history_key(other).key


@pytest.mark.parametrize(
    ("state", "key"),
    [
        ({"results": {"telegram_events_parser": {"chat_id": -1001234567890}}}, "telegram:-1001234567890"),
        ({"results": {"telegram_events_parser": {"chat_id": "-100123"}}}, "telegram:-100123"),
        ({"inputs": {"platform": "telegram", "message": {"chat_id": -100123}}}, "telegram:-100123"),
        ({"inputs": {"platform": "wecom", "message": {"chat_id": "wr_Ab-9"}}}, "wecom:wr_Ab-9"),
        (_wecom("wkAJ2GCAAAZSfhHCt7IFSvLKtMPxyJTw", "wmAJ2GCAAAme1XQRC-NI-q8_ZM9ukCNQ"),
         "wecom_cs:wkAJ2GCAAAZSfhHCt7IFSvLKtMPxyJTw:wmAJ2GCAAAme1XQRC-NI-q8_ZM9ukCNQ"),
        ({"results": {"wecom_ai_bot_events_parser": {"chat_type": "group", "user": "Zhang_San-1"}}},
         "wecom_aibot:group:Zhang_San-1"),
    ],
)  # fmt: skip
def test_keys_of_ordinary_ids_are_unchanged(state: dict[str, Any], key: str) -> None:
    assert resolve_history_key(state).key == key


def test_surrounding_whitespace_in_an_id_never_merges_keys() -> None:
    def telegram(chat_id: str) -> str | None:
        return resolve_history_key(
            {"results": {"telegram_events_parser": {"chat_id": chat_id}}}
        ).key

    def wecom(user: str) -> str | None:
        return resolve_history_key(_wecom("kf1", user)).key

    # Before, "555\n" rendered "telegram:555\n" and stripping made it "telegram:555".
    assert telegram("555") == "telegram:555"
    assert telegram("555\n") is None  # a control character: no key, never another's key
    assert telegram(" 555") == "telegram: 555"
    assert telegram("555 ") == "telegram:555 "
    assert wecom("555\n") is None
    assert len({wecom("555"), wecom(" 555"), wecom("555 ")}) == 3


def test_template_text_is_stripped_but_values_are_not() -> None:
    state = {"inputs": {"id": " 7 "}}
    assert resolve_history_key(state, candidates=["  room:{{ inputs.id }}\n"]).key == "room: 7 "
    assert resolve_history_key(state, candidates=["\n{{ inputs.id }}:{{ inputs.id }} "]).key == (
        "%207%20:%207%20"
    )


def test_conversation_key_is_inserted_as_is_into_the_key_template() -> None:
    state = {"results": {"telegram_events_parser": {"chat_id": 5}}}
    config = {"configurable": {"tenant": "acme:eu"}}
    resolution = resolve_history_key(
        state, config, key_template="{{ config.configurable.tenant }}:{{ conversation_key }}"
    )
    assert resolution.key == "acme%3Aeu:telegram:5"
    assert (
        resolve_history_key(state, key_template="t-1:{{conversation_key}}").key == "t-1:telegram:5"
    )


def test_escape_key_value() -> None:
    assert escape_key_value("Ab_9-") == "Ab_9-"
    assert escape_key_value("a:b%c.d e") == "a%3Ab%25c%2Ed%20e"
    assert escape_key_value("张") == "%E5%BC%A0"
    assert escape_key_value("😀") == "%F0%9F%98%80"


ID = st.text(alphabet="ab:%3A ", min_size=1, max_size=6) | st.text(min_size=1, max_size=12)


def _distinct_inputs_distinct_keys(first: tuple[str, str], second: tuple[str, str]) -> None:
    keys = [resolve_history_key(_wecom(*values)).key for values in (first, second)]
    if first != second and keys[0] is not None:
        assert keys[0] != keys[1], (first, second)
    for key in keys:
        assert key is None or validate_history_key(key) is None


@settings(max_examples=300, deadline=None)
@given(first=st.tuples(ID, ID), second=st.tuples(ID, ID))
def test_distinct_values_give_distinct_keys(
    first: tuple[str, str], second: tuple[str, str]
) -> None:
    _distinct_inputs_distinct_keys(first, second)


@settings(max_examples=300, deadline=None)
@given(parts=st.tuples(ID, ID, ID), separator=st.sampled_from([":", "%3A", "%", "%25", ":%"]))
def test_moving_a_separator_between_values_changes_the_key(
    parts: tuple[str, str, str], separator: str
) -> None:
    x, y, z = parts
    _distinct_inputs_distinct_keys((x, y + separator + z), (x + separator + y, z))


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
        assert validate_history_key(resolution.key) is None
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


@pytest.mark.parametrize(
    "template",
    ["{{ inputs }}", "{{ inputs.message }}", "room:{{ inputs.tags }}"],
)
def test_values_that_are_not_text_or_numbers_never_become_keys(template: str) -> None:
    # Any text is a key now, so a mapping's or a method's repr would be one: refused instead.
    state = {"inputs": {"message": {"text": "hi"}, "tags": ["a", "b"]}}
    resolution = resolve_history_key(state, candidates=[template])
    assert resolution.key is None
    assert [r.reason for r in resolution.rejected] == [R.RENDER_ERROR]


@pytest.mark.parametrize(
    ("chat_id", "key"),
    [
        (True, None),
        (False, None),
        (float("nan"), None),
        (float("inf"), None),
        (5.0, "telegram:5.0"),
    ],
)
def test_odd_chat_ids_never_share_a_conversation(chat_id: Any, key: str | None) -> None:
    """A parser that reports a missing id as True/False or NaN would put every such chat
    in one conversation ("telegram:True"): those values are refused. A float keeps its
    text (5.0 is not rewritten to 5: keys of stored conversations never change)."""
    resolution = resolve_history_key({"results": {"telegram_events_parser": {"chat_id": chat_id}}})
    assert resolution.key == key
    if key is None:
        telegram = [r for r in resolution.rejected if r.candidate.startswith("telegram:")]
        assert [r.reason.value for r in telegram] == ["render_error"]


def test_a_field_named_like_a_method_is_read_as_the_field() -> None:
    """State is data: ``update`` (a raw Telegram update kept under that name) or ``values``
    is the field, never the dict's method; a method's printout never becomes a key."""
    state = {
        "inputs": {"update": {"message": {"chat": {"id": -100777}}}},
        "results": {"tg": {"values": {"id": 3}, "items": ["a"]}},
    }
    cases = {
        "tg:{{ inputs.update.message.chat.id }}": "tg:-100777",
        "tg:{{ inputs['update'].message.chat.id }}": "tg:-100777",
        "v:{{ results.tg.values.id }}": "v:3",
        "i:{{ results.tg.items|first }}": "i:a",
    }
    for template, key in cases.items():
        assert resolve_history_key(state, candidates=[template]).key == key, template
    for template in ["k:{{ inputs.keys }}", "k:{{ inputs.items|string }}", "k:{{ inputs.get }}"]:
        resolution = resolve_history_key(state, candidates=[template])
        assert resolution.key is None, template
        assert [r.reason for r in resolution.rejected] == [R.UNRESOLVED_TEMPLATE], template


def test_a_long_list_is_read_whole() -> None:
    """WeCom's customer-service sync returns up to 1000 messages: the key of the newest
    one's customer must come from the newest one, not from the 100th."""
    messages = [{"external_userid": f"wm{i:04d}"} for i in range(1000)]
    state = {"results": {"wecom_cs_sync": {"open_kf_id": "kf", "msg_list": messages}}}
    last = "cs:{{ (results.wecom_cs_sync.msg_list|last).external_userid }}"
    assert resolve_history_key(state, candidates=[last]).key == "cs:wm0999"
    at = "cs:{{ results.wecom_cs_sync.msg_list[700].external_userid }}"
    assert resolve_history_key(state, candidates=[at]).key == "cs:wm0700"


def test_ids_of_other_types_render_as_python_prints_them() -> None:
    numpy = pytest.importorskip("numpy")
    from decimal import Decimal
    from uuid import UUID

    session = UUID("8c17fc14-c527-44c0-8e2d-58d0e381f606")
    config = {"configurable": {"session": session}}
    template = ["web:{{ config.configurable.session }}"]
    assert resolve_history_key({}, config, candidates=template).key == f"web:{session}"
    for value, key in [
        (numpy.int64(5), "c:5"),
        (Decimal("12"), "c:12"),
        (numpy.float32(2.5), "c:2.5"),
    ]:
        state = {"inputs": {"chat": value}}
        assert resolve_history_key(state, candidates=["c:{{ inputs.chat }}"]).key == key


@pytest.mark.parametrize(
    ("value", "detail"),
    [
        (object(), "a value is not text or a number (object)"),
        ("numpy.bool_", None),
        ("nan", "a value is not a finite number"),
    ],
)
def test_values_that_are_not_ids_are_refused_as_such_not_as_missing(
    value: Any, detail: str | None
) -> None:
    if value == "numpy.bool_":
        value = pytest.importorskip("numpy").bool_(True)
    if value == "nan":
        from decimal import Decimal

        value = Decimal("NaN")
    resolution = resolve_history_key(
        {"inputs": {"chat": value}}, candidates=["c:{{ inputs.chat }}"]
    )
    assert resolution.key is None
    [rejection] = resolution.rejected
    assert rejection.reason == R.RENDER_ERROR
    if detail is not None:
        assert rejection.detail == detail


def test_state_nested_too_deep_gives_no_key() -> None:
    state: dict[str, Any] = {"id": 5}
    path = "inputs"
    for _ in range(14):
        state = {"n": state}
        path += ".n"
    resolution = resolve_history_key({"inputs": state["n"]}, candidates=["c:{{ " + path + ".id }}"])
    assert resolution.key is None
    assert [r.reason for r in resolution.rejected] == [R.UNRESOLVED_TEMPLATE]
    shallow = resolve_history_key({"inputs": {"n": {"id": 5}}}, candidates=["c:{{ inputs.n.id }}"])
    assert shallow.key == "c:5"


def test_none_never_becomes_a_key_through_a_filter() -> None:
    """A parser's optional id left as None: ``telegram:None`` would be the key of every
    such chat. Through a filter or ``~`` it is as missing as printed directly."""
    state = {"results": {"p": {"chat_id": None}}}
    for template in [
        "telegram:{{ results.p.chat_id }}",
        "telegram:{{ results.p.chat_id|string }}",
        "{{ results.p.chat_id|lower }}",
        "{{ 'tg:' ~ results.p.chat_id }}",
        "tg:{{ results.p.chat_id|trim }}",
    ]:
        resolution = resolve_history_key(state, candidates=[template])
        assert resolution.key is None, template
        assert [r.reason for r in resolution.rejected] == [R.UNRESOLVED_TEMPLATE], template
    fallback = "tg:{{ results.p.chat_id|default('anon', true) }}"
    assert resolve_history_key(state, candidates=[fallback]).key == "tg:anon"


def test_printing_an_object_that_refers_to_itself_is_bounded() -> None:
    class Node:
        def __init__(self) -> None:
            self.children: list[Node] = []

    root = Node()
    root.children = [root] * 6  # six references back to itself
    resolution = resolve_history_key({"inputs": {"v": root}}, candidates=["{{ inputs.v|lower }}"])
    assert resolution.key is None
    assert [r.reason for r in resolution.rejected] == [R.TOO_LONG]


def test_a_number_class_of_ones_own_runs_no_code_in_a_template() -> None:
    import numbers

    ran: list[str] = []

    class Money:
        def __float__(self) -> float:
            ran.append("float")
            return 5.0

        def __str__(self) -> str:
            ran.append("str")
            return "$5.00"

    numbers.Real.register(Money)  # as a money library may

    resolution = resolve_history_key({"inputs": {"m": Money()}}, candidates=["c:{{ inputs.m }}"])
    assert resolution.key is None and ran == []


def test_lists_compare_by_value_and_a_mappings_last_key_is_readable() -> None:
    state = {"inputs": {"a": ["x", "y"], "b": ("x", "y"), "m": {"k1": 1, "k2": 2}}}
    template = "{{ 'same' if inputs.a == inputs.b else 'other' }}:{{ inputs.m|last }}"
    assert resolve_history_key(state, candidates=[template]).key == "same:k2"


def test_a_slots_dataclass_is_read_by_its_fields() -> None:
    from dataclasses import dataclass

    @dataclass(slots=True)
    class Parsed:
        chat_id: int

    state = {"results": {"telegram_events_parser": Parsed(42)}}
    assert resolve_history_key(state).key == "telegram:42"


def test_a_mapping_or_list_printed_on_purpose_keeps_its_text() -> None:
    """``|string`` and ``~`` print a list or a mapping as they always did, so a key made
    that way (odd, but in use) does not move."""
    state = {"inputs": {"tags": ["a", "b"], "m": {"k": 1}}}
    for template, key in [
        ("x:{{ inputs.tags|string }}", "x:['a', 'b']"),
        ("{{ 'x:' ~ inputs.m }}", "x:{'k': 1}"),
    ]:
        assert resolve_history_key(state, candidates=[template]).key == key


def test_an_enum_members_value_and_name_are_read_but_no_method_is() -> None:
    from enum import Enum, IntEnum

    class Platform(str, Enum):  # noqa: UP042 (as listener models type it)
        TELEGRAM = "telegram"

    class Chat(IntEnum):
        SUPPORT = 7

    state = {"inputs": {"platform": Platform.TELEGRAM, "chat": Chat.SUPPORT}}
    cases = {
        "{{ inputs.platform.value }}:{{ inputs.chat.value }}": "telegram:7",
        "{{ inputs.platform.name }}": "TELEGRAM",
    }
    for template, key in cases.items():
        assert resolve_history_key(state, candidates=[template]).key == key, template
    for template in ["k:{{ inputs.platform.upper }}", "k:{{ inputs.platform.join|string }}"]:
        assert resolve_history_key(state, candidates=[template]).key is None, template


def test_an_object_without_fields_is_falsy_so_a_fallback_still_applies() -> None:
    from datetime import datetime

    state = {"inputs": {"when": datetime(2026, 1, 1), "chat": 5}}
    template = "c:{{ inputs.when or inputs.chat }}"
    assert resolve_history_key(state, candidates=[template]).key == "c:5"
    assert (
        resolve_history_key(
            state, candidates=["c:{{ inputs.when|default(inputs.chat, true) }}"]
        ).key
        == "c:5"
    )


class _Deps(BaseModel):
    """A dependency passed in ``configurable`` whose dump raises (not connected yet)."""

    name: str = "deps"

    def model_dump(self, **kwargs: Any) -> dict[str, Any]:
        raise RuntimeError("not connected yet")


def test_an_object_in_configurable_whose_dump_raises_fails_no_run() -> None:
    state = {"results": {"telegram_events_parser": {"chat_id": 7}}}
    config = {"configurable": {"deps": _Deps()}}
    assert resolve_history_key(state, config).key == "telegram:7"
    candidates = ["t:{{config.configurable.deps}}", "t:{{config.configurable.deps.name}}", "x:1"]
    resolution = resolve_history_key(state, config, candidates=candidates)
    assert resolution.key == "x:1"
    assert [(r.reason, r.detail) for r in resolution.rejected] == [
        (R.RENDER_ERROR, "reading a _Deps raised RuntimeError"),
        (R.UNRESOLVED_TEMPLATE, "undefined: name"),
    ]


class _CountedDeps(BaseModel):
    """A dependency in ``configurable`` that counts how often it is dumped."""

    name: str = "deps"
    dumps: list[int] = []

    def model_dump(self, **kwargs: Any) -> dict[str, Any]:
        self.dumps.append(1)
        return {"name": self.name}


def test_objects_in_configurable_are_read_only_by_the_templates_that_read_them() -> None:
    state = {"results": {"telegram_events_parser": {"chat_id": 7}}}
    deps = _CountedDeps()
    config = {"configurable": {"deps": deps, "thread_id": "t-1"}}
    assert resolve_history_key(state, config).key == "telegram:7"
    assert deps.dumps == []  # no default candidate reads it: not dumped
    candidates = ["{{config.configurable.deps.name}}:{{config.configurable.thread_id}}"]
    assert resolve_history_key(state, config, candidates=candidates).key == "deps:t-1"
    assert deps.dumps == [1]
    # printed whole, the mapping still shows every value as before
    candidates = ["a:{{config.configurable|string}}"]
    printed = resolve_history_key(state, config, candidates=candidates).key
    assert printed == "a:{'deps': {'name': 'deps'}, 'thread_id': 't-1'}"
    numbered = {"configurable": {1: "one"}}  # a key that is not text reads as before
    candidates = ["n:{{config.configurable[1]}}"]
    assert resolve_history_key(state, numbered, candidates=candidates).key == "n:one"


def test_a_named_tuple_stays_a_list_and_a_mapping_prints_its_private_keys() -> None:
    """Keys never move under a stored conversation: a NamedTuple is read as the tuple it
    is (``|first``, ``[1]``, printed as a list), and a mapping printed whole keeps every
    entry, ``_id`` included (two users told apart by it only stay apart)."""
    from typing import NamedTuple

    class ChatRef(NamedTuple):
        platform: str
        chat_id: int

    for chat in (5, 6):
        state = {"results": {"ref": ChatRef("telegram", chat)}, "inputs": {"u": {"_id": chat}}}
        for template, key in [
            ("{{ results.ref|first }}:{{ results.ref|last }}", f"telegram:{chat}"),
            ("{{ results.ref[0] }}/{{ results.ref[1] }}", f"telegram/{chat}"),
            ("x:{{ results.ref|string }}", f"x:['telegram', {chat}]"),
            ("u:{{ inputs.u|string }}", f"u:{{'_id': {chat}}}"),
        ]:
            assert resolve_history_key(state, candidates=[template]).key == key


def test_a_secret_or_private_attribute_never_reaches_a_key() -> None:
    """A pydantic ``SecretStr`` holds its value in a private attribute, and an object's
    ``_name`` is private: a secret is never printed into a key (a key is a namespace
    label that listings and the CLI show), and no private name is read through a
    computed ``['_' ~ name]``."""
    from pydantic import SecretStr

    class Tenant(BaseModel):
        name: str = "acme"
        api_key: SecretStr = SecretStr("sk-LIVE-123")

    class Client:
        def __init__(self) -> None:
            self.name = "acme"
            self._api_key = "sk-PRIVATE-9"

    config = {"configurable": {"t": Tenant(), "c": Client()}}
    state = {"inputs": {"_hidden": "secret-in-state"}}
    for template in [
        "k:{{ config.configurable.t.api_key|string }}",
        "k:{{ 'x' ~ config.configurable.t.api_key }}",
        "k:{{ config.configurable.t|string }}",
        "k:{{ config.configurable.c['_' ~ 'api_key'] }}",
        "k:{{ inputs['_' ~ 'hidden'] }}",
    ]:
        resolution = resolve_history_key(state, config, candidates=[template])
        shown = repr(resolution)
        assert "sk-" not in shown and "secret-in-state" not in shown, template
    tenant = resolve_history_key({}, config, candidates=["k:{{ config.configurable.t.name }}"])
    assert tenant.key == "k:acme"


def test_the_config_printed_whole_gives_the_same_key_on_every_run() -> None:
    """``{{ config|string }}`` printed an internal object's address: a new key (and a
    new conversation) on every delivery."""
    config = {"configurable": {"tenant": "acme"}, "metadata": {"m": 1}}
    keys = {
        resolve_history_key({}, config, candidates=["{{ config|string }}"]).key for _ in range(3)
    }
    assert len(keys) == 1
    assert keys.pop() == "{'configurable': {'tenant': 'acme'}, 'metadata': {'m': 1}, 'tags': []}"


@pytest.mark.parametrize("word", ["None", "null", "undefined"])
def test_an_id_that_is_a_word_like_none_keeps_its_key(word: str) -> None:
    """A WeCom user id may be any of these words, and a mapping printed whole keeps its
    text: only Python's None is missing (a parser must hand over None, not its text)."""
    state = {"results": {"wecom_events_parser": {"user": word}}}
    assert resolve_history_key(state).key == f"wecom_dm:{word}"
    whole = {"inputs": {"m": {"user": word}}}
    assert resolve_history_key(whole, candidates=["u:{{ inputs.m|string }}"]).key == (
        f"u:{{'user': '{word}'}}"
    )
