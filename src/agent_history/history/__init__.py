"""The append-only chat log kept in the LangGraph graph store."""

from agent_history.history.chat_history import DEFAULT_CHUNK_SIZE, DEFAULT_NAMESPACE, ChatHistory
from agent_history.history.records import AppendResult, ConversationInfo, RunToken, Turn

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_NAMESPACE",
    "AppendResult",
    "ChatHistory",
    "ConversationInfo",
    "RunToken",
    "Turn",
]
