"""The flags file: a JSON or TOML file of switches, validated whole, re-read when it changes.

Reading never blocks and never loads more than `MAX_FLAGS_FILE_BYTES`: only a regular
file is read (a FIFO, a device or a symlink to one is refused), opened non-blocking. The
content is checked against one schema (types, modes, node names, trigger thresholds);
anything else is an invalid file, which keeps the last good flags in force.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import tomllib
from collections.abc import Mapping
from typing import Annotated, Any

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic import StringConstraints as Constraints

from agent_history import observability as obs
from agent_history.errors import ConfigError
from agent_history.toggle_config import (
    FLAGS_FILE_VAR,
    HistoryMode,
    ToggleConfig,
    TriggerAction,
    parse_names,
    trigger_action,
    validation_problem,
)

__all__ = [
    "MAX_FLAGS_FILE_BYTES",
    "FlagsFile",
    "FlagsFileError",
    "FlagsFileSchema",
    "merge_flags",
    "parse_flags",
    "read_flags_file",
]

MAX_FLAGS_FILE_BYTES = 256 * 1024
"""A flags file larger than this is refused (it holds a few switches and node names)."""

NodeName = Annotated[str, Constraints(strip_whitespace=True, min_length=1, max_length=256)]


class FlagsFileError(ValueError):
    """The flags file cannot be used; the message says why (never its content)."""


def _is_toml(path: str) -> bool:
    return path.lower().endswith(".toml")


def _lower(value: Any) -> Any:
    return value.strip().lower() if isinstance(value, str) else value


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class NodeFlags(_Strict):
    """Per-node switches under ``nodes.<name>``."""

    mode: HistoryMode | None = None

    @field_validator("mode", mode="before")
    @classmethod
    def _mode(cls, value: Any) -> Any:
        return _lower(value)


class TriggerOverrides(_Strict):
    """Trigger settings in the file; each one set overrides the environment's."""

    # Strict: ``true`` is not 1 call nor 1 second, ``2.0`` not 2 calls, ``"0.1"`` not a rate
    # (a JSON or TOML number is written as one); converted, they made a trigger fire on the
    # first failing call while `doctor` reported the file valid.
    error_rate: float | None = Field(default=None, gt=0, lt=1, strict=True)
    read_p95_seconds: float | None = Field(default=None, gt=0, strict=True)
    write_p95_seconds: float | None = Field(default=None, gt=0, strict=True)
    window_seconds: float | None = Field(default=None, gt=0, strict=True)
    min_calls: int | None = Field(default=None, ge=1, strict=True)
    cooldown_seconds: float | None = Field(default=None, gt=0, strict=True)
    probe_calls: int | None = Field(default=None, ge=1, strict=True)
    action: TriggerAction | None = None

    @field_validator("action", mode="before")
    @classmethod
    def _action(cls, value: Any) -> Any:
        return trigger_action(value)


class FlagsFileSchema(_Strict):
    """Everything a flags file may hold; unknown keys are errors (they are usually typos)."""

    mode: HistoryMode | None = None
    """Global mode; overrides the environment's (``off`` from either wins)."""
    disabled_nodes: frozenset[NodeName] = frozenset()
    """Nodes forced in memory: a list, or a comma-separated string."""
    node_modes: dict[NodeName, HistoryMode] = Field(default_factory=dict)
    """Per-node mode (the short form of ``nodes.<name>.mode``)."""
    nodes: dict[NodeName, NodeFlags] = Field(default_factory=dict)
    """Per-node switches."""
    triggers: TriggerOverrides | None = None
    """Automatic rollback trigger settings."""

    @field_validator("mode", mode="before")
    @classmethod
    def _mode(cls, value: Any) -> Any:
        return _lower(value)

    @field_validator("node_modes", mode="before")
    @classmethod
    def _node_modes(cls, value: Any) -> Any:
        if isinstance(value, Mapping):
            _named_once(value)
            return {k: _lower(v) for k, v in value.items()}
        return value

    @field_validator("nodes", mode="before")
    @classmethod
    def _nodes(cls, value: Any) -> Any:
        if isinstance(value, Mapping):
            _named_once(value)
        return value

    @field_validator("disabled_nodes", mode="before")
    @classmethod
    def _disabled(cls, value: Any) -> Any:
        if isinstance(value, str):
            # As the variable reads it: a JSON list, or names separated by commas.
            try:
                return list(parse_names(value, "disabled_nodes"))
            except ConfigError as exc:
                raise ValueError(exc.problem) from None
        if not isinstance(value, list | tuple):
            raise ValueError("must be a list of node names or a comma-separated string")
        if not all(isinstance(name, str) for name in value):
            raise ValueError("node names must be strings")
        return [name for name in value if name.strip()]

    @model_validator(mode="after")
    def _one_mode_per_node(self) -> FlagsFileSchema:
        for name, flags in self.nodes.items():
            short = self.node_modes.get(name)
            if flags.mode is not None and short is not None and short != flags.mode:
                raise ValueError(
                    f"node {name[:60]!r} has two modes: node_modes ({short.value}) and "
                    f"nodes.mode ({flags.mode.value})"
                )
        return self

    def modes_by_node(self) -> dict[str, HistoryMode]:
        """``node_modes`` and ``nodes.<name>.mode`` together (they agree: a file giving a
        node two different modes is invalid)."""
        modes = dict(self.node_modes)
        modes.update({name: f.mode for name, f in self.nodes.items() if f.mode is not None})
        return modes


def _named_once(nodes: Mapping[Any, Any]) -> None:
    """Refuse two keys naming one node: names are read without surrounding spaces, so
    ``"agent"`` and ``"agent "`` are one node, and one of its modes would be lost."""
    seen: set[str] = set()
    for name in nodes:
        if isinstance(name, str):
            if name.strip() in seen:
                raise ValueError(f"node {name.strip()[:60]!r} is named twice")
            seen.add(name.strip())


def parse_flags(path: str, data: bytes) -> FlagsFileSchema:
    """Validate a flags file's bytes (TOML when ``path`` ends in ``.toml``, in any case,
    else JSON). An empty file is invalid in both: a shell's ``>`` empties the file before
    it writes, and a worker reading in between must not lift a rollback (to clear every
    flag, write ``{}`` or a TOML comment)."""
    if not data.strip():
        raise FlagsFileError("empty (no flags: write {} or, in TOML, a comment)")
    try:
        if _is_toml(path):
            content: Any = tomllib.loads(data.decode("utf-8"))
        else:
            content = orjson.loads(data)
            _refuse_duplicate_keys(data)  # TOML refuses them itself
    except FlagsFileError:
        raise
    except RecursionError:
        raise FlagsFileError("nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        first = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        kind = "TOML" if _is_toml(path) else "JSON"
        raise FlagsFileError(f"not valid {kind}: {first}") from None
    if not isinstance(content, dict):
        raise FlagsFileError(f"must hold an object (got {type(content).__name__})")
    try:
        return FlagsFileSchema.model_validate(content)
    except ValidationError as exc:
        raise FlagsFileError(validation_problem(exc)) from None
    except RecursionError:
        raise FlagsFileError("nested too deeply") from None


def _refuse_duplicate_keys(data: bytes) -> None:
    """Raise `FlagsFileError` naming the first key an object of the (valid) JSON repeats:
    strict JSON has no "last one wins", and a switch added above an old line must not be
    silently overridden by it."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: set[str] = set()
        for key, _ in items:
            if key in seen:
                raise FlagsFileError(f"not valid JSON: key {key[:60]!r} appears twice in an object")
            seen.add(key)
        return dict(items)

    json.loads(data, object_pairs_hook=pairs)


def read_flags_file(path: str) -> FlagsFileSchema:
    """Read and validate the flags file; raises `FlagsFileError` or `OSError`."""
    # Check the type before opening (opening some devices has effects), and again on
    # the open descriptor (the path may have been swapped in between).
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise FlagsFileError("is not a regular file")
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise FlagsFileError("is not a regular file")
        if info.st_size > MAX_FLAGS_FILE_BYTES:
            raise FlagsFileError(f"is larger than {MAX_FLAGS_FILE_BYTES} bytes")
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = os.read(fd, MAX_FLAGS_FILE_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_FLAGS_FILE_BYTES:
                raise FlagsFileError(f"is larger than {MAX_FLAGS_FILE_BYTES} bytes")
    finally:
        os.close(fd)
    return parse_flags(path, b"".join(chunks))


def merge_flags(config: ToggleConfig, flags: FlagsFileSchema) -> ToggleConfig:
    """Apply the file's switches on top of ``config``."""
    # The file's mode overrides the environment's and the code's, except that "off"
    # from either wins.
    mode = flags.mode or config.mode
    if config.mode is HistoryMode.OFF:
        mode = HistoryMode.OFF
    triggers = config.triggers
    if flags.triggers is not None:
        overrides = flags.triggers.model_dump(exclude_none=True)
        if overrides:
            triggers = triggers.model_copy(update=overrides)
    return config.with_changes(
        mode=mode,
        disabled_nodes=config.disabled_nodes | flags.disabled_nodes,
        node_modes={**config.node_modes, **flags.modes_by_node()},
        triggers=triggers,
    )


_EMPTY = FlagsFileSchema()


class FlagsFile:
    """A flags file re-read when it changes; an invalid version keeps the last good flags.

    Each distinct problem is logged once (``flags_file_invalid``), not on every run.
    """

    def __init__(self, path: str, last_good: FlagsFileSchema | None = None) -> None:
        """``last_good``: flags already read from the file (at start-up), kept if the
        file is unusable when it is next read."""
        self.path = path
        self._signature: tuple[int, ...] | None = None
        self._flags = _EMPTY if last_good is None else last_good
        self.problem: str | None = None
        """Why the current file is not in force (None when it is, or when none was read)."""

    def flags(self) -> FlagsFileSchema:
        """The flags in force: the file's, or the last good ones if it is unusable."""
        try:
            info = os.stat(self.path)
        except OSError as exc:
            if self._signature != ():
                self._signature = ()
                self._invalid(exc.strerror or type(exc).__name__)
            return self._flags
        signature = (info.st_dev, info.st_ino, info.st_mode, info.st_mtime_ns, info.st_size)
        if signature == self._signature:
            return self._flags
        self._signature = signature
        try:
            self._flags = read_flags_file(self.path)
        except FlagsFileError as exc:
            self._invalid(str(exc))
        except OSError as exc:
            self._invalid(exc.strerror or type(exc).__name__)
        else:
            self.problem = None
            obs.log_event("flags_file_loaded", level=logging.INFO, path=self.path)
        return self._flags

    def _invalid(self, problem: str) -> None:
        self.problem = problem
        obs.METRICS.inc(obs.CONFIG_ERRORS, source="flags_file")
        obs.log_event(
            "flags_file_invalid",
            variable=FLAGS_FILE_VAR,
            path=self.path,
            error=problem,
            action="keeping last good flags",
        )
