"""Small builders shared by the reliability tests: graphs around `AgentNode`, callbacks, settings."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from langgraph.graph import START, StateGraph
from langgraph.store.base import BaseStore

from agent_history import AgentNode, AgentState
from agent_history.settings import HistorySettings
from agent_history.toggles import HistoryToggles

__all__ = [
    "TOGGLE_PREFIX",
    "build_graph",
    "new_thread",
    "report_dict",
    "settings_values",
    "telegram_callback",
    "toggles",
]

TOGGLE_PREFIX = "ORCHEO_GRAPH_CHAT_HISTORY_"


def build_graph(node: AgentNode, store: BaseStore | None, checkpointer: Any = None) -> Any:
    """A one-node sync or async graph: START -> agent."""
    builder = StateGraph(AgentState)
    builder.add_node("agent", node)
    builder.add_edge(START, "agent")
    return builder.compile(store=store, checkpointer=checkpointer)


def new_thread() -> dict[str, Any]:
    """A config with a fresh thread id: every callback is its own run."""
    return {"configurable": {"thread_id": uuid.uuid4().hex}}


def telegram_callback(
    chat_id: int, text: str, message_id: str | int | None = None
) -> dict[str, Any]:
    """The state a Telegram webhook callback produces."""
    message: dict[str, Any] = {"text": text}
    if message_id is not None:
        message["message_id"] = message_id
    return {
        "inputs": {"message": message},
        "results": {"telegram_events_parser": {"chat_id": chat_id}},
    }


def toggles(clock: Any = None, **values: str) -> HistoryToggles:
    """Toggles from an explicit environment: ``read_timeout_seconds="1"`` sets
    ``ORCHEO_GRAPH_CHAT_HISTORY_READ_TIMEOUT_SECONDS=1``. Never reads ``os.environ``."""
    env = {TOGGLE_PREFIX + name.upper(): value for name, value in values.items()}
    if clock is None:
        return HistoryToggles(env=env)
    return HistoryToggles(env=env, clock=clock)


def settings_values(settings: HistorySettings, **overrides: Any) -> dict[str, Any]:
    """Plain, picklable constructor arguments that rebuild ``settings`` in a subprocess."""
    values: dict[str, Any] = {
        "graph_store_backend": settings.graph_store_backend.value,
        "graph_store_sqlite_path": str(settings.graph_store_sqlite_path),
        "checkpoint_sqlite_path": str(settings.checkpoint_sqlite_path),
        "graph_store_sqlite_busy_timeout": settings.graph_store_sqlite_busy_timeout,
    }
    if settings.postgres_dsn is not None:
        values["postgres_dsn"] = settings.dsn
        values["postgres_pool_max_size"] = 4
    values.update(overrides)
    return values


def report_dict(report: Any) -> Mapping[str, Any]:
    """A `HistoryReport` as plain data (to cross a process boundary)."""
    return {
        "key": report.key,
        "appended": report.appended,
        "duplicates": report.duplicates,
        "fallbacks": list(report.fallbacks),
        "stored_read": report.stored_read,
    }
