"""Automatic rollback triggers: store error rate and p95 latency per backend.

Beside the per-store circuit breaker, a trigger watches every store call of a backend over
a sliding window: the node records each attempt's outcome and duration on the store's
breaker, which passes it on to the triggers of the toggles that made it. When the error
rate or the read or write p95 duration passes its threshold, the trigger **fires**: the
backend's runs take the configured action (``off`` or ``read_only``) for the cool-down.
Then it **probes**: runs go back to the configured mode, and the next store calls of the
kind that fired decide: ``probe_calls`` good ones in a row **return** to watching, a bad
one fires again.

p95 is the nearest-rank percentile: it exceeds a threshold exactly when more than
``n - ceil(0.95 n)`` of the window's ``n`` durations do, so the window keeps a count of
slow calls instead of sorting on every call.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from agent_history import observability as obs
from agent_history.audit import record_change
from agent_history.toggle_config import HistoryMode, TriggerSettings

__all__ = [
    "RollbackTrigger",
    "RollbackTriggers",
    "TriggerEvent",
    "TriggerKind",
    "TriggerState",
]

Operation = Literal["read", "write"]
_MAX_WINDOW_CALLS = 10_000  # memory bound at high call rates; the newest calls are kept


class TriggerState(StrEnum):
    """Where a backend's trigger stands."""

    WATCHING = "watching"
    PROBING = "probing"
    FIRED = "fired"


class TriggerKind(StrEnum):
    """What fired."""

    ERROR_RATE = "error_rate"
    READ_P95 = "read_p95"
    WRITE_P95 = "write_p95"


_LATENCY_CHECKS: tuple[tuple[Operation, TriggerKind], ...] = (
    ("read", TriggerKind.READ_P95),
    ("write", TriggerKind.WRITE_P95),
)
_GAUGE = {TriggerState.WATCHING: 0, TriggerState.PROBING: 1, TriggerState.FIRED: 2}


@dataclass(frozen=True, slots=True)
class TriggerEvent:
    """A state change of one backend's trigger."""

    backend: str
    state: TriggerState
    """The new state."""
    trigger: TriggerKind
    action: HistoryMode
    reason: str
    """``threshold_exceeded``, ``cooldown_over``, ``probe_failed``, ``probe_ok`` or
    ``triggers_disabled``."""
    value: float | None = None
    threshold: float | None = None
    calls: int = 0


def _p95_exceeds(slow: int, calls: int) -> bool:
    return calls > 0 and slow > calls - math.ceil(0.95 * calls)


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


class RollbackTrigger:
    """The trigger of one backend; thread-safe, clock injectable."""

    def __init__(
        self,
        backend: str,
        settings: TriggerSettings,
        clock: Callable[[], float],
    ) -> None:
        self.backend = backend
        self._settings = settings
        self._clock = clock
        self._lock = threading.Lock()
        self._window: deque[tuple[float, Operation | None, bool, float | None]] = deque()
        self._counts = {"calls": 0, "failures": 0, "read": 0, "write": 0}
        self._slow = {"read": 0, "write": 0}
        self._state = TriggerState.WATCHING
        self._fired: TriggerKind = TriggerKind.ERROR_RATE
        self._fired_at = 0.0
        self._action = settings.action
        self._probes_ok = 0

    @property
    def state(self) -> TriggerState:
        """The state now (an expired cool-down reads as probing)."""
        with self._lock:
            self._advance()
            return self._state

    # --- thresholds ------------------------------------------------------------------------

    def _threshold(self, operation: Operation) -> float | None:
        s = self._settings
        return s.read_p95_seconds if operation == "read" else s.write_p95_seconds

    def _is_slow(self, operation: Operation | None, seconds: float | None) -> bool:
        if operation is None or seconds is None:
            return False
        threshold = self._threshold(operation)
        return threshold is not None and seconds > threshold

    def reconfigure(self, settings: TriggerSettings) -> list[TriggerEvent]:
        """Apply new settings; the window's slow counts follow new thresholds."""
        with self._lock:
            if settings == self._settings:
                return []
            self._settings = settings
            self._slow = {"read": 0, "write": 0}
            for _, operation, _, seconds in self._window:
                if operation is not None and self._is_slow(operation, seconds):
                    self._slow[operation] += 1
            if not settings.enabled and self._state is not TriggerState.WATCHING:
                return [self._return("triggers_disabled")]
            return []

    # --- recording -------------------------------------------------------------------------

    def record(
        self, operation: Operation | None, ok: bool, seconds: float | None
    ) -> list[TriggerEvent]:
        """Record one store call; returns the state changes it caused.

        A call whose operation or duration is unknown counts for the error rate only.
        """
        with self._lock:
            events = self._advance()
            if self._state is TriggerState.WATCHING:
                self._push(operation, ok, seconds)
                fired = self._evaluate()
                if fired is not None:
                    events.append(fired)
            elif self._state is TriggerState.PROBING:
                probe = self._probe(operation, ok, seconds)
                if probe is not None:
                    events.append(probe)
            return events

    def restriction(self) -> tuple[HistoryMode | None, list[TriggerEvent]]:
        """The mode imposed now (None when the configured mode applies) and changes."""
        with self._lock:
            events = self._advance()
            action = self._action if self._state is TriggerState.FIRED else None
            return action, events

    # --- under the lock --------------------------------------------------------------------

    def _push(self, operation: Operation | None, ok: bool, seconds: float | None) -> None:
        now = self._clock()
        self._window.append((now, operation, ok, seconds))
        self._count(operation, ok, seconds, +1)
        if len(self._window) > _MAX_WINDOW_CALLS:
            self._drop()
        self._expire(now)

    def _count(
        self, operation: Operation | None, ok: bool, seconds: float | None, sign: int
    ) -> None:
        self._counts["calls"] += sign
        if not ok:
            self._counts["failures"] += sign
        if operation is not None and seconds is not None:
            self._counts[operation] += sign
            if self._is_slow(operation, seconds):
                self._slow[operation] += sign

    def _drop(self) -> None:
        _, operation, ok, seconds = self._window.popleft()
        self._count(operation, ok, seconds, -1)

    def _expire(self, now: float) -> None:
        horizon = now - self._settings.window_seconds
        while self._window and self._window[0][0] < horizon:
            self._drop()

    def _clear(self) -> None:
        self._window.clear()
        self._counts = {"calls": 0, "failures": 0, "read": 0, "write": 0}
        self._slow = {"read": 0, "write": 0}

    def _evaluate(self) -> TriggerEvent | None:
        s = self._settings
        calls = self._counts["calls"]
        if s.error_rate is not None and calls >= s.min_calls:
            rate = self._counts["failures"] / calls
            if rate > s.error_rate:
                return self._fire(TriggerKind.ERROR_RATE, rate, s.error_rate, calls)
        for op, kind in _LATENCY_CHECKS:
            threshold = self._threshold(op)
            count = self._counts[op]
            if threshold is None or count < s.min_calls:
                continue
            if _p95_exceeds(self._slow[op], count):
                p95 = _p95([d for _, o, _, d in self._window if o == op and d is not None])
                return self._fire(kind, p95, threshold, count)
        return None

    def _fire(
        self, kind: TriggerKind, value: float, threshold: float, calls: int, reason: str = ""
    ) -> TriggerEvent:
        self._state = TriggerState.FIRED
        self._fired = kind
        self._fired_at = self._clock()
        self._action = self._settings.action
        self._probes_ok = 0
        self._clear()
        return TriggerEvent(
            self.backend,
            TriggerState.FIRED,
            kind,
            self._action,
            reason or "threshold_exceeded",
            value,
            threshold,
            calls,
        )

    def _advance(self) -> list[TriggerEvent]:
        if (
            self._state is TriggerState.FIRED
            and self._clock() - self._fired_at >= self._settings.cooldown_seconds
        ):
            self._state = TriggerState.PROBING
            self._probes_ok = 0
            return [
                TriggerEvent(
                    self.backend, TriggerState.PROBING, self._fired, self._action, "cooldown_over"
                )
            ]
        if self._state is TriggerState.WATCHING and self._window:
            self._expire(self._clock())
        return []

    def _probe(
        self, operation: Operation | None, ok: bool, seconds: float | None
    ) -> TriggerEvent | None:
        kind = self._fired
        if kind is not TriggerKind.ERROR_RATE and seconds is None:
            return None
        if kind is TriggerKind.READ_P95 and operation != "read":
            return None
        if kind is TriggerKind.WRITE_P95 and operation != "write":
            return None
        threshold = self._threshold(operation) if operation is not None else None
        slow = kind is not TriggerKind.ERROR_RATE and self._is_slow(operation, seconds)
        if ok and not slow:
            self._probes_ok += 1
            if self._probes_ok >= self._settings.probe_calls:
                return self._return("probe_ok")
            return None
        if kind is TriggerKind.ERROR_RATE:
            return self._fire(kind, 1.0, self._settings.error_rate or 0.0, 1, "probe_failed")
        return self._fire(kind, seconds or 0.0, threshold or 0.0, 1, "probe_failed")

    def _return(self, reason: str) -> TriggerEvent:
        self._state = TriggerState.WATCHING
        self._probes_ok = 0
        self._clear()
        return TriggerEvent(self.backend, TriggerState.WATCHING, self._fired, self._action, reason)


class RollbackTriggers:
    """One `RollbackTrigger` per backend, fed by the breakers of one `HistoryToggles`.

    Args:
        clock: Monotonic clock (injectable for tests).
        configured_mode: The mode in force without triggers (for logs and the audit).
        audit_file: The audit file in force, if any.
    """

    def __init__(
        self,
        clock: Callable[[], float],
        configured_mode: Callable[[], HistoryMode],
        audit_file: Callable[[], str | None],
    ) -> None:
        self._clock = clock
        self._configured_mode = configured_mode
        self._audit_file = audit_file
        self._settings = TriggerSettings()
        self._lock = threading.Lock()
        self._triggers: dict[str, RollbackTrigger] = {}

    @property
    def enabled(self) -> bool:
        """True when a threshold is set."""
        return self._settings.enabled

    def reconfigure(self, settings: TriggerSettings) -> None:
        """Apply settings to every backend's trigger."""
        if settings == self._settings:
            return
        self._settings = settings
        with self._lock:
            triggers = list(self._triggers.values())
        for trigger in triggers:
            self._emit(trigger.reconfigure(settings))

    def trigger(self, backend: str) -> RollbackTrigger:
        """The trigger of ``backend`` (created on first use)."""
        with self._lock:
            found = self._triggers.get(backend)
            if found is None:
                found = RollbackTrigger(backend, self._settings, self._clock)
                self._triggers[backend] = found
            return found

    def restriction(self, backend: str) -> HistoryMode | None:
        """The mode a fired trigger imposes on ``backend`` now, or None."""
        if not self._settings.enabled:
            return None
        with self._lock:
            found = self._triggers.get(backend)
        if found is None:
            return None
        action, events = found.restriction()
        self._emit(events)
        return action

    def record(
        self, backend: str, operation: Operation | None, ok: bool, seconds: float | None
    ) -> None:
        """Record one store call of ``backend`` (operation and duration when known)."""
        if not self._settings.enabled:
            return
        self._emit(self.trigger(backend).record(operation, ok, seconds))

    def _emit(self, events: list[TriggerEvent]) -> None:
        for event in events:
            obs.METRICS.set_gauge(obs.TRIGGER_STATE, _GAUGE[event.state], backend=event.backend)
            if event.state is TriggerState.PROBING:
                obs.log_event(
                    "rollback_trigger_probing",
                    level=logging.INFO,
                    backend=event.backend,
                    trigger=event.trigger.value,
                )
                continue
            fired = event.state is TriggerState.FIRED
            configured = self._configured_mode()
            if fired:
                obs.METRICS.inc(
                    obs.TRIGGER_FIRES,
                    backend=event.backend,
                    trigger=event.trigger.value,
                    action=event.action.value,
                )
            else:
                obs.METRICS.inc(
                    obs.TRIGGER_RETURNS, backend=event.backend, trigger=event.trigger.value
                )
            obs.log_event(
                "rollback_trigger_fired" if fired else "rollback_trigger_returned",
                level=logging.WARNING if fired else logging.INFO,
                backend=event.backend,
                trigger=event.trigger.value,
                action=event.action.value,
                reason=event.reason,
                value=None if event.value is None else round(event.value, 6),
                threshold=event.threshold,
                cooldown_seconds=self._settings.cooldown_seconds if fired else None,
            )
            record_change(
                "trigger",
                source="trigger",
                before=configured if fired else event.action,
                after=event.action if fired else configured,
                audit_file=self._audit_file(),
                backend=event.backend,
                trigger=event.trigger.value,
                reason=event.reason,
                value=event.value,
                threshold=event.threshold,
                calls=event.calls or None,
            )
