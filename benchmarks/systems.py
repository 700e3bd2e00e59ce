"""The systems under test behind one interface: bulk-load a history, read its tail, append.

- ``ours``: `ChatHistory` in the LangGraph store (default chunk size), through its
  backend's driver (SQL of its own on SQLite and PostgreSQL);
- ``ours-basestore``: the same layout through plain ``BaseStore.batch`` calls (the
  generic driver), to tell the layout's gain from the SQL fast path's;
- ``naive``: `NaiveHistory`, one store item holding the whole list (read-modify-write);
- ``langchain-postgres``: `PostgresChatMessageHistory`, one row per message in its own table;
- ``floor``: the least any design can do: an indexed table ``(conv, seq, role, content)``
  through the driver directly (sqlite3, psycopg), or a dict of lists in memory.

A tail returns LangChain messages, as `AgentNode` reads it: every system builds them as
ours does (`records.message_from_record`: the class called with content and id), so the
ratios compare the storage, not the message construction (langchain-postgres builds its
own).
"""

from __future__ import annotations

import sqlite3
import threading
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langgraph.store.base import BaseStore, Op, Result
from psycopg import sql

from agent_history.history import ChatHistory
from benchmarks.connections import connect
from benchmarks.naive_history import NaiveHistory
from benchmarks.workload import Turn, as_dict, synthetic_turns

__all__ = [
    "FLOOR",
    "LANGCHAIN",
    "NAIVE",
    "OURS",
    "OURS_PLAIN",
    "HistorySystem",
    "LangchainPostgresSystem",
    "MemoryFloor",
    "NaiveSystem",
    "OursPlainSystem",
    "OursSystem",
    "PlainStore",
    "PostgresFloor",
    "SqliteFloor",
    "as_messages",
]

OURS = "ours"
OURS_PLAIN = "ours-basestore"
NAIVE = "naive"
LANGCHAIN = "langchain-postgres"
FLOOR = "floor"

_CLASS: dict[str, type[BaseMessage]] = {"user": HumanMessage, "assistant": AIMessage}


def as_messages(rows: Iterable[tuple[str, Any]]) -> list[BaseMessage]:
    """``(role, content)`` rows as LangChain messages, built as ours are (a text question
    or answer: its class called with content and id, see `records.message_from_record`)."""
    return [_CLASS[role](content=content, id=None) for role, content in rows]


# Bulk loads go in slices so no single statement or plan holds a 100k-turn history
# twice over; a multiple of the chunk size keeps our chunks full.
_LOAD_SLICE = 32 * 1024


class HistorySystem(ABC):
    """One way of keeping chat history, on one backend."""

    name: str
    """``ours``, ``naive``, ``langchain-postgres`` or ``floor``."""

    def __init__(self, backend: str, content_chars: int) -> None:
        self.backend = backend
        self.content_chars = content_chars

    @abstractmethod
    def load(self, key: str, length: int) -> None:
        """Create conversation ``key`` holding ``length`` turns, as fast as the system allows."""

    def _slices(self, length: int, size: int = _LOAD_SLICE) -> Iterator[tuple[int, list[Turn]]]:
        """The synthetic history in slices: (turns before the slice, the slice)."""
        for start in range(0, length, size):
            count = min(size, length - start)
            yield start, synthetic_turns(start + 1, count, self.content_chars)

    @abstractmethod
    def tail(self, key: str, n: int) -> int:
        """Read the newest ``n`` turns the way an agent would; return how many came back."""

    @abstractmethod
    def append(self, key: str, pair: Sequence[BaseMessage]) -> None:
        """Append one user and one assistant message."""

    @abstractmethod
    def count(self, key: str) -> int:
        """Turns stored in the conversation (used to verify appends, never timed)."""

    def close(self) -> None:
        """Release what the system opened (the shared store is closed by its owner)."""
        return None

    @property
    def tables(self) -> tuple[str, ...]:
        """PostgreSQL tables of the system's own (created and dropped by it)."""
        return ()


class OursSystem(HistorySystem):
    """`ChatHistory` on the backend's LangGraph store, under ``namespace``."""

    name = OURS

    def __init__(
        self, backend: str, content_chars: int, store: BaseStore, *, namespace: tuple[str, ...]
    ) -> None:
        super().__init__(backend, content_chars)
        self.history = ChatHistory(store, namespace=namespace)

    def load(self, key: str, length: int) -> None:
        for _, turns in self._slices(length):
            self.history.append(key, turns)

    def tail(self, key: str, n: int) -> int:
        return len(self.history.tail(key, n))

    def append(self, key: str, pair: Sequence[BaseMessage]) -> None:
        self.history.append(key, pair)

    def count(self, key: str) -> int:
        return self.history.count(key)


class PlainStore(BaseStore):
    """A store seen through its public ``batch``/``abatch`` only: a `ChatHistory` on it
    gets the generic driver (the store's own calls, no SQL of its own)."""

    def __init__(self, inner: BaseStore) -> None:
        self.inner = inner

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        return self.inner.batch(ops)

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        return await self.inner.abatch(ops)


class OursPlainSystem(OursSystem):
    """`ChatHistory` in the same store and layout, through plain `BaseStore` calls."""

    name = OURS_PLAIN

    def __init__(
        self, backend: str, content_chars: int, store: BaseStore, *, namespace: tuple[str, ...]
    ) -> None:
        super().__init__(backend, content_chars, store, namespace=namespace)
        self.loader = self.history  # bulk loads take the fast path: the same items
        self.history = ChatHistory(PlainStore(store), namespace=namespace)

    def load(self, key: str, length: int) -> None:
        for _, turns in self._slices(length):
            self.loader.append(key, turns)


class NaiveSystem(HistorySystem):
    """`NaiveHistory` on the backend's LangGraph store, under ``namespace``."""

    name = NAIVE

    def __init__(
        self, backend: str, content_chars: int, store: BaseStore, *, namespace: tuple[str, ...]
    ) -> None:
        super().__init__(backend, content_chars)
        self.history = NaiveHistory(store, namespace=namespace)

    def load(self, key: str, length: int) -> None:
        # One put of the whole list: building it turn by turn would cost O(length**2).
        turns = synthetic_turns(1, length, self.content_chars)
        self.history.store.put(self.history.namespace, key, {"messages": turns}, index=False)

    def tail(self, key: str, n: int) -> int:
        return len(as_messages((t["role"], t["content"]) for t in self.history.tail(key, n)))

    def append(self, key: str, pair: Sequence[BaseMessage]) -> None:
        self.history.append(key, [as_dict(m) for m in pair])

    def count(self, key: str) -> int:
        return len(self.history.all(key))


def _as_message(turn: Turn) -> BaseMessage:
    cls = HumanMessage if turn["role"] == "user" else AIMessage
    return cls(content=turn["content"], id=turn.get("id"))


class LangchainPostgresSystem(HistorySystem):
    """langchain-postgres' `PostgresChatMessageHistory`, in a table of its own.

    It reads a whole session at once, so a window is ``messages[-n:]``: that is the read
    an agent with a 30-message window makes with it.
    """

    name = LANGCHAIN
    _LOAD_BATCH = 10_000

    def __init__(self, backend: str, content_chars: int, dsn: str) -> None:
        from langchain_postgres import PostgresChatMessageHistory

        super().__init__(backend, content_chars)
        self._cls = PostgresChatMessageHistory
        # The package commits itself after writes, so the connection is not autocommit.
        self.dsn = dsn
        self.conn = connect(dsn)
        self.table = "lc_chat_" + uuid.uuid4().hex[:10]
        PostgresChatMessageHistory.create_tables(self.conn, self.table)
        self._sessions: dict[str, Any] = {}

    def _session(self, key: str) -> Any:
        found = self._sessions.get(key)
        if found is None:
            # Session ids must be UUIDs; derive a stable one from our key.
            session_id = str(uuid.uuid5(uuid.NAMESPACE_URL, key))
            found = self._cls(self.table, session_id, sync_connection=self.conn)
            self._sessions[key] = found
        return found

    def load(self, key: str, length: int) -> None:
        # Its own add_messages in big batches (one executemany each).
        session = self._session(key)
        for _, turns in self._slices(length, self._LOAD_BATCH):
            session.add_messages([_as_message(t) for t in turns])

    def tail(self, key: str, n: int) -> int:
        return len(self._session(key).messages[-n:])

    def append(self, key: str, pair: Sequence[BaseMessage]) -> None:
        self._session(key).add_messages(list(pair))

    def count(self, key: str) -> int:
        session_id = self._session(key)._session_id
        row = self.conn.execute(
            f"SELECT count(*) FROM {self.table} WHERE session_id = %s", (session_id,)
        ).fetchone()
        self.conn.commit()
        return int(row[0]) if row else 0

    @property
    def tables(self) -> tuple[str, ...]:
        return (self.table,)

    def close(self) -> None:
        _drop_table(self.conn, self.dsn, self.table)


class MemoryFloor(HistorySystem):
    """A dict of lists: what an in-process history costs without any store."""

    name = FLOOR

    def __init__(self, backend: str, content_chars: int) -> None:
        super().__init__(backend, content_chars)
        self.data: dict[str, list[Turn]] = {}

    def load(self, key: str, length: int) -> None:
        self.data[key] = synthetic_turns(1, length, self.content_chars)

    def tail(self, key: str, n: int) -> int:
        return len(as_messages((t["role"], t["content"]) for t in self.data.get(key, [])[-n:]))

    def append(self, key: str, pair: Sequence[BaseMessage]) -> None:
        self.data.setdefault(key, []).extend(as_dict(m) for m in pair)

    def count(self, key: str) -> int:
        return len(self.data.get(key, []))


# One statement appends both turns: numbering from the indexed max(seq) keeps the floor
# self-contained (no client-side counter) at the cost of one index probe.
_SQLITE_FLOOR_DDL = (
    "CREATE TABLE IF NOT EXISTS floor (conv TEXT NOT NULL, seq INTEGER NOT NULL, "
    "role TEXT NOT NULL, content TEXT NOT NULL, PRIMARY KEY (conv, seq))"
)
_SQLITE_FLOOR_TAIL = "SELECT seq, role, content FROM floor WHERE conv = ? ORDER BY seq DESC LIMIT ?"
_SQLITE_FLOOR_APPEND = (
    "INSERT INTO floor (conv, seq, role, content) "
    "SELECT ?, b.base + v.n, v.role, v.content "
    "FROM (SELECT coalesce(max(seq), 0) AS base FROM floor WHERE conv = ?) AS b, "
    "(SELECT 1 AS n, 'user' AS role, ? AS content "
    "UNION ALL SELECT 2, 'assistant', ?) AS v"
)


class SqliteFloor(HistorySystem):
    """The indexed table through ``sqlite3``, in its own WAL-mode file."""

    name = FLOOR

    def __init__(self, backend: str, content_chars: int, path: Path) -> None:
        super().__init__(backend, content_chars)
        # The same connection settings as the store's (autocommit, WAL, one connection
        # shared by threads under a lock).
        self.conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute(_SQLITE_FLOOR_DDL)
        self.lock = threading.Lock()

    def load(self, key: str, length: int) -> None:
        for before, turns in self._slices(length):
            rows = [(key, before + i + 1, t["role"], t["content"]) for i, t in enumerate(turns)]
            with self.lock:
                self.conn.execute("BEGIN")
                self.conn.executemany("INSERT INTO floor VALUES (?, ?, ?, ?)", rows)
                self.conn.execute("COMMIT")

    def tail(self, key: str, n: int) -> int:
        with self.lock:
            rows = self.conn.execute(_SQLITE_FLOOR_TAIL, (key, n)).fetchall()
        rows.reverse()
        return len(as_messages((role, content) for _, role, content in rows))

    def append(self, key: str, pair: Sequence[BaseMessage]) -> None:
        with self.lock:
            self.conn.execute(_SQLITE_FLOOR_APPEND, (key, key, pair[0].content, pair[1].content))

    def count(self, key: str) -> int:
        with self.lock:
            row = self.conn.execute("SELECT count(*) FROM floor WHERE conv = ?", (key,)).fetchone()
        return int(row[0])

    def close(self) -> None:
        self.conn.close()


_PG_FLOOR_APPEND = (
    "INSERT INTO {table} (conv, seq, role, content) "
    "SELECT %s, b.base + v.n, v.role, v.content "
    "FROM (SELECT coalesce(max(seq), 0) AS base FROM {table} WHERE conv = %s) AS b, "
    "(VALUES (1, 'user', %s::text), (2, 'assistant', %s::text)) AS v(n, role, content)"
)


class PostgresFloor(HistorySystem):
    """The indexed table through ``psycopg`` directly, on one autocommit connection."""

    name = FLOOR

    def __init__(self, backend: str, content_chars: int, dsn: str) -> None:
        super().__init__(backend, content_chars)
        self.dsn = dsn
        self.conn = connect(dsn, autocommit=True)
        self.table = "floor_" + uuid.uuid4().hex[:10]
        self.conn.execute(
            f"CREATE TABLE {self.table} (conv text NOT NULL, seq bigint NOT NULL, "
            "role text NOT NULL, content text NOT NULL, PRIMARY KEY (conv, seq))"
        )
        self._tail_sql = (
            f"SELECT seq, role, content FROM {self.table} WHERE conv = %s "
            "ORDER BY seq DESC LIMIT %s"
        )
        self._append_sql = _PG_FLOOR_APPEND.format(table=self.table)
        self.lock = threading.Lock()

    def load(self, key: str, length: int) -> None:
        copy_sql = f"COPY {self.table} (conv, seq, role, content) FROM STDIN"
        for before, turns in self._slices(length):
            with self.lock, self.conn.cursor() as cur, cur.copy(copy_sql) as copy:
                for i, turn in enumerate(turns):
                    copy.write_row((key, before + i + 1, turn["role"], turn["content"]))

    def tail(self, key: str, n: int) -> int:
        with self.lock:
            rows = self.conn.execute(self._tail_sql, (key, n)).fetchall()
        rows.reverse()
        return len(as_messages((role, content) for _, role, content in rows))

    def append(self, key: str, pair: Sequence[BaseMessage]) -> None:
        with self.lock:
            self.conn.execute(self._append_sql, (key, key, pair[0].content, pair[1].content))

    def count(self, key: str) -> int:
        with self.lock:
            row = self.conn.execute(
                f"SELECT count(*) FROM {self.table} WHERE conv = %s", (key,)
            ).fetchone()
        return int(row[0]) if row else 0

    @property
    def tables(self) -> tuple[str, ...]:
        return (self.table,)

    def close(self) -> None:
        _drop_table(self.conn, self.dsn, self.table)


def _drop_table(conn: Any, dsn: str, table: str) -> None:
    """Close the system's connection, then drop its table on a fresh one: a run
    interrupted mid-statement leaves the system's own connection unusable, and its open
    transaction would hold the table's lock."""
    conn.close()
    with connect(dsn, autocommit=True) as fresh:
        fresh.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)))
