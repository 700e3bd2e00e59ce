"""PostgreSQL's one-statement append writes exactly what the Python planner plans.

``agent_history_append_v1`` re-implements `layout.plan_append` in plpgsql so an append is
one round trip. This property test builds random conversation states (heads, open
chunks with records of abandoned epochs, id entries of this and other epochs, with and
without a run token), random pending turns and anchors, runs both, and compares every
stored item and the reported result.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any
from unittest import mock

import orjson
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from langgraph.store.base import BaseStore

from agent_history.history.drivers import AppendRequest, driver_for, namespace_text
from agent_history.history.drivers.postgres import PostgresDriver
from agent_history.history.layout import (
    HEAD_KEY,
    PendingTurn,
    chunk_index,
    chunk_key,
    msgid_key,
    plan_append,
)
from agent_history.settings import HistorySettings
from agent_history.stores import create_graph_store_sync

pytestmark = pytest.mark.postgres

NOW = "2030-01-02T03:04:05.000006+00:00"
EPOCHS = ("epoch-a", "epoch-b")
IDS = ("m1", "m2", "m3", "reply:m1:0", "ünïcødé id", "x" * 240)
TOKENS = ("run-1", "run-2")


@pytest.fixture(scope="module")
def pg_store(pg_dsn: str) -> Iterator[BaseStore]:
    settings = HistorySettings(graph_store_backend="postgres", postgres_dsn=pg_dsn)
    with create_graph_store_sync(settings) as store:
        yield store


@st.composite
def states(draw: st.DrawFn) -> dict[str, Any]:
    """A conversation state, the pending turns and the append's arguments."""
    head = None
    items: dict[str, dict[str, Any]] = {}
    if draw(st.booleans()):
        size = draw(st.integers(1, 4))
        last_seq = draw(st.integers(0, 9))
        head = {
            "kind": "head",
            "version": 1,
            "last_seq": last_seq,
            "chunk_size": size,
            "epoch": draw(st.sampled_from(EPOCHS)),
            "created_at": "2029-01-01T00:00:00+00:00",
            "updated_at": "2029-01-01T00:00:00+00:00",
        }
        items[HEAD_KEY] = head
        if last_seq % size and draw(st.booleans()):
            index = chunk_index(last_seq, size)
            first = index * size + 1
            # Records up to last_seq, and maybe some above it (an abandoned epoch's).
            top = draw(st.integers(last_seq, last_seq + 2))
            records = [
                {"seq": seq, "role": "user", "content": f"old {seq}", "ts": "t"}
                for seq in range(first, top + 1)
            ]
            items[chunk_key(index)] = {"kind": "chunk", "index": index, "turns": records}
    for message_id in draw(st.lists(st.sampled_from(IDS), unique=True, max_size=4)):
        entry: dict[str, Any] = {
            "kind": "msgid",
            "seq": draw(st.integers(1, 9)),
            "epoch": draw(st.sampled_from(EPOCHS)),
        }
        token = draw(st.none() | st.sampled_from(TOKENS))
        if token is not None:
            entry["next"] = token
        items[msgid_key(message_id)] = entry
    pending = [
        PendingTurn(
            draw(st.sampled_from(("user", "assistant"))),
            draw(st.sampled_from(("hi", "", "x" * 50, "ünï 😀"))),
            draw(st.none() | st.sampled_from(IDS)),
            draw(st.none() | st.sampled_from(("human", "ai"))),
        )
        for _ in range(draw(st.integers(0, 6)))
    ]
    return {
        "items": items,
        "head": head,
        "pending": pending,
        "chunk_size": draw(st.integers(1, 4)),
        "anchor_id": draw(st.none() | st.sampled_from(IDS)),
        "anchor_next": draw(st.none() | st.sampled_from(TOKENS)),
        "skipped": draw(st.integers(0, 2)),
    }


def _fixed_head(chunk_size: int, now: str) -> dict[str, Any]:
    return {
        "kind": "head",
        "version": 1,
        "last_seq": 0,
        "chunk_size": chunk_size,
        "epoch": "epoch-new",
        "created_at": now,
        "updated_at": now,
    }


def _expected(state: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """What `append_steps` + `plan_append` would leave in the store, and its result."""
    items, head = state["items"], state["head"]
    wanted = [t.id for t in state["pending"]] + [state["anchor_id"]]
    known = {i: items.get(msgid_key(i)) for i in wanted if i is not None}
    last_chunk = None
    if head is not None and head["last_seq"] % head["chunk_size"]:
        last_chunk = items.get(chunk_key(chunk_index(head["last_seq"], head["chunk_size"])))
    with mock.patch("agent_history.history.layout.new_head", _fixed_head):
        plan = plan_append(
            head,
            last_chunk,
            known,
            state["pending"],
            chunk_size=state["chunk_size"],
            value_field="content",
            now=NOW,
            skipped=state["skipped"],
            anchor_id=state["anchor_id"],
            anchor_next=state["anchor_next"],
        )
    return {**items, **plan.puts}, plan.result


def _stored(dsn_conn: psycopg.Connection[Any], prefix: str) -> dict[str, Any]:
    rows = dsn_conn.execute("SELECT key, value FROM store WHERE prefix = %s", (prefix,))
    return {key: value for key, value in rows.fetchall()}


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(state=states())
def test_one_statement_append_matches_the_planner(
    pg_store: BaseStore, pg_dsn: str, state: dict[str, Any]
) -> None:
    driver = driver_for(pg_store)
    assert isinstance(driver, PostgresDriver)
    namespace = ("prop", uuid.uuid4().hex)
    prefix = namespace_text(namespace)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        for key, value in state["items"].items():
            conn.execute(
                "INSERT INTO store (prefix, key, value) VALUES (%s, %s, %s::jsonb)",
                (prefix, key, orjson.dumps(value).decode()),
            )
        request = AppendRequest(
            state["pending"],
            chunk_size=state["chunk_size"],
            value_field="content",
            now=NOW,
            skipped=state["skipped"],
            anchor_id=state["anchor_id"],
            anchor_next=state["anchor_next"],
        )
        with mock.patch("agent_history.history.drivers.postgres_base.new_head", _fixed_head):
            result = driver.append(namespace, request)
        expected_items, expected_result = _expected(state)
        assert result == expected_result
        assert _stored(conn, prefix) == expected_items
