"""Hold a SQLite file's write lock from another process until told to commit.

Usage: ``python -m tests.support.sqlite_lock_holder PATH PREFIX KEY VALUE_JSON``.
It prints ``locked`` once ``BEGIN IMMEDIATE`` and an uncommitted insert into the graph
store's table are done, waits for a line on stdin, commits and prints ``committed``.
Only the standard library is imported, so it starts at once.
"""

from __future__ import annotations

import sqlite3
import sys


def main(path: str, prefix: str, key: str, value: str) -> None:
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute(
        "INSERT INTO store (prefix, key, value, created_at, updated_at) "
        "VALUES (?, ?, ?, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)",
        (prefix, key, value),
    )
    print("locked", flush=True)
    sys.stdin.readline()
    conn.execute("COMMIT")
    conn.close()
    print("committed", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:5])
