"""Fuzzing the node and the log: odd states, candidates, templates and contents never break a run."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any, TypedDict

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from langchain_core.messages import AIMessage, BaseMessage
from langgraph.graph import START, StateGraph
from langgraph.store.base import BaseStore

from agent_history import AgentNode, HistoryReport, KeyRejectReason
from agent_history.errors import InvalidArgument
from agent_history.history import ChatHistory
from agent_history.incoming import incoming_message
from agent_history.keys import (
    DEFAULT_HISTORY_KEY_CANDIDATES,
    DEFAULT_HISTORY_KEY_TEMPLATE,
    KEY_PATTERN,
    MAX_KEY_LENGTH,
    candidate_problem,
    is_key_template,
    resolve_history_key,
)
from agent_history.messages import role_of
from agent_history.settings import HistorySettings
from agent_history.state import as_mapping
from agent_history.stores import create_graph_store_sync
from agent_history.testing import RecordingChatModel
from tests.reliability.conftest import Record, examples
from tests.support.agent_graphs import build_graph, new_thread, telegram_callback, toggles

FUZZ = settings(
    deadline=None,
    max_examples=examples(40),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
REASONS = {reason.value for reason in KeyRejectReason}

# --- strategies ---------------------------------------------------------------------------

ASTRAL_RTL = [
    "😀👩🏽‍🚀",
    "\U0001d518\U0001d52b\U0001d526\U0001d520\U0001d52c\U0001d521\U0001d522 𠜎",  # Fraktur "Unicode", a CJK extension-B ideograph
    "مرحبا بالعالم",
    "שלום עולם",
    "\u202eevil\u202c",
    "a\u0000b",
    "",
]
TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=60) | st.sampled_from(ASTRAL_RTL)
KEYISH = st.text(alphabet="abcAB01:_-", min_size=1, max_size=12)
SCALAR = st.none() | st.booleans() | st.integers(-(10**15), 10**15) | st.floats() | TEXT | KEYISH
JSON = st.recursive(
    SCALAR,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT | KEYISH, inner, max_size=4),
    max_leaves=12,
)
TEMPLATE_PARTS = [
    "{{inputs.platform}}", "{{inputs.message.chat_id}}", "{{ results.telegram_events_parser.chat_id }}",
    "{{results.resolve_history_key.session_key}}", "{{ config.configurable.history_key }}",
    "{{ inputs.message.text | lower }}", "{{ inputs.x | default('d') }}", "{{ results | string }}",
    "{{ inputs.a if inputs.b else 'c' }}", "{{ inputs['message']['chat_id'] }}",
    "{{ conversation_key }}", "{{ conversation_key | upper | trim }}", "{{ x ~ y }}",
    "{% if inputs %}a{% endif %}", "{{ 1 + 1 }}", "{{", "}}", "{%", "{#", "#}",
    ":", "tenant-a:", "telegram:", "wecom_dm:", "-", "_", " ", "é", "😀",
]  # fmt: skip
TEMPLATE = st.lists(st.sampled_from(TEMPLATE_PARTS) | KEYISH | TEXT, max_size=4).map("".join)
CANDIDATES = st.lists(
    st.sampled_from(DEFAULT_HISTORY_KEY_CANDIDATES) | KEYISH | TEMPLATE, max_size=5
)
KEY_TEMPLATE = (
    st.just(DEFAULT_HISTORY_KEY_TEMPLATE)
    | st.sampled_from(["tenant-a:{{conversation_key}}", "{{conversation_key}}:x", "{{ other }}"])
    | TEMPLATE
)
CONTENT_BLOCKS = st.lists(
    st.fixed_dictionaries({"type": st.just("text"), "text": TEXT})
    | st.fixed_dictionaries(
        {"type": st.just("image_url"), "image_url": st.fixed_dictionaries({"url": TEXT})}
    ),
    min_size=1,
    max_size=3,
)
CONTENT = TEXT | CONTENT_BLOCKS
CHAT_MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "human", "ai", "system"]), "content": CONTENT}
)
MESSAGE_PAYLOAD = (
    st.none()
    | TEXT
    | JSON
    | st.fixed_dictionaries(
        {"text": TEXT | st.none()},
        optional={"chat_id": JSON, "message_id": JSON, "content": JSON},
    )
)
CHANNEL_RESULTS = st.fixed_dictionaries(
    {},
    optional={
        "telegram_events_parser": st.none()
        | st.fixed_dictionaries({"chat_id": st.integers() | KEYISH | JSON})
        | JSON,
        "wecom_cs_sync": st.fixed_dictionaries({"open_kf_id": JSON, "external_userid": JSON}),
        "wecom_events_parser": st.fixed_dictionaries({"user": JSON}),
        "resolve_history_key": st.fixed_dictionaries({"session_key": JSON | KEYISH}),
    },
)
STATE = st.fixed_dictionaries(
    {},
    optional={
        "inputs": st.none()
        | JSON
        | st.fixed_dictionaries(
            {},
            optional={
                "platform": JSON | KEYISH,
                "message": MESSAGE_PAYLOAD,
                "history": st.lists(CHAT_MESSAGE, max_size=3) | JSON,
            },
        ),
        "results": st.none() | JSON | CHANNEL_RESULTS,
        "messages": st.none() | st.lists(CHAT_MESSAGE, max_size=4),
        "other": JSON,
    },
)


class LooseState(TypedDict, total=False):
    """No reducers and no validation: the node itself sees whatever the fuzzer built."""

    messages: Any
    inputs: Any
    results: Any
    other: Any


def _loose_graph(node: AgentNode, store: BaseStore) -> Any:
    builder = StateGraph(LooseState)
    builder.add_node("agent", node)
    builder.add_edge(START, "agent")
    return builder.compile(store=store)


@pytest.fixture
def sqlite_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BaseStore]:
    path = tmp_path_factory.mktemp("fuzz") / "store.sqlite"
    with create_graph_store_sync(
        HistorySettings(graph_store_backend="sqlite", graph_store_sqlite_path=path)
    ) as store:
        yield store


@pytest.fixture
def persistent_store(persistent_settings: HistorySettings) -> Iterator[BaseStore]:
    with create_graph_store_sync(persistent_settings) as store:
        yield store


def _assert_key_valid_or_rejected(
    key: str | None, rejected: tuple[str, ...], candidates: list[str]
) -> None:
    assert set(rejected) <= REASONS, rejected
    event("key resolved" if key is not None else "no key")
    for reason in set(rejected):
        event(f"rejected: {reason}")
    if key is not None:
        assert KEY_PATTERN.match(key) and len(key) <= MAX_KEY_LENGTH, key
    elif candidates:
        assert rejected, "no key and no reason"


# --- keys -----------------------------------------------------------------------------------


@FUZZ
@given(state=STATE, candidates=CANDIDATES, key_template=KEY_TEMPLATE, configurable=JSON)
def test_key_resolution_is_valid_or_rejected_with_a_reason(
    state: dict[str, Any], candidates: list[str], key_template: str, configurable: Any
) -> None:
    config = {"configurable": {"history_key": configurable}}
    resolution = resolve_history_key(
        state, config, candidates=candidates, key_template=key_template
    )
    _assert_key_valid_or_rejected(
        resolution.key, tuple(r.reason.value for r in resolution.rejected), candidates
    )
    assert all(isinstance(r.reason, KeyRejectReason) for r in resolution.rejected)
    if resolution.key is None:
        assert len(resolution.rejected) >= min(1, len(candidates))


# --- whole node runs ------------------------------------------------------------------------


@FUZZ
@given(state=STATE, candidates=CANDIDATES, key_template=KEY_TEMPLATE)
def test_node_run_never_raises(
    sqlite_store: BaseStore, state: dict[str, Any], candidates: list[str], key_template: str
) -> None:
    reports: list[HistoryReport] = []
    try:
        node = AgentNode(
            RecordingChatModel(),
            use_graph_chat_history=True,
            history_key_candidates=candidates,
            history_key_template=key_template,
            toggles=toggles(read_timeout_seconds="30", write_timeout_seconds="30"),
            write_backoff_seconds=0,
            on_report=reports.append,
        )
    except InvalidArgument:
        # Refused when made, only for a configuration that names its own problem: no
        # candidate, one that could never give a key, or a template that is a literal.
        event("refused when made")
        assert (
            not candidates
            or any(candidate_problem(c) for c in candidates)
            or candidate_problem(key_template)
            or not is_key_template(key_template)
        )
        return
    out = _loose_graph(node, sqlite_store).invoke(state, new_thread())
    report = reports[-1]
    if report.model_called:
        assert isinstance(out["messages"][-1], AIMessage)
    else:  # a callback that delivered no user message: nothing to answer, nothing stored
        assert incoming_message(as_mapping(state.get("inputs") or {})) is None
        assert not out.get("messages") and report.appended == 0
    _assert_key_valid_or_rejected(report.key, report.rejected, candidates)
    if report.key is None:
        assert report.fallbacks == ("no_valid_key",)
    else:
        assert report.fallbacks == ()


@FUZZ
@given(messages=st.lists(CHAT_MESSAGE, min_size=1, max_size=5))
@example(messages=[{"role": "user", "content": text} for text in ASTRAL_RTL])
@example(messages=[{"role": "system", "content": "only a system prompt"}])
def test_node_stores_thread_contents_exactly(
    sqlite_store: BaseStore, messages: list[dict[str, Any]]
) -> None:
    chat = int(uuid.uuid4().int % 10**12)
    node = AgentNode(
        RecordingChatModel(),
        use_graph_chat_history=True,
        max_messages=100,
        toggles=toggles(),
        write_backoff_seconds=0,
    )
    state = {"messages": messages, "results": {"telegram_events_parser": {"chat_id": chat}}}
    out = _loose_graph(node, sqlite_store).invoke(state, new_thread())
    reply: BaseMessage = out["messages"][-1]
    expected = [
        (role_of(m), m["content"]) for m in messages if role_of(m) in ("user", "assistant")
    ] + [("assistant", reply.content)]
    stored = [(t.role, t.content) for t in ChatHistory(sqlite_store).read(f"telegram:{chat}")]
    assert stored == expected


@FUZZ
@given(text=TEXT.filter(lambda t: bool(t.strip())), message_id=st.none() | KEYISH)
@example(text="مرحبا 😀 \u202eevil\u202c 𠜎", message_id="rtl-1")
@example(text="nul\u0000inside", message_id=None)
def test_delivered_message_round_trips_through_the_node(
    persistent_store: BaseStore, text: str, message_id: str | None
) -> None:
    chat = int(uuid.uuid4().int % 10**12)
    graph = build_graph(
        AgentNode(RecordingChatModel(), use_graph_chat_history=True, toggles=toggles()),
        persistent_store,
    )
    out = graph.invoke(telegram_callback(chat, text, message_id), new_thread())
    assert out["messages"][-1].content == f"echo: {text}"
    stored = list(ChatHistory(persistent_store).read(f"telegram:{chat}"))
    assert [(t.role, t.content) for t in stored] == [
        ("user", text),
        ("assistant", f"echo: {text}"),
    ]
    if message_id is not None:
        assert stored[0].id == message_id


# --- the log itself -------------------------------------------------------------------------

TURN = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["user", "assistant", "human", "ai", "bot"]),
        "content": st.none() | CONTENT | st.just(""),
    }
)


@FUZZ
@given(batches=st.lists(st.lists(TURN, min_size=1, max_size=4), min_size=1, max_size=3))
@example(batches=[[{"role": "user", "content": text}] for text in ASTRAL_RTL[:3]])
@example(batches=[[{"role": "user", "content": None}, {"role": "ai", "content": []}]])
def test_appended_content_round_trips_exactly(
    persistent_store: BaseStore, batches: list[list[dict[str, Any]]]
) -> None:
    history = ChatHistory(persistent_store, chunk_size=3)
    key = "fuzz-" + uuid.uuid4().hex
    expected: list[tuple[str, Any, str]] = []
    for batch in batches:
        ids = [uuid.uuid4().hex for _ in batch]
        result = history.append(key, batch, message_ids=ids)
        assert result.appended == len(batch)
        for turn, mid in zip(batch, ids, strict=True):
            content = "" if turn["content"] is None else turn["content"]
            expected.append((role_of(turn), content, mid))
    stored = list(history.read(key))
    assert [(t.role, t.content, t.id) for t in stored] == expected
    assert [t.seq for t in stored] == list(range(1, len(expected) + 1))
    tail = history.tail_turns(key, 2)
    assert [(t.role, t.content, t.id) for t in tail] == expected[-2:]


# --- one huge message -----------------------------------------------------------------------


def test_ten_megabyte_message(persistent_store: BaseStore, record_figures: Record) -> None:
    unit = "مرحبا😀\U0001d518 abc "  # RTL, astral and ASCII
    text = (unit * (10 * 1024 * 1024 // len(unit.encode()) + 1))[: 10 * 1024 * 1024 // 2]
    text = text + "x" * (10 * 1024 * 1024 - len(text.encode()))
    assert len(text.encode()) == 10 * 1024 * 1024
    chat = int(uuid.uuid4().int % 10**12)
    reports: list[HistoryReport] = []
    graph = build_graph(
        AgentNode(
            RecordingChatModel(),
            use_graph_chat_history=True,
            toggles=toggles(read_timeout_seconds="120", write_timeout_seconds="120"),
            on_report=reports.append,
        ),
        persistent_store,
    )
    out = graph.invoke(telegram_callback(chat, text, "big-1"), new_thread())
    assert out["messages"][-1].content == f"echo: {text}"
    assert reports[-1].fallbacks == () and reports[-1].appended == 2
    again = graph.invoke(telegram_callback(chat, "and a small one", "small-1"), new_thread())
    assert again["messages"][-1].content == "echo: and a small one"
    stored = list(ChatHistory(persistent_store).read(f"telegram:{chat}"))
    assert [t.content == c for t, c in zip(stored, [text, f"echo: {text}"], strict=False)] == [
        True,
        True,
    ]
    assert [t.content for t in stored[2:]] == ["and a small one", "echo: and a small one"]
    record_figures(scenario="ten_megabyte_message", bytes=len(text.encode()), lost=0)
