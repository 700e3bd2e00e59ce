"""The driver for any `BaseStore`: its own ``batch``/``abatch``, best-effort atomicity.

A store we know nothing about offers no transaction, so an append runs under a lock of
this process and then reads its turns back: another process writing the same
conversation may have overwritten them between our read and our write. Missing turns are
appended again (their ids keep that idempotent) with bounded, jittered backoff, counted
in `AppendResult.conflicts`; `WriteConflict` is raised when the retries run out.

Such a store's calls cannot be interrupted, so a call with a deadline runs on a small
pool of daemon threads and the caller stops waiting at the deadline; the pool is
bounded, so a hung store holds a few threads, never one per call.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import json
import queue
import random
import threading
import time
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from langgraph.store.base import BaseStore, GetOp, PutOp

from agent_history import budget
from agent_history.errors import WriteConflict
from agent_history.history.drivers.base import (
    AppendRequest,
    AsyncPerform,
    HistoryDriver,
    SyncPerform,
)
from agent_history.history.drivers.process_locks import ConversationLocks
from agent_history.history.layout import PendingTurn, msgid_key
from agent_history.history.records import AppendResult, Turn
from agent_history.history.steps import (
    Get,
    Put,
    Request,
    Steps,
    committed_ids_steps,
    drive,
    drive_async,
    read_steps,
)

__all__ = ["GenericDriver", "collect_steps"]

T = TypeVar("T")

_ATTEMPTS = 4
_READ_BATCH_TURNS = 256
_POOL_THREADS = 4


class _DaemonPool:
    """At most ``size`` daemon threads running submitted calls (a hung call keeps its
    thread, and a process can still exit while one hangs)."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._jobs: queue.SimpleQueue[tuple[concurrent.futures.Future[Any], Callable[[], Any]]]
        self._jobs = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._guard = threading.Lock()

    def submit(self, fn: Callable[[], T]) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self._guard:
            if self._idle == 0 and len(self._threads) < self._size:
                thread = threading.Thread(
                    target=self._work, name="agent-history-store", daemon=True
                )
                self._threads.append(thread)
                self._idle += 1
                thread.start()
        self._jobs.put((future, fn))
        return future

    def _work(self) -> None:
        while True:
            future, fn = self._jobs.get()
            with self._guard:
                self._idle -= 1
            try:
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(fn())
                    except BaseException as exc:  # handed to the waiting caller
                        future.set_exception(exc)
            finally:
                with self._guard:
                    self._idle += 1


_POOL = _DaemonPool(_POOL_THREADS)


def _bounded(fn: Callable[[], T]) -> T:
    """Call ``fn`` here, or on the pool when a deadline is set (waiting until it)."""
    left = budget.remaining()
    if left is None:
        return fn()
    if left <= 0:
        raise budget.timeout_error()
    # The deadline travels with the copied context, so the call can stop at it too.
    future = _POOL.submit(functools.partial(contextvars.copy_context().run, fn))
    try:
        return future.result(left)
    except concurrent.futures.TimeoutError:
        future.cancel()
        raise budget.timeout_error() from None


def collect_steps(start_seq: int, value_field: str) -> Steps[list[Turn]]:
    """Every stored turn from ``start_seq`` on, as one procedure."""
    turns: list[Turn] = []
    reading = read_steps(start_seq, _READ_BATCH_TURNS, value_field)
    try:
        item = next(reading)
        while True:
            if isinstance(item, list):
                turns.extend(item)
                item = next(reading)
            else:
                item = reading.send((yield item))
    except StopIteration:
        return turns


@dataclass(frozen=True, slots=True)
class _Atomic:
    steps: Steps[Any]


@dataclass(frozen=True, slots=True)
class _Read:
    steps: Steps[Any]


@dataclass(frozen=True, slots=True)
class _Write:
    put: Put


@dataclass(frozen=True, slots=True)
class _Sleep:
    seconds: float


_Instruction = _Atomic | _Read | _Write | _Sleep


def _best_effort_append(request: AppendRequest) -> Generator[_Instruction, Any, AppendResult]:
    """Append, read back, re-append what another writer overwrote (see the module)."""
    pending = list(request.pending)
    remaining = pending
    first: AppendResult | None = None
    for conflicts in range(_ATTEMPTS):
        # A retry re-appends our own lost turns: the anchor rule applies once.
        attempt = replace(request, pending=remaining)
        result: AppendResult = yield _Atomic(attempt.steps(anchored=not conflicts))
        first = first or result
        lost: list[PendingTurn] = []
        if result.first_seq is not None and result.last_seq is not None:
            stored: list[Turn] = yield _Read(collect_steps(result.first_seq, request.value_field))
            present = {(t.role, _canonical(t.content), t.id) for t in stored}
            missing = [p for p in remaining if (p.role, _canonical(p.content), p.id) not in present]
            # Turns the append skipped as already stored sit before what it wrote: they
            # are not lost (only turns without an id, or whose id is not stored, are).
            ids = tuple(dict.fromkeys(p.id for p in missing if p.id is not None))
            before: set[str] = (yield _Read(committed_ids_steps(ids))) if ids else set()
            lost = [p for p in missing if p.id is None or p.id not in before]
        if not lost:
            return AppendResult(
                appended=len(pending) - first.duplicates,
                duplicates=first.duplicates,
                skipped=request.skipped,
                first_seq=first.first_seq,
                last_seq=result.last_seq or first.last_seq,
                total=result.total,
                conflicts=conflicts,
            )
        remaining = lost
        # The lost turns' id entries point at turns that are not there: drop them so
        # the retry is not mistaken for a re-delivery.
        stale = {msgid_key(t.id): None for t in lost if t.id is not None}
        if stale:
            yield _Write(Put(stale))
        yield _Sleep(min(0.5, 0.01 * 2**conflicts) * (0.5 + random.random()))
    raise WriteConflict(
        f"append lost {len(remaining)} turn(s) to concurrent writers after {_ATTEMPTS} attempts"
    )


def _canonical(content: Any) -> str:
    """``content`` as text that does not depend on key order (a store may hand mappings
    back with their keys reordered, as PostgreSQL's ``jsonb`` does)."""
    return json.dumps(content, sort_keys=True, default=repr)


def _get_ops(namespace: tuple[str, ...], keys: tuple[str, ...], refresh: bool) -> list[GetOp]:
    return [GetOp(namespace, key, refresh) for key in keys]


def _found(keys: tuple[str, ...], results: list[Any]) -> dict[str, dict[str, Any]]:
    return {key: item.value for key, item in zip(keys, results, strict=True) if item is not None}


class GenericDriver(HistoryDriver):
    """Any `BaseStore`, through its public ``batch``/``abatch`` (see the module)."""

    name = "generic"
    backend = "other"
    atomic = False

    def __init__(self, store: BaseStore, backend: str = "other") -> None:
        super().__init__(store)
        self.backend = backend
        config = getattr(store, "ttl_config", None) or {}
        supports_ttl = bool(getattr(store, "supports_ttl", False))
        # The store's own TTL semantics, item by item, as for any other item.
        self._ttl = config.get("default_ttl") if supports_ttl else None
        self._refresh = bool(config.get("refresh_on_read", True)) if supports_ttl else False
        self._locks = ConversationLocks()

    @classmethod
    def accepts(cls, store: BaseStore) -> bool:
        return True

    def _lock(self, namespace: tuple[str, ...]) -> threading.Lock:
        """This process's lock of a conversation (see `process_locks`)."""
        return self._locks.thread_lock(namespace)

    def _alock(self, namespace: tuple[str, ...]) -> asyncio.Lock:
        """The running loop's lock of a conversation (see `process_locks`)."""
        return self._locks.loop_lock(namespace)

    def _put_ops(
        self, namespace: tuple[str, ...], items: Mapping[str, dict[str, Any] | None]
    ) -> list[PutOp]:
        return [
            PutOp(namespace, key, value, index=False, ttl=self._ttl if value is not None else None)
            for key, value in items.items()
        ]

    def perform(self, namespace: tuple[str, ...]) -> SyncPerform:
        """Requests performed with the store's ``batch``, no lock, no deadline."""

        def perform(request: Request) -> Any:
            if isinstance(request, Get):
                ops = _get_ops(namespace, request.keys, self._refresh)
                return _found(request.keys, self.store.batch(ops))
            self.store.batch(self._put_ops(namespace, request.items))
            return None

        return perform

    def aperform(self, namespace: tuple[str, ...]) -> AsyncPerform:
        """Async `perform`."""

        async def perform(request: Request) -> Any:
            if isinstance(request, Get):
                ops = _get_ops(namespace, request.keys, self._refresh)
                return _found(request.keys, await self.store.abatch(ops))
            await self.store.abatch(self._put_ops(namespace, request.items))
            return None

        return perform

    # --- sync ------------------------------------------------------------------------------

    def _run_locked(self, namespace: tuple[str, ...], steps: Steps[T]) -> T:
        with self._locks.hold(namespace):
            return drive(steps, self.perform(namespace))

    def run(self, namespace: tuple[str, ...], steps: Steps[T]) -> T:
        self._locks.check_caller(namespace)  # here: a budgeted call runs on the pool
        return _bounded(lambda: self._run_locked(namespace, steps))

    def reader(self, namespace: tuple[str, ...]) -> SyncPerform:
        perform = self.perform(namespace)
        return lambda request: _bounded(lambda: perform(request))

    def read(self, namespace: tuple[str, ...], steps: Steps[T]) -> T:
        return _bounded(lambda: drive(steps, self.perform(namespace)))

    def append(self, namespace: tuple[str, ...], request: AppendRequest) -> AppendResult:
        self._locks.check_caller(namespace)  # here: a budgeted call runs on the pool
        return _bounded(lambda: self._append_now(namespace, request))

    def _append_now(self, namespace: tuple[str, ...], request: AppendRequest) -> AppendResult:
        procedure = _best_effort_append(request)
        answer: Any = None
        try:
            while True:
                step = procedure.send(answer)
                if isinstance(step, _Atomic):
                    answer = self._run_locked(namespace, step.steps)
                elif isinstance(step, _Read):
                    answer = drive(step.steps, self.perform(namespace))
                elif isinstance(step, _Write):
                    answer = self.perform(namespace)(step.put)
                else:
                    time.sleep(step.seconds)
                    answer = None
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    # --- async -----------------------------------------------------------------------------

    async def arun(self, namespace: tuple[str, ...], steps: Steps[T]) -> T:
        async with budget.enforced():
            return await self._locks.run_held(
                namespace, lambda: drive_async(steps, self.aperform(namespace))
            )

    def areader(self, namespace: tuple[str, ...]) -> AsyncPerform:
        perform = self.aperform(namespace)

        async def aperform(request: Request) -> Any:
            async with budget.enforced():
                return await perform(request)

        return aperform

    async def aappend(self, namespace: tuple[str, ...], request: AppendRequest) -> AppendResult:
        async with budget.enforced():
            return await self._aappend_now(namespace, request)

    async def _aappend_now(
        self, namespace: tuple[str, ...], request: AppendRequest
    ) -> AppendResult:
        procedure = _best_effort_append(request)
        answer: Any = None
        try:
            while True:
                step = procedure.send(answer)
                if isinstance(step, _Atomic):
                    work = functools.partial(drive_async, step.steps, self.aperform(namespace))
                    answer = await self._locks.run_held(namespace, work)
                elif isinstance(step, _Read):
                    answer = await drive_async(step.steps, self.aperform(namespace))
                elif isinstance(step, _Write):
                    answer = await self.aperform(namespace)(step.put)
                else:
                    await asyncio.sleep(step.seconds)
                    answer = None
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
