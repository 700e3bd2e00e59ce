"""A long-running service keeps no state per conversation in its process.

A webhook service on a store of its own (here a `BaseStore` over a SQLite file, so the
data lives on disk, not in the process) talks to thousands of chats: the memory the
history keeps must not grow with the number of chats it has served, and an app that runs
each request in an event loop of its own (``asyncio.run`` per request, as sync web
frameworks calling async graphs do) must not keep those loops alive.
"""

from __future__ import annotations

import asyncio
import gc
import sqlite3
import tracemalloc
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from langgraph.store.base import BaseStore, Op, Result
from langgraph.store.sqlite import SqliteStore

import agent_history
from agent_history.history import ChatHistory

_SOURCE = str(Path(agent_history.__file__).parent)


class FileStore(BaseStore):
    """A store of the application's own, keeping its items in a SQLite file; its async
    calls run the sync ones in a worker thread."""

    def __init__(self, path: Path) -> None:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.inner = SqliteStore(conn)
        self.inner.setup()

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        return self.inner.batch(ops)

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        return await asyncio.to_thread(self.inner.batch, list(ops))


@pytest.fixture
def history(tmp_path: Path) -> Iterator[ChatHistory]:
    store = FileStore(tmp_path / "app.sqlite")
    yield ChatHistory(store)
    store.inner.conn.close()


def _exchange(history: ChatHistory, chat: int) -> None:
    key = f"telegram:{chat}"
    history.tail(key, 20)
    history.append(
        key,
        [
            {"role": "user", "content": "hi", "id": f"m{chat}"},
            {"role": "assistant", "content": "hello", "id": f"r{chat}"},
        ],
    )


def _held_by_the_library() -> int:
    """Bytes allocated by the library's own code that are still alive."""
    gc.collect()
    snapshot = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(True, f"{_SOURCE}/*")])
    return sum(stat.size for stat in snapshot.statistics("filename"))


def test_memory_does_not_grow_with_the_number_of_chats_served(history: ChatHistory) -> None:
    tracemalloc.start()
    try:
        for chat in range(300):  # warm: bounded caches (key encodings, plans) fill up
            _exchange(history, chat)
        before = _held_by_the_library()
        for chat in range(300, 1300):
            _exchange(history, chat)
        grown = _held_by_the_library() - before
    finally:
        tracemalloc.stop()

    assert history.count("telegram:1299") == 2  # the chats were served
    # 1,000 more chats: nothing per chat is kept (a lock per chat cost about 300 bytes).
    assert grown < 32 * 1024, f"{grown} bytes more after 1,000 more chats"


def test_an_event_loop_per_request_is_not_kept_alive(history: ChatHistory) -> None:
    async def request(n: int) -> None:
        # Three callbacks of one chat at once: they queue for the chat's lock.
        await asyncio.gather(
            *(
                history.aappend("telegram:7", [{"role": "user", "content": "hi", "id": f"{n}.{i}"}])
                for i in range(3)
            )
        )

    for n in range(40):
        asyncio.run(request(n))
    gc.collect()

    alive = [o for o in gc.get_objects() if isinstance(o, asyncio.AbstractEventLoop)]
    assert [loop for loop in alive if loop.is_closed()] == []
    assert history.count("telegram:7") == 120  # every callback stored, none twice
