"""The single-item layout of earlier deployments: read by key, and migrated into the log
exactly, resumably and without duplicates (`agent-history migrate --from-legacy`)."""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.store.base import BaseStore
from typer.testing import CliRunner

from agent_history.cli import app
from agent_history.history import ChatHistory
from agent_history.legacy import (
    LEGACY_NAMESPACE,
    aread_legacy_messages,
    legacy_keys,
    migrate_legacy,
    read_legacy_messages,
)
from agent_history.settings import HistorySettings
from agent_history.stores import create_graph_store, create_graph_store_sync

runner = CliRunner()
LONG = 10_000


def _env(settings: HistorySettings) -> dict[str, str]:
    env = {
        "ORCHEO_GRAPH_STORE_BACKEND": settings.graph_store_backend.value,
        "ORCHEO_GRAPH_STORE_SQLITE_PATH": str(settings.graph_store_sqlite_path),
        "ORCHEO_CHECKPOINT_SQLITE_PATH": str(settings.checkpoint_sqlite_path),
    }
    if settings.postgres_dsn is not None:
        env["ORCHEO_POSTGRES_DSN"] = settings.dsn
    return env


def _fixture(tag: str) -> dict[str, dict[str, Any]]:
    """Three legacy conversations, one of 10,000 messages."""
    long_chat = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"{tag} long #{i} ✓"}
        for i in range(LONG)
    ]
    return {
        f"telegram:{tag}": {"version": 3, "messages": long_chat},
        f"wecom_cs:kf:{tag}": {
            "version": 1,
            "messages": [
                {"role": "system", "content": "you are helpful"},  # configuration: not kept
                {"role": "user", "content": [{"type": "text", "text": "photo?"}]},
                {"role": "assistant", "content": "here"},
                {"role": "human", "content": "thanks"},
                {"role": "ai", "content": ""},
            ],
        },
        f"wecom_dm:{tag}": {
            "version": 1,
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "bot", "content": "hello"},
                {"role": "user", "content": "bye"},
            ],
        },
    }


def _kept(value: dict[str, Any]) -> list[tuple[str, Any]]:
    roles = {"user": "user", "human": "user", "assistant": "assistant", "ai": "assistant",
             "bot": "assistant"}  # fmt: skip
    return [(roles[m["role"]], m["content"]) for m in value["messages"] if m["role"] in roles]


def _seed(store: BaseStore, legacy_ns: tuple[str, ...], items: dict[str, Any]) -> None:
    for key, value in items.items():
        store.put(legacy_ns, key, value, index=False)


def test_migrate_from_legacy_is_exact_and_idempotent(
    persistent_settings: HistorySettings,
) -> None:
    tag = uuid.uuid4().hex[:8]
    legacy_ns, log_ns = (f"legacy{tag}",), (f"legacy{tag}",)  # the real layout: one prefix
    items = _fixture(tag)
    env = _env(persistent_settings)
    with create_graph_store_sync(persistent_settings) as store:
        _seed(store, legacy_ns, items)
        # A conversation the node already keeps in the log lives below the same prefix:
        # it is no legacy item and the migration leaves it alone.
        ChatHistory(store, namespace=log_ns).append("telegram:live", [HumanMessage("now")])
        assert sorted(legacy_keys(store, legacy_ns)) == sorted(items)
    args = ["migrate", "--from-legacy", "--legacy-namespace", legacy_ns[0], "-n", log_ns[0]]
    first = runner.invoke(app, [*args, "--json"], env=env)
    assert first.exit_code == 0, first.output
    summary = json.loads(first.stdout)
    expected_turns = sum(len(_kept(v)) for v in items.values())
    assert summary == {
        "conversations": 3, "turns_copied": expected_turns, "summaries_copied": 0,
        "verified": True, "mismatches": [], "problems": {},
    }  # fmt: skip
    second = runner.invoke(app, args, env=env)
    assert second.exit_code == 0, second.output
    assert "migrated 3 conversations, 0 turns copied; verification: all counts" in second.output
    assert "migrating" in second.output  # the progress bar
    with create_graph_store_sync(persistent_settings) as store:
        history = ChatHistory(store, namespace=log_ns)
        for key, value in items.items():
            turns = list(history.read(key))
            assert [(t.role, t.content) for t in turns] == _kept(value)
            assert [t.seq for t in turns] == list(range(1, len(turns) + 1))
        assert history.count(f"telegram:{tag}") == LONG
        assert [t.content for t in history.read("telegram:live")] == ["now"]
        assert store.get(legacy_ns, f"telegram:{tag}") is not None  # the source is kept


def test_migration_resumes_and_reports_what_it_cannot_copy(tmp_path: Path) -> None:
    settings = HistorySettings(
        graph_store_backend="sqlite", graph_store_sqlite_path=tmp_path / "s.sqlite"
    )
    items = {
        "telegram:1": {"version": 1, "messages": [{"role": "user", "content": "a"}] * 3},
        "telegram:2": {"version": 1, "messages": [{"role": "user", "content": "b"}] * 2},
        "telegram:bad": {"version": 1, "messages": "not a list"},
        "telegram:odd": {"version": 1, "messages": [{"role": "user", "content": {"x": 1}}]},
        "telegram:taken": {"version": 1, "messages": [{"role": "user", "content": "old"}]},
        # Its text under another name: it used to be copied as an empty turn, verified.
        "telegram:text": {"version": 1, "messages": [{"role": "user", "text": "important"}]},
    }
    with create_graph_store_sync(settings) as store:
        _seed(store, LEGACY_NAMESPACE, items)
        target = ChatHistory(store)
        # A run stopped after one conversation: the next one copies only the rest.
        assert migrate_legacy(store, target, keys=["telegram:1"]).turns_copied == 3
        # The node already wrote another conversation under this key: not overwritten.
        target.append("telegram:taken", [HumanMessage("new")])
    result = runner.invoke(app, ["migrate", "--from-legacy"], env=_env(settings))
    assert result.exit_code == 1, result.output
    # The three listed below are not counted as migrated.
    assert "migrated 2 of 6 conversations, 2 turns copied; verification: MISMATCH" in result.output
    assert "telegram:bad: not a legacy history item (no 'messages' list)" in result.output
    assert "telegram:odd: message 0: content must be a string" in result.output
    assert "telegram:taken: the conversation already holds another turn at seq 1" in result.output
    assert "telegram:text: message 0 has no 'content'" in result.output
    assert "verification failed for 4 conversations" in result.output
    with create_graph_store_sync(settings) as store:
        target = ChatHistory(store)
        assert [t.content for t in target.read("telegram:1")] == ["a"] * 3
        assert [t.content for t in target.read("telegram:2")] == ["b"] * 2
        assert [t.content for t in target.read("telegram:taken")] == ["new"]
        assert target.count("telegram:bad") == target.count("telegram:odd") == 0
        assert target.count("telegram:text") == 0


def test_read_legacy_messages_for_a_conversation_without_a_log(
    store: BaseStore, caplog: pytest.LogCaptureFixture
) -> None:
    ns = ("legacy_read", uuid.uuid4().hex[:8])
    store.put(ns, "telegram:5", {"version": 1, "messages": [
        {"role": "system", "content": "rules"}, {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"}, {"role": "user", "content": "secret-body"},
    ]})  # fmt: skip
    store.put(ns, "telegram:6", {"version": 1, "messages": [{"role": "user", "content": 5}]})
    messages = read_legacy_messages(store, ns, "telegram:5")
    assert messages == [HumanMessage("hi"), AIMessage("hello"), HumanMessage("secret-body")]
    assert read_legacy_messages(store, ns, "telegram:5", last=2) == messages[1:]
    assert read_legacy_messages(store, ns, "telegram:none") == []
    with caplog.at_level(logging.WARNING, logger="agent_history"):
        assert read_legacy_messages(store, ns, "telegram:6") == []
    assert "history_legacy_item_unreadable" in caplog.text
    assert "InvalidMessage" in caplog.text and "telegram:6" in caplog.text


async def test_aread_legacy_messages(settings: HistorySettings) -> None:
    ns = ("legacy_aread", uuid.uuid4().hex[:8])
    async with create_graph_store(settings) as store:
        await store.aput(ns, "wecom_dm:x", {"version": 1, "messages": [
            {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})  # fmt: skip
        assert await aread_legacy_messages(store, ns, "wecom_dm:x") == [
            HumanMessage("q"),
            AIMessage("a"),
        ]
        assert await aread_legacy_messages(store, ns, "wecom_dm:y") == []
