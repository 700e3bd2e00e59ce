"""Rollout and rollback switches and the circuit breaker: one history decision per run.

Precedence, strongest first:

1. the node's own ``use_graph_chat_history=False``: the store is never touched;
2. the breaker of the node's store being open: in-memory, no store call;
3. a global ``off``, from the flags file or the environment;
4. ``disabled_nodes``: the union of the environment's and the file's lists;
5. ``node_modes[node]`` from the flags file;
6. the global mode: the flags file's ``mode`` when the file sets one, else
   ``ORCHEO_GRAPH_CHAT_HISTORY_MODE``, else ``read_write``.

Everything is read on each run: the environment (a dict lookup) and a ``stat`` of the
flags file, re-parsed only when its modification time or size changes. A bad value at
run time never fails a run: the last good configuration stays in force and a warning is
logged. `load_toggle_config` is the strict variant for start-up and ``doctor``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import tomllib
import weakref
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from agent_history import observability as obs
from agent_history.errors import ConfigError

__all__ = [
    "DEFAULT_TOGGLES",
    "BreakerState",
    "CircuitBreaker",
    "FlagsFile",
    "HistoryDecision",
    "HistoryMode",
    "HistoryToggles",
    "ToggleConfig",
    "load_toggle_config",
]

_PREFIX = "ORCHEO_GRAPH_CHAT_HISTORY_"
MODE_VAR = _PREFIX + "MODE"
DISABLED_NODES_VAR = _PREFIX + "DISABLED_NODES"
FLAGS_FILE_VAR = _PREFIX + "FLAGS_FILE"


class HistoryMode(StrEnum):
    """What nodes with history enabled may do."""

    READ_WRITE = "read_write"
    READ_ONLY = "read_only"
    SHADOW = "shadow"
    OFF = "off"


class BreakerState(StrEnum):
    """Circuit breaker states."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class HistoryDecision:
    """What one run of one node may do with the store."""

    mode: HistoryMode
    read: bool
    write: bool
    payload_from_store: bool
    reason: str

    @property
    def enabled(self) -> bool:
        """True when the run touches the store at all."""
        return self.read or self.write


@dataclass(frozen=True, slots=True)
class ToggleConfig:
    """One snapshot of every switch."""

    mode: HistoryMode = HistoryMode.READ_WRITE
    disabled_nodes: frozenset[str] = frozenset()
    node_modes: Mapping[str, HistoryMode] = field(default_factory=dict)
    breaker_failure_ratio: float = 0.5
    breaker_min_calls: int = 5
    breaker_window_seconds: float = 60.0
    breaker_cooldown_seconds: float = 30.0
    breaker_half_open_probes: int = 1
    read_timeout_seconds: float = 2.0
    write_timeout_seconds: float = 5.0
    flags_file: str | None = None


_NUMERIC: dict[str, tuple[str, type, float]] = {
    # variable suffix: (field, type, exclusive lower bound)
    "BREAKER_FAILURE_RATIO": ("breaker_failure_ratio", float, 0.0),
    "BREAKER_MIN_CALLS": ("breaker_min_calls", int, 0),
    "BREAKER_WINDOW_SECONDS": ("breaker_window_seconds", float, 0.0),
    "BREAKER_COOLDOWN_SECONDS": ("breaker_cooldown_seconds", float, 0.0),
    "BREAKER_HALF_OPEN_PROBES": ("breaker_half_open_probes", int, 0),
    "READ_TIMEOUT_SECONDS": ("read_timeout_seconds", float, 0.0),
    "WRITE_TIMEOUT_SECONDS": ("write_timeout_seconds", float, 0.0),
}


def _mode(value: Any, variable: str) -> HistoryMode:
    text = str(value).strip().lower()
    try:
        return HistoryMode(text)
    except ValueError:
        allowed = ", ".join(m.value for m in HistoryMode)
        raise ConfigError(variable, f"must be one of {allowed} (got {value!r})") from None


def _names(value: Any) -> frozenset[str]:
    items = value.split(",") if isinstance(value, str) else list(value or [])
    return frozenset(str(item).strip() for item in items if str(item).strip())


def _env_config(env: Mapping[str, str]) -> ToggleConfig:
    values: dict[str, Any] = {}
    if env.get(MODE_VAR, "").strip():
        values["mode"] = _mode(env[MODE_VAR], MODE_VAR)
    values["disabled_nodes"] = _names(env.get(DISABLED_NODES_VAR, ""))
    for suffix, (name, kind, floor) in _NUMERIC.items():
        raw = env.get(_PREFIX + suffix, "").strip()
        if not raw:
            continue
        try:
            number = kind(raw)
        except ValueError:
            raise ConfigError(_PREFIX + suffix, f"must be a number (got {raw!r})") from None
        if number <= floor or (suffix == "BREAKER_FAILURE_RATIO" and number > 1):
            raise ConfigError(_PREFIX + suffix, f"out of range (got {raw!r})")
        values[name] = number
    flags = env.get(FLAGS_FILE_VAR, "").strip()
    if flags:
        if not os.path.isabs(flags):
            raise ConfigError(FLAGS_FILE_VAR, f"must be an absolute path (got {flags!r})")
        values["flags_file"] = flags
    return ToggleConfig(**values)


def _parse_flags(path: str, text: str) -> dict[str, Any]:
    data = tomllib.loads(text) if path.endswith(".toml") else json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("the flags file must hold an object")
    out: dict[str, Any] = {}
    if data.get("mode") is not None:
        out["mode"] = _mode(data["mode"], FLAGS_FILE_VAR + " mode")
    out["disabled_nodes"] = _names(data.get("disabled_nodes", ()))
    node_modes: dict[str, HistoryMode] = {}
    for name, mode in dict(data.get("node_modes") or {}).items():
        node_modes[str(name)] = _mode(mode, f"{FLAGS_FILE_VAR} node_modes.{name}")
    for name, spec in dict(data.get("nodes") or {}).items():
        if isinstance(spec, Mapping) and spec.get("mode") is not None:
            node_modes[str(name)] = _mode(spec["mode"], f"{FLAGS_FILE_VAR} nodes.{name}.mode")
    out["node_modes"] = node_modes
    return out


def _merge_file(config: ToggleConfig, flags: dict[str, Any]) -> ToggleConfig:
    # The file's mode overrides the environment's, except that "off" from either wins.
    mode = flags.get("mode", config.mode)
    if config.mode is HistoryMode.OFF:
        mode = HistoryMode.OFF
    return replace(
        config,
        mode=mode,
        disabled_nodes=config.disabled_nodes | flags.get("disabled_nodes", frozenset()),
        node_modes=flags.get("node_modes", {}),
    )


def load_toggle_config(env: Mapping[str, str] | None = None) -> ToggleConfig:
    """Read every switch strictly; raises `ConfigError` naming the bad variable."""
    source = os.environ if env is None else env
    config = _env_config(source)
    if config.flags_file:
        try:
            text = Path(config.flags_file).read_text(encoding="utf-8")
            config = _merge_file(config, _parse_flags(config.flags_file, text))
        except ConfigError:
            raise
        except (OSError, ValueError) as exc:
            raise ConfigError(FLAGS_FILE_VAR, f"cannot use {config.flags_file}: {exc}") from None
    return config


class FlagsFile:
    """A flags file re-read when it changes; a bad version keeps the last good flags."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._signature: tuple[int, int] | None = None
        self._flags: dict[str, Any] = {}

    def flags(self) -> dict[str, Any]:
        """The current flags (the last good ones if the file is unreadable or invalid)."""
        try:
            stat = os.stat(self.path)
        except OSError as exc:
            if self._signature != (-1, -1):
                self._signature = (-1, -1)
                obs.log_event(
                    "flags_file_invalid", path=self.path, error=type(exc).__name__,
                    action="keeping last good flags",
                )  # fmt: skip
            return self._flags
        signature = (stat.st_mtime_ns, stat.st_size)
        if signature != self._signature:
            self._signature = signature
            try:
                text = Path(self.path).read_text(encoding="utf-8")
                self._flags = _parse_flags(self.path, text)
                obs.log_event("flags_file_loaded", level=logging.INFO, path=self.path)
            except (OSError, ValueError, ConfigError) as exc:
                obs.log_event(
                    "flags_file_invalid", path=self.path, error=obs.describe_error(exc),
                    action="keeping last good flags",
                )  # fmt: skip
        return self._flags


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
    ) -> None:
        self.failure_ratio = failure_ratio
        self.min_calls = min_calls
        self.window_seconds = window_seconds
        self.cooldown_seconds = cooldown_seconds
        self.half_open_probes = half_open_probes
        self.backend = backend
        self._clock = clock
        self._lock = threading.Lock()
        self._events: deque[tuple[float, bool]] = deque()
        self._state = BreakerState.CLOSED
        self._opened_at = 0.0
        self._probe_successes = 0
        obs.METRICS.set_gauge(obs.BREAKER_STATE, 0, backend=backend)

    def reconfigure(self, config: ToggleConfig) -> None:
        """Apply new thresholds (state is kept)."""
        with self._lock:
            self.failure_ratio = config.breaker_failure_ratio
            self.min_calls = config.breaker_min_calls
            self.window_seconds = config.breaker_window_seconds
            self.cooldown_seconds = config.breaker_cooldown_seconds
            self.half_open_probes = config.breaker_half_open_probes

    @property
    def state(self) -> BreakerState:
        """The current state (an expired cool-down reads as half-open)."""
        with self._lock:
            self._advance()
            return self._state

    def _set(self, state: BreakerState) -> None:
        if state is self._state:
            return
        self._state = state
        gauge = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}
        obs.METRICS.set_gauge(obs.BREAKER_STATE, gauge[state], backend=self.backend)
        level = logging.INFO if state is BreakerState.CLOSED else logging.WARNING
        obs.log_event(f"breaker_{state.value}", level=level, backend=self.backend)

    def _advance(self) -> None:
        now = self._clock()
        if self._state is BreakerState.OPEN and now - self._opened_at >= self.cooldown_seconds:
            self._probe_successes = 0
            self._set(BreakerState.HALF_OPEN)
        while self._events and now - self._events[0][0] > self.window_seconds:
            self._events.popleft()

    def allow(self) -> bool:
        """Whether a store call may be made now."""
        with self._lock:
            self._advance()
            return self._state is not BreakerState.OPEN

    def _open(self) -> None:
        self._opened_at = self._clock()
        self._events.clear()
        self._set(BreakerState.OPEN)

    def record_success(self) -> None:
        """Record a store call that succeeded."""
        with self._lock:
            self._advance()
            if self._state is BreakerState.HALF_OPEN:
                self._probe_successes += 1
                if self._probe_successes >= self.half_open_probes:
                    self._events.clear()
                    self._set(BreakerState.CLOSED)
                return
            self._events.append((self._clock(), True))

    def record_failure(self) -> None:
        """Record a store call that failed or timed out."""
        with self._lock:
            self._advance()
            if self._state is BreakerState.HALF_OPEN:
                self._open()
                return
            if self._state is BreakerState.OPEN:
                return
            self._events.append((self._clock(), False))
            failures = sum(1 for _, ok in self._events if not ok)
            calls = len(self._events)
            if calls >= self.min_calls and failures / calls >= self.failure_ratio:
                self._open()


class HistoryToggles:
    """Reads the switches on every run and answers what a node may do."""

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._env = env
        self._clock = clock
        self._lock = threading.Lock()
        self._env_cache: tuple[tuple[str, ...], ToggleConfig] | None = None
        self._last_good = ToggleConfig()
        self._flags: FlagsFile | None = None
        self._breakers: weakref.WeakKeyDictionary[Any, CircuitBreaker] = weakref.WeakKeyDictionary()
        self._breakers_by_id: dict[int, CircuitBreaker] = {}

    def _env_snapshot(self) -> ToggleConfig:
        source = os.environ if self._env is None else self._env
        raw = tuple(source.get(name, "") for name in _watched_variables())
        with self._lock:
            if self._env_cache is not None and self._env_cache[0] == raw:
                return self._env_cache[1]
            try:
                config = _env_config(source)
                self._last_good = config
            except ConfigError as exc:
                obs.log_event(
                    "toggle_config_invalid", variable=exc.variable, error=exc.problem,
                    action="keeping last good configuration",
                )  # fmt: skip
                config = self._last_good
            self._env_cache = (raw, config)
            return config

    def current(self) -> ToggleConfig:
        """The switches in force now."""
        config = self._env_snapshot()
        if not config.flags_file:
            return config
        with self._lock:
            if self._flags is None or self._flags.path != config.flags_file:
                self._flags = FlagsFile(config.flags_file)
            flags = self._flags.flags()
        return _merge_file(config, flags)

    def decide(
        self, node_name: str, *, node_enabled: bool, breaker: CircuitBreaker | None = None
    ) -> HistoryDecision:
        """What ``node_name`` may do on this run."""
        if not node_enabled:
            return HistoryDecision(HistoryMode.OFF, False, False, False, "node_flag_off")
        config = self.current()
        if config.mode is HistoryMode.OFF:
            return HistoryDecision(HistoryMode.OFF, False, False, False, "master_off")
        if node_name in config.disabled_nodes:
            return HistoryDecision(HistoryMode.OFF, False, False, False, "node_disabled")
        mode = config.node_modes.get(node_name, config.mode)
        if mode is HistoryMode.OFF:
            return HistoryDecision(mode, False, False, False, "node_mode_off")
        if breaker is not None:
            breaker.reconfigure(config)
            if not breaker.allow():
                return HistoryDecision(mode, False, False, False, "breaker_open")
        reason = f"mode:{mode.value}"
        if mode is HistoryMode.READ_ONLY:
            return HistoryDecision(mode, True, False, True, reason)
        if mode is HistoryMode.SHADOW:
            return HistoryDecision(mode, True, True, False, reason)
        return HistoryDecision(mode, True, True, True, reason)

    def breaker_for(self, store: object, backend: str = "other") -> CircuitBreaker:
        """The breaker of ``store`` (one per store object)."""
        with self._lock:
            try:
                found = self._breakers.get(store)
            except TypeError:
                found = self._breakers_by_id.get(id(store))
            if found is not None:
                return found
            config = self._env_cache[1] if self._env_cache else self._last_good
            breaker = CircuitBreaker(
                failure_ratio=config.breaker_failure_ratio,
                min_calls=config.breaker_min_calls,
                window_seconds=config.breaker_window_seconds,
                cooldown_seconds=config.breaker_cooldown_seconds,
                half_open_probes=config.breaker_half_open_probes,
                clock=self._clock,
                backend=backend,
            )
            try:
                self._breakers[store] = breaker
            except TypeError:
                self._breakers_by_id[id(store)] = breaker
            return breaker


def _watched_variables() -> tuple[str, ...]:
    return (MODE_VAR, DISABLED_NODES_VAR, FLAGS_FILE_VAR, *(_PREFIX + s for s in _NUMERIC))


DEFAULT_TOGGLES = HistoryToggles()
"""The process-wide toggles, reading ``os.environ`` live."""
