"""A throwaway PostgreSQL server for tests and benchmarks, run as an unprivileged user."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import psycopg

__all__ = [
    "PostgresServer",
    "PostgresServerError",
    "end_idle_sessions",
    "find_pg_bin",
    "waiting_on_a_lock",
]


class PostgresServerError(RuntimeError):
    """The throwaway server could not be set up; the message says why."""


def find_pg_bin() -> Path:
    """Locate the directory holding ``initdb`` and ``pg_ctl`` (PostgreSQL 15 preferred)."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for directory in candidates:
        if os.access(os.path.join(directory, "pg_ctl"), os.X_OK):
            return Path(directory)
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    raise PostgresServerError(
        "PostgreSQL server binaries (initdb, pg_ctl) not found; run scripts/ensure-postgres.sh"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresServer:
    """initdb + pg_ctl in a temporary directory, listening on a free loopback port.

    The server refuses to run as root, so when the tests run as root every server
    command runs as the ``postgres`` (or ``nobody``) account instead.
    """

    def __init__(self) -> None:
        self.bin = find_pg_bin()
        self.port = _free_port()
        self.user = "postgres"
        self.password = "pw-" + secrets.token_hex(8)
        self.root = Path(tempfile.mkdtemp(prefix="agent-history-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self._os_user = self._pick_os_user()

    @staticmethod
    def _pick_os_user() -> pwd.struct_passwd | None:
        if os.geteuid() != 0:
            return None
        for name in ("postgres", "nobody"):
            try:
                return pwd.getpwnam(name)
            except KeyError:
                continue
        raise PostgresServerError("running as root and no unprivileged account to run postgres")

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin / args[0]), *args[1:]]
        if self._os_user is not None:
            command = ["runuser", "-u", self._os_user.pw_name, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if result.returncode != 0:
            tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise PostgresServerError(
                f"{args[0]} failed ({result.returncode}): {result.stderr.strip()}\n{tail}"
            )
        return result

    def start(self) -> None:
        """Create the cluster on first use and start the server; wait until it accepts."""
        if self._os_user is not None:
            os.chown(self.root, self._os_user.pw_uid, self._os_user.pw_gid)
        if not self.data.exists():
            pwfile = self.root / "pwfile"
            pwfile.write_text(self.password + "\n")
            if self._os_user is not None:
                os.chown(pwfile, self._os_user.pw_uid, self._os_user.pw_gid)
            self._run(
                "initdb", "-D", str(self.data), "-U", self.user, "-E", "UTF8",
                "--auth-local=trust", "--auth-host=scram-sha-256",
                f"--pwfile={pwfile}", "--no-sync",
            )  # fmt: skip
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c max_connections=300"
        )
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60",
                  "-o", options, "start")  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``immediate`` simulates a crash of the database)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def remove(self) -> None:
        """Stop the server if it runs and delete its directory."""
        with contextlib.suppress(PostgresServerError):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def dsn(self, dbname: str = "postgres") -> str:
        """A password-authenticated TCP DSN for ``dbname``."""
        return f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, name: str) -> str:
        """Create a fresh database and return its DSN."""
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def version(self) -> str:
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            row = conn.execute("SHOW server_version").fetchone()
        return str(row[0]) if row else "?"


def _sessions(dsn: str, application: str, select: str, where: str) -> list[Any]:
    """``select`` over the sessions named ``application`` (their ``application_name``)
    that match ``where``."""
    with psycopg.connect(dsn, autocommit=True) as pg:
        return pg.execute(
            f"SELECT {select} FROM pg_stat_activity WHERE application_name = %s AND {where}",
            (application,),
        ).fetchall()


def waiting_on_a_lock(dsn: str, application: str) -> bool:
    """Whether a session named ``application`` is waiting for a lock: the observable
    state a test waits for instead of sleeping."""
    return bool(_sessions(dsn, application, "pid", "wait_event_type = 'Lock'"))


def end_idle_sessions(dsn: str, application: str) -> int:
    """End the idle sessions named ``application`` as a server's idle timeout would,
    waiting until each is gone; how many there were."""
    ended = _sessions(dsn, application, "pg_terminate_backend(pid, 5000)", "state = 'idle'")
    assert all(row[0] for row in ended)
    return len(ended)
