"""Drivers for LangGraph's PostgreSQL stores in pipeline mode (``pipeline=True``).

Such a store shares one connection between all its callers: their statements may run
between ours, inside the same implicit transaction, so the SQL path's one-transaction
append cannot run there. These drivers use the store's own ``batch``/``abatch`` calls
(as `GenericDriver` does) and hold the conversation's advisory lock around every unit of
work, so writers in other processes are excluded too, not only this process's:

- the lock is a session lock on the store's connection, keyed as the SQL path's
  transaction lock (``hashtextextended(<namespace>, 0)``), so pipelined stores and
  pooled ones writing the same database exclude each other;
- it is taken with ``pg_try_advisory_lock`` in a polling loop with jittered backoff, so
  the shared connection is never blocked waiting for it, and the wait ends at the call's
  deadline (`StoreTimeout`); without a deadline it waits, as the SQL path does;
- this process's callers of one conversation queue on the generic driver's lock first
  (sync callers on a thread lock, async ones on the event loop's lock), so the session
  never takes a lock it already holds; a budgeted sync call runs in a thread of its
  own, never on the generic driver's few worker threads, and its caller stops waiting
  at the deadline even when a statement is queued behind another caller's;
- a session lock survives transactions, so it is released explicitly, also when the
  caller is cancelled; a statement whose outcome is unknown (it failed, or its caller was
  cancelled) is followed by an unlock, which is harmless when nothing was held. Another
  caller's failing statement can abort the pipeline segment an unlock lands in: the
  pipeline is synced and the unlock sent again. A lost connection ends the session and
  its locks with it.

Appends then need no read-back: the lock excludes every writer of this library.

No operation on the shared connection is cancelled half-way (psycopg would then hand
later results to the wrong callers: "no result available", another call's value): at a
deadline, or when an async caller is cancelled, the caller stops waiting and the work
runs to its end in a task or thread of its own, releasing its locks there.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, TypeVar, cast

from langgraph.store.base import BaseStore
from langgraph.store.postgres import AsyncPostgresStore, PostgresStore
from psycopg.rows import tuple_row

from agent_history import budget
from agent_history import observability as obs
from agent_history.history.drivers.base import (
    AppendRequest,
    AsyncPerform,
    AsyncStoreDriver,
    SyncStoreDriver,
    namespace_text,
)
from agent_history.history.drivers.generic import GenericDriver
from agent_history.history.drivers.process_locks import Backoff
from agent_history.history.records import AppendResult
from agent_history.history.steps import Request, Steps, drive, drive_async

__all__ = ["AsyncPipelineDriver", "PipelineDriver"]

T = TypeVar("T")

TRY_LOCK_SQL = "SELECT pg_try_advisory_lock(hashtextextended(%s, 0))"
UNLOCK_SQL = "SELECT pg_advisory_unlock(hashtextextended(%s, 0))"
_UNLOCK_ATTEMPTS = 3

# Unlock and unit-of-work tasks outlive a cancelled caller; keep them referenced until
# they end.
_BACKGROUND: set[asyncio.Future[Any]] = set()


async def _unless_late(
    work: Callable[[], Awaitable[T]], never_ran: Callable[[], Awaitable[None]] | None = None
) -> T:
    """Run ``work()`` in a task of its own and wait for it until the deadline.

    An operation on a shared pipelined connection must never be cancelled half-way:
    psycopg would then hand later results to the wrong callers. So at the deadline (or
    when the caller is cancelled) the caller stops waiting, and the task runs to its end
    (releasing what it holds); as on stores whose calls cannot be interrupted, what it
    writes may land after the caller got `StoreTimeout`. ``never_ran`` is awaited when
    the deadline passed before the work could start.
    """
    left = budget.remaining()
    if left is not None and left <= 0:
        if never_ran is not None:
            await never_ran()
        raise budget.timeout_error()
    task = _in_background(work())
    try:
        if left is None:
            return await asyncio.shield(task)
        # Not wait_for: on Python 3.11 it drops a cancellation of the caller that arrives
        # as the task ends.
        async with asyncio.timeout(left):
            return await asyncio.shield(task)
    except TimeoutError:
        raise budget.timeout_error() from None


def _in_background(work: Awaitable[T]) -> asyncio.Future[T]:
    """``work`` in a task that outlives a cancelled caller (kept referenced until it
    ends, its outcome marked seen)."""
    task = asyncio.ensure_future(work)
    _BACKGROUND.add(task)
    task.add_done_callback(_settle)
    return task


def _settle(task: asyncio.Future[Any]) -> None:
    """A background task ended: forget it, and mark its outcome seen (its caller may
    have stopped waiting for it)."""
    _BACKGROUND.discard(task)
    if not task.cancelled():
        task.exception()


def _release_failed(exc: BaseException) -> None:
    obs.log_event(
        "history_lock_release_failed",
        level=logging.WARNING,
        driver="postgres-pipeline",
        error=obs.describe_error(exc),
    )


class _Pipelined(GenericDriver):
    """What both drivers share: the store's own calls, under locks every writer takes."""

    name = "postgres-pipeline"
    atomic = True
    store_class: ClassVar[type[BaseStore]]

    def __init__(self, store: BaseStore) -> None:
        super().__init__(store, "postgres")

    @classmethod
    def accepts(cls, store: BaseStore) -> bool:
        return isinstance(store, cls.store_class) and getattr(store, "pipe", None) is not None

    def describe(self) -> dict[str, Any]:
        return {"driver": self.name}


class PipelineDriver(SyncStoreDriver, _Pipelined):
    """A sync `PostgresStore` in pipeline mode (see the module); async calls run the sync
    ones in a worker thread, so they take the same locks."""

    store_class = PostgresStore

    @property
    def pg(self) -> PostgresStore:
        return cast(PostgresStore, self.store)

    def _statement(self, sql: str, prefix: str) -> bool:
        store = self.pg
        with store.conn.cursor(row_factory=tuple_row) as cur:  # type: ignore[union-attr]
            cur.execute(sql, (prefix,))
            row = cur.fetchone()
        assert store.pipe is not None
        store.pipe.sync()
        return bool(row and row[0])

    def _unlock(self, prefix: str) -> None:
        """Release the lock. Another caller's failed statement can abort the pipeline
        segment our unlock lands in: the pipeline is synced and the unlock sent again
        (an unlock of a lock no longer held is harmless)."""
        store = self.pg
        failure: Exception | None = None
        for _ in range(_UNLOCK_ATTEMPTS):
            try:
                self._statement(UNLOCK_SQL, prefix)
                return
            except Exception as exc:
                failure = exc
                if store.conn.broken:  # type: ignore[union-attr]
                    return  # the session is gone, and its locks with it
                assert store.pipe is not None
                with contextlib.suppress(Exception):
                    store.pipe.sync()
        assert failure is not None
        _release_failed(failure)

    def _take(self, prefix: str) -> bool:
        try:
            return self._statement(TRY_LOCK_SQL, prefix)
        except BaseException:
            self._unlock(prefix)  # it may have been taken before the failure
            raise

    def _acquire(self, prefix: str) -> None:
        backoff = Backoff()
        while not self._take(prefix):
            time.sleep(backoff.next_pause())

    def _run_locked(self, namespace: tuple[str, ...], steps: Steps[T]) -> T:
        """Run ``steps`` under both locks. With a deadline, in a thread of its own that
        the caller stops waiting for at the deadline: a statement queued behind another
        caller's on the shared connection cannot be interrupted, and a thread per call
        (not the generic driver's few workers) means waiters never starve other calls.
        The thread releases what it took, whenever it ends."""
        left = budget.remaining()
        if left is None:
            return self._run_here(namespace, steps)
        if left <= 0:
            raise budget.timeout_error()
        outcome: concurrent.futures.Future[T] = concurrent.futures.Future()
        context = contextvars.copy_context()

        def work() -> None:
            try:
                outcome.set_result(context.run(self._run_here, namespace, steps))
            except BaseException as exc:  # handed to the caller, if it still waits
                outcome.set_exception(exc)

        threading.Thread(target=work, name="agent-history-pipeline", daemon=True).start()
        try:
            return outcome.result(left)
        except concurrent.futures.TimeoutError:
            raise budget.timeout_error() from None

    def _run_here(self, namespace: tuple[str, ...], steps: Steps[T]) -> T:
        prefix = namespace_text(namespace)
        lock = self._lock(namespace)
        left = budget.remaining()
        if not lock.acquire(timeout=-1 if left is None else max(0.0, left)):
            raise budget.timeout_error("wait for the conversation's lock")
        try:
            self._acquire(prefix)
            try:
                deadline = budget.current_deadline()
                if deadline is not None and time.monotonic() >= deadline:
                    raise budget.timeout_error()  # the caller gave up: start nothing
                return drive(steps, self.perform(namespace))
            finally:
                self._unlock(prefix)
        finally:
            lock.release()

    def run(self, namespace: tuple[str, ...], steps: Steps[T]) -> T:
        return self._run_locked(namespace, steps)

    def append(self, namespace: tuple[str, ...], request: AppendRequest) -> AppendResult:
        return self._run_locked(namespace, request.steps())


class AsyncPipelineDriver(AsyncStoreDriver, _Pipelined):
    """An `AsyncPostgresStore` in pipeline mode (see the module); sync calls (from other
    threads) run the async ones on the store's loop, so they take the same locks."""

    store_class = AsyncPostgresStore

    @property
    def pg(self) -> AsyncPostgresStore:
        return cast(AsyncPostgresStore, self.store)

    async def _statement(self, sql: str, prefix: str) -> bool:
        store = self.pg
        async with store.conn.cursor(row_factory=tuple_row) as cur:  # type: ignore[union-attr]
            await cur.execute(sql, (prefix,))
            row = await cur.fetchone()
        assert store.pipe is not None
        await store.pipe.sync()
        return bool(row and row[0])

    async def _unlock(self, prefix: str, attempt: asyncio.Task[bool] | None = None) -> None:
        """Release the lock (after ``attempt``, a lock statement whose outcome is unknown:
        it is awaited first, so the unlock runs after it)."""
        if attempt is not None:
            try:
                if not await attempt:
                    return
            except BaseException:
                pass  # unknown: unlock anyway (harmless when nothing was held)
        store = self.pg
        failure: Exception | None = None
        for _ in range(_UNLOCK_ATTEMPTS):  # see `PipelineDriver._unlock`
            try:
                await self._statement(UNLOCK_SQL, prefix)
                return
            except Exception as exc:
                failure = exc
                if store.conn.broken:  # type: ignore[union-attr]
                    return  # the session is gone, and its locks with it
                assert store.pipe is not None
                with contextlib.suppress(Exception):
                    await store.pipe.sync()
        assert failure is not None
        _release_failed(failure)

    async def _release(self, prefix: str) -> None:
        """`_unlock` in a task of its own, which a cancellation of the caller does not stop."""
        await asyncio.shield(_in_background(self._unlock(prefix)))

    async def _take(self, prefix: str, pending: list[asyncio.Task[bool]]) -> bool:
        """One attempt at the lock. While its statement runs it is in ``pending``: if
        the caller stops waiting, whoever gives up after it knows what to undo."""
        attempt = asyncio.ensure_future(self._statement(TRY_LOCK_SQL, prefix))
        pending.append(attempt)
        got = await asyncio.shield(attempt)
        pending.remove(attempt)
        return got

    async def _acquire(self, prefix: str, pending: list[asyncio.Task[bool]]) -> None:
        backoff = Backoff()
        while True:  # polled: the shared connection must never wait on the lock
            if await self._take(prefix, pending):
                return
            await asyncio.sleep(backoff.next_pause())

    async def _give_up(
        self, prefix: str, pending: list[asyncio.Task[bool]], lock: asyncio.Lock
    ) -> None:
        """Undo lock statements still running when their caller stopped waiting (each is
        awaited, then unlocked unless it surely took nothing), then free this process's
        lock of the conversation."""
        try:
            for attempt in pending:
                await self._unlock(prefix, attempt)
        finally:
            lock.release()

    async def arun(self, namespace: tuple[str, ...], steps: Steps[T]) -> T:
        prefix = namespace_text(namespace)
        lock = self._alock(namespace)
        async with budget.enforced():
            await lock.acquire()
        pending: list[asyncio.Task[bool]] = []
        try:
            async with budget.enforced():
                await self._acquire(prefix, pending)
        except BaseException:
            # A lock statement may still be queued behind another caller's on the shared
            # connection: the caller does not wait for it; a task of its own does.
            _in_background(self._give_up(prefix, pending, lock))
            raise

        async def release() -> None:
            try:
                await self._release(prefix)
            finally:
                lock.release()

        async def unit() -> T:
            try:
                return await drive_async(steps, self.aperform(namespace))
            finally:
                await release()

        return await _unless_late(unit, release)

    def areader(self, namespace: tuple[str, ...]) -> AsyncPerform:
        perform = self.aperform(namespace)

        async def aperform(request: Request) -> Any:
            return await _unless_late(lambda: perform(request))

        return aperform

    async def aappend(self, namespace: tuple[str, ...], request: AppendRequest) -> AppendResult:
        return await self.arun(namespace, request.steps())
