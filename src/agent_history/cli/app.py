"""The Typer application, shared console and exit codes."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import typer
from langgraph.store.base import BaseStore
from rich.console import Console

from agent_history.errors import ConfigError, StoreUnavailable
from agent_history.settings import HistorySettings
from agent_history.stores import create_graph_store_sync

__all__ = [
    "EXIT_CHECK_FAILED",
    "EXIT_CONFIG",
    "EXIT_OK",
    "EXIT_STORE",
    "app",
    "console",
    "err_console",
    "fail",
    "open_store",
]

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_CONFIG = 2
EXIT_STORE = 3

app = typer.Typer(
    help="Durable chat history for LangGraph agents: demo and operations.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)


class _StderrHandler(logging.Handler):
    """Writes to whatever ``sys.stderr`` is when a record arrives, so a command run
    in-process (tests, notebooks) never leaves a handler bound to a closed stream."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:
            self.handleError(record)


@app.callback()
def _configure_logging() -> None:
    """Durable chat history for LangGraph agents: demo and operations."""
    # Warnings from the library go to stderr, one line each, in order with the output.
    # The level is the handler's: the library logger's own level stays the caller's.
    library = logging.getLogger("agent_history")
    if not any(isinstance(h, _StderrHandler) for h in library.handlers):
        handler = _StderrHandler(logging.WARNING)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        library.addHandler(handler)


def fail(message: str, code: int) -> typer.Exit:
    """Print a one-line reason on stderr and return the exit to raise."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def load_settings(**overrides: object) -> HistorySettings:
    """Settings from the environment (plus overrides), exiting with code 2 when invalid."""
    try:
        return HistorySettings(**{k: v for k, v in overrides.items() if v is not None})
    except ConfigError as exc:
        raise fail(str(exc), EXIT_CONFIG) from None


@contextmanager
def open_store(settings: HistorySettings) -> Iterator[BaseStore]:
    """Open the configured store, exiting with code 2 (config) or 3 (unreachable)."""
    try:
        with create_graph_store_sync(settings) as store:
            yield store
    except ConfigError as exc:
        raise fail(str(exc), EXIT_CONFIG) from None
    except StoreUnavailable as exc:
        raise fail(str(exc), EXIT_STORE) from None
