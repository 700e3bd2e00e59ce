"""Sync and async callers of one process on one conversation, on a store of the
application's own (the generic driver: no transactions, a lock of the process).

A sync web framework serves requests from a thread pool and runs the async graph with
``asyncio.run`` per request, while a worker thread appends synchronously: a thread and a
task each took a lock of their own, read the same head, and one's turns overwrote the
other's (17 of 100 turns lost in a trial, with no error).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterable

import pytest
from langgraph.store.base import BaseStore, Op, PutOp, Result
from langgraph.store.memory import InMemoryStore

from agent_history import SyncCallInEventLoop
from agent_history.history import ChatHistory

KEY = "telegram:1"
LATENCY = 0.0002  # a network store's round trip, so calls overlap


class RemoteStore(BaseStore):
    """A store of the application's own with a round trip of latency per call."""

    def __init__(self, latency: float = LATENCY) -> None:
        self.inner = InMemoryStore()
        self.latency = latency

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        time.sleep(self.latency)
        return self.inner.batch(ops)

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        await asyncio.sleep(self.latency)
        return self.inner.batch(ops)


def _message(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text, "id": text}]


def _sync_worker(history: ChatHistory, name: str, count: int) -> Callable[[], None]:
    def work() -> None:
        for i in range(count):
            history.append(KEY, _message(f"{name}-{i}"))

    return work


def _request_per_loop(history: ChatHistory, name: str, count: int) -> Callable[[], None]:
    def work() -> None:
        for i in range(count):
            asyncio.run(history.aappend(KEY, _message(f"{name}-{i}")))

    return work


def _one_loop(history: ChatHistory, name: str, count: int) -> Callable[[], None]:
    async def all_at_once() -> None:
        await asyncio.gather(*(history.aappend(KEY, _message(f"{name}-{i}")) for i in range(count)))

    return lambda: asyncio.run(all_at_once())


@pytest.mark.parametrize(
    "callers",
    [
        pytest.param(
            [_sync_worker, _sync_worker, _request_per_loop, _request_per_loop],
            id="threads+asyncio.run",
        ),
        pytest.param([_sync_worker, _one_loop], id="thread+loop"),
        pytest.param([_one_loop, _one_loop], id="two loops"),
    ],
)
def test_sync_and_async_callers_of_one_process_lose_and_duplicate_nothing(
    callers: list[Callable[[ChatHistory, str, int], Callable[[], None]]],
) -> None:
    history, count = ChatHistory(RemoteStore()), 20
    threads = [
        threading.Thread(target=make(history, f"w{n}", count)) for n, make in enumerate(callers)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    turns = list(history.read(KEY))
    ids = [turn.id for turn in turns]
    expected = {f"w{n}-{i}" for n in range(len(callers)) for i in range(count)}
    assert len(ids) == len(set(ids)), "a turn was stored twice"
    assert set(ids) == expected, f"{len(expected - set(ids))} turns lost"
    assert [turn.seq for turn in turns] == list(range(1, len(turns) + 1))


class GatedStore(RemoteStore):
    """Its async writes wait for ``release``; ``entered`` says one is waiting."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        self.entered.set()
        await self.release.wait()
        return self.inner.batch(ops)


async def test_a_sync_call_on_the_loop_of_the_holder_raises_instead_of_hanging() -> None:
    store = GatedStore()
    history = ChatHistory(store)
    holder = asyncio.create_task(history.aappend(KEY, _message("async")))
    await store.entered.wait()  # the task holds the conversation, inside the store

    with pytest.raises(SyncCallInEventLoop, match="use the a\\* method"):
        history.append(KEY, _message("sync on the loop"))

    store.release.set()
    await holder
    assert [turn.id for turn in history.read(KEY)] == ["async"]


async def test_a_budgeted_sync_call_on_the_loop_of_the_holder_raises_too() -> None:
    """A budgeted call runs on a worker thread: the check is made in the caller's."""
    store = GatedStore()
    history = ChatHistory(store)
    holder = asyncio.create_task(history.aappend(KEY, _message("async")))
    await store.entered.wait()

    with pytest.raises(SyncCallInEventLoop):
        history.append(KEY, _message("sync on the loop"), budget=0.2)

    store.release.set()
    await holder
    assert [turn.id for turn in history.read(KEY)] == ["async"]  # nothing written later


def test_a_sync_call_on_an_idle_loops_thread_whose_task_holds_raises() -> None:
    """A sync framework keeps one loop per thread and runs it only during a request; a
    request left a task holding the conversation, and the loop now idles."""
    loop = asyncio.new_event_loop()
    try:
        store = loop.run_until_complete(_gated())
        history = ChatHistory(store)
        holder = loop.create_task(history.aappend(KEY, _message("async")))
        loop.run_until_complete(store.entered.wait())

        with pytest.raises(SyncCallInEventLoop):
            history.append(KEY, _message("sync, loop idle"))

        store.release.set()
        loop.run_until_complete(holder)
    finally:
        loop.close()
    assert [turn.id for turn in history.read(KEY)] == ["async"]


async def _gated() -> GatedStore:
    return GatedStore()  # its events belong to the running loop


class BlockingStore(RemoteStore):
    """Its sync writes wait for ``release``; ``entered`` says one is waiting."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        listed = list(ops)
        if any(isinstance(op, PutOp) for op in listed):
            self.entered.set()
            self.release.wait()
        return self.inner.batch(listed)


async def test_a_sync_call_on_the_loop_of_a_waiting_task_raises_instead_of_hanging() -> None:
    """The lock, once free, goes to the waiting task first, whose loop the sync call
    would block: neither could go on."""
    store = BlockingStore()
    history = ChatHistory(store)
    writer = threading.Thread(target=lambda: history.append(KEY, _message("thread")))
    writer.start()
    await asyncio.to_thread(store.entered.wait)  # the thread holds the conversation
    waiting = asyncio.create_task(history.aappend(KEY, _message("task")))
    locks = history._driver._locks  # type: ignore[attr-defined]
    for _ in range(1000):  # let the task run until it queues for the conversation
        if locks._tasks:
            break
        await asyncio.sleep(0)
    assert locks._tasks, "the task never queued"

    with pytest.raises(SyncCallInEventLoop, match="holds or waits"):
        history.append(KEY, _message("sync on the loop"))

    store.release.set()
    await waiting
    await asyncio.to_thread(writer.join)
    assert [turn.id for turn in history.read(KEY)] == ["thread", "task"]


def test_a_task_left_waiting_on_a_closed_loop_never_locks_the_conversation() -> None:
    """A per-request loop closes while its fire-and-forget append waits (the app keeps the
    task, as asyncio's docs advise): the conversation stays usable, from that thread too."""
    store = BlockingStore()
    history = ChatHistory(store)
    writer = threading.Thread(target=lambda: history.append(KEY, _message("holder")))
    writer.start()
    store.entered.wait()  # the thread holds the conversation
    loop = asyncio.new_event_loop()
    kept = loop.create_task(history.aappend(KEY, _message("fire-and-forget")))
    locks = history._driver._locks  # type: ignore[attr-defined]
    for _ in range(1000):  # run the request until its task queues for the conversation
        if locks._tasks:
            break
        loop.run_until_complete(asyncio.sleep(0))
    assert locks._tasks, "the task never queued"
    loop.close()  # the request ends; its task is kept, pending
    store.release.set()
    writer.join()

    history.append(KEY, _message("later, same thread"), budget=1.0)
    other = threading.Thread(target=lambda: history.append(KEY, _message("later, other")))
    other.start()
    other.join()

    assert [t.id for t in history.read(KEY)] == ["holder", "later, same thread", "later, other"]
    assert not kept.done()


def test_an_async_caller_takes_its_turn_among_busy_sync_threads() -> None:
    """Threads blocked on a lock are woken at once; a task polling it lost every race to
    them and timed out. Waiters now take turns in the order they came."""
    history, stop = ChatHistory(RemoteStore(latency=0.001)), threading.Event()

    def busy(name: str) -> None:
        i = 0
        while not stop.is_set():
            history.append(KEY, _message(f"{name}-{i}"))
            i += 1

    threads = [threading.Thread(target=busy, args=(f"t{n}",)) for n in range(3)]
    for thread in threads:
        thread.start()
    try:
        result = asyncio.run(history.aappend(KEY, _message("async"), budget=5.0))
    finally:
        stop.set()
        for thread in threads:
            thread.join()

    assert result.appended == 1
    ids = [turn.id for turn in history.read(KEY)]
    assert ids.count("async") == 1 and len(ids) == len(set(ids))
