"""agent-history: durable, keyed chat history for LangGraph agents in the graph store.

The package's names are loaded when first used (PEP 562), so that ``agent_history.cli``
starts its guard against Ctrl-C before the heavy imports, and ``import agent_history``
alone costs nothing.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent_history.errors import (
        AgentHistoryError,
        ConfigError,
        InvalidArgument,
        InvalidKey,
        InvalidMessage,
        InvalidNamespace,
        KeyResolutionError,
        StoreTimeout,
        StoreUnavailable,
        SyncCallInEventLoop,
        WriteConflict,
    )
    from agent_history.history import AppendResult, ChatHistory, ConversationInfo, RunToken, Turn
    from agent_history.history.message_history import KeyedMessageHistory
    from agent_history.keys import (
        DEFAULT_HISTORY_KEY_CANDIDATES,
        DEFAULT_HISTORY_KEY_TEMPLATE,
        KeyRejectReason,
        KeyResolution,
        resolve_history_key,
        validate_history_key,
    )
    from agent_history.node import AgentNode, AgentState, HistoryReport
    from agent_history.observability import METRICS, enable_prometheus
    from agent_history.otel import enable_opentelemetry
    from agent_history.prebuilt import HistoryHooks, HistoryReactState
    from agent_history.settings import Backend, HistorySettings
    from agent_history.stores import (
        create_checkpointer,
        create_checkpointer_sync,
        create_graph_store,
        create_graph_store_sync,
    )
    from agent_history.toggle_config import BreakerSettings, TriggerSettings
    from agent_history.toggles import (
        DEFAULT_TOGGLES,
        CircuitBreaker,
        HistoryDecision,
        HistoryMode,
        HistoryToggles,
    )

_EXPORTS: dict[str, tuple[str, ...]] = {
    "agent_history.errors": (
        "AgentHistoryError",
        "ConfigError",
        "InvalidArgument",
        "InvalidKey",
        "InvalidMessage",
        "InvalidNamespace",
        "KeyResolutionError",
        "StoreTimeout",
        "StoreUnavailable",
        "SyncCallInEventLoop",
        "WriteConflict",
    ),
    "agent_history.history": (
        "AppendResult",
        "ChatHistory",
        "ConversationInfo",
        "RunToken",
        "Turn",
    ),
    "agent_history.history.message_history": ("KeyedMessageHistory",),
    "agent_history.keys": (
        "DEFAULT_HISTORY_KEY_CANDIDATES",
        "DEFAULT_HISTORY_KEY_TEMPLATE",
        "KeyRejectReason",
        "KeyResolution",
        "resolve_history_key",
        "validate_history_key",
    ),
    "agent_history.node": ("AgentNode", "AgentState", "HistoryReport"),
    "agent_history.observability": ("METRICS", "enable_prometheus"),
    "agent_history.otel": ("enable_opentelemetry",),
    "agent_history.prebuilt": ("HistoryHooks", "HistoryReactState"),
    "agent_history.settings": ("Backend", "HistorySettings"),
    "agent_history.stores": (
        "create_checkpointer",
        "create_checkpointer_sync",
        "create_graph_store",
        "create_graph_store_sync",
    ),
    "agent_history.toggle_config": ("BreakerSettings", "TriggerSettings"),
    "agent_history.toggles": (
        "DEFAULT_TOGGLES",
        "CircuitBreaker",
        "HistoryDecision",
        "HistoryMode",
        "HistoryToggles",
    ),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = [
    "DEFAULT_HISTORY_KEY_CANDIDATES",
    "DEFAULT_HISTORY_KEY_TEMPLATE",
    "DEFAULT_TOGGLES",
    "METRICS",
    "AgentHistoryError",
    "AgentNode",
    "AgentState",
    "AppendResult",
    "Backend",
    "BreakerSettings",
    "ChatHistory",
    "CircuitBreaker",
    "ConfigError",
    "ConversationInfo",
    "HistoryDecision",
    "HistoryHooks",
    "HistoryMode",
    "HistoryReactState",
    "HistoryReport",
    "HistorySettings",
    "HistoryToggles",
    "InvalidArgument",
    "InvalidKey",
    "InvalidMessage",
    "InvalidNamespace",
    "KeyRejectReason",
    "KeyResolution",
    "KeyResolutionError",
    "KeyedMessageHistory",
    "RunToken",
    "StoreTimeout",
    "StoreUnavailable",
    "SyncCallInEventLoop",
    "TriggerSettings",
    "Turn",
    "WriteConflict",
    "create_checkpointer",
    "create_checkpointer_sync",
    "create_graph_store",
    "create_graph_store_sync",
    "enable_opentelemetry",
    "enable_prometheus",
    "resolve_history_key",
    "validate_history_key",
]


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
