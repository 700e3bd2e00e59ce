"""The per-store circuit breaker: in memory for a cool-down when the store keeps failing."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from enum import StrEnum
from typing import Literal

from agent_history import observability as obs
from agent_history.toggle_config import BreakerSettings, ToggleConfig, settings_from_code

__all__ = ["BreakerState", "CircuitBreaker"]


class BreakerState(StrEnum):
    """Circuit breaker states."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


_GAUGE = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}

BreakerListener = Callable[[str, BreakerState, BreakerState], None]
"""Called with (backend, before, after) after each state change, outside the lock."""

Operation = Literal["read", "write"]
CallListener = Callable[[str, Operation | None, bool, float | None], None]
"""Called with (backend, operation, ok, seconds) for every recorded store call."""

MAX_WINDOW_CALLS = 10_000
"""Calls the window keeps at most (the newest), as the rollback triggers do: at 1,000
calls/s a 60 s window of every call held 60,000 entries (about 5 MB per store)."""


class CircuitBreaker:
    """Opens when the store's failure ratio over a rolling window passes a threshold.

    Closed: calls go through and outcomes are recorded. Open: no calls for the cool-down.
    Half-open: probe calls decide; ``half_open_probes`` successes close it, a failure
    opens it again for a new cool-down.
    """

    def __init__(
        self,
        *,
        failure_ratio: float = 0.5,
        min_calls: int = 5,
        window_seconds: float = 60.0,
        cooldown_seconds: float = 30.0,
        half_open_probes: int = 1,
        clock: Callable[[], float] = time.monotonic,
        backend: str = "other",
        on_change: BreakerListener | None = None,
        on_call: CallListener | None = None,
    ) -> None:
        # Validates the numbers (finite, in range): a NaN ratio would never open.
        settings = settings_from_code(
            BreakerSettings,
            "CircuitBreaker",
            failure_ratio=failure_ratio,
            min_calls=min_calls,
            window_seconds=window_seconds,
            cooldown_seconds=cooldown_seconds,
            half_open_probes=half_open_probes,
        )
        self._settings = settings
        self.backend = backend
        self._clock = clock
        self._on_change = on_change
        self._on_call = on_call
        self._lock = threading.Lock()
        self._events: deque[tuple[float, bool]] = deque()
        self._failures = 0  # of the events: a failure counts them in O(1), not by a scan
        self._state = BreakerState.CLOSED
        self._opened_at = 0.0
        self._probe_successes = 0
        obs.METRICS.set_gauge(obs.BREAKER_STATE, 0, backend=backend)

    @property
    def failure_ratio(self) -> float:
        """Failure ratio that opens the breaker."""
        return self._settings.failure_ratio

    @property
    def min_calls(self) -> int:
        """Calls in the window before the ratio counts."""
        return self._settings.min_calls

    @property
    def window_seconds(self) -> float:
        """Rolling window."""
        return self._settings.window_seconds

    @property
    def cooldown_seconds(self) -> float:
        """Time open before a probe."""
        return self._settings.cooldown_seconds

    @property
    def half_open_probes(self) -> int:
        """Successful probes that close it."""
        return self._settings.half_open_probes

    def reconfigure(self, config: ToggleConfig | BreakerSettings) -> None:
        """Apply new thresholds (state is kept)."""
        settings = config.breaker if isinstance(config, ToggleConfig) else config
        if settings is not self._settings:
            with self._lock:
                self._settings = settings

    @property
    def state(self) -> BreakerState:
        """The current state (an expired cool-down reads as half-open)."""
        with self._lock:
            changes = self._advance()
            state = self._state
        self._emit(changes)
        return state

    def allow(self) -> bool:
        """Whether a store call may be made now."""
        with self._lock:
            changes = self._advance()
            allowed = self._state is not BreakerState.OPEN
        self._emit(changes)
        return allowed

    def record_success(
        self, latency_seconds: float | None = None, *, operation: Operation | None = None
    ) -> None:
        """Record a store call that succeeded.

        Args:
            latency_seconds: How long the call took (feeds the latency triggers).
            operation: ``read`` or ``write``.
        """
        with self._lock:
            changes = self._advance()
            if self._state is BreakerState.HALF_OPEN:
                self._probe_successes += 1
                if self._probe_successes >= self._settings.half_open_probes:
                    self._forget()
                    changes += self._set(BreakerState.CLOSED)
            else:
                self._push(True)
        self._emit(changes)
        self._report_call(True, latency_seconds, operation)

    def record_failure(
        self, latency_seconds: float | None = None, *, operation: Operation | None = None
    ) -> None:
        """Record a store call that failed or timed out (arguments as `record_success`)."""
        with self._lock:
            changes = self._advance()
            if self._state is BreakerState.HALF_OPEN:
                changes += self._open()
            elif self._state is BreakerState.CLOSED:
                self._push(False)
                calls = len(self._events)
                settings = self._settings
                if calls >= settings.min_calls and self._failures / calls >= settings.failure_ratio:
                    changes += self._open()
        self._emit(changes)
        self._report_call(False, latency_seconds, operation)

    def _report_call(self, ok: bool, seconds: float | None, operation: Operation | None) -> None:
        if self._on_call is not None:
            self._on_call(self.backend, operation, ok, seconds)

    # --- under the lock --------------------------------------------------------------------

    def _set(self, state: BreakerState) -> list[tuple[BreakerState, BreakerState]]:
        if state is self._state:
            return []
        before, self._state = self._state, state
        return [(before, state)]

    def _advance(self) -> list[tuple[BreakerState, BreakerState]]:
        now = self._clock()
        changes = []
        if (
            self._state is BreakerState.OPEN
            and now - self._opened_at >= self._settings.cooldown_seconds
        ):
            self._probe_successes = 0
            changes = self._set(BreakerState.HALF_OPEN)
        while self._events and now - self._events[0][0] > self._settings.window_seconds:
            self._drop()
        return changes

    def _push(self, ok: bool) -> None:
        self._events.append((self._clock(), ok))
        if not ok:
            self._failures += 1
        if len(self._events) > MAX_WINDOW_CALLS:
            self._drop()

    def _drop(self) -> None:
        if not self._events.popleft()[1]:
            self._failures -= 1

    def _forget(self) -> None:
        self._events.clear()
        self._failures = 0

    def _open(self) -> list[tuple[BreakerState, BreakerState]]:
        self._opened_at = self._clock()
        self._forget()
        return self._set(BreakerState.OPEN)

    # --- outside the lock (logging and audit may do I/O) ------------------------------------

    def _emit(self, changes: list[tuple[BreakerState, BreakerState]]) -> None:
        for before, after in changes:
            obs.METRICS.set_gauge(obs.BREAKER_STATE, _GAUGE[after], backend=self.backend)
            level = logging.INFO if after is BreakerState.CLOSED else logging.WARNING
            obs.log_event(f"breaker_{after.value}", level=level, backend=self.backend)
            if self._on_change is not None:
                self._on_change(self.backend, before, after)
