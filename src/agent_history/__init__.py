"""agent-history: durable, keyed chat history for LangGraph agents in the graph store."""

from agent_history.errors import (
    AgentHistoryError,
    ConfigError,
    ConversationChanged,
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
    "ConversationChanged",
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
