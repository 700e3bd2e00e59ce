"""SIGTERM ends a run the way Ctrl-C does: through every ``finally`` and ``ExitStack``.

By default SIGTERM (a CI job's timeout, ``timeout``, systemd, ``kill``) ends the process at
once, leaving the throwaway PostgreSQL server, the writer processes, the temporary
directories and the run's rows in a user's database behind. Inside `sigterm_exits` it
raises `Terminated` in the main thread instead; a second SIGTERM while the first is
being handled is ignored, so it cannot cut the clean-up short.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

__all__ = ["TERMINATED_EXIT", "Terminated", "sigterm_exits"]

TERMINATED_EXIT = 128 + signal.SIGTERM
"""The exit status of a run ended by SIGTERM (143), as if the signal had ended it."""


class Terminated(SystemExit):
    """SIGTERM ended the run (raised in the main thread; its code is `TERMINATED_EXIT`)."""

    def __init__(self) -> None:
        super().__init__(TERMINATED_EXIT)


@contextmanager
def sigterm_exits() -> Iterator[None]:
    """Turn SIGTERM into `Terminated` while the block runs in the main thread, unless the
    application has a SIGTERM handler of its own (left alone)."""
    in_main = threading.current_thread() is threading.main_thread()
    if not in_main or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return
    received = False

    def handle(signum: int, frame: FrameType | None) -> None:
        nonlocal received
        if not received:
            received = True
            raise Terminated()

    previous = signal.signal(signal.SIGTERM, handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
