"""This process's locks of conversations, shared by its threads and its event loops.

A store without transactions (the generic driver) serialises a conversation's units of
work with a lock of the process. Sync callers (threads) and async callers (tasks of any
event loop: one loop per thread, ``asyncio.run`` per request) must all take the same
one, or a thread and a task read the same head and one's turns overwrite the other's:

- every conversation has one ``threading.Lock``; a sync caller waits on it;
- an async caller first queues on its loop's ``asyncio.Lock`` of the conversation (the
  tasks of one loop take turns without polling), then takes the thread lock with
  non-blocking attempts and growing pauses (`Backoff`), never blocking its loop, up to
  the call's deadline.

Locks are held weakly: a conversation's lock lives while someone holds or waits for it,
so a long-running process keeps no state per conversation, and no closed loop is kept
alive by a lock bound to it.

A sync call made on an event loop's own thread while a task of that loop holds the
conversation would wait for that loop forever: it raises `SyncCallInEventLoop` instead.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from agent_history import budget
from agent_history.errors import SyncCallInEventLoop

__all__ = ["Backoff", "ConversationLocks"]

Namespace = tuple[str, ...]

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


class ConversationLocks:
    """The locks of one store's conversations in this process (see the module)."""

    def __init__(self) -> None:
        self._threads: weakref.WeakValueDictionary[Namespace, threading.Lock] = (
            weakref.WeakValueDictionary()
        )
        self._loops: weakref.WeakValueDictionary[tuple[int, Namespace], asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )
        self._holding_loop: dict[Namespace, int] = {}
        """The loop whose task holds a conversation's thread lock, while one does."""
        self._guard = threading.Lock()

    def thread_lock(self, namespace: Namespace) -> threading.Lock:
        """The conversation's lock; the caller keeps it alive while it holds or waits."""
        with self._guard:
            lock = self._threads.get(namespace)
            if lock is None:
                lock = self._threads[namespace] = threading.Lock()
            return lock

    def loop_lock(self, namespace: Namespace) -> asyncio.Lock:
        """The running loop's lock of the conversation (see `thread_lock`)."""
        key = (id(asyncio.get_running_loop()), namespace)
        with self._guard:
            lock = self._loops.get(key)
            if lock is None:
                lock = self._loops[key] = asyncio.Lock()
            return lock

    def acquire(self, namespace: Namespace) -> threading.Lock:
        """Wait for the conversation in a sync caller; returns the held lock.

        Raises:
            SyncCallInEventLoop: called on an event loop's thread while a task of that
                loop holds the conversation (it could never be released).
        """
        lock = self.thread_lock(namespace)
        if lock.acquire(blocking=False):
            return lock
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is not None and self._holding_loop.get(namespace) == id(loop):
            raise SyncCallInEventLoop(
                "a sync history call on an event loop whose task holds the conversation "
                "would wait forever; use the a* method"
            )
        lock.acquire()
        return lock

    @asynccontextmanager
    async def held(self, namespace: Namespace) -> AsyncIterator[None]:
        """Hold the conversation in an async caller, up to the current deadline."""
        lock = self.thread_lock(namespace)
        async with self.loop_lock(namespace):
            backoff = Backoff()
            while True:  # a thread's lock cannot wake a task: poll it
                if lock.acquire(blocking=False):
                    break
                await asyncio.sleep(backoff.next_pause())
            self._holding_loop[namespace] = id(asyncio.get_running_loop())
            try:
                yield
            finally:
                del self._holding_loop[namespace]
                lock.release()
