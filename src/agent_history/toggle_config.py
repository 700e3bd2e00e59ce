"""The switches' values: modes, breaker and trigger settings, one `ToggleConfig` snapshot,
and reading them from ``ORCHEO_GRAPH_CHAT_HISTORY_*`` variables.

Every number must be finite and in range: ``nan`` or ``inf`` is a configuration error,
never a breaker that cannot open or a budget that never ends.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from agent_history.errors import ConfigError

__all__ = [
    "AUDIT_FILE_VAR",
    "DISABLED_NODES_VAR",
    "ENV_PREFIX",
    "FLAGS_FILE_VAR",
    "MODE_VAR",
    "BreakerSettings",
    "HistoryMode",
    "TimeBudgets",
    "ToggleConfig",
    "TriggerAction",
    "TriggerSettings",
    "absolute_path",
    "env_config",
    "flags_file_path",
    "parse_mode",
    "parse_names",
    "settings_from_code",
    "trigger_action",
    "validation_problem",
    "watched_variables",
]

ENV_PREFIX = "ORCHEO_GRAPH_CHAT_HISTORY_"
MODE_VAR = ENV_PREFIX + "MODE"
DISABLED_NODES_VAR = ENV_PREFIX + "DISABLED_NODES"
FLAGS_FILE_VAR = ENV_PREFIX + "FLAGS_FILE"
AUDIT_FILE_VAR = ENV_PREFIX + "AUDIT_FILE"


class HistoryMode(StrEnum):
    """What nodes with history enabled may do."""

    READ_WRITE = "read_write"
    READ_ONLY = "read_only"
    SHADOW = "shadow"
    OFF = "off"


def parse_mode(value: Any, variable: str) -> HistoryMode:
    """A mode from a `HistoryMode` or its name (any case); `ConfigError` otherwise."""
    if isinstance(value, HistoryMode):
        return value
    if isinstance(value, str):
        try:
            return HistoryMode(value.strip().lower())
        except ValueError:
            pass
    allowed = ", ".join(m.value for m in HistoryMode)
    raise ConfigError(variable, f"must be one of {allowed} (got {_shown(value)})")


_NOT_IN_LISTED_NAMES = frozenset("[](){}\"';|\uff0c\u3001\uff1b")
"""Characters of other list syntaxes: brackets, quotes, pipes, full-width commas."""


def parse_names(value: Any, variable: str) -> frozenset[str]:
    """Node names from a list of strings, a JSON list (``["a", "b"]``) or a
    comma-separated string (``a,b``). In the comma form, a name with spaces or a
    character of another list syntax (`_NOT_IN_LISTED_NAMES`) is refused (it would name
    a node that does not exist, and disable nothing): such a name goes in a JSON list."""
    if isinstance(value, str):
        value = value.removeprefix("\ufeff")  # (a byte-order mark from a Windows editor)
    if isinstance(value, str) and value.strip().startswith("["):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise ConfigError(
                variable, "starts with '[' but is not a JSON list of node names"
            ) from None
    if isinstance(value, str):
        items: Iterable[Any] = value.split(",")
        for item in items:
            name = item.strip()
            if any(c.isspace() or c in _NOT_IN_LISTED_NAMES for c in name):
                raise ConfigError(
                    variable,
                    f"{_shown(name)} is not one node name: separate names with commas "
                    '(a,b), or give a JSON list (["a", "b"]) for a name with spaces',
                )
    elif isinstance(value, list | tuple | set | frozenset):
        items = value
    else:
        raise ConfigError(
            variable,
            f"must be a list of node names or a comma-separated string (got {_shown(value)})",
        )
    names = set()
    for item in items:
        if not isinstance(item, str):
            raise ConfigError(variable, f"node names must be strings (got {_shown(item)})")
        if item.strip():
            names.add(item.strip())
    return frozenset(names)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def trigger_action(value: Any) -> Any:
    """Validate a trigger action before pydantic does: its own message would quote the
    enum members' reprs (``<HistoryMode.OFF: 'off'>``)."""
    value = _lower_mode(value)
    if value is not None and value not in (HistoryMode.READ_ONLY, HistoryMode.OFF):
        raise ValueError("must be read_only or off")
    return value


def _lower_mode(value: Any) -> Any:
    return value.strip().lower() if isinstance(value, str) else value


class _Settings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class BreakerSettings(_Settings):
    """Thresholds of the per-store circuit breaker."""

    failure_ratio: float = Field(default=0.5, gt=0, le=1)
    """Failure ratio over the window that opens the breaker (0 < r <= 1)."""
    min_calls: int = Field(default=5, ge=1)
    """Calls in the window before the ratio counts."""
    window_seconds: float = Field(default=60.0, gt=0)
    """Rolling window."""
    cooldown_seconds: float = Field(default=30.0, gt=0)
    """Time open (in memory) before a probe."""
    half_open_probes: int = Field(default=1, ge=1)
    """Successful probes that close it."""


TriggerAction = Literal[HistoryMode.READ_ONLY, HistoryMode.OFF]


class TriggerSettings(_Settings):
    """Automatic rollback triggers per backend; off until a threshold is set."""

    error_rate: float | None = Field(default=None, gt=0, lt=1)
    """Fire when failed store calls / calls in the window exceed this (suggested 0.1)."""
    read_p95_seconds: float | None = Field(default=None, gt=0)
    """Fire when the window's p95 read duration exceeds this (suggested 3)."""
    write_p95_seconds: float | None = Field(default=None, gt=0)
    """Fire when the window's p95 append duration exceeds this (suggested 3)."""
    window_seconds: float = Field(default=60.0, gt=0)
    """Sliding window the rates and percentiles are computed over."""
    min_calls: int = Field(default=20, ge=1)
    """Calls (of the kind measured) in the window before a trigger may fire."""
    cooldown_seconds: float = Field(default=300.0, gt=0)
    """How long the action holds before a probe."""
    probe_calls: int = Field(default=1, ge=1)
    """Good store calls in a row, after the cool-down, that restore the configured mode."""
    action: TriggerAction = HistoryMode.OFF
    """Mode imposed on the backend while a trigger holds: ``off`` or ``read_only``."""

    @field_validator("action", mode="before")
    @classmethod
    def _action(cls, value: Any) -> Any:
        return trigger_action(value)

    @property
    def enabled(self) -> bool:
        """True when at least one threshold is set."""
        return (
            self.error_rate is not None
            or self.read_p95_seconds is not None
            or self.write_p95_seconds is not None
        )


class TimeBudgets(_Settings):
    """Time budgets of one store call (seconds); past them the run goes on in memory."""

    read_timeout_seconds: float = Field(default=2.0, gt=0)
    write_timeout_seconds: float = Field(default=5.0, gt=0)


@dataclass(frozen=True, slots=True)
class ToggleConfig:
    """One snapshot of every switch."""

    mode: HistoryMode = HistoryMode.READ_WRITE
    disabled_nodes: frozenset[str] = frozenset()
    node_modes: Mapping[str, HistoryMode] = field(default_factory=dict)
    breaker: BreakerSettings = field(default_factory=lambda: BreakerSettings())
    triggers: TriggerSettings = field(default_factory=lambda: TriggerSettings())
    read_timeout_seconds: float = 2.0
    write_timeout_seconds: float = 5.0
    flags_file: str | None = None
    audit_file: str | None = None

    @property
    def breaker_failure_ratio(self) -> float:
        """`BreakerSettings.failure_ratio`."""
        return self.breaker.failure_ratio

    @property
    def breaker_min_calls(self) -> int:
        """`BreakerSettings.min_calls`."""
        return self.breaker.min_calls

    @property
    def breaker_window_seconds(self) -> float:
        """`BreakerSettings.window_seconds`."""
        return self.breaker.window_seconds

    @property
    def breaker_cooldown_seconds(self) -> float:
        """`BreakerSettings.cooldown_seconds`."""
        return self.breaker.cooldown_seconds

    @property
    def breaker_half_open_probes(self) -> int:
        """`BreakerSettings.half_open_probes`."""
        return self.breaker.half_open_probes

    def with_changes(self, **changes: Any) -> ToggleConfig:
        """A copy with ``changes`` applied."""
        return replace(self, **changes)


# Environment variable suffix -> field, per settings group.
_BREAKER_VARS = {
    "BREAKER_FAILURE_RATIO": "failure_ratio",
    "BREAKER_MIN_CALLS": "min_calls",
    "BREAKER_WINDOW_SECONDS": "window_seconds",
    "BREAKER_COOLDOWN_SECONDS": "cooldown_seconds",
    "BREAKER_HALF_OPEN_PROBES": "half_open_probes",
}
_TRIGGER_VARS = {
    "TRIGGER_ERROR_RATE": "error_rate",
    "TRIGGER_READ_P95_SECONDS": "read_p95_seconds",
    "TRIGGER_WRITE_P95_SECONDS": "write_p95_seconds",
    "TRIGGER_WINDOW_SECONDS": "window_seconds",
    "TRIGGER_MIN_CALLS": "min_calls",
    "TRIGGER_COOLDOWN_SECONDS": "cooldown_seconds",
    "TRIGGER_PROBE_CALLS": "probe_calls",
    "TRIGGER_ACTION": "action",
}
_BUDGET_VARS = {
    "READ_TIMEOUT_SECONDS": "read_timeout_seconds",
    "WRITE_TIMEOUT_SECONDS": "write_timeout_seconds",
}


def watched_variables() -> tuple[str, ...]:
    """Every variable the switches read (a change of any re-parses them)."""
    suffixes = (*_BREAKER_VARS, *_TRIGGER_VARS, *_BUDGET_VARS)
    return (
        MODE_VAR,
        DISABLED_NODES_VAR,
        FLAGS_FILE_VAR,
        AUDIT_FILE_VAR,
        *(ENV_PREFIX + s for s in suffixes),
    )


def validation_problem(exc: ValidationError, limit: int = 3) -> str:
    """A short, readable account of pydantic errors: ``where: what`` (never the input)."""
    parts = []
    for error in exc.errors()[:limit]:
        where = ".".join(str(p) for p in error.get("loc", ())) or "(file)"
        message = _message(error)
        if error.get("type") == "extra_forbidden":
            message = "unknown setting"
        parts.append(f"{where[:80]}: {message}")
    more = len(exc.errors()) - limit
    if more > 0:
        parts.append(f"and {more} more")
    return "; ".join(parts)


def _message(error: Mapping[str, Any]) -> str:
    """A pydantic error's message, without the prefix it gives a validator's own."""
    return str(error.get("msg", "invalid value")).removeprefix("Value error, ")


M = TypeVar("M", bound=BaseModel)


def _from_env(env: Mapping[str, str], names: dict[str, str], model: type[M]) -> M:
    values: dict[str, str] = {}
    variables: dict[str, str] = {}
    for suffix, name in names.items():
        raw = env.get(ENV_PREFIX + suffix, "").strip()
        if raw:
            values[name] = raw
            variables[name] = ENV_PREFIX + suffix
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        error = exc.errors()[0]
        name = str(error["loc"][0]) if error.get("loc") else ""
        variable = variables.get(name, ENV_PREFIX + "?")
        raise ConfigError(variable, f"{_message(error)} (got {_shown(values.get(name))})") from None


def settings_from_code(model: type[M], where: str, **values: Any) -> M:
    """Build settings passed in code; an invalid value raises `ConfigError` naming
    ``where.<field>``."""
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        error = exc.errors()[0]
        name = ".".join(str(p) for p in error.get("loc", ())) or "?"
        shown = _shown(error.get("input"))
        raise ConfigError(f"{where}.{name}", f"{_message(error)} (got {shown})") from None


def absolute_path(value: Any, variable: str) -> str | None:
    """An absolute path from a str or path-like (None or "" for none)."""
    if value is None:
        return None
    if not isinstance(value, str | os.PathLike):
        raise ConfigError(variable, f"must be a path (got {_shown(value)})")
    text = os.fspath(value).strip()
    if not text:
        return None
    if not os.path.isabs(text):
        raise ConfigError(variable, f"must be an absolute path (got {_shown(text)})")
    return text


def flags_file_path(value: Any, variable: str) -> str | None:
    """The flags file's path: absolute, and ending in ``.json`` or ``.toml`` (any case),
    which says how it is read. Checked even when the file is not there yet: a file
    written later in another format would be refused at run time, its switches ignored."""
    path = absolute_path(value, variable)
    if path is not None and not path.lower().endswith((".json", ".toml")):
        raise ConfigError(variable, f"must end in .json or .toml (got {_shown(path)})")
    return path


def _absolute_file(env: Mapping[str, str], variable: str) -> str | None:
    return absolute_path(env.get(variable), variable)


def env_config(env: Mapping[str, str]) -> ToggleConfig:
    """Every switch from the environment; raises `ConfigError` naming the bad variable."""
    mode = HistoryMode.READ_WRITE
    if env.get(MODE_VAR, "").strip():
        mode = parse_mode(env[MODE_VAR], MODE_VAR)
    budgets = _from_env(env, _BUDGET_VARS, TimeBudgets)
    return ToggleConfig(
        mode=mode,
        disabled_nodes=parse_names(env.get(DISABLED_NODES_VAR, ""), DISABLED_NODES_VAR),
        breaker=_from_env(env, _BREAKER_VARS, BreakerSettings),
        triggers=_from_env(env, _TRIGGER_VARS, TriggerSettings),
        read_timeout_seconds=budgets.read_timeout_seconds,
        write_timeout_seconds=budgets.write_timeout_seconds,
        flags_file=flags_file_path(env.get(FLAGS_FILE_VAR), FLAGS_FILE_VAR),
        audit_file=_absolute_file(env, AUDIT_FILE_VAR),
    )
