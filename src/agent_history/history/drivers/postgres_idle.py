"""Which pooled connections to check before use: those that sat idle long enough for the
server or a proxy to have closed them.

A server's ``idle_session_timeout``, a job that terminates idle sessions, or a managed
database's or proxy's idle limit closes a pooled connection while it waits in the pool.
The pool cannot tell until the connection is used, so without a check the first call
after every quiet spell fails (the pool replaces the connection, whose successor then
idles out the same way). A check before every call would cost a round trip on the hot
path; a connection back in the pool for less than `CHECK_AFTER_SECONDS` is used
unchecked, so a busy worker never pays for it.
"""

from __future__ import annotations

import time
import weakref
from typing import Any

__all__ = ["CHECK_AFTER_SECONDS", "IdleConnections"]

CHECK_AFTER_SECONDS = 1.0
"""Idle time after which a connection is checked before use: below any idle timeout a
server or proxy is configured with, and long enough that a busy pool never checks."""


class IdleConnections:
    """When each connection was last given back by this driver (weakly held)."""

    def __init__(self) -> None:
        self._since: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()

    def lent(self, conn: Any) -> None:
        """``conn`` goes back to the pool now."""
        self._since[conn] = time.monotonic()

    def stale(self, conn: Any) -> bool:
        """Whether ``conn`` should be checked before use: idle for `CHECK_AFTER_SECONDS`,
        or never used by this driver (it may have waited in the pool for any time)."""
        since = self._since.get(conn)
        return since is None or time.monotonic() - since >= CHECK_AFTER_SECONDS
