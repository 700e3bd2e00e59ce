"""The exception family of agent-history, rooted in one base class."""

from __future__ import annotations

__all__ = [
    "AgentHistoryError",
    "ConfigError",
    "ConversationChanged",
    "InvalidArgument",
    "InvalidKey",
    "InvalidMessage",
    "InvalidNamespace",
    "KeyResolutionError",
    "StoreTimeout",
    "StoreUnavailable",
    "SyncCallInEventLoop",
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


class InvalidKey(KeyResolutionError):
    """A conversation key was rejected (see ``agent_history.keys.validate_history_key``).

    ``reason`` is the reason code (``empty``, ``invalid_chars``, ``too_long``, ...); the
    message names the reason, never the key, which may carry user data.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = str(reason)
        self.detail = detail
        super().__init__(
            f"conversation key rejected: {self.reason}" + (f" ({detail})" if detail else "")
        )


class InvalidArgument(AgentHistoryError, ValueError):
    """A history call was given an argument it cannot use (a chunk size below 1, a
    reserved value field, an unknown scope, ids that do not match the messages)."""


class InvalidNamespace(AgentHistoryError, ValueError):
    """A history namespace label was rejected: every label must be a non-empty string
    without ``.`` (the SQL stores join labels with ``.``) or control characters."""


class StoreUnavailable(AgentHistoryError, ConnectionError):
    """The graph store or its database cannot be reached.

    The message describes the target (host, port, database) without secrets.
    """


class StoreTimeout(AgentHistoryError, TimeoutError):
    """A store call reached its time budget. It was stopped (statement interrupted, lock
    wait ended, or the connection shut down and dropped from its pool), not left running."""


class SyncCallInEventLoop(AgentHistoryError, RuntimeError):
    """A sync history method was called on the event loop an async store runs on (it
    would wait for that loop forever); use the ``a*`` method there."""


class WriteConflict(AgentHistoryError, RuntimeError):
    """A best-effort append lost a race and gave up after its retries."""


class ConversationChanged(AgentHistoryError, RuntimeError):
    """A whole-transcript read (`ChatHistory.read`, which pages through a long
    conversation) found the conversation deleted, or deleted and begun again, between two
    of its pages: what it read so far belongs to the deleted one. Read it again."""


class InvalidMessage(AgentHistoryError, ValueError):
    """A message cannot be stored exactly (content of the wrong type, a value that is not
    JSON). Raised by appends before anything is written; the text never quotes the body."""
