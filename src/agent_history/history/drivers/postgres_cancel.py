"""Ending a statement at its deadline: on a pool by shutting its connection down, on a
store's only connection by cancelling it, keeping the connection usable.

On a pool, a call still running at its deadline has its connection's socket shut down
(`postgres_base.shut_socket`): the pool replaces the connection. The server is also asked
to cancel the statement (`shut`): its session would otherwise run on until it next
writes to the socket (a wait for a lock can last as long as the lock is held), holding a
server connection beside the pool's replacement, a connection more per call cut off,
until ``max_connections`` refuses every client of the database. A store opened on one
connection (``PostgresStore.from_conn_string``, LangGraph's usual way) has nothing to
replace it with: a shut socket would break the store, LangGraph's own calls included,
until the process restarts. So there the server is asked to cancel the statement
(``cancel_safe``), which ends it with ``QueryCanceled`` and leaves the connection as it
was. Only a server that takes no cancel request, or does not end the statement, within
`CANCEL_GRACE_SECONDS` gets the socket shut (it is not answering anyway).

The caller keeps the connection (the store's lock) until the cancel is over, so a cancel
never reaches the next caller's statement.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any

import psycopg
from psycopg import AsyncConnection, Connection, generators, waiting
from psycopg.pq.abc import PGcancelConn

from agent_history.history.drivers.postgres_base import shut_socket

__all__ = [
    "CANCEL_GRACE_SECONDS",
    "CANCEL_SENDERS",
    "CANCEL_SEND_SECONDS",
    "Canceller",
    "cancel_or_shut",
    "shut",
]

CANCEL_GRACE_SECONDS = 0.5
"""How long the server has to take a cancel request, then to end the statement."""


CANCEL_SENDERS = 8
"""At most this many cancel requests in flight after shutting sockets down; past it (a
server that takes none, its sessions ending as their sockets close anyway) none is sent."""
CANCEL_SEND_SECONDS = 5.0
"""How long such a request may take to reach a server that does not answer it."""
_senders = threading.BoundedSemaphore(CANCEL_SENDERS)
_POLL_SECONDS = 0.1  # how often the wait wakes (0 would poll without sleeping)


def shut(conn: Connection[Any] | AsyncConnection[Any]) -> None:
    """Shut ``conn``'s socket down (nothing when it is closed already), then ask the
    server, from a thread of its own, to cancel the statement its session still runs.

    The request is prepared before the socket is shut (it needs the connection's
    session key, gone once the pool closes it). It can reach no other statement: the
    session served only this connection, which takes no statement any more. (It needs
    libpq 17 or later, as psycopg's binary package has; with an older one none is sent.)
    """
    try:
        request: PGcancelConn | None = conn.pgconn.cancel_conn()
    except Exception:  # an older libpq, or the connection is closed already
        request = None
    with contextlib.suppress(psycopg.Error):  # already closed
        shut_socket(conn.fileno())
    if request is not None and _senders.acquire(blocking=False):
        threading.Thread(
            target=_send, args=(request,), name="agent-history-cancel", daemon=True
        ).start()


def _send(request: PGcancelConn) -> None:
    # Non-blocking, as psycopg's own `cancel_safe` (libpq's blocking call would hold the
    # interpreter while a server that does not answer keeps it waiting).
    def steps() -> Any:
        request.start()
        yield from generators.cancel(request)

    try:
        waiting.wait_conn(steps(), interval=_POLL_SECONDS, timeout=CANCEL_SEND_SECONDS)
    except Exception:  # the server is gone, or takes no request: so is the session
        pass
    finally:
        request.finish()
        _senders.release()


class Canceller:
    """Cancels the statement running on ``conn`` from a thread of its own (sync calls)."""

    def __init__(self, conn: Connection[Any]) -> None:
        self.conn = conn
        self.ended = threading.Event()
        """Set by the call when it is over, whatever its outcome."""
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Begin cancelling (called once, at the deadline)."""
        self._thread = threading.Thread(target=self._run, name="agent-history-cancel", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.conn.cancel_safe(timeout=CANCEL_GRACE_SECONDS)
        except Exception:  # no cancel reached the server: end the call the hard way
            if not self.ended.is_set():
                shut(self.conn)
            return
        if not self.ended.wait(CANCEL_GRACE_SECONDS):
            shut(self.conn)

    def finish(self) -> None:
        """Mark the call over and wait for a cancel in flight (before the connection
        serves anyone else)."""
        self.ended.set()
        if self._thread is not None:
            self._thread.join()


async def cancel_or_shut(conn: AsyncConnection[Any], statement: asyncio.Future[Any]) -> None:
    """Cancel ``statement`` (running on ``conn``); shut the socket when that fails."""
    try:
        await conn.cancel_safe(timeout=CANCEL_GRACE_SECONDS)
    except Exception:  # no cancel reached the server: end the call the hard way
        if not statement.done():
            shut(conn)
        return
    done, _ = await asyncio.wait({statement}, timeout=CANCEL_GRACE_SECONDS)
    if not done:
        shut(conn)
