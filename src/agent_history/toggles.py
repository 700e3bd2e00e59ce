"""Rollout and rollback switches: one history decision per run.

Precedence, strongest first:

1. the node's own ``use_graph_chat_history=False``: the store is never touched;
2. the breaker of the node's store being open: in-memory, no store call;
3. a global ``off``, from the flags file, the code or the environment;
4. ``disabled_nodes``: the union of the environment's, the code's and the file's lists;
5. ``node_modes[node]``: the file's, else the code's;
6. the global mode: the flags file's, else the code's, else
   ``ORCHEO_GRAPH_CHAT_HISTORY_MODE``, else ``read_write``;
7. a fired automatic rollback trigger of the store's backend narrows the result to its
   action (``off``, or no writes for ``read_only``).

Everything is read on each run: the environment (a dict lookup) and a ``stat`` of the
flags file, re-read only when it changes. A bad value at run time never fails a run:
the last good configuration stays in force and a warning is logged once.
`load_toggle_config` is the strict variant for start-up (`HistoryToggles.check`, called
when a node, middleware or hook is made) and ``doctor``. Values passed in code
(``HistoryToggles(mode="read_only")``) are checked when the object is made.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from os import PathLike
from typing import Any, Literal

from agent_history import observability as obs
from agent_history.audit import record_change
from agent_history.breaker import BreakerState, CircuitBreaker
from agent_history.errors import ConfigError
from agent_history.flags_file import (
    FlagsFile,
    FlagsFileError,
    FlagsFileSchema,
    merge_flags,
    read_flags_file,
)
from agent_history.toggle_config import (
    AUDIT_FILE_VAR,
    DISABLED_NODES_VAR,
    FLAGS_FILE_VAR,
    MODE_VAR,
    BreakerSettings,
    HistoryMode,
    TimeBudgets,
    ToggleConfig,
    TriggerSettings,
    absolute_path,
    env_config,
    flags_file_path,
    parse_mode,
    parse_names,
    settings_from_code,
    watched_variables,
)
from agent_history.triggers import RollbackTriggers, TriggerState

__all__ = [
    "AUDIT_FILE_VAR",
    "DEFAULT_TOGGLES",
    "DISABLED_NODES_VAR",
    "FLAGS_FILE_VAR",
    "MODE_VAR",
    "BreakerSettings",
    "BreakerState",
    "CircuitBreaker",
    "FlagsFile",
    "HistoryDecision",
    "HistoryMode",
    "HistoryToggles",
    "ModeName",
    "ToggleConfig",
    "TriggerSettings",
    "TriggerState",
    "load_toggle_config",
]

ModeName = Literal["read_write", "read_only", "shadow", "off"]
SKIP_LOG_INTERVAL_SECONDS = 60.0


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


def load_toggle_config(env: Mapping[str, str] | None = None) -> ToggleConfig:
    """Read every switch strictly; raises `ConfigError` naming the bad variable.

    An unusable flags file (missing, not a regular file, too large, not valid JSON or
    TOML, or not matching the schema) is reported with its path and the problem.
    """
    source = os.environ if env is None else env
    config = env_config(source)
    return merge_flags(config, _read_flags_file(config)) if config.flags_file else config


def _read_flags_file(config: ToggleConfig) -> FlagsFileSchema:
    """``config``'s flags file read strictly (`ConfigError` naming the file)."""
    assert config.flags_file is not None
    try:
        return read_flags_file(config.flags_file)
    except FlagsFileError as exc:
        raise ConfigError(FLAGS_FILE_VAR, f"{config.flags_file}: {exc}") from None
    except OSError as exc:
        problem = exc.strerror or type(exc).__name__
        raise ConfigError(FLAGS_FILE_VAR, f"{config.flags_file}: {problem}") from None


def _watched(source: Mapping[str, str]) -> tuple[str, ...]:
    """The watched variables' values: the key of the environment's cached configuration."""
    return tuple(source.get(name, "") for name in watched_variables())


@dataclass(frozen=True, slots=True)
class _CodeValues:
    """Switches passed in code; None means "not set here"."""

    mode: HistoryMode | None = None
    disabled_nodes: frozenset[str] = frozenset()
    node_modes: Mapping[str, HistoryMode] | None = None
    breaker: BreakerSettings | None = None
    triggers: TriggerSettings | None = None
    budgets: dict[str, float] | None = None
    flags_file: str | None = None
    audit_file: str | None = None

    @property
    def given(self) -> bool:
        return self != _CodeValues()

    def apply(self, config: ToggleConfig) -> ToggleConfig:
        if not self.given:
            return config
        mode = config.mode
        if self.mode is not None and config.mode is not HistoryMode.OFF:
            mode = self.mode  # "off" from the environment still wins
        return config.with_changes(
            mode=mode,
            disabled_nodes=config.disabled_nodes | self.disabled_nodes,
            node_modes={**config.node_modes, **(self.node_modes or {})},
            breaker=self.breaker or config.breaker,
            triggers=self.triggers or config.triggers,
            flags_file=self.flags_file or config.flags_file,
            audit_file=self.audit_file or config.audit_file,
            **(self.budgets or {}),
        )


def _code_values(
    mode: HistoryMode | ModeName | None,
    disabled_nodes: Iterable[str] | str | None,
    node_modes: Mapping[str, HistoryMode | ModeName] | None,
    breaker: BreakerSettings | None,
    triggers: TriggerSettings | None,
    read_timeout_seconds: float | None,
    write_timeout_seconds: float | None,
    flags_file: str | PathLike[str] | None,
    audit_file: str | PathLike[str] | None,
) -> _CodeValues:
    where = "HistoryToggles"
    names: frozenset[str] = frozenset()
    if disabled_nodes is not None:
        listed = disabled_nodes
        if not isinstance(listed, str | list | tuple | set | frozenset):
            listed = list(listed) if isinstance(listed, Iterable) else listed
        names = parse_names(listed, f"{where}.disabled_nodes")
    modes: dict[str, HistoryMode] | None = None
    if node_modes is not None:
        if not isinstance(node_modes, Mapping):
            raise ConfigError(f"{where}.node_modes", "must be a mapping of node name to mode")
        modes = {}
        for name, value in node_modes.items():
            if not isinstance(name, str) or not name.strip():
                raise ConfigError(f"{where}.node_modes", f"invalid node name {name!r}")
            modes[name.strip()] = parse_mode(value, f"{where}.node_modes[{name!r}]")
    if breaker is not None and not isinstance(breaker, BreakerSettings):
        raise ConfigError(f"{where}.breaker", "must be a BreakerSettings")
    if triggers is not None and not isinstance(triggers, TriggerSettings):
        raise ConfigError(f"{where}.triggers", "must be a TriggerSettings")
    budgets: dict[str, float] | None = None
    given = {
        k: v
        for k, v in (
            ("read_timeout_seconds", read_timeout_seconds),
            ("write_timeout_seconds", write_timeout_seconds),
        )
        if v is not None
    }
    if given:
        checked = settings_from_code(TimeBudgets, where, **given)
        budgets = {k: getattr(checked, k) for k in given}
    return _CodeValues(
        mode=parse_mode(mode, f"{where}.mode") if mode is not None else None,
        disabled_nodes=names,
        node_modes=modes,
        breaker=breaker,
        triggers=triggers,
        budgets=budgets,
        flags_file=flags_file_path(flags_file, f"{where}.flags_file"),
        audit_file=absolute_path(audit_file, f"{where}.audit_file"),
    )


def _effective(config: ToggleConfig) -> dict[str, Any]:
    """The switches whose changes are audited."""
    return {
        "mode": config.mode,
        "disabled_nodes": config.disabled_nodes,
        "node_modes": dict(config.node_modes),
    }


_OFF = {
    reason: HistoryDecision(HistoryMode.OFF, False, False, False, reason)
    for reason in ("node_flag_off", "master_off", "node_disabled", "node_mode_off", "trigger_off")
}


class HistoryToggles:
    """Reads the switches on every run and answers what a node may do.

    Args:
        env: The environment to read (``os.environ``, live, when None).
        clock: Monotonic clock for the breakers, triggers and log pacing.
        mode: Global mode in code (overrides the environment's, except its ``off``).
        disabled_nodes: Nodes forced in memory (added to the environment's list).
        node_modes: Per-node modes.
        breaker: Breaker thresholds (instead of the environment's).
        triggers: Automatic rollback triggers (instead of the environment's).
        read_timeout_seconds: Budget of a tail read.
        write_timeout_seconds: Budget of one append attempt.
        flags_file: Absolute path of a flags file.
        audit_file: Absolute path of the audit file.

    Raises:
        ConfigError: A value passed in code is invalid (named ``HistoryToggles.<field>``).
    """

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        *,
        mode: HistoryMode | ModeName | None = None,
        disabled_nodes: Iterable[str] | str | None = None,
        node_modes: Mapping[str, HistoryMode | ModeName] | None = None,
        breaker: BreakerSettings | None = None,
        triggers: TriggerSettings | None = None,
        read_timeout_seconds: float | None = None,
        write_timeout_seconds: float | None = None,
        flags_file: str | PathLike[str] | None = None,
        audit_file: str | PathLike[str] | None = None,
    ) -> None:
        self._code = _code_values(
            mode,
            disabled_nodes,
            node_modes,
            breaker,
            triggers,
            read_timeout_seconds,
            write_timeout_seconds,
            flags_file,
            audit_file,
        )
        self._env = env
        self._clock = clock
        self._lock = threading.Lock()
        self._env_cache: tuple[tuple[str, ...], ToggleConfig] | None = None
        self._last_good = self._code.apply(ToggleConfig())
        self._flags: FlagsFile | None = None
        self._merged: tuple[ToggleConfig, FlagsFileSchema | None, ToggleConfig] | None = None
        self._breakers: weakref.WeakKeyDictionary[Any, CircuitBreaker] = weakref.WeakKeyDictionary()
        self._breakers_by_id: dict[int, CircuitBreaker] = {}
        self._skips: dict[str, tuple[float, str]] = {}
        self._triggers = RollbackTriggers(
            clock, configured_mode=self._configured_mode, audit_file=self._audit_file
        )

    # --- reading the switches ----------------------------------------------------------------

    def _base(self) -> ToggleConfig:
        """The environment's switches with the code's applied (cached per environment)."""
        source = os.environ if self._env is None else self._env
        raw = _watched(source)
        cached = self._env_cache
        if cached is not None and cached[0] == raw:
            return cached[1]
        with self._lock:
            if self._env_cache is not None and self._env_cache[0] == raw:
                return self._env_cache[1]
            try:
                config = self._code.apply(env_config(source))
                self._last_good = config
            except ConfigError as exc:
                obs.METRICS.inc(obs.CONFIG_ERRORS, source="env")
                obs.log_event(
                    "toggle_config_invalid",
                    variable=exc.variable,
                    error=exc.problem,
                    action="keeping last good configuration",
                )
                config = self._last_good
            self._env_cache = (raw, config)
            return config

    def check(self) -> None:
        """Read the switches strictly, as at start-up: the environment's variables and the
        flags file in force (given in code, else named by the environment), when it
        exists (a file that does not exist yet, or a link to one, is written when a switch
        is needed; until then it holds no flags).

        `AgentNode`, `HistoryMiddleware` and `HistoryHooks` call this when they are made,
        so a deployment with one bad switch fails to start, naming it, instead of running
        on the defaults (which would also drop the valid switches beside it: a global
        ``off``, the flags file). Later, a bad value keeps the last good configuration.

        Raises:
            ConfigError: a variable, or the flags file, is invalid (named in the message).
        """
        source = os.environ if self._env is None else self._env
        raw = _watched(source)
        config = self._code.apply(env_config(source))  # the flags file in force: code's first
        flags: FlagsFileSchema | None = None
        if config.flags_file is not None:
            try:
                os.stat(config.flags_file)
            except FileNotFoundError:
                pass  # not written yet (a missing path, or a link to one)
            except OSError as exc:  # a loop of links, no permission on a directory, ...
                problem = exc.strerror or type(exc).__name__
                raise ConfigError(FLAGS_FILE_VAR, f"{config.flags_file}: {problem}") from None
            else:
                flags = _read_flags_file(config)
        # What was checked is the last good configuration: a switch that goes bad before
        # the first run keeps it (a rollback to ``off`` stays off), not the defaults.
        with self._lock:
            self._last_good = config
            self._env_cache = (raw, config)
            path = config.flags_file
            if flags is not None and path and (self._flags is None or self._flags.path != path):
                self._flags = FlagsFile(path, last_good=flags)

    def current(self) -> ToggleConfig:
        """The switches in force now."""
        base = self._base()
        flags: FlagsFileSchema | None = None
        if base.flags_file:
            with self._lock:
                if self._flags is None or self._flags.path != base.flags_file:
                    self._flags = FlagsFile(base.flags_file)
                flags = self._flags.flags()
        merged = self._merged
        if merged is not None and merged[0] is base and merged[1] is flags:
            return merged[2]
        config = merge_flags(base, flags) if flags is not None else base
        with self._lock:
            previous = self._merged
            self._merged = (base, flags, config)
        self._triggers.reconfigure(config.triggers)
        self._audit_changes(previous, base, flags, config)
        return config

    def flags_file_problem(self) -> str | None:
        """Why the flags file is not in force (None when it is, or when there is none)."""
        with self._lock:
            return self._flags.problem if self._flags is not None else None

    def _configured_mode(self) -> HistoryMode:
        merged = self._merged
        return merged[2].mode if merged is not None else self._last_good.mode

    def _audit_file(self) -> str | None:
        merged = self._merged
        return merged[2].audit_file if merged is not None else self._last_good.audit_file

    def _audit_changes(
        self,
        previous: tuple[ToggleConfig, FlagsFileSchema | None, ToggleConfig] | None,
        base: ToggleConfig,
        flags: FlagsFileSchema | None,
        config: ToggleConfig,
    ) -> None:
        after = _effective(config)
        if previous is None:
            sources = ["env", *(["code"] if self._code.given else [])]
            sources += ["flags_file"] if flags is not None else []
            record_change(
                "startup",
                source="+".join(sources),
                before=None,
                after=after,
                audit_file=config.audit_file,
            )
            return
        before = _effective(previous[2])
        if before == after:
            return
        changed = [
            *(["env"] if previous[0] is not base else []),
            *(["flags_file"] if previous[1] is not flags else []),
        ]
        for name, new in after.items():
            if before[name] != new:
                record_change(
                    name,
                    source="+".join(changed) or "env",
                    before=before[name],
                    after=new,
                    audit_file=config.audit_file,
                )

    # --- deciding ------------------------------------------------------------------------

    def decide(
        self, node_name: str, *, node_enabled: bool, breaker: CircuitBreaker | None = None
    ) -> HistoryDecision:
        """What ``node_name`` may do on this run."""
        decision = self._decide(node_name, node_enabled, breaker)
        if not decision.enabled and decision.reason != "breaker_open":
            self._log_skip(node_name, decision.reason)
        return decision

    def _decide(
        self, node_name: str, node_enabled: bool, breaker: CircuitBreaker | None
    ) -> HistoryDecision:
        if not node_enabled:
            return _OFF["node_flag_off"]
        config = self.current()
        if config.mode is HistoryMode.OFF:
            return _OFF["master_off"]
        if node_name in config.disabled_nodes:
            return _OFF["node_disabled"]
        mode = config.node_modes.get(node_name, config.mode)
        if mode is HistoryMode.OFF:
            return _OFF["node_mode_off"]
        if breaker is not None:
            breaker.reconfigure(config)
            if not breaker.allow():
                return HistoryDecision(mode, False, False, False, "breaker_open")
        reason = f"mode:{mode.value}"
        decision = {
            HistoryMode.READ_ONLY: HistoryDecision(mode, True, False, True, reason),
            HistoryMode.SHADOW: HistoryDecision(mode, True, True, False, reason),
        }.get(mode, HistoryDecision(mode, True, True, True, reason))
        if breaker is not None and config.triggers.enabled:
            action = self._triggers.restriction(breaker.backend)
            if action is HistoryMode.OFF:
                return _OFF["trigger_off"]
            if action is HistoryMode.READ_ONLY and decision.write:
                narrowed = HistoryMode.READ_ONLY if mode is HistoryMode.READ_WRITE else mode
                return HistoryDecision(
                    narrowed, True, False, decision.payload_from_store, "trigger_read_only"
                )
        return decision

    def _log_skip(self, node_name: str, reason: str) -> None:
        """DEBUG ``history_skipped``, once per node per minute (sooner if the reason changes)."""
        if not obs.logger.isEnabledFor(logging.DEBUG):
            return
        now = self._clock()
        with self._lock:
            last = self._skips.get(node_name)
            if last is not None and last[1] == reason and now - last[0] < SKIP_LOG_INTERVAL_SECONDS:
                return
            if len(self._skips) > 10_000:
                self._skips.clear()
            self._skips[node_name] = (now, reason)
        obs.log_event("history_skipped", level=logging.DEBUG, node=node_name, reason=reason)

    # --- breakers and triggers -----------------------------------------------------------

    def breaker_for(self, store: object, backend: str = "other") -> CircuitBreaker:
        """The breaker of ``store`` (one per store object)."""
        with self._lock:
            try:
                found = self._breakers.get(store)
            except TypeError:
                found = self._breakers_by_id.get(id(store))
            if found is not None:
                return found
            merged = self._merged
            settings = merged[2].breaker if merged is not None else self._last_good.breaker
            breaker = CircuitBreaker(
                failure_ratio=settings.failure_ratio,
                min_calls=settings.min_calls,
                window_seconds=settings.window_seconds,
                cooldown_seconds=settings.cooldown_seconds,
                half_open_probes=settings.half_open_probes,
                clock=self._clock,
                backend=backend,
                on_change=self._breaker_changed,
                on_call=self._triggers.record,
            )
            try:
                self._breakers[store] = breaker
            except TypeError:
                self._breakers_by_id[id(store)] = breaker
            return breaker

    def _breaker_changed(self, backend: str, before: BreakerState, after: BreakerState) -> None:
        record_change(
            "breaker_state",
            source="breaker",
            before=before,
            after=after,
            audit_file=self._audit_file(),
            backend=backend,
        )

    def trigger_state(self, backend: str) -> TriggerState:
        """Where the automatic rollback trigger of ``backend`` stands."""
        return self._triggers.trigger(backend).state


DEFAULT_TOGGLES = HistoryToggles()
"""The process-wide toggles, reading ``os.environ`` live."""
