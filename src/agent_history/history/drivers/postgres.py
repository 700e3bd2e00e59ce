"""The driver for LangGraph's sync `PostgresStore`: one statement per append or tail.

An append is one call of ``agent_history_append_v4`` (one round trip, atomic and
serialised per conversation by an advisory lock, see `postgres_base`); a tail is one
query. Other procedures (delete, ...) run in one pipelined transaction holding the
same lock. Async calls run this code in a worker thread.

Deadlines: the wait for a pooled connection is bounded by the time left, the server
gives up waiting for the conversation's lock a little before the deadline, and at the
deadline the connection's socket is shut down from a watchdog thread, so a server that
stopped answering cannot hold the caller (and the server is asked to cancel the statement,
see `postgres_cancel.shut`). A connection that was shut down is dropped by
the pool, and the pool is drained, because when one connection hangs its idle siblings
(opened to the same, possibly failed-over, server) likely hang too. A store on one
connection has its statement cancelled instead, so the store stays usable
(`postgres_cancel`).
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import orjson
import psycopg
from langgraph.store.base import BaseStore
from langgraph.store.postgres import PostgresStore
from psycopg import Connection
from psycopg.rows import tuple_row
from psycopg_pool import ConnectionPool, PoolTimeout

from agent_history import budget
from agent_history.errors import InvalidArgument
from agent_history.history.drivers import postgres_base as sql
from agent_history.history.drivers.base import (
    AppendRequest,
    HistoryDriver,
    PageCursor,
    SyncPerform,
    SyncStoreDriver,
    TtlPolicy,
    children_bounds,
    children_page,
    namespace_text,
    uses_own_io,
    utc_now,
)
from agent_history.history.drivers.generic import GenericDriver
from agent_history.history.drivers.postgres_cancel import Canceller, shut
from agent_history.history.drivers.postgres_idle import IdleConnections
from agent_history.history.drivers.postgres_setup import PostgresState, inspect_sync
from agent_history.history.layout import HEAD_KEY
from agent_history.history.records import AppendResult
from agent_history.history.steps import Get, Request, Steps, drive

__all__ = ["PostgresDriver"]

T = TypeVar("T")


# --- the watchdog: one thread that shuts sockets down at their deadlines ----------------------


@dataclass(order=True)
class _Alarm:
    deadline: float
    order: int
    conn: Connection[Any] = field(compare=False)
    canceller: Canceller | None = field(default=None, compare=False)
    """For a store's only connection: cancel the statement instead of shutting down."""
    armed: bool = field(default=True, compare=False)
    fired: bool = field(default=False, compare=False)

    def fire(self) -> None:
        self.fired = True
        if self.canceller is not None:
            self.canceller.start()
        else:
            shut(self.conn)


class _Watchdog:
    """Shuts a connection's socket down at its deadline unless disarmed first (a store's
    only connection has its statement cancelled instead, see `postgres_cancel`).

    Arming and disarming share a lock with firing, so a socket is never shut after its
    call ended (its connection may already serve someone else).
    """

    def __init__(self) -> None:
        self._alarms: list[_Alarm] = []
        self._order = itertools.count()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None

    def arm(
        self, deadline: float, conn: Connection[Any], canceller: Canceller | None = None
    ) -> _Alarm:
        alarm = _Alarm(deadline, next(self._order), conn, canceller)
        with self._wake:
            heapq.heappush(self._alarms, alarm)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._watch, name="agent-history-deadlines", daemon=True
                )
                self._thread.start()
            self._wake.notify()
        return alarm

    def disarm(self, alarm: _Alarm) -> bool:
        """Stop ``alarm``; True when it had already fired."""
        with self._wake:
            alarm.armed = False
            return alarm.fired

    def _watch(self) -> None:
        with self._wake:
            while True:
                while self._alarms and not self._alarms[0].armed:
                    heapq.heappop(self._alarms)
                if not self._alarms:
                    self._wake.wait()
                    continue
                wait = self._alarms[0].deadline - time.monotonic()
                if wait > 0:
                    self._wake.wait(wait)
                    continue
                heapq.heappop(self._alarms).fire()


_WATCHDOG = _Watchdog()


class PostgresDriver(SyncStoreDriver):
    """`PostgresStore` on a pool or a plain connection (see the module)."""

    name = "postgres"
    backend = "postgres"
    atomic = True

    def __init__(self, store: BaseStore) -> None:
        super().__init__(store)
        self.ttl = TtlPolicy.of(store, True)
        self._state: PostgresState | None = None
        self._fallback: HistoryDriver | None = None
        self._ready = threading.Lock()
        self._idle = IdleConnections()

    @classmethod
    def accepts(cls, store: BaseStore) -> bool:
        # A store in pipeline mode shares its connection: `postgres_pipeline` drives it.
        return uses_own_io(store, PostgresStore) and store.pipe is None

    @property
    def pg(self) -> PostgresStore:
        return cast(PostgresStore, self.store)

    # --- connections under a deadline ----------------------------------------------------------

    # (Plain methods rather than generator context managers: this runs on every call, and
    # two generator context managers cost about as much as building the append's arguments.)

    def _borrow(self) -> Connection[Any]:
        """A connection for one unit of work, waited for no longer than the deadline;
        give it back with `_give_back`."""
        target = self.pg.conn
        left = budget.remaining()
        if left is not None and left <= 0:
            raise budget.timeout_error()
        if isinstance(target, ConnectionPool):
            try:
                return target.getconn(None if left is None else min(left, target.timeout))
            except PoolTimeout:
                if left is not None and left <= target.timeout:
                    raise budget.timeout_error() from None
                raise
        if not self.pg.lock.acquire(timeout=-1 if left is None else left):
            raise budget.timeout_error()
        return target

    def _give_back(self, conn: Connection[Any]) -> None:
        target = self.pg.conn
        if isinstance(target, ConnectionPool):
            self._idle.lent(conn)
            target.putconn(conn)
        else:
            self.pg.lock.release()

    def _alive(self, conn: Connection[Any]) -> Connection[Any]:
        """``conn``, or (when it sat idle long enough for the server or a proxy to have
        closed it, and a check finds it closed) a fresh one: a call after a quiet spell
        must not fail on a session an idle timeout ended (`IdleConnections`). Gives the
        dead connection back itself; on an error nothing is left borrowed."""
        if not isinstance(self.pg.conn, ConnectionPool) or not self._idle.stale(conn):
            return conn
        try:
            deadline = budget.current_deadline()
            if deadline is None:
                ConnectionPool.check_connection(conn)
            else:
                self._watched(conn, deadline, lambda: ConnectionPool.check_connection(conn))
            return conn
        except BaseException as exc:
            self._give_back(conn)
            if not (isinstance(exc, psycopg.OperationalError) and conn.broken):
                raise
        self._drain()  # its idle siblings were likely closed the same way
        return self._borrow()

    def _watched(self, conn: Connection[Any], deadline: float, work: Callable[[], T]) -> T:
        """Run ``work``, shutting ``conn`` down if it is still running at the deadline."""
        pooled = isinstance(self.pg.conn, ConnectionPool)
        canceller = None if pooled else Canceller(conn)
        alarm = _WATCHDOG.arm(deadline, conn, canceller)
        fired = False
        try:
            return work()
        except psycopg.OperationalError as exc:
            fired = _WATCHDOG.disarm(alarm)
            if fired or isinstance(exc, psycopg.errors.LockNotAvailable):
                raise budget.timeout_error() from None
            raise
        finally:
            fired = _WATCHDOG.disarm(alarm) or fired
            if canceller is not None:
                canceller.finish()  # no cancel in flight once the connection is free
            if fired:
                self._drain()

    def _drain(self) -> None:
        if isinstance(self.pg.conn, ConnectionPool):
            self.pg.conn.drain()

    def _use(self, work: Callable[[Connection[Any]], T]) -> T:
        conn = self._alive(self._borrow())
        try:
            deadline = budget.current_deadline()
            if deadline is None:
                return self._checked(conn, work)
            return self._watched(conn, deadline, lambda: self._checked(conn, work))
        finally:
            self._give_back(conn)

    def _checked(self, conn: Connection[Any], work: Callable[[Connection[Any]], T]) -> T:
        try:
            return work(conn)
        except psycopg.OperationalError:
            if conn.broken:
                # The server went away (a restart, a failover): the pool's idle
                # connections were opened to it too, and would each fail a call.
                self._drain()
            raise

    # --- schema ----------------------------------------------------------------------------

    def _target(self) -> HistoryDriver | None:
        """The generic driver when the SQL path cannot be used, else None."""
        if self._state is None:
            with self._ready:
                if self._state is None:
                    state = self._use(lambda conn: inspect_sync(conn))
                    if state.store_schema is None:
                        # The store is not set up (yet): LangGraph's own path reports it.
                        return GenericDriver(self.store, self.backend)
                    self._state = state
        state = self._state
        assert state is not None
        if self._fallback is None and not state.usable:
            self._fallback = state.fallback(self.store, self.backend)
        return self._fallback

    # --- procedures ------------------------------------------------------------------------

    def append(self, namespace: tuple[str, ...], request: AppendRequest) -> AppendResult:
        fallback = self._target()
        if fallback is not None:
            return fallback.append(namespace, request)
        params = sql.append_params(
            namespace_text(namespace), request, self.ttl, sql.lock_timeout_ms(budget.remaining())
        )

        def work(conn: Connection[Any]) -> AppendResult:
            with conn.cursor(row_factory=tuple_row) as cur:
                if conn.autocommit:
                    row = cur.execute(sql.APPEND_SQL, params).fetchone()
                else:
                    with conn.transaction():
                        row = cur.execute(sql.APPEND_SQL, params).fetchone()
            assert row is not None
            return sql.append_result(row, request.skipped)

        return self._use(work)

    def run(self, namespace: tuple[str, ...], steps: Steps[T]) -> T:
        fallback = self._target()
        if fallback is not None:
            return fallback.run(namespace, steps)
        prefix = namespace_text(namespace)
        lock_ms = sql.lock_timeout_ms(budget.remaining())

        def work(conn: Connection[Any]) -> T:
            pending: dict[str, Any] = {}
            # Pipeline mode sends BEGIN, the lock and the first read in one round trip,
            # and the writes with COMMIT in the next.
            with (
                conn.pipeline(),
                conn.transaction(),
                conn.cursor(row_factory=tuple_row) as cur,
            ):
                cur.execute(sql.LOCK_SQL, (prefix, lock_ms))

                def flush() -> None:
                    if pending:
                        cur.execute(sql.PUT_SQL, sql.put_params(prefix, pending, self.ttl))
                        pending.clear()

                def perform(request: Request) -> Any:
                    if isinstance(request, Get):
                        flush()
                        cur.execute(*sql.select(prefix, request))
                        return {key: orjson.loads(value) for key, value, _ in cur.fetchall()}
                    pending.update(request.items)
                    return None

                result = drive(steps, perform)
                flush()
            return result

        return self._use(work)

    def _get(self, conn: Connection[Any], prefix: str, request: Get) -> dict[str, Any]:
        with conn.cursor(row_factory=tuple_row) as cur:
            rows = cur.execute(*sql.select(prefix, request)).fetchall()
        found = {}
        for key, value, expires_at in rows:
            found[key] = orjson.loads(value)
            if key == HEAD_KEY and self.ttl.refresh_on_read:
                self._touch_if_due(conn, prefix, expires_at)
        return found

    def _touch_if_due(self, conn: Connection[Any], prefix: str, expires_at: Any) -> None:
        if not self.ttl.needs_refresh(expires_at, utc_now()):
            return
        try:
            with conn.transaction(), conn.cursor() as cur:
                cur.execute(
                    sql.TOUCH_SQL,
                    (prefix, self.ttl.minutes, sql.lock_timeout_ms(budget.remaining())),
                )
        except sql.TOUCH_SKIPPED:
            pass  # the read stands (see `postgres_base.TOUCH_SKIPPED`)

    def read(self, namespace: tuple[str, ...], steps: Steps[T]) -> T:
        fallback = self._target()
        if fallback is not None:
            return fallback.read(namespace, steps)
        prefix = namespace_text(namespace)
        return self._use(lambda conn: drive(steps, lambda r: self._get(conn, prefix, _get(r))))

    def reader(self, namespace: tuple[str, ...]) -> SyncPerform:
        fallback = self._target()
        if fallback is not None:
            return fallback.reader(namespace)
        prefix = namespace_text(namespace)
        return lambda request: self._use(lambda conn: self._get(conn, prefix, _get(request)))

    def heads(self, namespaces: Sequence[tuple[str, ...]]) -> list[bool]:
        fallback = self._target()
        if fallback is not None:
            return fallback.heads(namespaces)
        prefixes = [namespace_text(ns) for ns in namespaces]
        if not prefixes:
            return []

        def work(conn: Connection[Any]) -> set[str]:
            with conn.cursor(row_factory=tuple_row) as cur:
                return {row[0] for row in cur.execute(sql.HEADS_SQL, (prefixes,))}

        found = self._use(work)
        return [prefix in found for prefix in prefixes]

    def namespace_page(
        self, namespace: tuple[str, ...], cursor: PageCursor, size: int
    ) -> tuple[list[tuple[str, ...]], PageCursor]:
        fallback = self._target()
        if fallback is not None:
            return fallback.namespace_page(namespace, cursor, size)
        low, high = children_bounds(namespace, cursor)
        args = {"low": low, "high": high, "size": size}

        def work(conn: Connection[Any]) -> list[str]:
            with conn.cursor(row_factory=tuple_row) as cur:
                return [row[0] for row in cur.execute(sql.NEXT_PREFIXES_SQL, args)]

        return children_page(namespace, self._use(work), size)

    def describe(self) -> dict[str, Any]:
        state = self._state
        described = state.describe() if state else {}
        return {"driver": self.name if self._fallback is None else "generic", **described}


def _get(request: Request) -> Get:
    if not isinstance(request, Get):
        raise InvalidArgument("a read-only history procedure asked to write")
    return request
