"""Error text safe to log: what kind of error, never the data or secrets a driver quoted.

Driver messages quote values: a key in a constraint violation, a message body in a JSON
error, a DSN (password included) in a parse error. `safe_error_text` keeps the exception
class, the SQLSTATE or SQLite error name, and only phrases from a fixed vocabulary found
in the message; everything else the message says is dropped. Messages of the library's own
errors (`AgentHistoryError`) are composed without bodies and are kept, with any DSN
password scrubbed.
"""

from __future__ import annotations

import errno
import json
import re

from pydantic import ValidationError

from agent_history.dsn import scrub_dsn_password
from agent_history.errors import AgentHistoryError

__all__ = ["ERROR_VOCABULARY", "safe_error_text", "safe_reason"]

ERROR_VOCABULARY: tuple[str, ...] = (
    # reaching the server
    "connection refused",
    "connection timed out",
    "timeout expired",
    "could not translate host name",
    "name or service not known",
    "failed to resolve host",
    "no route to host",
    "network is unreachable",
    "server closed the connection unexpectedly",
    "connection is closed",
    "connection is lost",
    "connection already closed",
    "consuming input failed",
    "ssl connection has been closed unexpectedly",
    "server does not support ssl",
    "couldn't get a connection",
    "password authentication failed",
    "authentication failed",
    "no password supplied",
    "no pg_hba.conf entry",
    "does not exist",
    "too many clients already",
    "remaining connection slots are reserved",
    "the database system is starting up",
    "the database system is shutting down",
    "the database system is in recovery mode",
    "terminating connection due to administrator command",
    "terminating connection due to idle-in-transaction timeout",
    "invalid integer value",
    "invalid sslmode value",
    "invalid port number",
    # statements
    "canceling statement due to statement timeout",
    "canceling statement due to lock timeout",
    "canceling statement due to user request",
    "deadlock detected",
    "could not serialize access",
    "could not obtain lock",
    "read-only transaction",
    "out of memory",
    "no space left on device",
    "could not extend file",
    # SQLite
    "database is locked",
    "database table is locked",
    "no such table",
    "disk i/o error",
    "database disk image is malformed",
    "file is not a database",
    "unable to open database file",
    "attempt to write a readonly database",
    "database or disk is full",
    "interrupted",
    "cannot operate on a closed database",
    "unique constraint failed",
    # the library's own budgets and Python's
    "budget",
    "surrogates not allowed",
    "codec can't encode",
    "codec can't decode",
    "maximum recursion depth exceeded",
)
_VOCABULARY = re.compile("|".join(re.escape(p) for p in ERROR_VOCABULARY), re.IGNORECASE)
_FIRST_LINE = 160


def safe_reason(exc: BaseException) -> str:
    """The known phrases of ``exc``'s message, ``; ``-joined (empty when none is known).

    Structured errors say what they know through fixed fields instead: an `OSError` its
    ``strerror`` and errno name, a JSON error its position, a pydantic error its types.
    """
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} (line {exc.lineno}, column {exc.colno})"
    if isinstance(exc, ValidationError):
        types = sorted({str(error.get("type", "?")) for error in exc.errors()})
        return f"{exc.error_count()} validation error(s): {', '.join(types)}"
    if isinstance(exc, OSError) and exc.errno is not None and exc.strerror:
        return f"{errno.errorcode.get(exc.errno, 'errno')} {exc.strerror}"
    found: list[str] = []
    for match in _VOCABULARY.finditer(str(exc)):
        phrase = match.group(0).lower()
        if phrase not in found:
            found.append(phrase)
    return "; ".join(found)


def safe_error_text(exc: BaseException, dsn: str | None = None) -> str:
    """One line describing ``exc`` that carries no user data and no secret.

    Args:
        exc: Any exception, typically from a database driver.
        dsn: The DSN in use, if any: its passwords are scrubbed from the library's own
            messages as well.

    Returns:
        ``Class [SQLSTATE]: known phrases`` for a foreign error (parts left out when
        absent), or ``Class: first line`` for the library's own errors.
    """
    name = type(exc).__name__
    if isinstance(exc, AgentHistoryError):
        text = str(exc).strip()
        first = text.splitlines()[0][:_FIRST_LINE] if text else ""
        return scrub_dsn_password(f"{name}: {first}" if first else name, dsn)
    code = getattr(exc, "sqlstate", None) or getattr(exc, "sqlite_errorname", None)
    head = f"{name} [{code}]" if _is_code(code) else name
    reason = safe_reason(exc)
    return scrub_dsn_password(f"{head}: {reason}" if reason else head, dsn)


def _is_code(code: object) -> bool:
    """A SQLSTATE (``57014``) or a SQLite error name (``SQLITE_BUSY``): fixed codes."""
    return isinstance(code, str) and re.fullmatch(r"[A-Z0-9_]{1,40}", code) is not None
