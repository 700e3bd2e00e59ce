"""This process's locks of conversations, shared by its threads and its event loops.

A store without transactions (the generic driver) serialises a conversation's units of
work with a lock of the process. Sync callers (threads) and async callers (tasks of any
event loop: one loop per thread, ``asyncio.run`` per request) must all take the same
one, or a thread and a task read the same head and one's turns overwrite the other's.
Each conversation gets one ``aiologic.Lock``: threads wait on it as on a thread lock,
tasks await it without blocking their loop, and waiters of both kinds are served in
the order they came, up to the call's deadline.

A sync call made on the thread of an event loop whose task holds the conversation, or
waits for it (the lock, once free, goes to that task first), would wait for that loop
forever: the loop cannot run while its thread waits, even when it is idle between
requests. It raises `SyncCallInEventLoop` instead. The check is made in the caller's
thread, also for budgeted calls that then run on a worker thread.

Locks are held weakly: a conversation's lock lives while someone holds or waits for it,
so a long-running process keeps no state per conversation, and no closed loop is kept
alive by a lock bound to it. `thread_lock` and `loop_lock` serve drivers whose async
callers never wait on a sync one (in-memory, pipelined PostgreSQL).
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
import weakref
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import TypeVar

import aiologic

from agent_history import budget
from agent_history.errors import SyncCallInEventLoop

__all__ = ["Backoff", "ConversationLocks"]

Namespace = tuple[str, ...]
K = TypeVar("K")
L = TypeVar("L")

_FIRST_PAUSE = 0.0005
_MAX_PAUSE = 0.02


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
        if self.deadline is not None and time.monotonic() + pause >= self.deadline:
            raise budget.timeout_error("wait for the conversation's lock")
        return pause


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


class ConversationLocks:
    """The locks of one store's conversations in this process (see the module)."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._shared: _Registry[Namespace, aiologic.Lock] = _Registry(self._guard)
        self._threads: _Registry[Namespace, threading.Lock] = _Registry(self._guard)
        self._loops: _Registry[tuple[int, Namespace], asyncio.Lock] = _Registry(self._guard)
        self._tasks: dict[tuple[Namespace, int], int] = {}
        """Tasks holding or waiting for a conversation, by the thread of their loop."""

    def thread_lock(self, namespace: Namespace) -> threading.Lock:
        """A thread lock of the conversation; the caller keeps it alive while in use."""
        return self._threads.lock(namespace, threading.Lock)

    def loop_lock(self, namespace: Namespace) -> asyncio.Lock:
        """The running loop's lock of the conversation (see `thread_lock`)."""
        key = (id(asyncio.get_running_loop()), namespace)
        return self._loops.lock(key, asyncio.Lock)

    def check_caller(self, namespace: Namespace) -> None:
        """Refuse a sync call whose wait could never end (see the module).

        Raises:
            SyncCallInEventLoop: a task of the event loop of this thread holds or waits
                for the conversation.
        """
        if self._tasks.get((namespace, threading.get_ident())):
            raise SyncCallInEventLoop(
                "a sync history call on the thread of an event loop whose task holds or "
                "waits for the conversation would wait forever; use the a* method"
            )

    @contextmanager
    def hold(self, namespace: Namespace) -> Iterator[None]:
        """Hold the conversation in a sync caller, up to the current deadline (checked
        with `check_caller` in the caller's own thread first)."""
        lock = self._shared.lock(namespace, aiologic.Lock)
        left = budget.remaining()
        if not lock.green_acquire(timeout=None if left is None else max(0.0, left)):
            raise budget.timeout_error("wait for the conversation's lock")
        try:
            yield
        finally:
            lock.green_release()

    @asynccontextmanager
    async def held(self, namespace: Namespace) -> AsyncIterator[None]:
        """Hold the conversation in an async caller, up to the current deadline."""
        lock = self._shared.lock(namespace, aiologic.Lock)
        here = (namespace, threading.get_ident())
        with self._guard:
            self._tasks[here] = self._tasks.get(here, 0) + 1
        try:
            left = budget.remaining()
            if not await lock.async_acquire(timeout=None if left is None else max(0.0, left)):
                raise budget.timeout_error("wait for the conversation's lock")
            try:
                yield
            finally:
                lock.async_release()
        finally:
            with self._guard:
                if self._tasks[here] == 1:
                    del self._tasks[here]
                else:
                    self._tasks[here] -= 1
