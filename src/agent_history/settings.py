"""`HistorySettings`: the ORCHEO_* environment configuration, validated at start."""

from __future__ import annotations

import difflib
import logging
import os
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from agent_history.dsn import describe_dsn, redact_dsn, validate_dsn
from agent_history.errors import ConfigError

__all__ = ["Backend", "BackendName", "HistorySettings", "default_data_dir", "env_var"]

ENV_PREFIX = "ORCHEO_"


class Backend(StrEnum):
    """Where the graph store (or the checkpointer) keeps its data."""

    MEMORY = "memory"
    SQLITE = "sqlite"
    POSTGRES = "postgres"


BackendName = Literal["memory", "sqlite", "postgres"]


def env_var(field: str) -> str:
    """Return the environment variable that sets the settings field ``field``."""
    return ENV_PREFIX + field.upper()


def default_data_dir() -> Path:
    """The per-user data directory: ``$XDG_DATA_HOME/agent-history`` or ``~/.local/share/...``."""
    xdg = os.environ.get("XDG_DATA_HOME", "")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".local" / "share"
    return base / "agent-history"


def _parse_backend(value: Any, field: str) -> Any:
    if isinstance(value, str):
        normalized = value.strip().lower()
        allowed = [b.value for b in Backend]
        if normalized not in allowed:
            raise ConfigError(
                env_var(field), f"must be one of {', '.join(allowed)} (got {value!r})"
            )
        return normalized
    return value


def _absolute_path(value: Any, field: str) -> Any:
    if value is None:
        return value
    # (A path given as a `Path` is read as its text is: a CLI option's trailing space made
    # another file than the same text in the variable.)
    text = (os.fspath(value) if isinstance(value, os.PathLike) else str(value)).strip()
    if not text:
        raise ConfigError(env_var(field), "must not be empty")
    if text.startswith("~"):
        raise ConfigError(
            env_var(field),
            f"must be an absolute path; '~' is not expanded (got {text!r})",
        )
    if not os.path.isabs(text):
        raise ConfigError(env_var(field), f"must be an absolute path (got {text!r})")
    return Path(text)


class HistorySettings(BaseSettings):
    """Storage configuration read from ``ORCHEO_*`` environment variables.

    Construct it with no arguments to read the environment, or pass fields to
    override. Invalid values raise `ConfigError` naming the variable; a keyword that is
    not a field (a typo such as ``graph_store_backnd``) raises `ConfigError` naming it.
    Other ``ORCHEO_*`` variables in the environment are ignored. Numbers must be finite.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        case_sensitive=False,
        # Unknown keyword arguments are errors; the environment source only ever reads
        # the declared fields, so unrelated ORCHEO_* variables stay ignored.
        extra="forbid",
        allow_inf_nan=False,
        validate_default=True,
    )

    graph_store_backend: Backend = Backend.SQLITE
    """Backend of the graph store: memory, sqlite (default) or postgres."""

    graph_store_sqlite_path: Path = Field(
        default_factory=lambda: default_data_dir() / "graph_store.sqlite"
    )
    """Absolute path of the graph store's SQLite file."""

    graph_store_sqlite_busy_timeout: float = 5.0
    """Seconds a SQLite writer waits for another process's write lock."""

    checkpoint_backend: Backend | None = None
    """Backend of the LangGraph checkpointer; defaults to the graph store backend."""

    checkpoint_sqlite_path: Path = Field(
        default_factory=lambda: default_data_dir() / "checkpoints.sqlite"
    )
    """Absolute path of the checkpointer's SQLite file."""

    postgres_dsn: SecretStr | None = None
    """PostgreSQL connection string; required when a backend is postgres."""

    postgres_pool_min_size: int = 1
    """Connections the pool keeps open."""

    postgres_pool_max_size: int = 10
    """Most connections the pool opens."""

    postgres_pool_timeout: float = 10.0
    """Seconds to wait for a pooled connection."""

    postgres_pool_max_idle: float = 300.0
    """Seconds an idle pooled connection is kept above the minimum."""

    postgres_connect_timeout: int = 5
    """Seconds to wait for the server when connecting."""

    if TYPE_CHECKING:
        # The signature type checkers see: every field as a keyword, with the types a
        # caller may pass (strings for enums and paths). Kept in step with the fields by
        # a unit test.
        def __init__(
            self,
            *,
            graph_store_backend: Backend | BackendName = ...,
            graph_store_sqlite_path: Path | str = ...,
            graph_store_sqlite_busy_timeout: float = ...,
            checkpoint_backend: Backend | BackendName | None = ...,
            checkpoint_sqlite_path: Path | str = ...,
            postgres_dsn: SecretStr | str | None = ...,
            postgres_pool_min_size: int = ...,
            postgres_pool_max_size: int = ...,
            postgres_pool_timeout: float = ...,
            postgres_pool_max_idle: float = ...,
            postgres_connect_timeout: int = ...,
        ) -> None: ...

    else:

        def __init__(self, **values: Any) -> None:
            _legacy_checkpoint_path(values)
            try:
                super().__init__(**values)
            except ValidationError as exc:
                raise _config_error(exc) from None

    @field_validator("graph_store_backend", "checkpoint_backend", mode="before")
    @classmethod
    def _check_backend(cls, value: Any, info: Any) -> Any:
        if value == "" and info.field_name == "checkpoint_backend":
            return None
        return _parse_backend(value, info.field_name)

    @field_validator("graph_store_sqlite_path", "checkpoint_sqlite_path", mode="before")
    @classmethod
    def _check_path(cls, value: Any, info: Any) -> Any:
        return _absolute_path(value, info.field_name)

    @model_validator(mode="after")
    def _check_consistency(self) -> HistorySettings:
        if Backend.POSTGRES in (self.graph_store_backend, self.effective_checkpoint_backend):
            dsn = self.postgres_dsn.get_secret_value().strip() if self.postgres_dsn else ""
            if not dsn:
                raise ConfigError(
                    env_var("postgres_dsn"), "is required when a backend is 'postgres'"
                )
            validate_dsn(dsn, env_var("postgres_dsn"))  # does not parse, bad value: ConfigError
        if self.postgres_pool_min_size < 1:
            raise ConfigError(env_var("postgres_pool_min_size"), "must be at least 1")
        if self.postgres_pool_max_size < self.postgres_pool_min_size:
            raise ConfigError(
                env_var("postgres_pool_max_size"),
                f"must be >= {env_var('postgres_pool_min_size')} "
                f"({self.postgres_pool_max_size} < {self.postgres_pool_min_size})",
            )
        for field in (
            "postgres_pool_timeout",
            "postgres_pool_max_idle",
            "postgres_connect_timeout",
            "graph_store_sqlite_busy_timeout",
        ):
            if getattr(self, field) <= 0:
                raise ConfigError(env_var(field), "must be a positive number")
        return self

    @property
    def effective_checkpoint_backend(self) -> Backend:
        """The checkpointer backend, following the graph store when unset."""
        return self.checkpoint_backend or self.graph_store_backend

    @property
    def dsn(self) -> str:
        """The PostgreSQL DSN in clear (for drivers only; never print it)."""
        if self.postgres_dsn is None:
            raise ConfigError(env_var("postgres_dsn"), "is not set")
        return self.postgres_dsn.get_secret_value().strip()

    def describe(self) -> dict[str, str]:
        """A printable summary without secrets, for logs and the CLI."""
        summary = {"graph_store_backend": self.graph_store_backend.value}
        summary["checkpoint_backend"] = self.effective_checkpoint_backend.value
        if self.graph_store_backend is Backend.SQLITE:
            summary["graph_store_sqlite_path"] = str(self.graph_store_sqlite_path)
        if self.effective_checkpoint_backend is Backend.SQLITE:
            summary["checkpoint_sqlite_path"] = str(self.checkpoint_sqlite_path)
        if self.postgres_dsn is not None:
            summary["postgres"] = describe_dsn(self.dsn)
            summary["postgres_dsn"] = redact_dsn(self.dsn)
        return summary


LEGACY_SQLITE_PATH_VAR = "ORCHEO_SQLITE_PATH"
"""The checkpointer path's earlier variable, still read when the new one is unset."""


def _legacy_checkpoint_path(values: dict[str, Any]) -> None:
    """Honour ``ORCHEO_SQLITE_PATH`` for the checkpointer when neither the argument nor
    ``ORCHEO_CHECKPOINT_SQLITE_PATH`` is given (with a deprecation note in the log)."""
    legacy = os.environ.get(LEGACY_SQLITE_PATH_VAR, "").strip()
    current = os.environ.get(env_var("checkpoint_sqlite_path"), "").strip()
    if not legacy or current or "checkpoint_sqlite_path" in values:
        return
    try:
        values["checkpoint_sqlite_path"] = _absolute_path(legacy, "checkpoint_sqlite_path")
    except ConfigError as exc:
        raise ConfigError(LEGACY_SQLITE_PATH_VAR, exc.problem) from None
    logging.getLogger("agent_history").warning(
        "event=deprecated_variable variable=%s replacement=%s",
        LEGACY_SQLITE_PATH_VAR,
        env_var("checkpoint_sqlite_path"),
    )


def _config_error(exc: ValidationError) -> ConfigError:
    """Turn pydantic's first error into a `ConfigError` that names the variable."""
    error = exc.errors()[0]
    cause = error.get("ctx", {}).get("error")
    if isinstance(cause, ConfigError):
        return cause
    location = error.get("loc") or ("?",)
    field = str(location[0])
    if error.get("type") == "extra_forbidden":
        close = difflib.get_close_matches(field, list(HistorySettings.model_fields), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return ConfigError(field, f"is not a HistorySettings field{hint}")
    value = error.get("input")
    shown = "***" if field == "postgres_dsn" else repr(value)
    return ConfigError(env_var(field), f"{error.get('msg', 'invalid value')} (got {shown})")
