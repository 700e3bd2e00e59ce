"""Processes for the operator race tests: another writer of the same conversations.

`write_when_told` appends one turn (or imports a file) each time the test asks, from a
process of its own. `hold_then_commit` does the same on PostgreSQL inside one outer
transaction that it commits only when told, so the conversation's lock stays taken and its
write invisible while the test runs an operator command against it.
"""

from __future__ import annotations

from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import psycopg
from langchain_core.messages import HumanMessage
from langgraph.store.postgres import PostgresStore
from psycopg.rows import dict_row

from agent_history.history import ChatHistory
from agent_history.settings import HistorySettings
from agent_history.stores import create_graph_store_sync
from agent_history.transfer import import_jsonl, migrate_history

READY = "ready"
DONE = "done"


def _act(store: Any, action: str, args: dict[str, Any]) -> None:
    namespace = tuple(args["namespace"])
    if action == "append":
        history = ChatHistory(store, namespace=namespace)
        history.append(args["key"], [HumanMessage(args["text"])])
    elif action == "import":
        path = Path(args["path"])
        plan, report = import_jsonl(store, lambda: path.open(encoding="utf-8"))
        assert plan.ok and not report.rejected, (plan.errors, report.rejected)
    elif action == "migrate":
        source_settings = HistorySettings(**args["source"])
        with create_graph_store_sync(source_settings) as source_store:
            report = migrate_history(
                ChatHistory(source_store, namespace=namespace),
                ChatHistory(store, namespace=namespace),
            )
            assert report.ok, report
    else:
        raise ValueError(action)


def write_when_told(
    values: dict[str, Any], action: str, args: dict[str, Any], conn: Connection
) -> None:
    """Open the store, say ready, then perform ``action`` once per request; acknowledge."""
    with create_graph_store_sync(HistorySettings(**values)) as store:
        conn.send(READY)
        while conn.recv() == "go":
            _act(store, action, args)
            conn.send(DONE)


def hold_then_commit(dsn: str, action: str, args: dict[str, Any], conn: Connection) -> None:
    """PostgreSQL: perform ``action`` inside an outer transaction on one connection, say
    ready (its locks taken, its writes not visible), and commit when told."""
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=0, row_factory=dict_row) as pg:
        store = PostgresStore(pg)  # type: ignore[arg-type]
        with pg.transaction():
            _act(store, action, args)
            conn.send(READY)
            assert conn.recv() == "commit"
    conn.send(DONE)
