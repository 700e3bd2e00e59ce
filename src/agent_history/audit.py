"""The audit trail of switch changes: one JSON line each, appended by every process.

Each effective change of mode, disabled nodes, per-node modes, breaker state or trigger
action is logged at INFO (``switch_changed``), counted (``agent_history_switch_changes_total``)
and, when ``ORCHEO_GRAPH_CHAT_HISTORY_AUDIT_FILE`` is set, appended to that file as one
line: ``time`` (UTC, ISO 8601), ``change``, ``source``, ``before``, ``after``, ``pid``,
``host`` and details such as ``backend``.

Several processes may append to the same file: each line is one ``write`` on a descriptor
opened with ``O_APPEND``, which the kernel applies atomically at the end of the file, so
lines never interleave. A line cut short (a full disk, a crash) is ended with a newline by
its writer when it can be, else by the next writer, so it costs no other line. A file
that cannot be written is reported once and never fails a run.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import threading
import time
from datetime import UTC, datetime
from typing import Any

import orjson

from agent_history import observability as obs
from agent_history.toggle_config import AUDIT_FILE_VAR

__all__ = ["append_audit_line", "audit_file_problem", "record_change"]

_HOST = socket.gethostname()
_failed_lock = threading.Lock()
_failed_paths: set[str] = set()


def _plain(value: Any) -> Any:
    if isinstance(value, frozenset | set):
        return sorted(str(v) for v in value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in sorted(value.items())}
    if isinstance(value, str):  # StrEnum members included
        return str(value)
    return value


def append_audit_line(path: str, entry: dict[str, Any]) -> bool:
    """Append ``entry`` as one JSON line to ``path`` in a single ``write``.

    Returns:
        False when the file cannot be written (reported once per path, never raised).
    """
    line = orjson.dumps(entry, default=str) + b"\n"
    try:
        flags = os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
        try:
            fd, readable = os.open(path, flags | os.O_RDWR, 0o640), True
        except PermissionError:  # a file we may append to but not read
            fd, readable = os.open(path, flags | os.O_WRONLY, 0o640), False
        try:
            # Writers take turns (flock), so none reads the end of the file while another
            # one's line is half copied into it; a holder that does not let go (stopped,
            # hung) costs at most a few milliseconds, then the line goes out unlocked
            # (still one atomic O_APPEND write).
            _take_turn(fd)
            if readable and not _ends_a_line(fd):
                # A line cut short (a full disk, a crash, a copytruncate mid-line) would
                # swallow this one: start on a line of our own.
                line = b"\n" + line
            written = os.write(fd, line)
            if written != len(line):
                # End the fragment, if the disk lets us, so the next line stays whole.
                with contextlib.suppress(OSError):
                    os.write(fd, b"\n")
                raise OSError(f"short write ({written} of {len(line)} bytes)")
        finally:
            os.close(fd)
    except OSError as exc:
        with _failed_lock:
            first = path not in _failed_paths
            _failed_paths.add(path)
        if first:
            obs.log_event(
                "audit_file_unwritable",
                variable=AUDIT_FILE_VAR,
                path=path,
                error=exc.strerror or str(exc),
            )
        return False
    with _failed_lock:
        _failed_paths.discard(path)
    return True


def audit_file_problem(path: str) -> str | None:
    """Why no process could append to ``path`` (None: one can), for a check at deploy
    time. Nothing is created: the service's own user creates the file on its first
    change (a check run as another user would leave a file the service cannot write)."""
    if os.path.isdir(path):
        return f"cannot append to {path}: Is a directory"
    if os.path.exists(path):
        if not os.access(path, os.W_OK):
            return f"cannot append to {path}: Permission denied"
        return None
    parent = os.path.dirname(path) or "."
    if not os.path.isdir(parent):
        return f"cannot append to {path}: No such file or directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot create {path}: Permission denied"
    return None


_TURN_TRIES = 20
_TURN_WAIT_SECONDS = 0.001


def _take_turn(fd: int) -> None:
    for _ in range(_TURN_TRIES):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            time.sleep(_TURN_WAIT_SECONDS)  # another writer's line is being copied
        except OSError:
            return  # a file system without flock


def _ends_a_line(fd: int) -> bool:
    """Whether the file is empty or ends with a newline."""
    size = os.fstat(fd).st_size
    return size == 0 or os.pread(fd, 1, size - 1) == b"\n"


def record_change(
    change: str,
    *,
    source: str,
    before: Any,
    after: Any,
    audit_file: str | None,
    level: int = logging.INFO,
    **details: Any,
) -> dict[str, Any]:
    """Log, count and (with an audit file) append one switch change.

    Args:
        change: What changed: ``startup``, ``mode``, ``disabled_nodes``, ``node_modes``,
            ``breaker_state`` or ``trigger``.
        source: Where from: ``env``, ``code``, ``flags_file`` (one or more, joined with
            ``+``), ``breaker`` or ``trigger``.
        before: The value before (None at start-up).
        after: The value after.
        audit_file: The audit file, or None to only log and count.
        level: Log level (INFO; the caller may raise it).
        details: Extra identifiers (backend, trigger, thresholds); never message bodies.

    Returns:
        The entry as written.
    """
    entry: dict[str, Any] = {
        "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "change": change,
        "source": source,
        "before": _plain(before),
        "after": _plain(after),
        **{k: _plain(v) for k, v in details.items() if v is not None},
        "pid": os.getpid(),
        "host": _HOST,
    }
    # Once per change, labelled as the audit line is (``env+flags_file`` for a start that
    # read both): one count per source would count a change twice in any sum over them.
    obs.METRICS.inc(obs.SWITCH_CHANGES, change=change, source=source)
    obs.log_event(
        "switch_changed",
        level=level,
        change=change,
        source=source,
        before=_short(entry["before"]),
        after=_short(entry["after"]),
        **{k: v for k, v in entry.items() if k in details},
    )
    if audit_file:
        append_audit_line(audit_file, entry)
    return entry


def _short(value: Any) -> str:
    text = orjson.dumps(value, default=str).decode()
    return text if len(text) <= 200 else text[:197] + "..."
