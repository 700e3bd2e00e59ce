"""Automatic rollback triggers through real graph runs, with injected faults and latency.

The store is a real SQLite (or PostgreSQL) store behind a wrapper that fails or slows
its calls on demand (the wrapper's backend label is ``other``); an in-memory store shares
the same toggles to show that only the affected backend is rolled back. The clock of the
toggles is injected: "within one window" and "after the cool-down" are clock readings,
not sleeps.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from langgraph.store.base import BaseStore, Op, Result
from langgraph.store.memory import InMemoryStore

from agent_history import METRICS, AgentNode, ChatHistory, HistoryReport, HistorySettings
from agent_history import observability as obs
from agent_history.stores import create_graph_store, create_graph_store_sync
from agent_history.testing import RecordingChatModel
from agent_history.toggles import HistoryToggles, TriggerState
from tests.support.agent_graphs import build_graph, new_thread, telegram_callback
from tests.support.fault_stores import FaultyStore

PREFIX = "ORCHEO_GRAPH_CHAT_HISTORY_"
KEY = "telegram:77"


class FakeClock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


class SlowStore(BaseStore):
    """Delegates to ``inner``; every call takes ``delay`` seconds longer while it is set."""

    def __init__(self, inner: BaseStore) -> None:
        self.inner = inner
        self.delay = 0.0
        self.calls = 0

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        self.calls += 1
        if self.delay:
            time.sleep(self.delay)  # injected latency, measured by the node
        return self.inner.batch(ops)

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        self.calls += 1
        if self.delay:
            time.sleep(self.delay)  # noqa: ASYNC251 (blocks like a slow sync driver)
        return await self.inner.abatch(ops)


class Graphs:
    """One toggles object, graphs over the faulty store and over an in-memory store."""

    def __init__(self, store: BaseStore, env: dict[str, str], clock: FakeClock, mode: str):
        self.toggles = HistoryToggles(env=env, clock=clock)
        self.reports: list[HistoryReport] = []
        self.mode = mode
        self.faulty = build_graph(self._node(), store)
        self.memory_store = InMemoryStore()
        self.memory = build_graph(self._node(), self.memory_store)

    def _node(self) -> AgentNode:
        return AgentNode(
            RecordingChatModel(),
            use_graph_chat_history=True,
            toggles=self.toggles,
            on_report=self.reports.append,
            write_attempts=1,
        )

    async def run(self, text: str, graph: Any = None) -> HistoryReport:
        graph = graph or self.faulty
        callback, config = telegram_callback(77, text, message_id=uuid.uuid4().hex), new_thread()
        if self.mode == "async":
            out = await graph.ainvoke(callback, config)
        else:
            out = graph.invoke(callback, config)
        assert out["messages"][-1].content == f"echo: {text}"  # every run answers
        return self.reports[-1]


def _audit(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(autouse=True)
def fresh_metrics() -> None:
    METRICS.reset()


@pytest.fixture(params=["sync", "async"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def real_store(persistent_settings: HistorySettings, mode: str) -> AsyncIterator[BaseStore]:
    if mode == "async":
        async with create_graph_store(persistent_settings) as opened:
            yield opened
    else:
        with create_graph_store_sync(persistent_settings) as opened:
            yield opened


async def test_error_rate_trigger_fires_holds_probes_and_returns(
    real_store: BaseStore, mode: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    audit = tmp_path / "audit.jsonl"
    clock = FakeClock()
    env = {
        PREFIX + "TRIGGER_ERROR_RATE": "0.1",
        PREFIX + "TRIGGER_MIN_CALLS": "4",
        PREFIX + "TRIGGER_WINDOW_SECONDS": "60",
        PREFIX + "TRIGGER_COOLDOWN_SECONDS": "300",
        PREFIX + "BREAKER_MIN_CALLS": "1000",  # the breaker stays out of this test
        PREFIX + "AUDIT_FILE": str(audit),
    }
    store = FaultyStore(real_store)
    graphs = Graphs(store, env, clock, mode)
    history = ChatHistory(real_store)
    with caplog.at_level(logging.INFO, logger="agent_history"):
        for i in range(2):
            assert (await graphs.run(f"ok {i}")).decision_reason == "mode:read_write"
        store.fail_reads = True
        started = clock.now
        failed = await graphs.run("read fails")  # 1 failure in 5 calls: 20% > 10%
        assert failed.fallbacks == ("read_failed",)
        assert graphs.toggles.trigger_state("other") is TriggerState.FIRED
        assert clock.now - started < 60  # within one evaluation window
        calls = len(store.calls)
        held = await graphs.run("while held")
        assert held.decision_reason == "trigger_off" and len(store.calls) == calls
        other_backend = await graphs.run("memory store", graphs.memory)
        assert other_backend.decision_reason == "mode:read_write"  # only "other" rolled back
        store.fail_reads = False
        clock.now += 299
        assert (await graphs.run("still held")).decision_reason == "trigger_off"
        clock.now += 1
        probe = await graphs.run("probe")
        assert probe.decision_reason == "mode:read_write" and probe.fallbacks == ()
        assert graphs.toggles.trigger_state("other") is TriggerState.WATCHING
        assert (await graphs.run("back")).appended == 2
    stored = [t.content for t in history.read(KEY)] if mode == "sync" else None
    if stored is not None:
        assert "echo: probe" in stored and "echo: while held" not in stored
    entries = [e for e in _audit(audit) if e["change"] == "trigger"]
    assert [(e["before"], e["after"], e["reason"]) for e in entries] == [
        ("read_write", "off", "threshold_exceeded"),
        ("off", "read_write", "probe_ok"),
    ]
    fire = entries[0]
    assert fire["source"] == "trigger" and fire["backend"] == "other"
    assert fire["trigger"] == "error_rate" and fire["threshold"] == 0.1
    assert fire["value"] == pytest.approx(0.2) and fire["calls"] == 5
    assert isinstance(fire["pid"], int) and fire["host"] and fire["time"].endswith("+00:00")
    assert METRICS.value(obs.TRIGGER_FIRES, backend="other", trigger="error_rate") == 1
    assert METRICS.value(obs.TRIGGER_RETURNS, backend="other") == 1
    assert METRICS.value(obs.TRIGGER_STATE, backend="other") == 0
    events = [r.__dict__.get("event") for r in caplog.records]
    assert events.count("rollback_trigger_fired") == 1
    assert events.count("rollback_trigger_returned") == 1
    fired = next(r for r in caplog.records if r.__dict__.get("event") == "rollback_trigger_fired")
    assert fired.levelno == logging.WARNING


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[BaseStore]:
    settings = HistorySettings(
        graph_store_backend="sqlite",
        graph_store_sqlite_path=tmp_path / "store.sqlite",
        checkpoint_sqlite_path=tmp_path / "cp.sqlite",
    )
    with create_graph_store_sync(settings) as store:
        yield store


async def test_read_latency_trigger_from_the_flags_file_sets_read_only(
    sqlite_store: BaseStore, tmp_path: Path
) -> None:
    audit, flags = tmp_path / "audit.jsonl", tmp_path / "flags.json"
    flags.write_text(
        json.dumps(
            {
                "triggers": {
                    "read_p95_seconds": 0.05,
                    "min_calls": 3,
                    "window_seconds": 60,
                    "cooldown_seconds": 120,
                    "action": "read_only",
                }
            }
        )
    )
    clock = FakeClock()
    env = {PREFIX + "FLAGS_FILE": str(flags), PREFIX + "AUDIT_FILE": str(audit)}
    store = SlowStore(sqlite_store)
    graphs = Graphs(store, env, clock, "sync")
    history = ChatHistory(sqlite_store)
    await graphs.run("fast")
    store.delay = 0.08
    reasons = [(await graphs.run(f"slow {i}")).decision_reason for i in range(2)]
    assert reasons == ["mode:read_write"] * 2  # the second slow read of three fires it
    assert graphs.toggles.trigger_state("other") is TriggerState.FIRED
    store.delay = 0.0
    count = history.count(KEY)
    held = await graphs.run("held")
    assert held.decision_reason == "trigger_read_only" and held.stored_read > 0
    assert held.appended == 0 and history.count(KEY) == count  # reads, but no writes
    clock.now += 120
    probe = await graphs.run("probe")
    assert probe.decision_reason == "mode:read_write" and probe.appended == 2
    assert graphs.toggles.trigger_state("other") is TriggerState.WATCHING
    entries = [e for e in _audit(audit) if e["change"] == "trigger"]
    assert [(e["trigger"], e["before"], e["after"]) for e in entries] == [
        ("read_p95", "read_write", "read_only"),
        ("read_p95", "read_only", "read_write"),
    ]
    assert entries[0]["threshold"] == 0.05 and entries[0]["value"] > 0.05


async def test_a_slow_probe_fires_again(sqlite_store: BaseStore, tmp_path: Path) -> None:
    clock = FakeClock()
    env = {
        PREFIX + "TRIGGER_WRITE_P95_SECONDS": "0.05",
        PREFIX + "TRIGGER_MIN_CALLS": "2",
        PREFIX + "TRIGGER_COOLDOWN_SECONDS": "60",
    }
    store = SlowStore(sqlite_store)
    graphs = Graphs(store, env, clock, "sync")
    store.delay = 0.08
    await graphs.run("slow 1")
    await graphs.run("slow 2")
    assert (await graphs.run("held")).decision_reason == "trigger_off"
    clock.now += 60
    probe = await graphs.run("slow probe")  # the cool-down is over: runs go to the store
    assert probe.decision_reason == "mode:read_write"
    assert graphs.toggles.trigger_state("other") is TriggerState.FIRED
    assert METRICS.value(obs.TRIGGER_FIRES, trigger="write_p95") == 2
    store.delay = 0.0
    clock.now += 60
    await graphs.run("fast probe")
    assert graphs.toggles.trigger_state("other") is TriggerState.WATCHING


async def test_triggers_are_off_by_default(sqlite_store: BaseStore) -> None:
    store = FaultyStore(sqlite_store)
    graphs = Graphs(store, {PREFIX + "BREAKER_MIN_CALLS": "1000"}, FakeClock(), "sync")
    store.fail_reads = True
    for i in range(30):
        assert (await graphs.run(f"r{i}")).decision_reason == "mode:read_write"
    assert METRICS.value(obs.TRIGGER_FIRES) == 0
