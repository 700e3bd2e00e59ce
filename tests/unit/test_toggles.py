"""Toggle decisions, values in code, strict loading, the circuit breaker, pacing of skip logs."""

from __future__ import annotations

import logging
from unittest import mock

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from agent_history import breaker as breaker_module
from agent_history.errors import ConfigError
from agent_history.observability import log_event
from agent_history.toggles import (
    BreakerSettings,
    BreakerState,
    CircuitBreaker,
    HistoryMode,
    HistoryToggles,
    TriggerSettings,
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
        ("ORCHEO_GRAPH_CHAT_HISTORY_BREAKER_FAILURE_RATIO", "nan"),
        ("ORCHEO_GRAPH_CHAT_HISTORY_BREAKER_WINDOW_SECONDS", "inf"),
        ("ORCHEO_GRAPH_CHAT_HISTORY_BREAKER_COOLDOWN_SECONDS", "NaN"),
        ("ORCHEO_GRAPH_CHAT_HISTORY_READ_TIMEOUT_SECONDS", "inf"),
        ("ORCHEO_GRAPH_CHAT_HISTORY_WRITE_TIMEOUT_SECONDS", "nan"),
        ("ORCHEO_GRAPH_CHAT_HISTORY_TRIGGER_ERROR_RATE", "nan"),
        ("ORCHEO_GRAPH_CHAT_HISTORY_TRIGGER_READ_P95_SECONDS", "-inf"),
        ("ORCHEO_GRAPH_CHAT_HISTORY_TRIGGER_WINDOW_SECONDS", "Infinity"),
        ("ORCHEO_GRAPH_CHAT_HISTORY_TRIGGER_ACTION", "shadow"),
        ("ORCHEO_GRAPH_CHAT_HISTORY_TRIGGER_MIN_CALLS", "2.5"),
        ("ORCHEO_GRAPH_CHAT_HISTORY_AUDIT_FILE", "audit.jsonl"),
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


@settings(max_examples=300, deadline=None)
@given(
    calls=st.lists(st.tuples(st.sampled_from([0.0, 0.5, 3.0, 7.0]), st.booleans()), max_size=60),
    cap=st.sampled_from([4, 7, breaker_module.MAX_WINDOW_CALLS]),
)
@example(calls=[(0.0, True)] * 4 + [(0.0, False)] * 2, cap=4)  # opens on the newest 4 only
def test_breaker_opens_exactly_when_the_window_ratio_says_so(
    calls: list[tuple[float, bool]], cap: int
) -> None:
    # Reference: the ratio recomputed from every call kept in the window (the newest
    # `cap` of them). The breaker keeps a running count of its failures (a scan per
    # failure grew with the traffic) and at most MAX_WINDOW_CALLS calls (its memory grew
    # with the call rate); a small cap stands in for the real one here.
    with mock.patch.object(breaker_module, "MAX_WINDOW_CALLS", cap):
        _check_breaker_against_the_window_ratio(calls, cap)


def _check_breaker_against_the_window_ratio(calls: list[tuple[float, bool]], cap: int) -> None:
    clock = Clock()
    breaker = CircuitBreaker(
        failure_ratio=0.5, min_calls=3, window_seconds=10, cooldown_seconds=4, clock=clock
    )
    window: list[tuple[float, bool]] = []
    opened_at: float | None = None

    def expected() -> BreakerState:
        if opened_at is None:
            return BreakerState.CLOSED
        return BreakerState.OPEN if clock.now - opened_at < 4 else BreakerState.HALF_OPEN

    for step, ok in calls:
        clock.now += step
        allowed = expected() is not BreakerState.OPEN
        assert breaker.allow() is allowed
        if not allowed:
            continue
        if expected() is BreakerState.HALF_OPEN:  # the probe decides
            opened_at = None if ok else clock.now
            window = []
        else:
            window = [(at, good) for at, good in window if clock.now - at <= 10]
            window.append((clock.now, ok))
            window = window[-cap:]
            failed = sum(1 for _, good in window if not good)
            if not ok and len(window) >= 3 and failed / len(window) >= 0.5:
                opened_at, window = clock.now, []
        (breaker.record_success if ok else breaker.record_failure)()
        assert breaker.state is expected()


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


def test_nan_breaker_ratio_at_run_time_keeps_a_breaker_that_opens(
    caplog: pytest.LogCaptureFixture,
) -> None:
    env = {"ORCHEO_GRAPH_CHAT_HISTORY_BREAKER_MIN_CALLS": "2"}
    clock = Clock()
    toggles = HistoryToggles(env=env, clock=clock)
    breaker = toggles.breaker_for(object(), "sqlite")
    toggles.decide("a", node_enabled=True, breaker=breaker)
    env["ORCHEO_GRAPH_CHAT_HISTORY_BREAKER_FAILURE_RATIO"] = "nan"
    with caplog.at_level(logging.WARNING, logger="agent_history"):
        toggles.decide("a", node_enabled=True, breaker=breaker)
    assert [r.__dict__["fields"]["variable"] for r in caplog.records] == [
        "ORCHEO_GRAPH_CHAT_HISTORY_BREAKER_FAILURE_RATIO"
    ]
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"failure_ratio": float("nan")}, "failure_ratio"),
        ({"failure_ratio": 0.0}, "failure_ratio"),
        ({"min_calls": 0}, "min_calls"),
        ({"window_seconds": float("inf")}, "window_seconds"),
        ({"cooldown_seconds": -1.0}, "cooldown_seconds"),
    ],
)
def test_breaker_refuses_invalid_numbers(kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        CircuitBreaker(**kwargs)  # type: ignore[arg-type]
    assert caught.value.variable == f"CircuitBreaker.{field}"


def test_typed_values_in_code() -> None:
    toggles = HistoryToggles(
        env={},
        mode="read_only",
        disabled_nodes=["billing", " support "],
        node_modes={"triage": HistoryMode.SHADOW},
        breaker=BreakerSettings(failure_ratio=0.25, min_calls=3),
        triggers=TriggerSettings(error_rate=0.1, action="read_only"),
        read_timeout_seconds=0.5,
        write_timeout_seconds=1.5,
    )
    config = toggles.current()
    assert config.mode is HistoryMode.READ_ONLY
    assert config.disabled_nodes == {"billing", "support"}
    assert config.node_modes == {"triage": HistoryMode.SHADOW}
    assert (config.breaker_failure_ratio, config.breaker_min_calls) == (0.25, 3)
    assert config.triggers.error_rate == 0.1 and config.triggers.action is HistoryMode.READ_ONLY
    assert (config.read_timeout_seconds, config.write_timeout_seconds) == (0.5, 1.5)
    assert toggles.decide("agent", node_enabled=True).reason == "mode:read_only"
    assert toggles.decide("support", node_enabled=True).reason == "node_disabled"
    assert toggles.decide("triage", node_enabled=True).mode is HistoryMode.SHADOW


def test_code_values_meet_the_environment() -> None:
    env = {
        "ORCHEO_GRAPH_CHAT_HISTORY_MODE": "shadow",
        "ORCHEO_GRAPH_CHAT_HISTORY_DISABLED_NODES": "from_env",
        "ORCHEO_GRAPH_CHAT_HISTORY_READ_TIMEOUT_SECONDS": "7",
    }
    toggles = HistoryToggles(env=env, mode="read_write", disabled_nodes=("from_code",))
    config = toggles.current()
    assert config.mode is HistoryMode.READ_WRITE  # code overrides the environment's mode
    assert config.disabled_nodes == {"from_env", "from_code"}
    assert config.read_timeout_seconds == 7.0  # not set in code: the environment's
    env["ORCHEO_GRAPH_CHAT_HISTORY_MODE"] = "off"
    assert toggles.current().mode is HistoryMode.OFF  # but "off" from anywhere wins


@pytest.mark.parametrize(
    ("kwargs", "variable"),
    [
        ({"mode": "sideways"}, "HistoryToggles.mode"),
        ({"mode": 3}, "HistoryToggles.mode"),
        ({"disabled_nodes": 5}, "HistoryToggles.disabled_nodes"),
        ({"disabled_nodes": ["ok", 7]}, "HistoryToggles.disabled_nodes"),
        ({"node_modes": {"a": "loud"}}, "HistoryToggles.node_modes['a']"),
        ({"node_modes": ["a"]}, "HistoryToggles.node_modes"),
        ({"breaker": {"failure_ratio": 0.5}}, "HistoryToggles.breaker"),
        ({"triggers": 0.1}, "HistoryToggles.triggers"),
        ({"read_timeout_seconds": float("nan")}, "HistoryToggles.read_timeout_seconds"),
        ({"write_timeout_seconds": 0}, "HistoryToggles.write_timeout_seconds"),
        ({"flags_file": "flags.json"}, "HistoryToggles.flags_file"),
        ({"audit_file": "audit.jsonl"}, "HistoryToggles.audit_file"),
    ],
)
def test_invalid_values_in_code_raise_at_construction(
    kwargs: dict[str, object], variable: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        HistoryToggles(env={}, **kwargs)  # type: ignore[arg-type]
    assert caught.value.variable == variable


@pytest.mark.parametrize(
    ("model", "kwargs", "field"),
    [
        (BreakerSettings, {"failure_ratio": float("nan")}, "failure_ratio"),
        (BreakerSettings, {"half_open_probes": 0}, "half_open_probes"),
        (TriggerSettings, {"error_rate": float("inf")}, "error_rate"),
        (TriggerSettings, {"error_rate": 1.0}, "error_rate"),
        (TriggerSettings, {"read_p95_seconds": float("nan")}, "read_p95_seconds"),
        (TriggerSettings, {"action": "shadow"}, "action"),
        (TriggerSettings, {"cooldwon_seconds": 5}, "cooldwon_seconds"),
    ],
)
def test_settings_objects_refuse_bad_values(
    model: type[BreakerSettings | TriggerSettings], kwargs: dict[str, object], field: str
) -> None:
    with pytest.raises(ValueError) as caught:
        model(**kwargs)
    assert field in str(caught.value)


def test_a_run_skipped_by_a_switch_is_logged_at_debug_once_per_node_per_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    env = {"ORCHEO_GRAPH_CHAT_HISTORY_DISABLED_NODES": "billing"}
    toggles = HistoryToggles(env=env, clock=clock)

    def skipped() -> list[dict[str, object]]:
        return [
            r.__dict__["fields"]
            for r in caplog.records
            if r.__dict__.get("event") == "history_skipped"
        ]

    with caplog.at_level(logging.DEBUG, logger="agent_history"):
        for _ in range(5):
            toggles.decide("billing", node_enabled=True)
            toggles.decide("support", node_enabled=True)  # enabled: never logged
            toggles.decide("plain", node_enabled=False)
        assert skipped() == [
            {"node": "billing", "reason": "node_disabled"},
            {"node": "plain", "reason": "node_flag_off"},
        ]
        clock.now = 59.0
        toggles.decide("billing", node_enabled=True)
        assert len(skipped()) == 2
        env["ORCHEO_GRAPH_CHAT_HISTORY_MODE"] = "off"  # a new reason is logged at once
        toggles.decide("billing", node_enabled=True)
        clock.now = 100.0  # 41 s after billing's last line, 100 s after plain's
        toggles.decide("billing", node_enabled=True)
        toggles.decide("plain", node_enabled=False)
    assert skipped()[2:] == [
        {"node": "billing", "reason": "master_off"},
        {"node": "plain", "reason": "node_flag_off"},
    ]
