"""The `agent-history` command: demo, doctor, replay, export/import/migrate, stats, retention."""

from __future__ import annotations

from agent_history.cli import data, demo, doctor, replay  # noqa: F401  (registers commands)
from agent_history.cli.app import app

__all__ = ["app", "main"]


def main() -> None:
    """Console-script entry point."""
    app()
