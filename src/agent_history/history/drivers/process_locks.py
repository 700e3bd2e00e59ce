"""This process's locks of conversations, shared by its threads and its event loops.

A store without transactions (the generic driver) serialises a conversation's units of
work with a lock of the process. Sync callers (threads) and async callers (tasks of any
event loop: one loop per thread, ``asyncio.run`` per request) must all take the same
one, or a thread and a task read the same head and one's turns overwrite the other's:

- every conversation has one ``threading.Lock``; a sync caller waits on it, up to its
  deadline;
- an async caller first queues on its loop's ``asyncio.Lock`` of the conversation (the
  tasks of one loop take turns without polling), then takes the thread lock with
  non-blocking attempts and growing pauses (`Backoff`), never blocking its loop, up to
  its deadline.

Waiters take turns in the order they came (`_Queue`): each holds a ticket and shows it
is alive by coming back to look at least every few milliseconds; only the oldest living
ticket may take the lock, and a newcomer queues behind living waiters. The lock is never
handed to a waiter: a task whose loop was closed or stopped while it waited stops coming
back, its ticket expires (`STALE_SECONDS`), and it cannot lock a conversation for good.

A sync call made on the thread of an event loop whose task holds or waits for the
conversation would wait for that loop forever (the loop cannot run while its thread
waits, even when it is idle between requests): it raises `SyncCallInEventLoop` instead.
The check is made in the caller's thread, also for budgeted calls that then run on a
worker thread; tasks of a closed loop do not count.

Locks are held weakly: a conversation's lock lives while someone holds or waits for it,
so a long-running process keeps no state per conversation, and no closed loop is kept
alive by a lock bound to it.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from agent_history import budget
from agent_history.errors import SyncCallInEventLoop

__all__ = ["Backoff", "ConversationLocks"]

Namespace = tuple[str, ...]
K = TypeVar("K")
L = TypeVar("L")
T = TypeVar("T")

_FIRST_PAUSE = 0.0005
_MAX_PAUSE = 0.02
_TURN_PAUSE = 0.001
"""How often the oldest waiter tries the lock, and the next in line looks whether it
has become the oldest."""
STALE_SECONDS = 0.25
"""A waiter not seen for this long has stopped waiting (its loop is gone)."""
_FORGET_SECONDS = 10.0
"""A waiter not seen for this long is forgotten (it takes its place again if it comes
back)."""


class Backoff:
    """The pauses between attempts at a held lock, up to the current deadline."""

    def __init__(self) -> None:
        self.deadline = budget.current_deadline()
        self.pause = _FIRST_PAUSE

    def next_pause(self) -> float:
        """Seconds to wait before the next attempt; `StoreTimeout` when the deadline
        would pass first."""
        pause = self.pause * (0.5 + random.random())
        self.pause = min(self.pause * 2, _MAX_PAUSE)
        self.check(pause)
        return pause

    def check(self, pause: float) -> None:
        """`StoreTimeout` when waiting ``pause`` more seconds would pass the deadline."""
        if self.deadline is not None and time.monotonic() + pause >= self.deadline:
            raise budget.timeout_error("wait for the conversation's lock")


class _Registry(weakref.WeakValueDictionary[K, L]):
    """Locks by key, made on first use, kept while in use."""

    def __init__(self, guard: threading.Lock) -> None:
        super().__init__()
        self._guard = guard

    def lock(self, key: K, make: type[L]) -> L:
        with self._guard:
            found = self.get(key)
            if found is None:
                found = self[key] = make()
            return found


def _queued_pause(place: int) -> float:
    """How long a waiter at ``place`` (1: next in line) sleeps before looking again:
    about one turn per place ahead of it, so the lock is not left idle between turns."""
    return min(_TURN_PAUSE * place, _MAX_PAUSE)


class _Tasks:
    """How many tasks of a loop hold or wait for a conversation, by the loop's thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = weakref.ref(loop)
        self.count = 0


class _Queue:
    """Waiters of one conversation in the order they came (see the module)."""

    def __init__(self) -> None:
        self.seen: dict[int, float] = {}
        """Ticket -> when its waiter last looked."""

    def first_alive(self, now: float) -> int | None:
        alive = self.alive(now)
        return alive[0] if alive else None

    def alive(self, now: float) -> list[int]:
        """The living tickets, oldest first (forgetting long-gone ones)."""
        gone = [t for t, seen in self.seen.items() if now - seen >= _FORGET_SECONDS]
        for ticket in gone:
            del self.seen[ticket]
        return sorted(t for t, seen in self.seen.items() if now - seen < STALE_SECONDS)


class _Turn:
    """One waiter's place in its conversation's queue."""

    def __init__(self, locks: ConversationLocks, namespace: Namespace) -> None:
        self._locks, self._namespace = locks, namespace
        with locks._guard:
            self.queue = locks._queues.setdefault(namespace, _Queue())
            self.ticket = next(locks._tickets)
            self.queue.seen[self.ticket] = time.monotonic()

    def place(self) -> int:
        """This waiter's place among the living ones, 0 when it may try the lock now
        (and show it is alive)."""
        now = time.monotonic()
        with self._locks._guard:
            self.queue.seen[self.ticket] = now
            return self.queue.alive(now).index(self.ticket)

    def leave(self) -> None:
        with self._locks._guard:
            self.queue.seen.pop(self.ticket, None)
            if not self.queue.seen and self._locks._queues.get(self._namespace) is self.queue:
                del self._locks._queues[self._namespace]


class ConversationLocks:
    """The locks of one store's conversations in this process (see the module)."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._threads: _Registry[Namespace, threading.Lock] = _Registry(self._guard)
        self._loops: _Registry[tuple[int, Namespace], asyncio.Lock] = _Registry(self._guard)
        self._tasks: dict[tuple[Namespace, int], _Tasks] = {}
        self._queues: dict[Namespace, _Queue] = {}
        self._tickets = itertools.count()

    def _free_for_newcomer(self, namespace: Namespace, lock: threading.Lock) -> bool:
        """Take ``lock`` at once when nobody living waits for it."""
        with self._guard:
            queue = self._queues.get(namespace)
            if queue is not None and queue.first_alive(time.monotonic()) is not None:
                return False
        return lock.acquire(blocking=False)

    def thread_lock(self, namespace: Namespace) -> threading.Lock:
        """The conversation's lock; the caller keeps it alive while it holds or waits."""
        return self._threads.lock(namespace, threading.Lock)

    def loop_lock(self, namespace: Namespace) -> asyncio.Lock:
        """The running loop's lock of the conversation (see `thread_lock`)."""
        key = (id(asyncio.get_running_loop()), namespace)
        return self._loops.lock(key, asyncio.Lock)

    def check_caller(self, namespace: Namespace) -> None:
        """Refuse a sync call whose wait could never end (see the module).

        Raises:
            SyncCallInEventLoop: a task of the open event loop of this thread holds or
                waits for the conversation.
        """
        tasks = self._tasks.get((namespace, threading.get_ident()))
        loop = tasks.loop() if tasks is not None else None
        if loop is not None and not loop.is_closed():
            raise SyncCallInEventLoop(
                "a sync history call on the thread of an event loop whose task holds or "
                "waits for the conversation would wait forever; use the a* method"
            )

    @contextmanager
    def hold(self, namespace: Namespace) -> Iterator[None]:
        """Hold the conversation in a sync caller, up to the current deadline (checked
        with `check_caller` in the caller's own thread first)."""
        lock = self.thread_lock(namespace)
        if not self._free_for_newcomer(namespace, lock):
            turn = _Turn(self, namespace)
            try:
                backoff = Backoff()
                while True:
                    place = turn.place()
                    if place == 0:
                        if lock.acquire(timeout=_TURN_PAUSE):
                            break
                        backoff.check(0.0)
                    else:
                        pause = _queued_pause(place)
                        backoff.check(pause)
                        time.sleep(pause)
            finally:
                turn.leave()
        try:
            yield
        finally:
            lock.release()

    async def run_held(self, namespace: Namespace, work: Callable[[], Awaitable[T]]) -> T:
        """Await ``work()`` holding the conversation, in an async caller, up to the
        current deadline. (A coroutine, not a context manager: when a task of a closed
        loop is collected, closing it runs the clean-up below at once.)"""
        thread_lock = self.thread_lock(namespace)
        here = (namespace, threading.get_ident())
        with self._guard:
            tasks = self._tasks.get(here)
            if tasks is None or tasks.loop() is not asyncio.get_running_loop():
                tasks = self._tasks[here] = _Tasks(asyncio.get_running_loop())
            tasks.count += 1
        try:
            async with self.loop_lock(namespace):
                if not self._free_for_newcomer(namespace, thread_lock):
                    await self._wait_turn(namespace, thread_lock)
                try:
                    return await work()
                finally:
                    thread_lock.release()
        finally:
            with self._guard:
                tasks.count -= 1
                if tasks.count == 0 and self._tasks.get(here) is tasks:
                    del self._tasks[here]

    async def _wait_turn(self, namespace: Namespace, lock: threading.Lock) -> None:
        """Queue for ``lock`` and take it in turn, polling (a thread's lock cannot wake
        a task), up to the current deadline."""
        turn = _Turn(self, namespace)
        try:
            backoff = Backoff()
            while True:
                place = turn.place()
                if place == 0 and lock.acquire(blocking=False):
                    return
                pause = _queued_pause(max(1, place))
                backoff.check(pause)
                await asyncio.sleep(pause)
        finally:
            turn.leave()
