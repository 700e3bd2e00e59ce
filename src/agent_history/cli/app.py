"""The Typer application, shared console, exit codes and the guard that turns any error
into a one-line message and an exit code (never a traceback)."""

from __future__ import annotations

import codecs
import functools
import io
import logging
import os
import re
import sqlite3
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import Any, ParamSpec, TypeVar

import psycopg
import typer
from langgraph.store.base import BaseStore
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from agent_history.errors import ConfigError, StoreTimeout, StoreUnavailable
from agent_history.keys import FORBIDDEN_KEY_CHARS
from agent_history.redaction import safe_error_text
from agent_history.settings import HistorySettings, env_var
from agent_history.stores import create_graph_store_sync

__all__ = [
    "EXIT_BROKEN_PIPE",
    "EXIT_CHECK_FAILED",
    "EXIT_CONFIG",
    "EXIT_OK",
    "EXIT_STORE",
    "app",
    "console",
    "err_console",
    "fail",
    "guarded",
    "open_store",
    "plural",
    "progress_bar",
    "terminal_safe",
]

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_CONFIG = 2
EXIT_STORE = 3
EXIT_BROKEN_PIPE = 141
"""stdout was closed by its reader (``export | head``): the status of a Unix filter
stopped by SIGPIPE (128 + 13), without a message."""

app = typer.Typer(
    help="Durable chat history for LangGraph agents: demo and operations.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
# emoji=False: Rich would print a key or a message holding `:id:` or `:thumbs_up:` with an
# emoji in its place (`wecom:id:42` as `wecom🆔42`), a key an operator cannot copy back.
console = Console(soft_wrap=True, emoji=False)
err_console = Console(stderr=True, soft_wrap=True, emoji=False)


class _StderrHandler(logging.Handler):
    """Writes to whatever ``sys.stderr`` is when a record arrives, so a command run
    in-process (tests, notebooks) never leaves a handler bound to a closed stream."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:
            self.handleError(record)


def _print_version(value: bool) -> None:
    if value:
        try:
            number = package_version("agent-history")
        except PackageNotFoundError:  # running from a source tree that is not installed
            number = "unknown"
        console.print(f"agent-history {number}", highlight=False)
        raise typer.Exit(EXIT_OK)


@app.callback()
def _configure_logging(
    version: bool = typer.Option(
        False,
        "--version",
        callback=_print_version,
        is_eager=True,
        help="Print the version and exit.",
    ),
) -> None:
    """Durable chat history for LangGraph agents: demo and operations."""
    # Warnings from the library go to stderr, one line each, in order with the output.
    # The level is the handler's: the library logger's own level stays the caller's.
    _utf8_stdout()
    library = logging.getLogger("agent_history")
    if not any(isinstance(h, _StderrHandler) for h in library.handlers):
        handler = _StderrHandler(logging.WARNING)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        library.addHandler(handler)


def _utf8_stdout() -> None:
    """Write stdout as UTF-8 whatever the locale: exports are UTF-8 by definition, and
    a key or message in another script must not end a command in UnicodeEncodeError."""
    stream = sys.stdout
    if isinstance(stream, io.TextIOWrapper) and codecs.lookup(stream.encoding).name != "utf-8":
        stream.reconfigure(encoding="utf-8")


def _quiet_stdout() -> None:
    """Point stdout at /dev/null after its reader went away, so that the interpreter's
    last flush cannot fail again (and print a second error)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (tests, notebooks)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


# What a terminal would act on instead of showing: the characters no key may hold (C0 and
# C1 controls: escape sequences clear the screen or retitle the window; line and paragraph
# separators; bidirectional embeddings, overrides and isolates, which reorder what follows;
# lone surrogates, which no encoding writes), but tab and newline. The marks U+200E and
# U+200F of right-to-left text are ordinary.
_UNSAFE_FOR_TERMINAL = re.compile("(?![\t\n])" + FORBIDDEN_KEY_CHARS.pattern)


def terminal_safe(text: str) -> str:
    """``text`` with every character a terminal would act on written as ``\\uXXXX`` (stored
    messages come from users; inside a JSON string the escape reads back as the character)."""
    return _UNSAFE_FOR_TERMINAL.sub(lambda found: f"\\u{ord(found.group()):04x}", text)


def plural(count: int, noun: str, plural_noun: str | None = None) -> str:
    """``"1 conversation"``, ``"2 conversations"``."""
    return f"{count} {noun if count == 1 else plural_noun or noun + 's'}"


def progress_bar(verb: str, *, disable: bool = False, unit: str = "") -> Progress:
    """A progress bar on stderr: ``verb ━━━━ 3/10 [unit counter]``."""
    columns: list[Any] = [TextColumn(verb), BarColumn(), MofNCompleteColumn()]
    if unit:
        columns.append(TextColumn(f"{{task.fields[{unit}]}} {unit}"))
    return Progress(*columns, console=err_console, disable=disable, transient=False)


def fail(message: str, code: int) -> typer.Exit:
    """Print a one-line reason on stderr and return the exit to raise.

    ``message`` is printed as it is: keys, paths and DSNs may hold ``[...]``, which must
    not be read as markup (it would change the text, or fail with another exit code).
    """
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def load_settings(named: Mapping[str, str] | None = None, **overrides: object) -> HistorySettings:
    """Settings from the environment (plus overrides), exiting with code 2 when invalid.

    ``named`` maps an overridden field to the option that gave it, so that an invalid
    value is reported under that option rather than under the field's variable.
    """
    values: dict[str, Any] = {k: v for k, v in overrides.items() if v is not None}
    try:
        return HistorySettings(**values)
    except ConfigError as exc:
        for field, option in (named or {}).items():
            if field in values and exc.variable == env_var(field):
                raise fail(f"{option}: {exc.problem}", EXIT_CONFIG) from None
        raise fail(str(exc), EXIT_CONFIG) from None


@contextmanager
def open_store(settings: HistorySettings, path_option: str | None = None) -> Iterator[BaseStore]:
    """Open the configured store, exiting with code 2 (config) or 3 (unreachable);
    ``path_option`` names the option that gave the SQLite path, in place of its variable."""

    def named(text: str) -> str:
        variable = env_var("graph_store_sqlite_path")
        return text.replace(variable, path_option) if path_option else text

    try:
        with create_graph_store_sync(settings) as store:
            yield store
    except ConfigError as exc:
        raise fail(named(str(exc)), EXIT_CONFIG) from None
    except StoreUnavailable as exc:
        raise fail(named(str(exc)), EXIT_STORE) from None


P = ParamSpec("P")
R = TypeVar("R")
DEBUG_VAR = "AGENT_HISTORY_DEBUG"


def guarded(command: Callable[P, R]) -> Callable[P, R]:
    """Run a command so that no error escapes as a traceback.

    Configuration errors exit 2, an unreachable or failing store exits 3, anything else
    exits 1; each with one line on stderr that names the error class (driver messages
    can carry data: `redaction.safe_error_text` keeps what is safe).
    ``AGENT_HISTORY_DEBUG=1`` re-raises.
    """

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            result = command(*args, **kwargs)
            sys.stdout.flush()  # a reader gone away shows here, not at interpreter exit
            return result
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise
        except BrokenPipeError:
            _quiet_stdout()
            raise typer.Exit(EXIT_BROKEN_PIPE) from None
        except Exception as exc:
            if os.environ.get(DEBUG_VAR, "").strip() not in ("", "0"):
                raise
            if isinstance(exc, ConfigError):
                raise fail(str(exc), EXIT_CONFIG) from None
            if isinstance(exc, StoreUnavailable | StoreTimeout):
                raise fail(str(exc), EXIT_STORE) from None
            if isinstance(exc, psycopg.Error | sqlite3.Error):
                raise fail(f"the store failed: {safe_error_text(exc)}", EXIT_STORE) from None
            raise fail(
                f"unexpected {safe_error_text(exc)} (set {DEBUG_VAR}=1 to see the traceback)",
                EXIT_CHECK_FAILED,
            ) from None
        except KeyboardInterrupt:
            raise fail("interrupted", 130) from None

    return run
