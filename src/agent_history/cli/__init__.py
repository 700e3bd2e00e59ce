"""The `agent-history` command: demo, doctor, replay, export/import/migrate, stats, retention."""

from __future__ import annotations

import sys

import typer

from agent_history.cli import data, demo, doctor, drill, replay  # noqa: F401  (registers commands)
from agent_history.cli.app import app, guarded

__all__ = ["app", "main"]


def main() -> None:
    """Console-script entry point: no error leaves as a traceback (see `app.guarded`)."""
    try:
        guarded(app)()
    except typer.Exit as done:
        sys.exit(done.exit_code)
