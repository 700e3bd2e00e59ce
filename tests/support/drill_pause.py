"""`agent-history drill`, the real command, whose store pauses mid-drill.

Usage: ``python -m tests.support.drill_pause READY_FD GO_FD N[+main] [drill options...]``.

The configured store (``ORCHEO_*`` variables) is wrapped so that its ``N``th call writes
``paused`` to the file descriptor ``READY_FD`` and then blocks until a line can be read
from ``GO_FD``; with ``+main``, the first call the main thread makes after that pause
(the drill's own reads and its clean-up: the workload runs in a thread of its own) writes
``paused main`` and blocks the same way. Every other call goes straight through, with the
store's own history driver. The test that started the process knows where the drill is
while it is paused, and decides what happens then (a signal, another process taking the
store's lock) before letting it go on.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO
from unittest import mock

from langgraph.store.base import BaseStore

import agent_history.cli.drill as drill_command
from agent_history.cli import app
from agent_history.cli.app import open_store as real_open
from agent_history.drill import DrillStore
from agent_history.settings import HistorySettings


class _PausingStore(DrillStore):
    """The real store and its own driver (`DrillStore.note` sees every store and driver
    call), pausing as the module says."""

    def __init__(
        self, inner: BaseStore, pause_at: int, in_main: bool, ready_fd: int, go: BinaryIO
    ) -> None:
        super().__init__(inner)
        self._pause_at = pause_at
        self._in_main = in_main
        self._ready_fd = ready_fd
        self._go = go
        self._calls = 0
        self._count_lock = threading.Lock()

    def note(self, writes: bool) -> None:
        super().note(writes)
        main = threading.current_thread() is threading.main_thread()
        with self._count_lock:
            self._calls += 1
            if self._calls == self._pause_at:
                pause = "paused"
            elif self._in_main and main and self._calls > self._pause_at:
                self._in_main = False
                pause = "paused main"
            else:
                pause = ""
        if pause:
            os.write(self._ready_fd, pause.encode() + b"\n")
            self._go.readline()


def main(ready_fd: int, go_fd: int, pause: str, args: list[str]) -> None:
    pause_at, _, where = pause.partition("+")
    go = os.fdopen(go_fd, "rb", buffering=0)

    @contextmanager
    def open_store(settings: HistorySettings) -> Iterator[BaseStore]:
        with real_open(settings) as store:
            yield _PausingStore(store, int(pause_at), where == "main", ready_fd, go)

    with mock.patch.object(drill_command, "open_store", open_store):
        app(["drill", *args], prog_name="agent-history")


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4:])
