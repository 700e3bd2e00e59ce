"""The `HistoryDriver` interface, the sync/async bridges and the TTL rule every driver shares.

A driver performs the I/O-free history procedures (`history.steps`) against one kind of
store: it answers their `Get` / `Put` requests, inside one atomic unit of work per
conversation when asked (`run`), and may replace a whole procedure by something its
database does in one round trip (`append`). A store with only sync I/O gets its async
methods from `SyncStoreDriver` (a worker thread, the deadline travelling along); a store
bound to an event loop gets its sync methods from `AsyncStoreDriver`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import time
import weakref
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, TypeGuard, TypeVar

from langgraph.store.base import BaseStore, GetOp

from agent_history import budget
from agent_history import observability as obs
from agent_history.errors import StoreUnavailable, SyncCallInEventLoop
from agent_history.history.layout import HEAD_KEY, PendingTurn
from agent_history.history.records import AppendResult
from agent_history.history.steps import Request, Steps, append_steps, drive, drive_async

__all__ = [
    "REFRESH_FRACTION",
    "AppendRequest",
    "AsyncPerform",
    "AsyncStoreDriver",
    "ChunkSizes",
    "HistoryDriver",
    "PageCursor",
    "SyncPerform",
    "SyncStoreDriver",
    "TtlPolicy",
    "children_bounds",
    "children_page",
    "namespace_text",
    "uses_own_io",
    "warn_once",
]

T = TypeVar("T")
S = TypeVar("S", bound=BaseStore)
SyncPerform = Callable[[Request], Any]
AsyncPerform = Callable[[Request], Awaitable[Any]]

REFRESH_FRACTION = 0.1
"""A conversation's expiry is pushed back once more than this fraction of its TTL has
passed since it was last set, so a busy conversation is not rewritten on every turn."""


def uses_own_io(store: BaseStore, cls: type[S]) -> TypeGuard[S]:
    """Whether ``store`` is a ``cls`` that reads and writes as ``cls`` does. A subclass
    that overrides ``batch`` or ``abatch`` (a tenant prefix, an audit trail, a cache)
    redefines where items live: SQL written for ``cls`` would bypass it."""
    kind = type(store)
    return isinstance(store, cls) and kind.batch is cls.batch and kind.abatch is cls.abatch


def namespace_text(namespace: tuple[str, ...]) -> str:
    """The ``prefix`` column value LangGraph's SQL stores use for a namespace."""
    return ".".join(namespace)


@dataclass(frozen=True, slots=True)
class AppendRequest:
    """One append: the turns to store and the arguments of `steps.append_steps`."""

    pending: Sequence[PendingTurn]
    chunk_size: int
    value_field: str
    now: str
    skipped: int = 0
    anchor_id: str | None = None
    anchor_next: str | None = None
    anchor_seen: tuple[str, ...] = ()

    def steps(self, *, anchored: bool = True) -> Steps[AppendResult]:
        """The append procedure (``anchored=False``: without the anchor rule, for a retry
        that re-appends turns of its own)."""
        return append_steps(
            self.pending,
            chunk_size=self.chunk_size,
            value_field=self.value_field,
            now=self.now,
            skipped=self.skipped,
            anchor_id=self.anchor_id if anchored else None,
            anchor_next=self.anchor_next if anchored else None,
            anchor_seen=self.anchor_seen if anchored else (),
        )


@dataclass(frozen=True, slots=True)
class TtlPolicy:
    """The store's TTL settings as history items use them (LangGraph's ``TTLConfig``).

    A conversation expires as a whole: every item of it carries the same ``expires_at``
    (the head's), so the store's sweeper, which deletes expired rows in one statement,
    removes all of a conversation or none of it. Writes and (when ``refresh_on_read``)
    reads push that expiry back to ``now + minutes`` for the whole conversation once
    more than `REFRESH_FRACTION` of the TTL has passed.
    """

    minutes: float | None = None
    """``default_ttl``; None: history items get no expiry of their own."""
    refresh_on_read: bool = False

    @classmethod
    def of(cls, store: BaseStore, refresh_default: bool) -> TtlPolicy:
        """The policy of ``store``; ``refresh_default`` is the store class's own default
        for ``refresh_on_read`` (LangGraph's PostgreSQL store refreshes unless told not
        to, its SQLite store only when told to)."""
        config = getattr(store, "ttl_config", None) or {}
        minutes = config.get("default_ttl")
        if minutes is not None and not (math.isfinite(minutes) and minutes > 0):
            minutes = None
        refresh = bool(config.get("refresh_on_read", refresh_default))
        return cls(float(minutes) if minutes is not None else None, refresh and bool(minutes))

    def expiry(self, current: datetime | None, exists: bool, now: datetime) -> tuple[
        datetime | None, bool
    ]:  # fmt: skip
        """The expiry to write with a conversation whose head expires at ``current``, and
        whether every item of it must be set to that expiry first (a refresh)."""
        if self.minutes is None:
            return current, False
        if exists and current is not None:
            left = (current - now).total_seconds() / 60
            if left >= self.minutes * (1 - REFRESH_FRACTION):
                return current, False
        return now + timedelta(minutes=self.minutes), exists

    def needs_refresh(self, current: datetime | None, now: datetime) -> bool:
        """Whether a read of a conversation expiring at ``current`` pushes it back."""
        return self.refresh_on_read and self.expiry(current, True, now)[1]


def utc_now() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


_warned: weakref.WeakKeyDictionary[BaseStore, set[str]] = weakref.WeakKeyDictionary()


def warn_once(store: BaseStore, event: str, **fields: object) -> None:
    """Log ``event`` at WARNING once per store object and event."""
    seen = _warned.setdefault(store, set())
    if event in seen:
        return
    seen.add(event)
    obs.log_event(event, level=logging.WARNING, **fields)


class ChunkSizes:
    """The chunk size of the conversations whose heads said another size than their
    reader's own (conversations created with an older default, or by another
    configuration), for up to `KEPT` conversations.

    A tail asks for the newest chunks in the same query as the head, before it knows
    the conversation's size: with this it asks for as many as it needs, neither more
    (bytes read and thrown away) nor fewer (a second round trip). Only a hint: a wrong
    or forgotten size costs one of those, never a turn.
    """

    KEPT = 1024

    def __init__(self) -> None:
        self._sizes: dict[tuple[str, ...], int] = {}

    def hint(self, namespace: tuple[str, ...], default: int) -> int:
        """The size to plan a read of ``namespace`` with."""
        return self._sizes.get(namespace, default)

    def saw(self, namespace: tuple[str, ...], default: int, size: object) -> None:
        """Remember that ``namespace``'s head says ``size`` (forget it when that is
        ``default``; a size that is not a positive int is not remembered). Past `KEPT`
        conversations everything is forgotten at once: cheaper than ordering them, and
        safe from any thread."""
        if type(size) is not int or size <= 0:
            return
        if size == default:
            self._sizes.pop(namespace, None)
            return
        if len(self._sizes) >= self.KEPT and namespace not in self._sizes:
            self._sizes.clear()
        self._sizes[namespace] = size


PageCursor = int | str | None
"""Where a page of namespaces starts: an offset (the store's listing), the text of the
previous page's last namespace (the SQL drivers), None for the first page."""


def children_page(
    namespace: tuple[str, ...], prefixes: Sequence[str], size: int
) -> tuple[list[tuple[str, ...]], PageCursor]:
    """A SQL driver's page: the namespaces of ``prefixes`` (the texts after the cursor,
    in order, at most ``size``) one level below ``namespace``, and the next cursor."""
    depth = len(namespace) + 1
    found = [tuple(text.split(".")) for text in prefixes]
    page = [ns for ns in found if len(ns) == depth]
    return page, (prefixes[-1] if len(prefixes) >= size else None)


def children_bounds(namespace: tuple[str, ...], cursor: PageCursor) -> tuple[str, str]:
    """The texts a page of ``namespace``'s children lies strictly between (byte order):
    past the cursor (or the namespace's own text and its separator), below the
    separator's successor."""
    text = namespace_text(namespace)
    low = cursor if isinstance(cursor, str) else text + "."
    return low, text + "/"  # "/" follows "." in byte order: every child is below it


def _next_offset(offset: int, page: Sequence[object], size: int) -> PageCursor:
    """The cursor after a page read by offset (None: it was the last)."""
    return offset + len(page) if len(page) >= size else None


class HistoryDriver(ABC):
    """Performs history procedures against one kind of store.

    One driver object serves one store (see `drivers.driver_for`), for every
    `ChatHistory` on it; it holds what it learnt about the store (schema checked,
    per-conversation locks). Deadlines come from `agent_history.budget`.
    """

    name: ClassVar[str] = "generic"
    """Driver name, for logs and health reports."""
    backend: str = "other"
    """Backend label for metrics: ``memory``, ``sqlite``, ``postgres`` or ``other``."""
    atomic: ClassVar[bool] = True
    """Whether `run` excludes every other writer of the conversation (False: only the
    writers of this process; appends then verify what they wrote)."""

    def __init__(self, store: BaseStore) -> None:
        # Weak: the driver is kept per store (`driver_for`) and must not keep it alive.
        self._store = weakref.ref(store)
        self.chunk_sizes = ChunkSizes()
        """Chunk sizes its conversations' heads said (see `ChunkSizes`)."""

    @property
    def store(self) -> BaseStore:
        """The store this driver serves."""
        store = self._store()
        if store is None:
            raise ReferenceError("the store of this history driver is gone")
        return store

    @classmethod
    @abstractmethod
    def accepts(cls, store: BaseStore) -> bool:
        """Whether this driver is the one for ``store``."""

    # --- sync ------------------------------------------------------------------------------

    @abstractmethod
    def run(self, namespace: tuple[str, ...], steps: Steps[T]) -> T:
        """Run ``steps`` as one atomic unit of work on conversation ``namespace``."""

    @abstractmethod
    def reader(self, namespace: tuple[str, ...]) -> SyncPerform:
        """Perform read requests on ``namespace`` one at a time (no transaction)."""

    def read(self, namespace: tuple[str, ...], steps: Steps[T]) -> T:
        """Run read-only ``steps`` (a consistent snapshot is not promised across requests)."""
        return drive(steps, self.reader(namespace))

    def append(self, namespace: tuple[str, ...], request: AppendRequest) -> AppendResult:
        """Append atomically and idempotently (see `steps.append_steps`)."""
        return self.run(namespace, request.steps())

    def heads(self, namespaces: Sequence[tuple[str, ...]]) -> list[bool]:
        """Whether each of ``namespaces`` holds a conversation (a head), in one read (for
        listing conversations). Refreshes no expiry: a listing is not a use."""
        found = self.store.batch([GetOp(ns, HEAD_KEY, refresh_ttl=False) for ns in namespaces])
        return [item is not None for item in found]

    def namespace_page(
        self, namespace: tuple[str, ...], cursor: PageCursor, size: int
    ) -> tuple[list[tuple[str, ...]], PageCursor]:
        """A page of the namespaces below ``namespace`` (for listing conversations), from
        ``cursor`` (None: the first page), with the cursor of the next page (None: this
        was the last). Here by the store's ``list_namespaces`` and an offset, which costs
        a scan of what comes before it; the SQL drivers seek past the previous page."""
        offset = int(cursor or 0)
        page = self.store.list_namespaces(
            prefix=namespace, max_depth=len(namespace) + 1, limit=size, offset=offset
        )
        return page, _next_offset(offset, page, size)

    # --- async -----------------------------------------------------------------------------

    async def on_own_loop(self, call: Awaitable[T]) -> T:
        """Await ``call`` (one of the async methods below) where the store can run it:
        the running loop, but for a store bound to another one (`AsyncStoreDriver`)."""
        return await call

    @abstractmethod
    async def arun(self, namespace: tuple[str, ...], steps: Steps[T]) -> T:
        """Async `run`."""

    @abstractmethod
    def areader(self, namespace: tuple[str, ...]) -> AsyncPerform:
        """Async `reader`."""

    async def aread(self, namespace: tuple[str, ...], steps: Steps[T]) -> T:
        """Async `read`."""
        return await drive_async(steps, self.areader(namespace))

    async def aappend(self, namespace: tuple[str, ...], request: AppendRequest) -> AppendResult:
        """Async `append`."""
        return await self.arun(namespace, request.steps())

    async def aheads(self, namespaces: Sequence[tuple[str, ...]]) -> list[bool]:
        """Async `heads`."""
        ops = [GetOp(ns, HEAD_KEY, refresh_ttl=False) for ns in namespaces]
        return [item is not None for item in await self.store.abatch(ops)]

    async def anamespace_page(
        self, namespace: tuple[str, ...], cursor: PageCursor, size: int
    ) -> tuple[list[tuple[str, ...]], PageCursor]:
        """Async `namespace_page`."""
        offset = int(cursor or 0)
        page = await self.store.alist_namespaces(
            prefix=namespace, max_depth=len(namespace) + 1, limit=size, offset=offset
        )
        return page, _next_offset(offset, page, size)

    def describe(self) -> dict[str, Any]:
        """What the driver knows about its store, for health reports."""
        return {"driver": self.name}


class SyncStoreDriver(HistoryDriver):
    """A driver whose store does sync I/O: async calls run the sync ones in a worker
    thread of the event loop's bounded default executor. The deadline travels with the
    copied context, so the thread ends by the deadline and nothing is left running."""

    async def arun(self, namespace: tuple[str, ...], steps: Steps[T]) -> T:
        return await asyncio.to_thread(self.run, namespace, steps)

    def areader(self, namespace: tuple[str, ...]) -> AsyncPerform:
        perform = self.reader(namespace)

        async def aperform(request: Request) -> Any:
            return await asyncio.to_thread(perform, request)

        return aperform

    async def aread(self, namespace: tuple[str, ...], steps: Steps[T]) -> T:
        return await asyncio.to_thread(self.read, namespace, steps)

    async def aappend(self, namespace: tuple[str, ...], request: AppendRequest) -> AppendResult:
        return await asyncio.to_thread(self.append, namespace, request)

    async def aheads(self, namespaces: Sequence[tuple[str, ...]]) -> list[bool]:
        return await asyncio.to_thread(self.heads, namespaces)

    async def anamespace_page(
        self, namespace: tuple[str, ...], cursor: PageCursor, size: int
    ) -> tuple[list[tuple[str, ...]], PageCursor]:
        return await asyncio.to_thread(self.namespace_page, namespace, cursor, size)


_LOOP_GRACE_SECONDS = 0.2
"""How long past the deadline a sync caller waits for a call on the store's loop, which
stops itself at the deadline, before giving up on it."""


class AsyncStoreDriver(HistoryDriver):
    """A driver whose store is bound to an event loop: sync calls (from other threads)
    run the async ones on that loop and wait for them."""

    def _loop(self) -> asyncio.AbstractEventLoop | None:
        loop = getattr(self.store, "loop", None) or getattr(self.store, "_loop", None)
        return loop if isinstance(loop, asyncio.AbstractEventLoop) else None

    def _off_loop(self) -> asyncio.AbstractEventLoop:
        """The store's loop, which the caller is not on.

        Raises:
            SyncCallInEventLoop: the caller is on it (a sync call would wait for the
                loop forever), or the store has none.
        """
        loop = self._loop()
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if loop is None or running is loop:
            raise SyncCallInEventLoop(
                "this store runs on an event loop: use the async methods "
                "(atail, aappend, ...) on it"
                if loop is not None
                else "this async store has no event loop to run on"
            )
        return loop

    def _on_loop(self, coro: Coroutine[Any, Any, T]) -> T:
        try:
            loop = self._off_loop()
        except SyncCallInEventLoop:
            coro.close()
            raise
        _require_running(loop, coro)
        future, wait = _sent_to(loop, coro)
        try:
            return future.result(wait)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise budget.timeout_error() from None

    async def on_own_loop(self, call: Awaitable[T]) -> T:
        """Await ``call`` on the store's loop: an async store opened on one event loop
        and used from another (a worker thread's ``asyncio.run(graph.ainvoke(...))``
        beside the server's loop) runs each call on its own loop, as the sync methods
        do; its locks and connections belong there (awaited from another loop they
        raise, or hang until the budget, and the breaker opened for the whole process).
        A store whose loop is gone raises `StoreUnavailable` saying so."""
        loop = self._loop()
        if loop is None or loop is asyncio.get_running_loop():
            return await call
        _require_running(loop, call)
        future, wait = _sent_to(loop, _awaited(call))
        try:
            # The caller's budget holds also when the store's loop is busy or blocked.
            return await asyncio.wait_for(asyncio.wrap_future(future), wait)
        except TimeoutError:
            future.cancel()
            raise budget.timeout_error() from None
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # the caller's own cancellation (the job is cancelled with it)
            # Cancelled on the store's loop (it is shutting down): a store failure here.
            raise StoreUnavailable("the store's event loop cancelled the call") from None

    def run(self, namespace: tuple[str, ...], steps: Steps[T]) -> T:
        return self._on_loop(self.arun(namespace, steps))

    def reader(self, namespace: tuple[str, ...]) -> SyncPerform:
        aperform = self.areader(namespace)

        def perform(request: Request) -> Any:
            self._off_loop()  # before the call is made: nothing is left never awaited
            return self._on_loop(_awaited(aperform(request)))

        return perform

    def read(self, namespace: tuple[str, ...], steps: Steps[T]) -> T:
        return self._on_loop(self.aread(namespace, steps))

    def append(self, namespace: tuple[str, ...], request: AppendRequest) -> AppendResult:
        return self._on_loop(self.aappend(namespace, request))

    def heads(self, namespaces: Sequence[tuple[str, ...]]) -> list[bool]:
        return self._on_loop(self.aheads(namespaces))

    def namespace_page(
        self, namespace: tuple[str, ...], cursor: PageCursor, size: int
    ) -> tuple[list[tuple[str, ...]], PageCursor]:
        return self._on_loop(self.anamespace_page(namespace, cursor, size))


def _require_running(loop: asyncio.AbstractEventLoop, call: Awaitable[Any]) -> None:
    """Raise `StoreUnavailable` (closing ``call``) when the store's loop cannot run it."""
    if loop.is_closed() or not loop.is_running():
        if isinstance(call, Coroutine):
            call.close()
        raise StoreUnavailable(
            "this async store's event loop (the one it was opened on) is not running: "
            "stopped (the server shutting down), or the store was opened in another "
            "asyncio.run (open it on a loop that runs while it is used)"
        )


def _sent_to(
    loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T]
) -> tuple[concurrent.futures.Future[T], float | None]:
    """``coro`` started on ``loop`` under the caller's deadline, and how long the caller
    waits for it (the time left and a grace for the hop; None: no deadline)."""
    deadline = budget.current_deadline()
    future = asyncio.run_coroutine_threadsafe(budget.run_with_deadline(coro, deadline), loop)
    wait = None if deadline is None else max(0.0, deadline - time.monotonic())
    return future, None if wait is None else wait + _LOOP_GRACE_SECONDS


async def _awaited(call: Awaitable[T]) -> T:
    return await call
