"""Listing conversations (`ChatHistory.keys`, behind `stats`, `export`, `purge`, `migrate`)
over several pages, among other namespaces, on a PostgreSQL database whose collation
does not sort by bytes.

A listing used to fetch each page by offset, a scan of everything before it: its cost
grew with the square of the number of conversations. The SQL drivers now seek past the
previous page's last namespace, in byte order, which must still list every conversation
exactly once, whatever the keys and whatever else the store holds.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from langchain_core.messages import HumanMessage
from langgraph.store.base import BaseStore
from langgraph.store.memory import InMemoryStore
from langgraph.store.postgres import AsyncPostgresStore, PostgresStore
from langgraph.store.sqlite import SqliteStore
from psycopg.conninfo import make_conninfo

from agent_history.history import ChatHistory

PAGE = 500  # chat_history._KEYS_PAGE
ODD_KEYS = [
    "telegram:1",
    "telegram:10",
    "telegram:-100123",
    "wecom_dm:Alice",
    "wecom_dm:alice",
    "a.b",
    "a/b",
    "a~b",
    "a_b",
    "a b",
    "A",
    "Zed",
    "é",
    "chat 😀",
    "%41",
    "x" * 256,
]
KEYS = ODD_KEYS + [f"telegram:{n}" for n in range(2 * PAGE + 37)]


def _fill(store: BaseStore) -> None:
    history = ChatHistory(store)
    for n, key in enumerate(KEYS):
        history.append(key, [HumanMessage(f"m{n}", id=f"id{n}")])
    # Other data beside the conversations, sorting among them in one collation or another.
    for namespace in (
        ("agent_chat_historyx", "k"),
        ("agent_chat_history_other", "k"),
        ("agent_chat_histor", "y"),
        ("Agent_chat_history", "k"),
        ("agent_chat_history", "telegram:1", "nested"),
        ("profiles",),
    ):
        store.put(namespace, "item", {"v": 1})
    ChatHistory(store, namespace=("agent_chat_history", "sub")).append(
        "t:1", [HumanMessage("hi", id="s1")]
    )


def _assert_listed(keys: list[str]) -> None:
    assert len(keys) == len(set(keys))
    assert set(keys) == set(KEYS)


@pytest.fixture
def icu_dsn(pg_dsn: str) -> Iterator[str]:
    """A database whose default collation is ICU's English with punctuation ignored (as
    glibc's ``en_US.UTF-8`` ignores it): `.` and `/` no longer bound a namespace's
    children, and other namespaces sort among them."""
    database = "icu_" + uuid.uuid4().hex[:8]
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute(
            f'CREATE DATABASE "{database}" TEMPLATE template0 '
            "LOCALE_PROVIDER icu ICU_LOCALE 'en-US-u-ka-shifted' LOCALE 'C.UTF-8'"
        )
    try:
        yield make_conninfo(pg_dsn, dbname=database)
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def test_sqlite_lists_every_conversation_once(tmp_path: Path) -> None:
    with SqliteStore.from_conn_string(str(tmp_path / "store.db")) as store:
        store.setup()
        _fill(store)
        _assert_listed(list(ChatHistory(store).keys()))
        sub = list(ChatHistory(store, namespace=("agent_chat_history", "sub")).keys())
        assert sub == ["t:1"]


def test_memory_lists_every_conversation_once() -> None:
    store = InMemoryStore()
    _fill(store)
    _assert_listed(list(ChatHistory(store).keys()))


@pytest.mark.postgres
def test_postgres_lists_every_conversation_once_whatever_the_collation(icu_dsn: str) -> None:
    with psycopg.connect(icu_dsn) as probe:  # the collation interleaves other namespaces
        row = probe.execute(
            "SELECT 'agent_chat_history.zz' > 'agent_chat_historyx.k', "
            "'agent_chat_history.a' > 'agent_chat_history/'"
        ).fetchone()
        assert row == (True, True)  # both False in byte order
    with PostgresStore.from_conn_string(icu_dsn) as store:
        store.setup()
        _fill(store)
        _assert_listed(list(ChatHistory(store).keys()))
        sub = list(ChatHistory(store, namespace=("agent_chat_history", "sub")).keys())
        assert sub == ["t:1"]

    async def listed() -> list[str]:
        async with AsyncPostgresStore.from_conn_string(icu_dsn) as astore:
            return [key async for key in ChatHistory(astore).akeys()]

    _assert_listed(asyncio.run(listed()))


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BaseStore]:
    if request.param == "memory":
        yield InMemoryStore()
    elif request.param == "sqlite":
        with SqliteStore.from_conn_string(str(tmp_path / "store.db")) as store:
            store.setup()
            yield store
    else:
        dsn = request.getfixturevalue("fresh_pg_dsn")
        with PostgresStore.from_conn_string(dsn) as store:
            store.setup()
            yield store


def test_a_listing_during_deletes_and_creates_lists_each_conversation_once(
    any_store: BaseStore,
) -> None:
    """Conversations deleted and created while a listing runs (another worker's purge,
    new chats): every conversation there throughout is listed once. The in-memory store
    was listed by offset: after 30 deletes the listing skipped 30 conversations, and after
    10 creates it listed 10 twice."""
    history = ChatHistory(any_store)
    keys = [f"k{n:04d}" for n in range(2 * PAGE + 200)]
    for key in keys:
        history.append(key, [HumanMessage("hi")])
    listed: list[str] = []
    for key in history.keys():  # noqa: SIM118 - ChatHistory is not a mapping
        listed.append(key)
        if len(listed) == PAGE:  # the first page is read: delete 30 conversations of it
            for gone in listed[:30]:
                assert history.delete(gone)
        if len(listed) == 2 * PAGE:  # the second: create 10 that sort before the rest
            for n in range(10):
                history.append(f"a-new-{n}", [HumanMessage("hi")])
    assert len(listed) == len(set(listed))
    assert set(listed) == set(keys)
