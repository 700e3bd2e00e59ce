"""Ending a statement at its deadline on a store's only connection, keeping it usable.

On a pool, a call still running at its deadline has its connection's socket shut down
(`postgres_base.shut_socket`): the pool replaces the connection. A store opened on one
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
from psycopg import AsyncConnection, Connection

from agent_history.history.drivers.postgres_base import shut_socket

__all__ = ["CANCEL_GRACE_SECONDS", "Canceller", "cancel_or_shut", "shut"]

CANCEL_GRACE_SECONDS = 0.5
"""How long the server has to take a cancel request, then to end the statement."""


def shut(conn: Connection[Any] | AsyncConnection[Any]) -> None:
    """Shut ``conn``'s socket down (nothing when it is closed already)."""
    with contextlib.suppress(psycopg.Error):  # already closed
        shut_socket(conn.fileno())


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
