"""The driver for LangGraph's `AsyncPostgresStore`: the SQL of `postgres_base`, awaited.

The same statements as the sync driver (`postgres`): an append is one call of
``agent_history_append_v4``, a tail one query, other procedures one pipelined
transaction. Deadlines work the same way, with a timer of the event loop in place of the
watchdog thread. A caller cancelled from outside (``asyncio.wait_for``, a task shut down)
does not wait for psycopg's own cancel round trip to a server that may not answer: the
statement runs in an inner task, and the outer cancellation shuts the socket down,
which ends it at once. A store on one connection has its statement cancelled instead
(at most `postgres_cancel.CANCEL_GRACE_SECONDS` twice), so the store stays usable.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar, cast

import orjson
import psycopg
from langgraph.store.base import BaseStore
from langgraph.store.postgres import AsyncPostgresStore
from psycopg import AsyncConnection
from psycopg.rows import tuple_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from agent_history import budget
from agent_history.errors import InvalidArgument
from agent_history.history.drivers import postgres_base as sql
from agent_history.history.drivers.base import (
    AppendRequest,
    AsyncPerform,
    AsyncStoreDriver,
    HistoryDriver,
    PageCursor,
    TtlPolicy,
    children_bounds,
    children_page,
    namespace_text,
    uses_own_io,
    utc_now,
)
from agent_history.history.drivers.generic import GenericDriver
from agent_history.history.drivers.postgres_cancel import cancel_or_shut, shut
from agent_history.history.drivers.postgres_idle import IdleConnections
from agent_history.history.drivers.postgres_setup import PostgresState, ainspect
from agent_history.history.layout import HEAD_KEY
from agent_history.history.records import AppendResult
from agent_history.history.steps import Get, Request, Steps, drive_async
from agent_history.pg_pools import hand_back

__all__ = ["AsyncPostgresDriver"]

T = TypeVar("T")


async def _settled(*futures: asyncio.Future[Any]) -> None:
    """Wait until ``futures`` are done, without cancelling them when the caller is
    cancelled meanwhile (``gather`` would: psycopg, cancelled during its own cancel,
    closes the connection, the store's only one perhaps). A cancellation that came
    during the wait is raised once they are done."""
    cancelled = False
    while pending := {f for f in futures if not f.done()}:
        try:
            await asyncio.wait(pending)
        except asyncio.CancelledError:  # an anyio scope cancels again on every step
            cancelled = True
    for future in futures:  # their outcome is the caller's no longer: mark it seen
        if not future.cancelled():
            future.exception()
    if cancelled:
        raise asyncio.CancelledError


class AsyncPostgresDriver(AsyncStoreDriver):
    """`AsyncPostgresStore` on a pool or a plain connection (see the module)."""

    name = "postgres-async"
    backend = "postgres"
    atomic = True

    def __init__(self, store: BaseStore) -> None:
        super().__init__(store)
        self.ttl = TtlPolicy.of(store, True)
        self._state: PostgresState | None = None
        self._fallback: HistoryDriver | None = None
        self._idle = IdleConnections()

    @classmethod
    def accepts(cls, store: BaseStore) -> bool:
        # A store in pipeline mode shares its connection: `postgres_pipeline` drives it.
        return uses_own_io(store, AsyncPostgresStore) and store.pipe is None

    @property
    def pg(self) -> AsyncPostgresStore:
        return cast(AsyncPostgresStore, self.store)

    # --- connections under a deadline ----------------------------------------------------------

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[AsyncConnection[Any]]:
        target = self.pg.conn
        left = budget.remaining()
        if left is not None and left <= 0:
            raise budget.timeout_error()
        if isinstance(target, AsyncConnectionPool):
            conn = await self._alive(target, await self._getconn(target))
            try:
                yield conn
            finally:
                self._idle.lent(conn)
                await hand_back(target, conn)  # survives a caller cancelled meanwhile
        else:
            async with budget.enforced():
                await self.pg.lock.acquire()
            try:
                yield target
            finally:
                self.pg.lock.release()

    async def _getconn(self, target: AsyncConnectionPool[Any]) -> AsyncConnection[Any]:
        left = budget.remaining()
        try:
            conn: AsyncConnection[Any] = await target.getconn(
                None if left is None else min(left, target.timeout)
            )
            return conn
        except PoolTimeout:
            if left is not None and left <= target.timeout:
                raise budget.timeout_error() from None
            raise

    async def _alive(
        self, target: AsyncConnectionPool[Any], conn: AsyncConnection[Any]
    ) -> AsyncConnection[Any]:
        """``conn``, or a fresh one when it sat idle long enough to have been closed and a
        check finds it closed (see the sync driver's `_alive`)."""
        if not self._idle.stale(conn):
            return conn
        # As `_use` runs a statement: the socket is shut at the deadline, and a caller's
        # cancellation never reaches psycopg (which would wait for a cancel request).
        check = asyncio.ensure_future(AsyncConnectionPool.check_connection(conn))
        deadline = budget.current_deadline()
        timer = None
        if deadline is not None:
            delay = max(0.0, deadline - time.monotonic())
            timer = asyncio.get_running_loop().call_later(delay, shut, conn)
        try:
            await asyncio.shield(check)
            return conn
        except BaseException as exc:
            if not check.done():  # the caller was cancelled
                shut(conn)
                await _settled(check)
            await hand_back(target, conn)
            if not (isinstance(exc, psycopg.OperationalError) and conn.broken):
                raise
        finally:
            if timer is not None:
                timer.cancel()
        await self._drain()  # its idle siblings were likely closed the same way
        return await self._getconn(target)

    async def _drain(self) -> None:
        if isinstance(self.pg.conn, AsyncConnectionPool):
            await self.pg.conn.drain()

    async def _use(self, work: Callable[[AsyncConnection[Any]], Awaitable[T]]) -> T:
        """Run ``work(connection)`` within the deadline (see the module)."""
        async with self._connection() as conn:
            loop = asyncio.get_running_loop()
            fired: list[bool] = []
            # A store's only connection has its statement cancelled, not its socket shut:
            # nothing could replace it (see `postgres_cancel`).
            pooled = isinstance(self.pg.conn, AsyncConnectionPool)
            stopping: list[asyncio.Future[None]] = []
            inner = asyncio.ensure_future(work(conn))

            def expire() -> None:
                fired.append(True)
                if pooled:
                    shut(conn)
                elif not inner.done():
                    stopping.append(asyncio.ensure_future(cancel_or_shut(conn, inner)))

            deadline = budget.current_deadline()
            timer = None
            if deadline is not None:
                timer = loop.call_later(max(0.0, deadline - time.monotonic()), expire)
            try:
                return await asyncio.shield(inner)
            except asyncio.CancelledError:
                if not inner.done():
                    if pooled:
                        shut(conn)
                        # The socket is gone, whatever the statement does now (it may
                        # even end cleanly, having read all it needed): the pool must
                        # replace the connection, not lend it to the next call.
                        inner.add_done_callback(lambda _: conn.pgconn.finish())
                    elif not stopping:
                        stopping.append(asyncio.ensure_future(cancel_or_shut(conn, inner)))
                    await _settled(inner)
                raise
            except psycopg.OperationalError as exc:
                if fired or isinstance(exc, psycopg.errors.LockNotAvailable):
                    raise budget.timeout_error() from None
                if conn.broken and not fired:
                    # The server went away (a restart, a failover): the pool's idle
                    # connections were opened to it too, and would each fail a call.
                    await self._drain()
                raise
            finally:
                if timer is not None:
                    timer.cancel()
                if stopping:
                    # No cancel in flight once the connection serves anyone else.
                    await _settled(*stopping)
                if fired:
                    await self._drain()

    # --- schema ----------------------------------------------------------------------------

    async def _target(self) -> HistoryDriver | None:
        if self._fallback is not None:
            return self._fallback
        if self._state is None:
            state = await self._use(ainspect)
            if state.store_schema is None:
                return GenericDriver(self.store, self.backend)
            self._state = state
        if not self._state.usable:
            self._fallback = self._state.fallback(self.store, self.backend)
        return self._fallback

    # --- procedures ------------------------------------------------------------------------

    async def aappend(self, namespace: tuple[str, ...], request: AppendRequest) -> AppendResult:
        fallback = await self._target()
        if fallback is not None:
            return await fallback.aappend(namespace, request)
        params = sql.append_params(
            namespace_text(namespace), request, self.ttl, sql.lock_timeout_ms(budget.remaining())
        )

        async def work(conn: AsyncConnection[Any]) -> AppendResult:
            async with conn.cursor(row_factory=tuple_row) as cur:
                if conn.autocommit:
                    row = await (await cur.execute(sql.APPEND_SQL, params)).fetchone()
                else:
                    async with conn.transaction():
                        row = await (await cur.execute(sql.APPEND_SQL, params)).fetchone()
            assert row is not None
            return sql.append_result(row, request.skipped)

        return await self._use(work)

    async def arun(self, namespace: tuple[str, ...], steps: Steps[T]) -> T:
        fallback = await self._target()
        if fallback is not None:
            return await fallback.arun(namespace, steps)
        prefix = namespace_text(namespace)
        lock_ms = sql.lock_timeout_ms(budget.remaining())

        async def work(conn: AsyncConnection[Any]) -> T:
            pending: dict[str, Any] = {}
            async with (
                conn.pipeline(),
                conn.transaction(),
                conn.cursor(row_factory=tuple_row) as cur,
            ):
                await cur.execute(sql.LOCK_SQL, (prefix, lock_ms))

                async def flush() -> None:
                    if pending:
                        await cur.execute(sql.PUT_SQL, sql.put_params(prefix, pending, self.ttl))
                        pending.clear()

                async def perform(request: Request) -> Any:
                    if isinstance(request, Get):
                        await flush()
                        await cur.execute(*sql.select(prefix, request))
                        return {key: orjson.loads(value) for key, value, _ in await cur.fetchall()}
                    pending.update(request.items)
                    return None

                result = await drive_async(steps, perform)
                await flush()
            return result

        return await self._use(work)

    async def _get(self, conn: AsyncConnection[Any], prefix: str, request: Request) -> Any:
        if not isinstance(request, Get):
            raise InvalidArgument("a read-only history procedure asked to write")
        async with conn.cursor(row_factory=tuple_row) as cur:
            rows = await (await cur.execute(*sql.select(prefix, request))).fetchall()
        found = {}
        for key, value, expires_at in rows:
            found[key] = orjson.loads(value)
            if key == HEAD_KEY and self.ttl.needs_refresh(expires_at, utc_now()):
                try:
                    async with conn.transaction(), conn.cursor() as cur:
                        await cur.execute(
                            sql.TOUCH_SQL,
                            (prefix, self.ttl.minutes, sql.lock_timeout_ms(budget.remaining())),
                        )
                except sql.TOUCH_SKIPPED:
                    pass  # the read stands (see `postgres_base.TOUCH_SKIPPED`)
        return found

    async def aread(self, namespace: tuple[str, ...], steps: Steps[T]) -> T:
        fallback = await self._target()
        if fallback is not None:
            return await fallback.aread(namespace, steps)
        prefix = namespace_text(namespace)

        async def work(conn: AsyncConnection[Any]) -> T:
            async def perform(request: Request) -> Any:
                return await self._get(conn, prefix, request)

            return await drive_async(steps, perform)

        return await self._use(work)

    def areader(self, namespace: tuple[str, ...]) -> AsyncPerform:
        prefix = namespace_text(namespace)

        async def perform(request: Request) -> Any:
            fallback = await self._target()
            if fallback is not None:
                return await fallback.areader(namespace)(request)
            return await self._use(lambda conn: self._get(conn, prefix, request))

        return perform

    async def aheads(self, namespaces: Sequence[tuple[str, ...]]) -> list[bool]:
        fallback = await self._target()
        if fallback is not None:
            return await fallback.aheads(namespaces)
        prefixes = [namespace_text(ns) for ns in namespaces]
        if not prefixes:
            return []

        async def work(conn: AsyncConnection[Any]) -> set[str]:
            async with conn.cursor(row_factory=tuple_row) as cur:
                await cur.execute(sql.HEADS_SQL, (prefixes,))
                return {row[0] for row in await cur.fetchall()}

        found = await self._use(work)
        return [prefix in found for prefix in prefixes]

    async def anamespace_page(
        self, namespace: tuple[str, ...], cursor: PageCursor, size: int
    ) -> tuple[list[tuple[str, ...]], PageCursor]:
        fallback = await self._target()
        if fallback is not None:
            return await fallback.anamespace_page(namespace, cursor, size)
        low, high = children_bounds(namespace, cursor)
        args = {"low": low, "high": high, "size": size}

        async def work(conn: AsyncConnection[Any]) -> list[str]:
            async with conn.cursor(row_factory=tuple_row) as cur:
                await cur.execute(sql.NEXT_PREFIXES_SQL, args)
                return [row[0] for row in await cur.fetchall()]

        return children_page(namespace, await self._use(work), size)

    def describe(self) -> dict[str, Any]:
        state = self._state
        described = state.describe() if state else {}
        return {"driver": self.name if self._fallback is None else "generic", **described}
