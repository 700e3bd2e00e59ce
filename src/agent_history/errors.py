"""The exception family of agent-history, rooted in one base class."""

from __future__ import annotations

__all__ = [
    "AgentHistoryError",
    "ConfigError",
    "InvalidMessage",
    "KeyResolutionError",
    "StoreUnavailable",
    "WriteConflict",
]


class AgentHistoryError(Exception):
    """Base class of every error raised by agent-history."""


class ConfigError(AgentHistoryError, ValueError):
    """A setting is invalid. The message names the environment variable."""

    def __init__(self, variable: str, problem: str) -> None:
        self.variable = variable
        self.problem = problem
        super().__init__(f"{variable}: {problem}")


class KeyResolutionError(AgentHistoryError, ValueError):
    """No valid conversation key could be resolved (raised only on request)."""


class StoreUnavailable(AgentHistoryError, ConnectionError):
    """The graph store or its database cannot be reached.

    The message describes the target (host, port, database) without secrets.
    """


class WriteConflict(AgentHistoryError, RuntimeError):
    """A best-effort append lost a race and gave up after its retries."""


class InvalidMessage(AgentHistoryError, ValueError):
    """A message cannot be stored exactly (content of the wrong type, a value that is not
    JSON). Raised by appends before anything is written; the text never quotes the body."""
