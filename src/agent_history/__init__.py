"""agent-history: durable, keyed chat history for LangGraph agents in the graph store."""

from agent_history.errors import (
    AgentHistoryError,
    ConfigError,
    KeyResolutionError,
    StoreUnavailable,
    WriteConflict,
)
from agent_history.settings import Backend, HistorySettings
from agent_history.stores import (
    create_checkpointer,
    create_checkpointer_sync,
    create_graph_store,
    create_graph_store_sync,
)

__all__ = [
    "AgentHistoryError",
    "Backend",
    "ConfigError",
    "HistorySettings",
    "KeyResolutionError",
    "StoreUnavailable",
    "WriteConflict",
    "create_checkpointer",
    "create_checkpointer_sync",
    "create_graph_store",
    "create_graph_store_sync",
]
