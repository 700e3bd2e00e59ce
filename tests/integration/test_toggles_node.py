"""Rollback toggles, breaker, budgets, metrics and health, observed through real graph runs."""

from __future__ import annotations

import json
import logging
import os
import threading
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from langgraph.graph import START, StateGraph
from langgraph.store.base import BaseStore, Op, PutOp, Result
from langgraph.store.memory import InMemoryStore

from agent_history import METRICS, AgentNode, AgentState, ChatHistory, HistoryReport, HistoryToggles
from agent_history import observability as obs
from agent_history.health import check_health
from agent_history.testing import RecordingChatModel
from tests.support.fault_stores import FaultyStore, UntouchableStore

SENTINEL = "SeNtInEl-body-7f3a"


class RecordingStore(BaseStore):
    """An in-memory store that records which kinds of operation it served."""

    def __init__(self) -> None:
        self.inner = InMemoryStore()
        self.kinds: list[str] = []

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        listed = list(ops)
        self.kinds.extend("put" if isinstance(op, PutOp) else "get" for op in listed)
        return self.inner.batch(listed)

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        return self.batch(ops)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _graph(
    store: BaseStore | None,
    toggles: HistoryToggles,
    reports: list[HistoryReport],
    model: RecordingChatModel | None = None,
    name: str = "agent",
) -> Any:
    node = AgentNode(
        model or RecordingChatModel(),
        use_graph_chat_history=True,
        toggles=toggles,
        on_report=reports.append,
        write_backoff_seconds=0.0,
    )
    builder = StateGraph(AgentState)
    builder.add_node(name, node)
    builder.add_edge(START, name)
    return builder.compile(store=store)


def _callback(text: str, chat: int = 11) -> dict[str, Any]:
    return {
        "inputs": {"message": {"text": text}},
        "results": {"telegram_events_parser": {"chat_id": chat}},
    }


def _run(graph: Any, text: str, chat: int = 11) -> dict[str, Any]:
    return graph.invoke(_callback(text, chat), {"configurable": {"thread_id": uuid.uuid4().hex}})


def _seeded() -> RecordingStore:
    store = RecordingStore()
    ChatHistory(store).append(
        "telegram:11",
        [{"role": "user", "content": "earlier"}, {"role": "assistant", "content": "reply"}],
    )
    store.kinds.clear()
    return store


@pytest.fixture(autouse=True)
def fresh_metrics() -> None:
    METRICS.reset()


def test_mode_off_makes_no_store_call_at_all() -> None:
    store, reports, model = UntouchableStore(), [], RecordingChatModel()
    out = _run(
        _graph(
            store, HistoryToggles(env={"ORCHEO_GRAPH_CHAT_HISTORY_MODE": "OFF"}), reports, model
        ),
        "hi",
    )
    assert out["messages"][-1].content == "echo: hi"
    assert store.touched == []
    assert reports[-1].decision_reason == "master_off"


def test_read_only_reads_and_never_writes() -> None:
    store, reports, model = _seeded(), [], RecordingChatModel()
    _run(
        _graph(
            store,
            HistoryToggles(env={"ORCHEO_GRAPH_CHAT_HISTORY_MODE": "read_only"}),
            reports,
            model,
        ),
        "hi",
    )
    assert "get" in store.kinds and "put" not in store.kinds
    assert [m.content for m in model.calls[0]] == ["earlier", "reply", "hi"]
    assert ChatHistory(store.inner).count("telegram:11") == 2


def test_shadow_writes_but_the_model_sees_only_in_memory_messages() -> None:
    store, reports, model = _seeded(), [], RecordingChatModel()
    _run(
        _graph(
            store, HistoryToggles(env={"ORCHEO_GRAPH_CHAT_HISTORY_MODE": "shadow"}), reports, model
        ),
        "hi",
    )
    assert "get" in store.kinds and "put" in store.kinds
    assert [m.content for m in model.calls[0]] == ["hi"]
    assert reports[-1].shadow_difference is True
    assert METRICS.value(obs.SHADOW_DIFFERENCES) == 1
    assert [t.content for t in ChatHistory(store.inner).read("telegram:11")] == [
        "earlier",
        "reply",
        "hi",
        "echo: hi",
    ]


def test_read_write_uses_and_extends_history() -> None:
    store, reports, model = _seeded(), [], RecordingChatModel()
    _run(_graph(store, HistoryToggles(env={}), reports, model), "hi")
    assert [m.content for m in model.calls[0]] == ["earlier", "reply", "hi"]
    assert ChatHistory(store.inner).count("telegram:11") == 4


def test_disabled_nodes_are_forced_in_memory() -> None:
    store, reports = UntouchableStore(), []
    toggles = HistoryToggles(
        env={"ORCHEO_GRAPH_CHAT_HISTORY_DISABLED_NODES": "other, support_agent "}
    )
    _run(_graph(store, toggles, reports, name="support_agent"), "hi")
    assert store.touched == [] and reports[-1].decision_reason == "node_disabled"


def _write_flags(path: Path, payload: dict[str, Any] | str, stamp: int) -> None:
    path.write_text(payload if isinstance(payload, str) else json.dumps(payload))
    os.utime(path, ns=(stamp, stamp))  # a distinct mtime without waiting for the clock


def test_flags_file_flip_takes_effect_on_the_next_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    flags = tmp_path / "flags.json"
    _write_flags(flags, {"mode": "off"}, 1_000_000_000)
    store, reports = _seeded(), []
    graph = _graph(
        store, HistoryToggles(env={"ORCHEO_GRAPH_CHAT_HISTORY_FLAGS_FILE": str(flags)}), reports
    )
    _run(graph, "one")
    assert store.kinds == [] and reports[-1].decision_reason == "master_off"
    _write_flags(
        flags, {"mode": "read_write", "nodes": {"agent": {"mode": "read_only"}}}, 2_000_000_000
    )
    _run(graph, "two")
    assert "get" in store.kinds and "put" not in store.kinds
    _write_flags(flags, {"mode": "read_write"}, 3_000_000_000)
    _run(graph, "three")
    assert "put" in store.kinds
    store.kinds.clear()
    with caplog.at_level(logging.WARNING, logger="agent_history"):
        _write_flags(flags, "{not json", 4_000_000_000)
        _run(graph, "four")
    assert "put" in store.kinds  # last good flags (read_write) still in force
    assert any("flags_file_invalid" in r.getMessage() for r in caplog.records)


def test_flags_file_in_toml(tmp_path: Path) -> None:
    flags = tmp_path / "flags.toml"
    flags.write_text('mode = "read_write"\ndisabled_nodes = ["agent"]\n')
    store, reports = UntouchableStore(), []
    _run(
        _graph(
            store, HistoryToggles(env={"ORCHEO_GRAPH_CHAT_HISTORY_FLAGS_FILE": str(flags)}), reports
        ),
        "x",
    )
    assert store.touched == [] and reports[-1].decision_reason == "node_disabled"


def test_breaker_opens_on_failures_and_closes_after_cooldown() -> None:
    clock = FakeClock()
    env = {
        "ORCHEO_GRAPH_CHAT_HISTORY_BREAKER_MIN_CALLS": "2",
        "ORCHEO_GRAPH_CHAT_HISTORY_BREAKER_COOLDOWN_SECONDS": "30",
    }
    faulty, reports, model = FaultyStore(InMemoryStore()), [], RecordingChatModel()
    faulty.fail_reads = True
    graph = _graph(faulty, HistoryToggles(env=env, clock=clock), reports, model)
    for i in range(2):
        assert _run(graph, f"r{i}")["messages"][-1].content == f"echo: r{i}"
    assert METRICS.value(obs.BREAKER_STATE) == 2
    calls_when_open = len(faulty.calls)
    _run(graph, "while open")
    assert len(faulty.calls) == calls_when_open  # no store call while open
    assert reports[-1].fallbacks == ("breaker_open",)
    faulty.fail_reads = False
    clock.now += 31
    _run(graph, "probe")
    assert METRICS.value(obs.BREAKER_STATE) == 0
    assert reports[-1].fallbacks == () and reports[-1].appended == 2


def test_hanging_store_is_cut_at_its_budget(caplog: pytest.LogCaptureFixture) -> None:
    faulty, reports = FaultyStore(InMemoryStore()), []
    faulty.hang = threading.Event()
    env = {"ORCHEO_GRAPH_CHAT_HISTORY_READ_TIMEOUT_SECONDS": "0.2"}
    try:
        with caplog.at_level(logging.WARNING, logger="agent_history"):
            out = _run(_graph(faulty, HistoryToggles(env=env), reports), "hello")
    finally:
        faulty.hang.set()
    assert out["messages"][-1].content == "echo: hello"
    assert reports[-1].fallbacks == ("read_timeout",)
    assert faulty.calls  # the store really was called, and hung
    assert METRICS.value(obs.STORE_READ_FAILURES) == 1


def test_metrics_after_a_scripted_sequence(caplog: pytest.LogCaptureFixture) -> None:
    store, reports = InMemoryStore(), []
    toggles = HistoryToggles(env={})
    graph = _graph(store, toggles, reports)
    with caplog.at_level(logging.DEBUG, logger="agent_history"):
        _run(graph, f"first {SENTINEL}", chat=1)
        _run(graph, f"second {SENTINEL}", chat=1)
        graph.invoke(
            {"inputs": {"message": f"keyless {SENTINEL}"}}, {"configurable": {"thread_id": "k"}}
        )
        faulty = FaultyStore(InMemoryStore())
        faulty.fail_writes = True
        _run(_graph(faulty, toggles, reports), f"third {SENTINEL}", chat=2)
    assert METRICS.value(obs.STORE_READ_LATENCY, backend="memory", outcome="ok") == 2
    assert METRICS.value(obs.STORE_READ_LATENCY, backend="other", outcome="ok") == 1
    assert METRICS.value(obs.STORE_WRITE_LATENCY, outcome="ok") == 2
    assert METRICS.value(obs.STORE_WRITE_LATENCY, outcome="fallback") == 3  # three attempts
    assert METRICS.value(obs.STORE_WRITE_FAILURES) == 1
    assert METRICS.value(obs.KEY_RESOLUTION_FAILURES) == 1
    assert METRICS.value(obs.FALLBACKS) == 2
    assert METRICS.value(obs.FALLBACKS, channel="telegram") == 1
    assert METRICS.value(obs.STORE_READ_FAILURES) == 0
    rendered = json.dumps(METRICS.snapshot())
    assert SENTINEL not in rendered and "telegram:1" not in rendered
    for record in caplog.records:
        assert SENTINEL not in record.getMessage()
        assert SENTINEL not in json.dumps(record.__dict__, default=str)


def test_health_reports_ok_degraded_and_down() -> None:
    store = InMemoryStore()
    assert check_health(store, toggles=HistoryToggles(env={})).status == "ok"
    degraded = check_health(
        store, toggles=HistoryToggles(env={"ORCHEO_GRAPH_CHAT_HISTORY_MODE": "read_only"})
    )
    assert degraded.status == "degraded" and degraded.details["mode"] == "read_only"
    broken = FaultyStore(store)
    broken.fail_reads = True
    down = check_health(broken, toggles=HistoryToggles(env={}))
    assert down.status == "down" and down.http_status == 503
    assert check_health(None).status == "down"


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_health_is_degraded_while_any_rollback_switch_is_in_force(tmp_path: Path) -> None:
    """A dashboard on ``/health`` shows every rollback in force (docs: "degraded: reachable
    but a rollback switch is on"), not only the global mode and the breaker."""
    store = InMemoryStore()
    flags = tmp_path / "flags.json"

    def health(**env: str) -> Any:
        values = {f"ORCHEO_GRAPH_CHAT_HISTORY_{k.upper()}": v for k, v in env.items()}
        return check_health(store, toggles=HistoryToggles(env=values))

    disabled = health(disabled_nodes="agent")
    assert (disabled.status, disabled.http_status) == ("degraded", 200)
    assert disabled.details["degraded_by"] == ["disabled_nodes"]
    assert disabled.details["disabled_nodes"] == ["agent"]
    flags.write_text(json.dumps({"nodes": {"agent": {"mode": "off"}, "b": {"mode": "read_write"}}}))
    node_off = health(flags_file=str(flags))
    assert node_off.status == "degraded" and node_off.details["node_modes"] == {"agent": "off"}
    assert node_off.details["degraded_by"] == ["node_modes"]
    assert health(mode="shadow").details["degraded_by"] == ["mode:shadow"]
    # A fired automatic trigger rolls the backend back by itself: health says so.
    clock = _Clock()
    toggles = HistoryToggles(
        env={
            "ORCHEO_GRAPH_CHAT_HISTORY_TRIGGER_ERROR_RATE": "0.1",
            "ORCHEO_GRAPH_CHAT_HISTORY_TRIGGER_MIN_CALLS": "2",
            "ORCHEO_GRAPH_CHAT_HISTORY_TRIGGER_COOLDOWN_SECONDS": "60",
            "ORCHEO_GRAPH_CHAT_HISTORY_BREAKER_MIN_CALLS": "1000",
        },
        clock=clock,
    )
    assert check_health(store, toggles=toggles).status == "ok"
    breaker = toggles.breaker_for(store, "memory")
    breaker.record_success()
    breaker.record_failure()
    fired = check_health(store, toggles=toggles)
    assert (fired.status, fired.details["trigger"]) == ("degraded", "fired")
    assert fired.details["degraded_by"] == ["trigger:fired"]
    healthy = check_health(store, toggles=HistoryToggles(env={}))
    assert (healthy.status, healthy.details["degraded_by"]) == ("ok", [])


def test_health_on_real_stores(store: BaseStore, backend: str) -> None:
    report = check_health(store, toggles=HistoryToggles(env={}))
    assert report.status == "ok", report.details
    assert report.details["backend"] == backend


def _audit_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_every_effective_switch_change_is_audited_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    audit, flags = tmp_path / "audit.jsonl", tmp_path / "flags.json"
    _write_flags(flags, {"mode": "read_write"}, 1_000_000_000)
    clock = FakeClock()
    env = {
        "ORCHEO_GRAPH_CHAT_HISTORY_AUDIT_FILE": str(audit),
        "ORCHEO_GRAPH_CHAT_HISTORY_FLAGS_FILE": str(flags),
        "ORCHEO_GRAPH_CHAT_HISTORY_BREAKER_MIN_CALLS": "2",
        "ORCHEO_GRAPH_CHAT_HISTORY_BREAKER_COOLDOWN_SECONDS": "30",
    }
    faulty, reports = FaultyStore(InMemoryStore()), []
    graph = _graph(faulty, HistoryToggles(env=env, clock=clock), reports)
    with caplog.at_level(logging.INFO, logger="agent_history"):
        _run(graph, "start")
        _run(graph, "nothing changed")
        _write_flags(flags, {"mode": "off"}, 2_000_000_000)
        _run(graph, "flags off")
        _write_flags(
            flags,
            {"disabled_nodes": ["billing"], "nodes": {"triage": {"mode": "shadow"}}},
            3_000_000_000,
        )
        _run(graph, "flags back on, narrower")
        _write_flags(
            flags,
            {"disabled_nodes": ["billing"], "nodes": {"triage": {"mode": "shadow"}}},
            4_000_000_000,
        )  # rewritten, same content: no effective change
        _run(graph, "same flags")
        env["ORCHEO_GRAPH_CHAT_HISTORY_MODE"] = "read_only"
        _run(graph, "env read_only")
        faulty.fail_reads = True
        clock.now += 61  # earlier successes leave the breaker's window
        _run(graph, "fail 1")
        _run(graph, "fail 2")
        faulty.fail_reads = False
        clock.now += 31
        _run(graph, "probe")
    entries = _audit_lines(audit)
    changes = [(e["change"], e["source"], e["before"], e["after"]) for e in entries]
    assert changes == [
        (
            "startup",
            "env+flags_file",
            None,
            {"mode": "read_write", "disabled_nodes": [], "node_modes": {}},
        ),
        ("mode", "flags_file", "read_write", "off"),
        ("mode", "flags_file", "off", "read_write"),
        ("disabled_nodes", "flags_file", [], ["billing"]),
        ("node_modes", "flags_file", {}, {"triage": "shadow"}),
        ("mode", "env", "read_write", "read_only"),
        ("breaker_state", "breaker", "closed", "open"),
        ("breaker_state", "breaker", "open", "half_open"),
        ("breaker_state", "breaker", "half_open", "closed"),
    ]
    assert all(e["pid"] == os.getpid() and e["host"] for e in entries)
    assert {e.get("backend") for e in entries if e["change"] == "breaker_state"} == {"other"}
    logged = [r for r in caplog.records if r.__dict__.get("event") == "switch_changed"]
    assert len(logged) == len(entries) and {r.levelno for r in logged} == {logging.INFO}
    # One count per change (per audit line), labelled with its whole source.
    assert METRICS.value(obs.SWITCH_CHANGES, source="flags_file") == 4
    assert METRICS.value(obs.SWITCH_CHANGES, source="env+flags_file") == 1
    assert METRICS.value(obs.SWITCH_CHANGES, change="breaker_state") == 3
    assert METRICS.value(obs.SWITCH_CHANGES) == len(entries)


def test_switch_changes_made_in_code_are_audited(tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    toggles = HistoryToggles(env={}, mode="shadow", disabled_nodes=["x"], audit_file=audit)
    toggles.current()
    [entry] = _audit_lines(audit)
    assert entry["source"] == "env+code"
    assert entry["after"] == {"mode": "shadow", "disabled_nodes": ["x"], "node_modes": {}}


def test_an_unwritable_audit_file_never_fails_a_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    env = {"ORCHEO_GRAPH_CHAT_HISTORY_AUDIT_FILE": str(tmp_path / "missing-dir" / "audit.jsonl")}
    toggles, reports = HistoryToggles(env=env), []
    with caplog.at_level(logging.WARNING, logger="agent_history"):
        _run(_graph(_seeded(), toggles, reports), "hi")
        env["ORCHEO_GRAPH_CHAT_HISTORY_MODE"] = "read_only"
        _run(_graph(_seeded(), toggles, reports), "again")
    unwritable = [r for r in caplog.records if r.__dict__.get("event") == "audit_file_unwritable"]
    assert len(unwritable) == 1
