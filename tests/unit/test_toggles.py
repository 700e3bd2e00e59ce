"""Toggle decisions, strict loading, the circuit breaker and the metrics registry."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import CollectorRegistry

from agent_history import observability as obs
from agent_history.errors import ConfigError
from agent_history.observability import MetricsRegistry, enable_prometheus, log_event
from agent_history.toggles import (
    BreakerState,
    CircuitBreaker,
    HistoryMode,
    HistoryToggles,
    load_toggle_config,
)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("mode", "read", "write", "from_store"),
    [
        ("read_write", True, True, True),
        ("read_only", True, False, True),
        ("shadow", True, True, False),
        ("off", False, False, False),
    ],
)
def test_decisions_per_mode(mode: str, read: bool, write: bool, from_store: bool) -> None:
    decision = HistoryToggles(env={"ORCHEO_GRAPH_CHAT_HISTORY_MODE": mode}).decide(
        "agent", node_enabled=True
    )
    assert (decision.read, decision.write, decision.payload_from_store) == (read, write, from_store)
    assert decision.mode is HistoryMode(mode)


def test_node_flag_off_wins_over_everything() -> None:
    decision = HistoryToggles(env={"ORCHEO_GRAPH_CHAT_HISTORY_MODE": "read_write"}).decide(
        "agent", node_enabled=False
    )
    assert not decision.enabled and decision.reason == "node_flag_off"


def test_invalid_env_at_run_time_keeps_last_good(caplog: pytest.LogCaptureFixture) -> None:
    env = {"ORCHEO_GRAPH_CHAT_HISTORY_MODE": "read_only"}
    toggles = HistoryToggles(env=env)
    assert toggles.decide("a", node_enabled=True).mode is HistoryMode.READ_ONLY
    env["ORCHEO_GRAPH_CHAT_HISTORY_MODE"] = "sideways"
    with caplog.at_level(logging.WARNING, logger="agent_history"):
        assert toggles.decide("a", node_enabled=True).mode is HistoryMode.READ_ONLY
    assert any("toggle_config_invalid" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("ORCHEO_GRAPH_CHAT_HISTORY_MODE", "maybe"),
        ("ORCHEO_GRAPH_CHAT_HISTORY_BREAKER_FAILURE_RATIO", "1.5"),
        ("ORCHEO_GRAPH_CHAT_HISTORY_BREAKER_MIN_CALLS", "zero"),
        ("ORCHEO_GRAPH_CHAT_HISTORY_READ_TIMEOUT_SECONDS", "-1"),
        ("ORCHEO_GRAPH_CHAT_HISTORY_FLAGS_FILE", "relative.json"),
        ("ORCHEO_GRAPH_CHAT_HISTORY_FLAGS_FILE", "/does/not/exist.json"),
    ],
)
def test_strict_loading_names_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_toggle_config({name: value})
    assert caught.value.variable == name


def test_breaker_lifecycle_with_a_fake_clock() -> None:
    clock = Clock()
    breaker = CircuitBreaker(
        failure_ratio=0.5,
        min_calls=4,
        window_seconds=10,
        cooldown_seconds=5,
        half_open_probes=2,
        clock=clock,
    )
    for ok in (True, True, False):
        (breaker.record_success if ok else breaker.record_failure)()
    assert breaker.state is BreakerState.CLOSED  # 1 of 3, below min_calls
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN and not breaker.allow()
    clock.now = 4.9
    assert not breaker.allow()
    clock.now = 5.0
    assert breaker.allow() and breaker.state is BreakerState.HALF_OPEN
    breaker.record_failure()  # failed probe re-opens with a new cool-down
    assert breaker.state is BreakerState.OPEN
    clock.now = 10.0
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state is BreakerState.HALF_OPEN  # needs two probes
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED


def test_breaker_window_forgets_old_failures() -> None:
    clock = Clock()
    breaker = CircuitBreaker(
        failure_ratio=0.9, min_calls=2, window_seconds=10, cooldown_seconds=5, clock=clock
    )
    breaker.record_failure()
    clock.now = 11
    breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED  # the first failure left the window
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN


def test_registry_values_snapshot_and_label_hygiene() -> None:
    registry = MetricsRegistry()
    registry.inc(obs.FALLBACKS, backend="sqlite", channel="telegram", outcome="fallback")
    registry.inc(obs.FALLBACKS, 2, backend="sqlite", channel="telegram:12345", outcome="fallback")
    registry.observe(obs.STORE_READ_LATENCY, 3.0, backend="postgres", outcome="ok")
    registry.observe(obs.STORE_READ_LATENCY, 700.0, backend="postgres", outcome="ok")
    registry.set_gauge(obs.BREAKER_STATE, 2, backend="postgres")
    assert registry.value(obs.FALLBACKS) == 3
    assert registry.value(obs.FALLBACKS, channel="other") == 2
    assert registry.value(obs.STORE_READ_LATENCY) == 2
    assert registry.value(obs.BREAKER_STATE, backend="postgres") == 2
    snapshot = registry.snapshot()
    histogram = snapshot[obs.STORE_READ_LATENCY]["series"][0]
    assert histogram["count"] == 2 and histogram["sum"] == 703.0 and histogram["buckets"][5.0] == 1
    assert "12345" not in str(snapshot)
    registry.reset()
    assert registry.snapshot() == {}


def test_prometheus_mirror() -> None:
    registry, prom = MetricsRegistry(), CollectorRegistry()
    assert enable_prometheus(prom, registry) is True
    registry.inc(obs.STORE_WRITE_FAILURES, backend="sqlite", channel="wecom_cs", outcome="fallback")
    registry.observe(
        obs.STORE_WRITE_LATENCY, 12.0, backend="sqlite", channel="wecom_cs", outcome="ok"
    )
    labels = {"backend": "sqlite", "channel": "wecom_cs", "outcome": "fallback"}
    assert prom.get_sample_value("agent_history_store_write_failures_total", labels) == 1.0
    assert (
        prom.get_sample_value(
            "agent_history_store_write_latency_ms_count", {**labels, "outcome": "ok"}
        )
        == 1.0
    )


def test_log_event_is_structured(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="agent_history"):
        log_event(
            "history_fallback", node="agent", key="telegram:1", reason="read_failed", skip=None
        )
    record = caplog.records[-1]
    assert (
        record.getMessage() == "event=history_fallback node=agent key=telegram:1 reason=read_failed"
    )
    assert record.__dict__["event"] == "history_fallback"
    assert record.__dict__["fields"] == {
        "node": "agent",
        "key": "telegram:1",
        "reason": "read_failed",
    }
