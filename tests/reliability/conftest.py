"""Reliability fixtures: the trial count and the figures each test reports."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

TRIALS_VAR = "AGENT_HISTORY_RELIABILITY_TRIALS"
DEFAULT_TRIALS = 20
EXAMPLES_VAR = "AGENT_HISTORY_RELIABILITY_EXAMPLES"

_FIGURES: list[dict[str, Any]] = []
_FIGURES_FILE: list[Path] = []


def trials(default: int = DEFAULT_TRIALS) -> int:
    """Trials per backend: ``AGENT_HISTORY_RELIABILITY_TRIALS`` or the CI default."""
    raw = os.environ.get(TRIALS_VAR, "").strip()
    return max(1, int(raw)) if raw else default


def examples(default: int) -> int:
    """Hypothesis examples per property: ``AGENT_HISTORY_RELIABILITY_EXAMPLES`` or ``default``."""
    raw = os.environ.get(EXAMPLES_VAR, "").strip()
    return max(1, int(raw)) if raw else default


Record = Callable[..., None]


@pytest.fixture
def record_figures(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Record:
    """Record one test's figures: printed (``-s``), summarised at the end, saved as JSON."""
    path = tmp_path_factory.getbasetemp() / "reliability-figures.jsonl"

    def record(**figures: Any) -> None:
        entry = {"test": request.node.nodeid, **figures}
        _FIGURES.append(entry)
        if not _FIGURES_FILE:
            _FIGURES_FILE.append(path)
        with path.open("a", encoding="utf-8") as out:
            out.write(json.dumps(entry) + "\n")
        print("reliability figures:", json.dumps(entry))

    return record


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _FIGURES:
        return
    terminalreporter.section("reliability figures")
    for entry in _FIGURES:
        terminalreporter.write_line(json.dumps(entry))
    if _FIGURES_FILE:
        terminalreporter.write_line(f"saved to {_FIGURES_FILE[0]}")
