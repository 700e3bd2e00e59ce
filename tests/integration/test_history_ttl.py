"""A store configured with TTL expires history like any other item, a whole conversation
at a time: set on write, pushed back on read when the store refreshes on read, and the
store's own sweeper removes every item of an expired conversation and nothing else."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.store.base import BaseStore
from langgraph.store.postgres import PostgresStore
from langgraph.store.sqlite import SqliteStore

from agent_history.history import ChatHistory
from agent_history.history.drivers import namespace_text
from tests.support.postgres_server import waiting_on_a_lock

TTL_MINUTES = 60.0
CHUNK = 2  # several chunk items from a few turns


@contextmanager
def _ttl_store(kind: str, tmp_path: Path, dsn: str | None, refresh: bool) -> Iterator[BaseStore]:
    ttl: Any = {"default_ttl": TTL_MINUTES, "refresh_on_read": refresh}
    if kind == "sqlite":
        conn = sqlite3.connect(
            tmp_path / "ttl.sqlite", isolation_level=None, check_same_thread=False
        )
        try:
            store = SqliteStore(conn, ttl=ttl)
            store.setup()
            yield store
        finally:
            conn.close()
    else:
        assert dsn is not None
        with PostgresStore.from_conn_string(dsn, ttl=ttl) as pg_store:
            pg_store.setup()
            yield pg_store


class Rows:
    """The store table as SQL sees it (the sweeper's view)."""

    def __init__(self, kind: str, tmp_path: Path, dsn: str | None) -> None:
        self.kind, self.path, self.dsn = kind, tmp_path / "ttl.sqlite", dsn

    def query(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        if self.kind == "sqlite":
            conn = sqlite3.connect(self.path, isolation_level=None)
            try:
                return conn.execute(sql.replace("%s", "?"), params).fetchall()
            finally:
                conn.close()
        assert self.dsn is not None
        with psycopg.connect(self.dsn, autocommit=True) as pg:
            cur = pg.execute(sql, params)
            return list(cur.fetchall()) if cur.description else []

    def expiries(self, prefix: str) -> dict[str, tuple[datetime | None, Any]]:
        rows = self.query(
            "SELECT key, expires_at, ttl_minutes FROM store WHERE prefix = %s", (prefix,)
        )
        return {key: (_when(at), minutes) for key, at, minutes in rows}

    def set_expiry(self, prefix: str, when: datetime) -> None:
        value: Any = when.strftime("%Y-%m-%d %H:%M:%S") if self.kind == "sqlite" else when
        self.query("UPDATE store SET expires_at = %s WHERE prefix = %s", (value, prefix))


def _when(raw: Any) -> datetime | None:
    if raw is None:
        return None
    moment = raw if isinstance(raw, datetime) else datetime.fromisoformat(str(raw))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def dsn(kind: str, request: pytest.FixtureRequest) -> str | None:
    return str(request.getfixturevalue("fresh_pg_dsn")) if kind == "postgres" else None


def _one_expiry(expiries: dict[str, tuple[datetime | None, Any]]) -> datetime:
    values = {at for at, _ in expiries.values()}
    assert len(values) == 1, expiries  # one expiry for the whole conversation
    (only,) = values
    assert only is not None
    return only


def test_history_items_expire_like_other_items_and_as_a_whole(
    kind: str, dsn: str | None, tmp_path: Path
) -> None:
    rows = Rows(kind, tmp_path, dsn)
    with _ttl_store(kind, tmp_path, dsn, refresh=True) as store:
        history = ChatHistory(store, namespace=("ttl", uuid.uuid4().hex[:8]), chunk_size=CHUNK)
        key = "telegram:1"
        prefix = namespace_text(history.conversation_namespace(key))
        before = datetime.now(UTC)
        for i in range(3):
            history.append(key, [HumanMessage(f"q{i}", id=f"q{i}"), AIMessage(f"a{i}")])
        store.put(("ttl", "other"), "note", {"v": 1})  # an ordinary item, same store
        after = datetime.now(UTC)

        expiries = rows.expiries(prefix)
        # head, 3 chunks of 2 turns, 3 id entries: all with the same expiry, set on write
        assert len(expiries) == 1 + 3 + 3
        expiry = _one_expiry(expiries)
        window = timedelta(minutes=TTL_MINUTES)
        assert before + window - timedelta(seconds=1) <= expiry <= after + window
        (note_expiry, note_minutes) = rows.expiries("ttl.other")["note"]
        assert note_expiry is not None and abs(note_expiry - expiry) < timedelta(seconds=5)
        assert note_minutes == TTL_MINUTES
        # History items carry no per-item TTL, so a plain store.get of one item (which
        # LangGraph refreshes item by item) cannot split the conversation's expiry.
        assert {minutes for _, minutes in expiries.values()} == {None}
        assert store.get(history.conversation_namespace(key), "head") is not None
        assert _one_expiry(rows.expiries(prefix)) == expiry

        # Read when most of the TTL has passed: the whole conversation is pushed back.
        soon = datetime.now(UTC) + timedelta(minutes=5)
        rows.set_expiry(prefix, soon)
        assert [m.content for m in history.tail(key, 2)] == ["q2", "a2"]
        refreshed = _one_expiry(rows.expiries(prefix))
        assert refreshed > soon + timedelta(minutes=TTL_MINUTES / 2)

        # Expired: the store's own sweeper removes every item of it, and only those.
        rows.set_expiry(prefix, datetime.now(UTC) - timedelta(minutes=1))
        store.sweep_ttl()
        assert rows.expiries(prefix) == {}
        assert history.count(key) == 0
        assert store.get(("ttl", "other"), "note") is not None
        again = history.append(key, [HumanMessage("new start", id="n1")])
        assert (again.first_seq, again.total) == (1, 1)


def test_without_refresh_on_read_only_writes_push_the_expiry_back(
    kind: str, dsn: str | None, tmp_path: Path
) -> None:
    rows = Rows(kind, tmp_path, dsn)
    with _ttl_store(kind, tmp_path, dsn, refresh=False) as store:
        history = ChatHistory(store, namespace=("ttl", uuid.uuid4().hex[:8]), chunk_size=CHUNK)
        key = "telegram:2"
        prefix = namespace_text(history.conversation_namespace(key))
        history.append(key, [HumanMessage(f"m{i}", id=f"m{i}") for i in range(5)])
        soon = (datetime.now(UTC) + timedelta(minutes=5)).replace(microsecond=0)
        rows.set_expiry(prefix, soon)
        assert len(history.tail(key, 3)) == 3
        assert _one_expiry(rows.expiries(prefix)) == soon  # a read does not refresh
        history.append(key, [HumanMessage("m5", id="m5")])
        assert _one_expiry(rows.expiries(prefix)) > soon + timedelta(minutes=TTL_MINUTES / 2)


def test_a_store_without_ttl_writes_no_expiry(
    kind: str, dsn: str | None, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    rows = Rows(kind, tmp_path, dsn)
    with _ttl_store(kind, tmp_path, dsn, refresh=True) as store:
        store.ttl_config = None  # the same store, configured without TTL
        history = ChatHistory(store, namespace=("ttl", uuid.uuid4().hex[:8]))
        history.append("telegram:3", [HumanMessage("x", id="x")])
        prefix = namespace_text(history.conversation_namespace("telegram:3"))
        assert {at for at, _ in rows.expiries(prefix).values()} == {None}


@pytest.mark.postgres
@pytest.mark.parametrize("sweep", ["commits", "rolls_back"])
def test_an_append_racing_a_sweep_leaves_a_whole_conversation(
    fresh_pg_dsn: str, tmp_path: Path, sweep: str
) -> None:
    """LangGraph's sweeper deletes expired rows without the conversation's lock. An append
    that meets an uncommitted sweep of its conversation waits for it: after the sweep the
    conversation starts again from nothing (no old turn revived, no chunk without its
    head); without it, the whole conversation is continued and refreshed."""
    import threading

    application = "append-" + uuid.uuid4().hex[:8]
    dsn = f"{fresh_pg_dsn}{'&' if '?' in fresh_pg_dsn else '?'}application_name={application}"
    rows = Rows("postgres", tmp_path, fresh_pg_dsn)
    with _ttl_store("postgres", tmp_path, dsn, refresh=False) as store:
        history = ChatHistory(store, namespace=("ttl", uuid.uuid4().hex[:8]), chunk_size=CHUNK)
        key = "telegram:1"
        prefix = namespace_text(history.conversation_namespace(key))
        history.append(key, [HumanMessage(f"old {i}", id=f"o{i}") for i in range(6)])
        rows.set_expiry(prefix, datetime.now(UTC) - timedelta(minutes=5))

        with psycopg.connect(fresh_pg_dsn) as sweeper:
            sweeper.execute("DELETE FROM store WHERE expires_at < now()")  # not committed
            result: list[Any] = []
            appender = threading.Thread(
                target=lambda: result.append(history.append(key, [HumanMessage("new", id="n1")]))
            )
            appender.start()
            while not waiting_on_a_lock(fresh_pg_dsn, application):
                assert appender.is_alive() or result, "the append did not wait for the sweep"
                if not appender.is_alive():
                    break
            if sweep == "commits":
                sweeper.commit()
            else:
                sweeper.rollback()
            appender.join(30)
        assert not appender.is_alive()

        stored = [t.content for t in history.read(key)]
        keys = set(rows.expiries(prefix))
        if sweep == "commits":
            assert stored == ["new"] and result[0].last_seq == 1
            assert keys == {"head", "chunk:0000000000", "msgid:n1"}
        else:
            assert stored == [*(f"old {i}" for i in range(6)), "new"]
            assert result[0].last_seq == 7
        expiry = _one_expiry(rows.expiries(prefix))
        assert expiry > datetime.now(UTC) + timedelta(minutes=TTL_MINUTES - 5)
