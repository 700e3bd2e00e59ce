"""`agent-history drill`, the real command, whose store pauses once mid-drill.

Usage: ``python -m tests.support.drill_pause READY_FD GO_FD N [drill options...]``.

The configured store (``ORCHEO_*`` variables) is wrapped so that its ``N``th call writes
``paused`` to the file descriptor ``READY_FD`` and then blocks until a line can be read
from ``GO_FD`` (or that pipe is closed); every other call goes straight through, with
the store's own history driver. The test that started the process knows the drill is
mid-way while it is paused, and decides what happens then (a signal, another process
taking the store's lock) before letting it go on.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from unittest import mock

from langgraph.store.base import BaseStore

import agent_history.cli.drill as drill_command
from agent_history.cli import app
from agent_history.cli.app import open_store as real_open
from agent_history.drill import DrillStore
from agent_history.settings import HistorySettings


class _PausingStore(DrillStore):
    """The real store and its own driver (counted and slowed by `DrillStore.note`, which
    also sees every driver call), pausing at the ``pause_at``th call."""

    def __init__(self, inner: BaseStore, pause_at: int, ready_fd: int, go_fd: int) -> None:
        super().__init__(inner)
        self._pause_at = pause_at
        self._ready_fd = ready_fd
        self._go_fd = go_fd
        self._calls = 0
        self._count_lock = threading.Lock()

    def note(self, writes: bool) -> None:
        super().note(writes)
        with self._count_lock:
            self._calls += 1
            pause = self._calls == self._pause_at
        if pause:
            os.write(self._ready_fd, b"paused\n")
            with os.fdopen(self._go_fd, "rb", buffering=0) as go:
                go.readline()


def main(ready_fd: int, go_fd: int, pause_at: int, args: list[str]) -> None:
    @contextmanager
    def open_store(settings: HistorySettings) -> Iterator[BaseStore]:
        with real_open(settings) as store:
            yield _PausingStore(store, pause_at, ready_fd, go_fd)

    with mock.patch.object(drill_command, "open_store", open_store):
        app(["drill", *args], prog_name="agent-history")


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:])
