"""The rollback trigger's state machine, with a fake clock: fire, hold, probe, return."""

from __future__ import annotations

import pytest

from agent_history.toggle_config import HistoryMode, TriggerSettings
from agent_history.triggers import RollbackTrigger, TriggerKind, TriggerState


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _trigger(clock: Clock, **settings: object) -> RollbackTrigger:
    values: dict[str, object] = {"window_seconds": 10, "min_calls": 4, "cooldown_seconds": 30}
    return RollbackTrigger("sqlite", TriggerSettings(**{**values, **settings}), clock)  # type: ignore[arg-type]


def test_error_rate_fires_only_above_the_threshold_with_enough_calls() -> None:
    clock = Clock()
    trigger = _trigger(clock, error_rate=0.25)
    assert trigger.record("read", False, 0.01) == []  # 1 of 1, below min_calls
    for _ in range(3):
        assert trigger.record("write", True, 0.01) == []
    assert trigger.state is TriggerState.WATCHING  # 1 of 4 = 25%: not above 25%
    [event] = trigger.record("read", False, 0.01)  # 2 of 5 = 40%
    assert (event.state, event.trigger, event.action) == (
        TriggerState.FIRED,
        TriggerKind.ERROR_RATE,
        HistoryMode.OFF,
    )
    assert event.value == pytest.approx(0.4) and event.threshold == 0.25 and event.calls == 5
    assert trigger.restriction() == (HistoryMode.OFF, [])


def test_p95_latency_uses_the_nearest_rank_and_the_window() -> None:
    clock = Clock()
    trigger = _trigger(clock, read_p95_seconds=1.0, min_calls=20)
    for _ in range(19):
        trigger.record("read", True, 0.1)
    trigger.record("read", True, 5.0)  # 1 slow of 20: p95 is the 19th value, 0.1
    assert trigger.state is TriggerState.WATCHING
    for _ in range(40):
        trigger.record("write", True, 9.0)  # slow writes do not count against reads
    assert trigger.state is TriggerState.WATCHING
    clock.now = 11.0  # the window forgets the first twenty reads
    for _ in range(19):
        trigger.record("read", True, 0.1)
    [event] = trigger.record("read", True, 2.0) + trigger.record("read", True, 2.0)
    assert event.trigger is TriggerKind.READ_P95 and event.value == 2.0 and event.calls == 21


def test_hold_then_probe_then_return_or_fire_again() -> None:
    clock = Clock()
    trigger = _trigger(clock, write_p95_seconds=0.5, action="read_only", probe_calls=2)
    events = [e for _ in range(4) for e in trigger.record("write", True, 0.9)]
    assert [e.state for e in events] == [TriggerState.FIRED]
    assert trigger.restriction()[0] is HistoryMode.READ_ONLY
    trigger.record("write", True, 0.01)  # calls while fired change nothing
    clock.now = 29.9
    assert trigger.restriction()[0] is HistoryMode.READ_ONLY
    clock.now = 30.0
    action, [probing] = trigger.restriction()
    assert action is None and probing.state is TriggerState.PROBING
    assert trigger.record("read", True, 9.0) == []  # reads do not probe a write trigger
    [again] = trigger.record("write", True, 0.8)  # a slow probe fires again
    assert again.state is TriggerState.FIRED and again.reason == "probe_failed"
    clock.now = 60.0
    trigger.restriction()
    assert trigger.record("write", True, 0.1) == []  # one good probe of two
    [back] = trigger.record("write", True, 0.1)
    assert back.state is TriggerState.WATCHING and back.reason == "probe_ok"
    assert trigger.restriction() == (None, [])
    assert trigger.record("write", True, 0.9) == []  # a fresh window after the return


def test_disabling_the_triggers_returns_at_once() -> None:
    clock = Clock()
    trigger = _trigger(clock, error_rate=0.1)
    for _ in range(4):
        trigger.record("read", False, 0.0)
    assert trigger.state is TriggerState.FIRED
    [event] = trigger.reconfigure(TriggerSettings())
    assert event.state is TriggerState.WATCHING and event.reason == "triggers_disabled"


def test_new_thresholds_recount_the_window() -> None:
    clock = Clock()
    trigger = _trigger(clock, read_p95_seconds=10.0)
    for _ in range(3):
        trigger.record("read", True, 2.0)
    trigger.reconfigure(
        TriggerSettings(read_p95_seconds=1.0, window_seconds=10, min_calls=4, cooldown_seconds=30)
    )
    [event] = trigger.record("read", True, 2.0)
    assert event.trigger is TriggerKind.READ_P95


def test_breakers_feed_the_triggers_of_their_own_toggles_only() -> None:
    from agent_history.toggles import HistoryToggles

    clock = Clock()
    settings = TriggerSettings(read_p95_seconds=1.0, min_calls=2)
    watched = HistoryToggles(env={}, clock=clock, triggers=settings)
    bystander = HistoryToggles(env={}, clock=clock, triggers=settings)
    watched.current()
    bystander.current()
    bystander.breaker_for(object(), "sqlite")
    breaker = watched.breaker_for(object(), "sqlite")
    breaker.record_success(2.0, operation="read")
    breaker.record_success(3.0, operation="read")
    assert watched.trigger_state("sqlite") is TriggerState.FIRED
    assert bystander.trigger_state("sqlite") is TriggerState.WATCHING
    breaker.record_success()  # no duration: counts for the error rate only
