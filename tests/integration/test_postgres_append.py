"""PostgreSQL's one-statement append writes exactly what the Python planner plans.

``agent_history_append_v4`` re-implements `layout.plan_append` in plpgsql so an append is
one round trip. This property test builds random conversation states (heads, open
chunks with records of abandoned epochs, id entries of this and other epochs, with and
without a run token), random pending turns and anchors (with the ids that follow them in
the run), runs both, and compares every stored item and the reported result.
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
from langchain_core.messages import HumanMessage
from langgraph.store.base import BaseStore

from agent_history.history import ChatHistory
from agent_history.history.drivers import AppendRequest, driver_for, namespace_text
from agent_history.history.drivers import postgres_base as pg_sql
from agent_history.history.drivers.postgres import PostgresDriver
from agent_history.history.layout import (
    HEAD_KEY,
    PendingTurn,
    chunk_index,
    chunk_key,
    msgid_key,
    plan_append,
)
from agent_history.history.steps import Get
from agent_history.settings import HistorySettings
from agent_history.stores import create_graph_store_sync

pytestmark = pytest.mark.postgres

NOW = "2030-01-02T03:04:05.000006+00:00"
EPOCHS = ("epoch-a", "epoch-b")
IDS = ("m1", "m2", "m3", "reply:m1:0", "ünïcødé id", "x" * 240, 'q"{a, b}\\ NULL')
TOKENS = ("run-1", "run-2", 'run "3" \\')


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
        "anchor_seen": tuple(draw(st.lists(st.sampled_from(TOKENS), max_size=3))),
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
            anchor_seen=state["anchor_seen"],
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
    _append_and_compare(pg_store, pg_dsn, state)


def test_a_large_append_matches_the_planner(pg_store: BaseStore, pg_dsn: str) -> None:
    """Thousands of messages in one append (an import, a long tool loop): ids repeated
    within the batch and already stored (in this epoch and an abandoned one), messages
    without ids between them, an open chunk holding an abandoned epoch's records, and
    hundreds of chunks written at once. (The function handles the messages in set-based
    statements; the property test above only reaches a few of them.)"""
    head = {
        "kind": "head", "version": 1, "last_seq": 6, "chunk_size": 4, "epoch": "epoch-a",
        "created_at": "2029-01-01T00:00:00+00:00", "updated_at": "2029-01-01T00:00:00+00:00",
    }  # fmt: skip
    records = [
        {"seq": seq, "role": "user", "content": f"old {seq}", "ts": "t"} for seq in range(5, 9)
    ]
    items: dict[str, dict[str, Any]] = {
        HEAD_KEY: head,
        chunk_key(1): {"kind": "chunk", "index": 1, "turns": records},
        msgid_key("id-7"): {"kind": "msgid", "seq": 3, "epoch": "epoch-a"},
        msgid_key("id-8"): {"kind": "msgid", "seq": 4, "epoch": "epoch-b"},
        msgid_key("x" * 240): {"kind": "msgid", "seq": 5, "epoch": "epoch-a"},
    }
    pending = []
    for i in range(3000):
        message_id = None if i % 5 == 0 else f"id-{i % 1500}"
        if i == 2999:
            message_id = "x" * 240
        pending.append(PendingTurn(("user", "assistant")[i % 2], f"turn {i}", message_id, None))
    state = {
        "items": items, "head": head, "pending": pending, "chunk_size": 16,
        "anchor_id": "id-1", "anchor_next": "id-2", "anchor_seen": (), "skipped": 0,
    }  # fmt: skip
    result = _append_and_compare(pg_store, pg_dsn, state)
    assert (result.appended, result.duplicates, result.first_seq) == (1799, 1201, 7)


def _append_and_compare(pg_store: BaseStore, pg_dsn: str, state: dict[str, Any]) -> Any:
    """Write ``state`` into a new conversation, append its pending turns through the
    driver, and compare the result and every stored item with the planner's."""
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
            anchor_seen=state["anchor_seen"],
        )
        with mock.patch("agent_history.history.drivers.postgres_base.new_head", _fixed_head):
            result = driver.append(namespace, request)
        expected_items, expected_result = _expected(state)
        assert result == expected_result
        assert _stored(conn, prefix) == expected_items
    return result


@settings(max_examples=200, deadline=None)
# Text as ids and keys reach the server: never U+0000 nor a lone surrogate (refused first).
@given(
    values=st.lists(
        st.none() | st.text(st.characters(exclude_characters="\x00", exclude_categories=("Cs",)))
    )
)
def test_the_appends_text_arrays_reach_the_server_as_they_were(
    pg_dsn: str, values: list[str | None]
) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        row = conn.execute("SELECT %s::text[]", (pg_sql.text_array(values),)).fetchone()
    assert row is not None and row[0] == values


_TOUCHED = (
    "SELECT pg_stat_get_xact_tuples_fetched('store'::regclass)"
    " + pg_stat_get_xact_tuples_returned('store'::regclass)"
)


def _rows_touched(conn: psycopg.Connection[Any], sql_text: str, params: Any) -> int:
    """Rows of ``store`` the statement read (index fetches and scans), from the session's
    statistics counters, before and after it."""
    with conn.transaction():
        before = conn.execute(_TOUCHED).fetchone()
        conn.execute(sql_text, params, prepare=True).fetchall()
        after = conn.execute(_TOUCHED).fetchone()
    assert before is not None and after is not None
    return int(after[0]) - int(before[0])


def test_a_big_conversation_is_never_scanned_whatever_the_statistics(fresh_pg_dsn: str) -> None:
    """With statistics taken while every conversation was small (as they stay once
    conversations are many), `prefix = $1 AND key = ...` is planned with the prefix
    index and a filter: a scan of the whole conversation. Ours reads by primary key."""
    settings = HistorySettings(graph_store_backend="postgres", postgres_dsn=fresh_pg_dsn)
    with create_graph_store_sync(settings) as store:
        history = ChatHistory(store)
        for i in range(200):
            history.append(f"small{i}", [HumanMessage(f"m{j}") for j in range(3)])
        with psycopg.connect(fresh_pg_dsn, autocommit=True) as conn:
            conn.execute("ANALYZE store")
        for block in range(4):
            turns = [HumanMessage(f"t{block}-{j}", id=f"b{block}-{j}") for j in range(2000)]
            history.append("big", turns)
        driver = driver_for(store)
        assert isinstance(driver, PostgresDriver)
        prefix = namespace_text(history.conversation_namespace("big"))
        with psycopg.connect(fresh_pg_dsn) as conn:
            # The plans a prepared statement gets after a few executions (the drivers'
            # statements are prepared): made without the parameters' values.
            conn.execute("SET plan_cache_mode = force_generic_plan")
            count = conn.execute("SELECT count(*) FROM store WHERE prefix = %s", (prefix,))
            row = count.fetchone()
            conn.commit()
            assert row is not None and row[0] > 8000
            tail = pg_sql.select(prefix, Get((HEAD_KEY,), newest_chunks=2))
            assert _rows_touched(conn, *tail) < 20
            # A few keys (one lookup each, joined) and many keys (an array).
            few = Get((HEAD_KEY, msgid_key("b0-1"), msgid_key("absent")), newest_chunks=1)
            assert _rows_touched(conn, *pg_sql.select(prefix, few)) < 20
            many = Get((HEAD_KEY, *(msgid_key(f"b3-{j}") for j in range(12))))
            assert _rows_touched(conn, *pg_sql.select(prefix, many)) < 40
            request = AppendRequest(
                [PendingTurn("user", "new", "n1", "human"), PendingTurn("assistant", "ok", "n2", "ai")],
                chunk_size=32, value_field="content", now=NOW, anchor_id="n1",
                anchor_next="n2",
            )  # fmt: skip
            params = pg_sql.append_params(prefix, request, driver.ttl, 0)
            assert _rows_touched(conn, pg_sql.APPEND_SQL, params) < 20
        assert [m.content for m in history.tail("big", 3)] == ["t3-1999", "new", "ok"]


_READS = {
    "tail": Get((HEAD_KEY,), newest_chunks=2),
    "head-and-summary": Get((HEAD_KEY, "summary")),  # a tail under a budget
    "append-lookup": Get((HEAD_KEY, msgid_key("b0-1"), msgid_key("b9")), newest_chunks=1),
    "many-ids": Get(tuple(msgid_key(f"b1-{j}") for j in range(12))),
}


def test_the_read_queries_keep_one_cached_plan(fresh_pg_dsn: str) -> None:
    """A prepared statement is planned for its values on its first five runs; then the
    server keeps a generic plan, unless that looks dearer than the custom ones: then it
    plans the query again on every call (0.2-0.4 ms, more than running it). With a big
    table, a LIMIT taken as a parameter did that to every tail."""
    settings = HistorySettings(graph_store_backend="postgres", postgres_dsn=fresh_pg_dsn)
    with create_graph_store_sync(settings) as store:
        history = ChatHistory(store)
        for block in range(3):
            turns = [HumanMessage(f"t{block}-{j}", id=f"b{block}-{j}") for j in range(2000)]
            history.append("big", turns)
        prefix = namespace_text(history.conversation_namespace("big"))
    with psycopg.connect(fresh_pg_dsn, autocommit=True) as conn:
        conn.execute("ANALYZE store")
        plans = {}
        for name, request in _READS.items():
            sql_text, params = pg_sql.select(prefix, request)
            for _ in range(8):
                conn.execute(sql_text, params, prepare=True).fetchall()
            row = conn.execute(
                "SELECT generic_plans, custom_plans FROM pg_prepared_statements "
                "WHERE statement = (SELECT statement FROM pg_prepared_statements "
                "ORDER BY prepare_time DESC LIMIT 1)"
            ).fetchone()
            plans[name] = row
    assert plans == {name: (3, 5) for name in _READS}
