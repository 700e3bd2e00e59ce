"""Resuming one interrupted checkpoint twice at the same moment (a double-clicked button
handled by two workers)."""

from __future__ import annotations

import threading
from typing import Any

from langgraph.types import Command


def resume_twice_at_once(graph: Any, resume: Any, config: dict[str, Any]) -> None:
    """Resume ``config`` with ``resume`` from two threads and wait for both; an error in
    either is raised here. The model should hold both passes at a barrier so that each
    reads the store before either appends."""
    errors: list[BaseException] = []

    def click() -> None:
        try:
            graph.invoke(Command(resume=resume), config)
        except BaseException as exc:  # pragma: no cover - raised below
            errors.append(exc)

    workers = [threading.Thread(target=click) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    if errors:
        raise errors[0]
