"""AgentNode in real graphs: continuity across runs, key candidates, window, faults, toggle off."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import pytest
from langchain_core.messages import BaseMessage
from langgraph.store.base import BaseStore
from langgraph.store.memory import InMemoryStore

from agent_history import AgentNode, HistoryReport
from agent_history.history import ChatHistory
from agent_history.settings import HistorySettings
from agent_history.stores import create_checkpointer_sync, create_graph_store_sync
from agent_history.testing import RecordingChatModel
from agent_history.toggles import HistoryToggles
from tests.support.agent_graphs import build_graph, new_thread, telegram_callback
from tests.support.fault_stores import FaultyStore, UntouchableStore

NS = ("agent_chat_history",)


def _node(
    model: RecordingChatModel, reports: list[HistoryReport] | None = None, **kwargs: Any
) -> AgentNode:
    kwargs.setdefault("use_graph_chat_history", True)
    kwargs.setdefault("toggles", HistoryToggles(env={}))
    kwargs.setdefault("write_backoff_seconds", 0.0)
    return AgentNode(model, on_report=reports.append if reports is not None else None, **kwargs)


def _texts(messages: list[BaseMessage]) -> list[str]:
    return [str(m.content) for m in messages]


def test_telegram_callbacks_in_separate_threads_see_earlier_turns(
    persistent_settings: HistorySettings,
) -> None:
    model = RecordingChatModel()
    chat = int(uuid.uuid4().int % 10**9)
    with (
        create_checkpointer_sync(persistent_settings) as saver,
        create_graph_store_sync(persistent_settings) as store,
    ):
        graph = build_graph(_node(model), store, saver)
        for i in range(3):
            graph.invoke(telegram_callback(chat, f"msg {i}"), new_thread())
        stored = list(ChatHistory(store).read(f"telegram:{chat}"))
    assert _texts(model.calls[0]) == ["msg 0"]
    assert _texts(model.calls[1]) == ["msg 0", "echo: msg 0", "msg 1"]
    assert _texts(model.calls[2]) == ["msg 0", "echo: msg 0", "msg 1", "echo: msg 1", "msg 2"]
    assert [(t.role, t.content) for t in stored][-2:] == [
        ("user", "msg 2"),
        ("assistant", "echo: msg 2"),
    ]
    assert len(stored) == 6


def test_wecom_cs_identity_continuity(store: BaseStore) -> None:
    model = RecordingChatModel()
    kf, user = "kf" + uuid.uuid4().hex[:6], "ext" + uuid.uuid4().hex[:6]
    graph = build_graph(_node(model), store)
    for text in ("hello", "again"):
        state = {
            "inputs": {"message": text},
            "results": {"wecom_cs_sync": {"open_kf_id": kf, "external_userid": user}},
        }
        graph.invoke(state, new_thread())
    assert _texts(model.calls[1]) == ["hello", "echo: hello", "again"]
    assert ChatHistory(store).count(f"wecom_cs:{kf}:{user}") == 4


def test_same_thread_with_checkpointer_does_not_duplicate(store: BaseStore) -> None:
    from langgraph.checkpoint.memory import InMemorySaver

    model = RecordingChatModel()
    graph = build_graph(_node(model), store, InMemorySaver())
    thread, chat = new_thread(), 777000 + int(uuid.uuid4().int % 1000)
    for i in range(3):
        graph.invoke(telegram_callback(chat, f"m{i}"), thread)
    assert _texts(model.calls[2]) == ["m0", "echo: m0", "m1", "echo: m1", "m2"]
    assert [t.content for t in ChatHistory(store).read(f"telegram:{chat}")] == [
        "m0", "echo: m0", "m1", "echo: m1", "m2", "echo: m2",
    ]  # fmt: skip


def test_redelivered_callback_is_stored_once(store: BaseStore) -> None:
    model = RecordingChatModel()
    graph = build_graph(_node(model), store)
    chat = int(uuid.uuid4().int % 10**9)
    graph.invoke(telegram_callback(chat, "pay now", message_id=10), new_thread())
    graph.invoke(telegram_callback(chat, "pay now", message_id=10), new_thread())  # webhook retry
    assert [t.content for t in ChatHistory(store).read(f"telegram:{chat}")] == [
        "pay now",
        "echo: pay now",
    ]
    # The retry is answered with the history as it stood when the message first came.
    assert _texts(model.calls[1]) == ["pay now"]


@pytest.mark.parametrize(
    ("candidates", "template", "state_extra", "config_extra", "expected"),
    [
        (
            ["{{results.resolve_history_key.session_key}}"],
            "{{conversation_key}}",
            {"resolve_history_key": {"session_key": "custom-1"}},
            {},
            "custom-1",
        ),
        (
            ["{{config.configurable.history_key}}"],
            "{{conversation_key}}",
            {},
            {"history_key": "cfg-key"},
            "cfg-key",
        ),
        (["support-room-1"], "{{conversation_key}}", {}, {}, "support-room-1"),
        ([], "tenant-a:{{conversation_key}}", {}, {}, "tenant-a:telegram:5"),
    ],
)
def test_key_candidates(
    candidates: list[str],
    template: str,
    state_extra: dict[str, Any],
    config_extra: dict[str, Any],
    expected: str,
) -> None:
    from agent_history.keys import DEFAULT_HISTORY_KEY_CANDIDATES

    store = InMemoryStore()
    reports: list[HistoryReport] = []
    node = _node(
        RecordingChatModel(),
        reports,
        history_key_candidates=[*candidates, *DEFAULT_HISTORY_KEY_CANDIDATES],
        history_key_template=template,
    )
    state = telegram_callback(5, "hi")
    state["results"].update(state_extra)
    config = new_thread()
    config["configurable"].update(config_extra)
    build_graph(node, store).invoke(state, config)
    assert reports[-1].key == expected
    assert ChatHistory(store).count(expected) == 2


def test_window_stays_within_max_messages_while_store_keeps_everything(
    persistent_settings: HistorySettings, store: BaseStore
) -> None:
    model = RecordingChatModel()
    reports: list[HistoryReport] = []
    graph = build_graph(_node(model, reports, max_messages=10), store)
    chat = int(uuid.uuid4().int % 10**9)
    for i in range(100):
        graph.invoke(telegram_callback(chat, f"turn {i}"), new_thread())
    assert all(len(call) <= 10 for call in model.calls)
    assert _texts(model.calls[-1])[-1] == "turn 99"
    stored = list(ChatHistory(store).read(f"telegram:{chat}"))
    assert len(stored) == 200
    assert [t.content for t in stored[::2]] == [f"turn {i}" for i in range(100)]
    assert [t.seq for t in stored] == list(range(1, 201))
    # The window starts on a user message: 9 of the 10 allowed.
    assert reports[-1].truncated > 0 and reports[-1].payload_messages == 9


@pytest.mark.parametrize(
    ("state", "reason_code"),
    [
        (
            {"inputs": {"message": "hi"}, "results": {"telegram_events_parser": {"chat_id": None}}},
            "unresolved_template",
        ),
        (
            {
                "inputs": {"message": "hi"},
                "results": {"resolve_history_key": {"session_key": "   "}},
            },
            "empty",
        ),
        (
            {
                "inputs": {"message": "hi"},
                "results": {"resolve_history_key": {"session_key": "bad\nkey"}},
            },
            "invalid_chars",
        ),
        (
            {
                "inputs": {"message": "hi"},
                "results": {"resolve_history_key": {"session_key": "k" * 300}},
            },
            "too_long",
        ),
    ],
)
def test_bad_keys_degrade_with_a_warning(
    state: dict[str, Any], reason_code: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = InMemoryStore()
    ChatHistory(store).append("telegram:1", [{"role": "user", "content": "existing"}])
    model, reports = RecordingChatModel(), []
    node = _node(
        model,
        reports,
        history_key_candidates=[
            "{{results.resolve_history_key.session_key}}",
            "telegram:{{results.telegram_events_parser.chat_id}}",
        ],
    )
    with caplog.at_level(logging.WARNING, logger="agent_history"):
        out = build_graph(node, store).invoke(state, new_thread())
    assert _texts(out["messages"])[-1] == "echo: hi"
    assert reports[-1].key is None and "no_valid_key" in reports[-1].fallbacks
    assert reason_code in reports[-1].rejected
    assert any("no_valid_key" in r.getMessage() for r in caplog.records)
    assert [t.content for t in ChatHistory(store).read("telegram:1")] == ["existing"]
    assert list(ChatHistory(store).keys()) == ["telegram:1"]


def test_missing_store_degrades(caplog: pytest.LogCaptureFixture) -> None:
    model, reports = RecordingChatModel(), []
    with caplog.at_level(logging.WARNING, logger="agent_history"):
        out = build_graph(_node(model, reports), None).invoke(
            telegram_callback(1, "hi"), new_thread()
        )
    assert _texts(out["messages"])[-1] == "echo: hi"
    assert reports[-1].fallbacks == ("no_store",)
    assert any("no_store" in r.getMessage() for r in caplog.records)


def test_read_failure_degrades_to_in_memory(caplog: pytest.LogCaptureFixture) -> None:
    inner = InMemoryStore()
    ChatHistory(inner).append("telegram:3", [{"role": "user", "content": "before"}])
    faulty = FaultyStore(inner)
    faulty.fail_reads = True
    model, reports = RecordingChatModel(), []
    with caplog.at_level(logging.WARNING, logger="agent_history"):
        out = build_graph(_node(model, reports), faulty).invoke(
            telegram_callback(3, "hi"), new_thread()
        )
    assert _texts(out["messages"]) == ["hi", "echo: hi"]
    assert _texts(model.calls[0]) == ["hi"]
    assert "read_failed" in reports[-1].fallbacks and reports[-1].appended == 0
    messages = [r.getMessage() for r in caplog.records]
    assert any("read_failed" in m and "telegram:3" in m for m in messages)
    assert not any("before" in m or m == "hi" for m in messages)
    assert [t.content for t in ChatHistory(inner).read("telegram:3")] == ["before"]


def test_write_failure_retries_then_warns_and_keeps_history_intact(
    caplog: pytest.LogCaptureFixture,
) -> None:
    inner = InMemoryStore()
    ChatHistory(inner).append("telegram:4", [{"role": "user", "content": "kept"}])
    faulty = FaultyStore(inner)
    faulty.fail_writes = True
    model, reports = RecordingChatModel(), []
    with caplog.at_level(logging.WARNING, logger="agent_history"):
        out = build_graph(_node(model, reports), faulty).invoke(
            telegram_callback(4, "hi"), new_thread()
        )
    assert _texts(out["messages"])[-1] == "echo: hi"
    assert _texts(model.calls[0]) == ["kept", "hi"]
    assert faulty.calls.count("put") == 3  # three attempts
    assert "write_failed" in reports[-1].fallbacks
    assert any("write_failed" in r.getMessage() for r in caplog.records)
    assert [t.content for t in ChatHistory(inner).read("telegram:4")] == ["kept"]


def test_toggle_off_is_a_plain_node_that_never_touches_the_store() -> None:
    store = UntouchableStore()
    plain_model, off_model = RecordingChatModel(), RecordingChatModel()
    thread = {
        "messages": [{"role": "user", "content": f"m{i}"} for i in range(5)],
        **telegram_callback(9, "now"),
    }
    build_graph(AgentNode(plain_model, max_messages=4), None).invoke(thread, new_thread())
    build_graph(AgentNode(off_model, max_messages=4, use_graph_chat_history=False), store).invoke(
        thread, new_thread()
    )
    assert _texts(off_model.calls[0]) == _texts(plain_model.calls[0]) == ["m2", "m3", "m4", "now"]
    assert store.touched == []


async def test_async_graph_with_async_store(astore: BaseStore) -> None:
    model = RecordingChatModel()
    graph = build_graph(_node(model), astore)
    chat = int(uuid.uuid4().int % 10**9)
    for i in range(3):
        await graph.ainvoke(telegram_callback(chat, f"a{i}"), new_thread())
    assert _texts(model.calls[2]) == ["a0", "echo: a0", "a1", "echo: a1", "a2"]
    assert await ChatHistory(astore).acount(f"telegram:{chat}") == 6


def test_system_prompt_is_sent_first_and_not_counted() -> None:
    model = RecordingChatModel()
    store = InMemoryStore()
    graph = build_graph(_node(model, system_prompt="You are terse.", max_messages=2), store)
    for i in range(3):
        graph.invoke(telegram_callback(8, f"x{i}"), new_thread())
    assert model.calls[-1][0].type == "system"
    assert _texts(model.calls[-1]) == ["You are terse.", "echo: x1", "x2"]
