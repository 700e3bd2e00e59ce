"""Data commands: export, import, migrate, stats, show, delete, purge."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

import typer
from langgraph.store.base import GetOp
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskID, TaskProgressColumn, TextColumn
from rich.table import Table

from agent_history.cli.app import (
    EXIT_CHECK_FAILED,
    EXIT_CONFIG,
    app,
    console,
    err_console,
    fail,
    guarded,
    load_settings,
    open_store,
    plural,
    progress_bar,
    terminal_safe,
)
from agent_history.errors import AgentHistoryError, InvalidNamespace
from agent_history.history import ChatHistory, ConversationInfo
from agent_history.history.naming import validate_namespace
from agent_history.history.steps import is_legacy_item
from agent_history.keys import channel_of
from agent_history.legacy import legacy_keys, migrate_legacy
from agent_history.retention import PurgeReport, idle_conversations, purge_idle
from agent_history.settings import Backend, HistorySettings, env_var
from agent_history.transfer import (
    ExportCounts,
    MigrationReport,
    NotStrictJSON,
    export_jsonl,
    import_jsonl,
    migrate_history,
)

__all__ = ["delete", "export", "import_", "migrate", "parse_age", "purge", "show", "stats"]

DEFAULT_NAMESPACE = "agent_chat_history"
NamespaceOption = typer.Option(
    DEFAULT_NAMESPACE, "--namespace", "-n", help="History namespace (dot-separated labels)."
)


def _namespace(value: str, option: str = "--namespace") -> tuple[str, ...]:
    if not value:
        raise fail(f"{option} must not be empty", EXIT_CONFIG)
    try:
        return validate_namespace(value.split("."))
    except InvalidNamespace as exc:
        raise fail(f"{option}: {exc}", EXIT_CONFIG) from None


def _require_existing(
    settings: HistorySettings, option: str | None = None, backend_option: str | None = None
) -> None:
    """Exit 2 when the store a command only reads from cannot hold anything: a SQLite file
    that does not exist (opening it would create an empty database and report on nothing:
    a typo in the path looks like an empty store), or the in-memory store, which every
    command starts empty. ``option`` and ``backend_option`` name where the path and the
    backend were given (default: their variables)."""
    _refuse_memory(
        settings,
        "memory starts empty in every command, so there is nothing to read",
        backend_option,
    )
    if settings.graph_store_backend is not Backend.SQLITE:
        return
    path = settings.graph_store_sqlite_path
    if not path.exists():
        where = option or env_var("graph_store_sqlite_path")
        raise fail(
            f"{where}: {path} does not exist (a store only read is never created)", EXIT_CONFIG
        )


def _require_durable(settings: HistorySettings, backend_option: str | None = None) -> None:
    """Exit 2 before a command writes into the in-memory store: it is gone when the command
    ends, so it would report turns written that nobody can read."""
    _refuse_memory(
        settings,
        "memory is gone when this command ends, so nothing written would be kept",
        backend_option,
    )


def _refuse_memory(settings: HistorySettings, why: str, backend_option: str | None) -> None:
    """Exit 2 naming where the in-memory backend was chosen (the option, else the
    variable), and ``why`` a store command cannot use it."""
    if settings.graph_store_backend is Backend.MEMORY:
        where = backend_option or env_var("graph_store_backend")
        raise fail(f"{where}: {why}; use sqlite or postgres", EXIT_CONFIG)


def _info(history: ChatHistory, key: str) -> ConversationInfo | None:
    """The conversation's info; exits 2 for a key no conversation can have."""
    try:
        return history.info(key)
    except ValueError as exc:
        raise fail(f"invalid conversation key {key!r}: {exc}", EXIT_CONFIG) from None


def _not_found(key: str, namespace: str) -> typer.Exit:
    return fail(f"no conversation {key!r} in namespace {namespace!r}", EXIT_CHECK_FAILED)


# --- export / import --------------------------------------------------------------------


def _check_output(out: Path) -> None:
    """Exit 2 with a clear reason when ``out`` cannot be written as a file.

    A symlink is followed: what is checked (and written) is the file it points to.
    """
    target = _resolved(out)
    if target.is_dir():
        raise fail(f"cannot write {out}: it is a directory", EXIT_CONFIG)
    if _is_special(target):
        if not os.access(target, os.W_OK):
            raise fail(f"cannot write {out}: it is not writable", EXIT_CONFIG)
        return
    parent = target.parent
    if not parent.is_dir():
        raise fail(f"cannot write {out}: directory {parent} does not exist", EXIT_CONFIG)
    if not os.access(parent, os.W_OK):
        raise fail(f"cannot write {out}: directory {parent} is not writable", EXIT_CONFIG)


def _resolved(out: Path) -> Path:
    """The file a path names once symlinks are followed (``out`` itself when it is none)."""
    return Path(os.path.realpath(out)) if out.is_symlink() else out


def _is_special(path: Path) -> bool:
    """Whether ``path`` exists and is neither a regular file nor a directory (a device such
    as /dev/null, a FIFO, a socket): such a target is written in place, never replaced."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


@app.command()
@guarded
def export(
    key: list[str] = typer.Option(
        None, "--key", "-k", help="Only these conversations (repeatable)."
    ),
    namespace: str = NamespaceOption,
    out: Path = typer.Option(Path("-"), "--out", "-o", help="Output file; '-' for stdout."),
) -> None:
    """Stream turns as JSON lines (one turn a line), with a progress bar on stderr."""
    labels = _namespace(namespace)
    to_stdout = str(out) == "-"
    if not to_stdout:
        _check_output(out)
    settings = load_settings()
    _require_existing(settings)
    with open_store(settings) as store:
        history = ChatHistory(store, namespace=labels)
        if key:
            for wanted in key:
                if _info(history, wanted) is None:
                    raise _not_found(wanted, namespace)
            keys = list(dict.fromkeys(key))
        else:
            keys = list(history.keys())
        with ExitStack() as stack:
            bar = stack.enter_context(progress_bar("exporting", unit="turns"))
            task = bar.add_task("export", total=len(keys), turns=0)

            def advance(_key: str, turns: int) -> None:
                bar.update(task, advance=1, turns=bar.tasks[task].fields["turns"] + turns)

            try:
                if to_stdout:
                    counts = export_jsonl(history, sys.stdout, keys, on_progress=advance)
                else:
                    counts = _export_file(history, out, keys, advance)
            except NotStrictJSON as exc:
                raise fail(f"{exc}; export stopped", EXIT_CHECK_FAILED) from None
    where = "" if to_stdout else f" to {out}"
    summaries = f" and {_summaries(counts.summaries)}" if counts.summaries else ""
    err_console.print(
        f"exported {plural(counts.turns, 'turn')}{summaries} of "
        f"{plural(counts.conversations, 'conversation')}{where}",
        highlight=False,
        markup=False,
    )


def _summaries(count: int) -> str:
    return plural(count, "summary", "summaries")


def _export_file(history: ChatHistory, out: Path, keys: list[str], advance: Any) -> ExportCounts:
    """Export into ``out``.

    A regular file (new, or the one a symlink points to) is written as a temporary file
    beside it, renamed over it when complete (an interrupted export never leaves a file
    that looks whole) with the permission bits the file had. A target that is neither
    (a device such as /dev/null, a FIFO) is written directly, as any Unix tool would.
    """
    target = _resolved(out)
    try:
        if _is_special(target):
            with target.open("w", encoding="utf-8") as handle:
                return export_jsonl(history, handle, keys, on_progress=advance)
    except AgentHistoryError:  # StoreUnavailable/StoreTimeout are OSErrors too: the store's
        raise
    except OSError as exc:
        raise fail(f"cannot write {out}: {exc.strerror or exc}", EXIT_CONFIG) from None
    partial = target.with_name(f".{target.name}.partial")
    try:
        try:
            mode: int | None = stat.S_IMODE(target.stat().st_mode)
        except FileNotFoundError:
            mode = None
        partial.unlink(missing_ok=True)
        fd = os.open(
            partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if mode is not None else 0o666
        )
        if mode is not None:
            os.fchmod(fd, mode)
        with open(fd, "w", encoding="utf-8") as handle:
            counts = export_jsonl(history, handle, keys, on_progress=advance)
        partial.replace(target)
    except AgentHistoryError:  # a store fault, not the file's (see above)
        partial.unlink(missing_ok=True)
        raise
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise fail(f"cannot write {out}: {exc.strerror or exc}", EXIT_CONFIG) from None
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return counts


def _read_lines(handle: BinaryIO, bar: Progress, task: TaskID) -> Iterator[bytes]:
    """The file's lines from its start, advancing ``task`` by bytes read (a line that is
    not UTF-8 fails validation with its number, see `transfer.parse_line`)."""
    handle.seek(0)
    for raw in handle:
        bar.advance(task, len(raw))
        yield raw


def _open_input(file: Path, stack: ExitStack) -> tuple[BinaryIO, int]:
    """The import file open for reading from the start as often as needed, and its size.

    A regular file is read where it is. Anything else (a pipe, ``/dev/stdin``, ``<(...)``,
    a FIFO) can be read once only: it is copied into a temporary file first.
    """
    try:
        handle = stack.enter_context(file.open("rb"))
        info = os.fstat(handle.fileno())
        if stat.S_ISREG(info.st_mode):
            return handle, info.st_size
        # closed by the stack
        spool = stack.enter_context(tempfile.TemporaryFile(prefix="agent-history-"))  # noqa: SIM115
        shutil.copyfileobj(handle, spool, _SPOOL_CHUNK)
        return spool, spool.tell()
    except OSError as exc:
        raise fail(f"cannot read {file}: {exc.strerror or exc}", EXIT_CONFIG) from None


_SPOOL_CHUNK = 1 << 20


@app.command("import")
@guarded
def import_(
    file: Path = typer.Argument(
        ..., exists=True, dir_okay=False, readable=True, help="JSONL from `export`."
    ),
    namespace: str = typer.Option(
        None,
        "--namespace",
        "-n",
        help="Every line must be of this namespace (default: each line's own namespace).",
    ),
    into: str = typer.Option(
        None, "--into", help="Import a file of one namespace into this namespace instead."
    ),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable report."),
) -> None:
    """Validate an export, then import it; turns already present are skipped (re-runnable).

    Each conversation goes to the namespace its lines name. Nothing is written when any
    line is invalid; each problem is reported as ``line N: ...``.
    """
    if namespace is not None and into is not None:
        raise fail("use --namespace or --into, not both", EXIT_CONFIG)
    only = _namespace(namespace) if namespace is not None else None
    target = _namespace(into, "--into") if into is not None else None
    with ExitStack() as files:
        source, size = _open_input(file, files)
        settings = load_settings()
        _require_durable(settings)
        with (
            open_store(settings) as store,
            Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TaskProgressColumn(),
                console=err_console,
                disable=as_json,
            ) as bar,
        ):
            checking = bar.add_task("checking ", total=size)
            importing = bar.add_task("importing", total=size, start=False)
            calls = 0

            def lines() -> Iterator[str]:
                nonlocal calls
                calls += 1
                task = checking if calls == 1 else importing
                if task == importing:
                    bar.start_task(importing)
                return _read_lines(source, bar, task)

            plan, report = import_jsonl(store, lines, namespace=only, into=target)
    if not plan.ok:
        for problem in plan.errors:
            err_console.print(f"{file}: {problem}", highlight=False, markup=False)
        if plan.more_errors:
            err_console.print(
                f"{file}: ... and {plural(plan.more_errors, 'more problem')}", markup=False
            )
        raise fail(f"{file} not imported: nothing was written", EXIT_CONFIG)
    for problem in report.rejected:
        err_console.print(f"{file}: {problem}", highlight=False, markup=False)
    if plan.turns == 0:
        # An export of an empty store is such a file, but so is the output of a command
        # that failed upstream of a pipe (`zcat ... | agent-history import /dev/stdin`).
        err_console.print(f"warning: {file} holds no turns", highlight=False, markup=False)
    if as_json:
        console.print_json(
            json.dumps(
                {
                    "conversations": report.conversations,
                    "conversations_imported": report.conversations - len(report.rejected),
                    "turns_written": report.written,
                    "turns_present": report.present,
                    "summaries_written": report.summaries,
                    "rejected": report.rejected,
                }
            )
        )
    else:
        imported = report.conversations - len(report.rejected)
        into = (
            f"{imported} of {plural(report.conversations, 'conversation')}"
            if report.rejected
            else plural(report.conversations, "conversation")
        )
        console.print(
            f"imported {plural(report.written, 'new turn')} into {into} "
            f"({plural(report.present, 'turn')} already present"
            + (f"; {_summaries(report.summaries)} written" if report.summaries else "")
            + ")",
            highlight=False,
        )
    if report.rejected:
        raise fail(
            f"{plural(len(report.rejected), 'conversation')} not imported", EXIT_CHECK_FAILED
        )


# --- migrate ----------------------------------------------------------------------------


def _same_store(a: HistorySettings, b: HistorySettings) -> bool:
    """Whether two settings name one store: the same description, or one SQLite file
    spelled two ways (a symlink, ``..``)."""
    if a.describe() == b.describe():
        return True
    sqlite = Backend.SQLITE
    if a.graph_store_backend is not sqlite or b.graph_store_backend is not sqlite:
        return False
    paths = (a.graph_store_sqlite_path, b.graph_store_sqlite_path)
    if os.path.realpath(paths[0]) == os.path.realpath(paths[1]):
        return True
    try:
        return os.path.samefile(*paths)  # (a hard link too)
    except OSError:  # one of them is not there yet
        return False


@app.command()
@guarded
def migrate(
    from_backend: Backend = typer.Option(
        None, "--from-backend", help="Source backend (default: the configured one)."
    ),
    to_backend: Backend = typer.Option(
        None, "--to-backend", help="Target backend (default: the configured one)."
    ),
    from_sqlite_path: Path = typer.Option(
        None, help="Source SQLite file (default: ORCHEO_GRAPH_STORE_SQLITE_PATH)."
    ),
    to_sqlite_path: Path = typer.Option(None, help="Target SQLite file."),
    namespace: str = NamespaceOption,
    from_legacy: bool = typer.Option(
        False,
        "--from-legacy",
        help="Copy the single-item layout ({'version', 'messages'} per key) into the log.",
    ),
    legacy_namespace: str = typer.Option(
        DEFAULT_NAMESPACE, "--legacy-namespace", help="Namespace of the single-item layout."
    ),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable report."),
) -> None:
    """Copy every conversation between backends (or from the single-item layout into the
    log), resumably and without duplicates, then verify counts and checksums."""
    if not from_legacy and (from_backend is None or to_backend is None):
        raise fail("give --from-backend and --to-backend, or --from-legacy", EXIT_CONFIG)
    source_settings = load_settings(
        {"graph_store_sqlite_path": "--from-sqlite-path"},
        graph_store_backend=from_backend.value if from_backend else None,
        graph_store_sqlite_path=from_sqlite_path,
    )
    target_settings = load_settings(
        {"graph_store_sqlite_path": "--to-sqlite-path"},
        graph_store_backend=to_backend.value if to_backend else None,
        graph_store_sqlite_path=to_sqlite_path,
    )
    same = _same_store(source_settings, target_settings)
    if same and not from_legacy:
        raise fail("source and target are the same store", EXIT_CONFIG)
    _require_existing(
        source_settings,
        "--from-sqlite-path" if from_sqlite_path else None,
        "--from-backend" if from_backend else None,
    )
    _require_durable(target_settings, "--to-backend" if to_backend else None)
    labels = _namespace(namespace)
    legacy_labels = _namespace(legacy_namespace, "--legacy-namespace")
    with ExitStack() as stack:
        source_store = stack.enter_context(
            open_store(source_settings, "--from-sqlite-path" if from_sqlite_path else None)
        )
        target_store = (
            source_store
            if same
            else stack.enter_context(
                open_store(target_settings, "--to-sqlite-path" if to_sqlite_path else None)
            )
        )
        target = ChatHistory(target_store, namespace=labels)
        if from_legacy:
            keys = list(legacy_keys(source_store, legacy_labels))
        else:
            source = ChatHistory(source_store, namespace=labels)
            keys = list(source.keys())
        with progress_bar("migrating", disable=as_json, unit="turns") as bar:
            task = bar.add_task("migrate", total=len(keys), turns=0)

            def advance(_key: str, turns: int) -> None:
                bar.update(task, advance=1, turns=bar.tasks[task].fields["turns"] + turns)

            if from_legacy:
                result = migrate_legacy(
                    source_store, target, namespace=legacy_labels, keys=keys, on_progress=advance
                )
            else:
                result = migrate_history(source, target, keys=keys, on_progress=advance)
    _migration_summary(result, as_json)


def _migration_summary(result: MigrationReport, as_json: bool) -> None:
    problems = {
        check.key: check.problem or "the copy differs from the source (count or checksum)"
        for check in result.checks
        if not check.matches
    }
    if as_json:
        summary = {
            "conversations": result.conversations,
            "turns_copied": result.turns_copied,
            "summaries_copied": result.summaries_copied,
            "verified": result.ok,
            "mismatches": list(problems),
            "problems": problems,
        }
        console.print_json(json.dumps(summary))
    else:
        verdict = "all counts and checksums match" if result.ok else "MISMATCH"
        if result.ok and not result.conversations:
            # Nothing was compared: say so rather than "all match" (a wrong source
            # namespace or an empty source file would otherwise read as a success).
            verdict = "nothing to compare: the source holds no conversation"
        copied = plural(result.turns_copied, "turn")
        if result.summaries_copied:
            copied += f" and {_summaries(result.summaries_copied)}"
        conversations = plural(result.conversations, "conversation")
        if problems:  # those listed below were not migrated
            conversations = f"{result.conversations - len(problems)} of {conversations}"
        console.print(
            f"migrated {conversations}, {copied} copied; verification: {verdict}",
            highlight=False,
        )
    for key, problem in problems.items():
        err_console.print(f"{key}: {problem}", highlight=False, markup=False)
    if problems:
        raise fail(
            f"verification failed for {plural(len(problems), 'conversation')}",
            EXIT_CHECK_FAILED,
        )


# --- inspection -------------------------------------------------------------------------


@app.command()
@guarded
def stats(namespace: str = NamespaceOption, as_json: bool = typer.Option(False, "--json")) -> None:
    """Conversations, turns, the largest conversation, and counts per channel."""
    settings = load_settings()
    _require_existing(settings)
    with open_store(settings) as store:
        history = ChatHistory(store, namespace=_namespace(namespace))
        per_channel: Counter[str] = Counter()
        turns_per_channel: Counter[str] = Counter()
        largest: tuple[str, int] | None = None
        total = 0
        for key in list(history.keys()):
            count = history.count(key)
            total += count
            per_channel[channel_of(key)] += 1
            turns_per_channel[channel_of(key)] += count
            if largest is None or count > largest[1]:
                largest = (key, count)
    summary: dict[str, Any] = {
        "conversations": sum(per_channel.values()),
        "turns": total,
        "largest": {"key": largest[0], "turns": largest[1]} if largest else None,
        "channels": {
            c: {"conversations": n, "turns": turns_per_channel[c]}
            for c, n in sorted(per_channel.items())
        },
    }
    if as_json:
        console.print_json(json.dumps(summary))
        return
    table = Table(title=f"history in {settings.graph_store_backend.value} / {escape(namespace)}")
    table.add_column("channel")
    table.add_column("conversations", justify="right")
    table.add_column("turns", justify="right")
    for channel, numbers in summary["channels"].items():
        table.add_row(escape(channel), str(numbers["conversations"]), str(numbers["turns"]))
    table.add_row("[bold]total", str(summary["conversations"]), str(total))
    console.print(table)
    if largest:
        console.print(
            f"largest: {largest[0]} ({plural(largest[1], 'turn')})", highlight=False, markup=False
        )


@app.command()
@guarded
def show(
    key: str = typer.Argument(..., help="Conversation key."),
    last: int = typer.Option(20, "--last", "-l", min=1, help="How many of the newest turns."),
    namespace: str = NamespaceOption,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Print the newest turns of a conversation."""
    settings = load_settings()
    _require_existing(settings)
    with open_store(settings) as store:
        history = ChatHistory(store, namespace=_namespace(namespace))
        info = _info(history, key)
        if info is None:
            raise _not_found(key, namespace)
        turns = history.tail_turns(key, last)
        summary = history.summary(key)
    if as_json:
        rows = [
            {"seq": t.seq, "role": t.role, "content": t.content, "id": t.id, "ts": t.ts}
            for t in turns
        ]
        try:
            text = json.dumps(rows, ensure_ascii=False, allow_nan=False, indent=2)
        except ValueError:
            raise fail(
                f"{key!r} holds NaN or an infinity, which JSON cannot represent", EXIT_CHECK_FAILED
            ) from None
        console.print(terminal_safe(text), highlight=False, markup=False)
        return
    console.print(
        f"[bold]{escape(key)}[/]: last {len(turns)} of {plural(info.turns, 'turn')}",
        highlight=False,
    )
    if summary is not None:
        console.print(
            f"summary v{summary.version}: turns 1-{summary.covers_seq} "
            f"({summary.turns} summarised, {summary.skipped} skipped), "
            f"updated {summary.updated_at}",
            highlight=False,
            markup=False,
        )
        shown = terminal_safe(summary.text) or "(cleared by a reset)"
        console.print(shown, highlight=False, markup=False)
    for turn in turns:
        text = (
            turn.content
            if isinstance(turn.content, str)
            else json.dumps(turn.content, ensure_ascii=False)
        )
        line = f"{turn.seq:>6} {turn.role:<9} {terminal_safe(text)}"
        console.print(line, highlight=False, markup=False)


# --- deletion and retention -------------------------------------------------------------


def _confirm(question: str) -> None:
    """Ask on stderr; exit 1 when the answer is no or there is nobody to answer."""
    try:
        agreed = typer.confirm(question, err=True)
    except typer.Abort as exc:
        if isinstance(exc.__context__, KeyboardInterrupt):  # Ctrl-C at the question
            raise fail("interrupted; nothing deleted", 130) from None
        agreed = False
    except (EOFError, RuntimeError):  # nobody to answer: stdin closed (`<&-`, cron)
        agreed = False
    if not agreed:
        raise fail("not confirmed; nothing deleted (--yes skips the question)", EXIT_CHECK_FAILED)


@app.command()
@guarded
def delete(
    key: str = typer.Argument(..., help="Conversation key."),
    namespace: str = NamespaceOption,
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Delete one conversation."""
    settings = load_settings()
    _require_existing(settings)
    with open_store(settings) as store:
        history = ChatHistory(store, namespace=_namespace(namespace))
        info = _info(history, key)
        if info is None:
            # Never migrated: its item of the single-item layout is all there is of it.
            # (a plain get would push the item's expiry back: a write, refused by a
            # read-only role before the lookup ends)
            [legacy] = store.batch([GetOp(tuple(history.namespace), key, refresh_ttl=False)])
            value = getattr(legacy, "value", None)
            if not is_legacy_item(value):
                raise _not_found(key, namespace)
            size = plural(len(value["messages"]), "message")
            what = f"the single-item layout's item of {key} ({size})"
            if not yes:
                _confirm(f"delete {what}?")
            history.delete(key)
            console.print(f"deleted {what}", highlight=False, markup=False)
            return
        if not yes:
            _confirm(f"delete conversation {key} ({plural(info.turns, 'turn')})?")
        removed = history.delete(key)
    console.print(f"deleted {plural(removed, 'turn')} of {key}", highlight=False, markup=False)


_AGE = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_age(text: str) -> timedelta:
    """Parse ``30d``, ``12h``, ``90m``, ``2w`` or ``45s``."""
    match = _AGE.match(text.strip())
    if not match:
        raise fail(f"--older-than must look like 30d, 12h, 90m, 2w (got {text!r})", EXIT_CONFIG)
    try:
        return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    except OverflowError:
        raise fail(f"--older-than is too large (got {text!r})", EXIT_CONFIG) from None


def _print_listing(doomed: list[ConversationInfo], since: str) -> None:
    console.print(
        f"{plural(len(doomed), 'conversation')} idle since before {since}"
        + (":" if doomed else ""),
        highlight=False,
    )
    for info in doomed:
        console.print(
            f"  {info.key} ({plural(info.turns, 'turn')}, last write {info.updated_at})",
            highlight=False,
            markup=False,
        )


@app.command()
@guarded
def purge(
    older_than: str = typer.Option(
        ..., "--older-than", help="Delete conversations idle longer than this (e.g. 30d)."
    ),
    namespace: str = NamespaceOption,
    dry_run: bool = typer.Option(False, "--dry-run", help="Only show what would be deleted."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Retention: delete conversations whose newest turn is older than the given age.

    Lists what it will delete first and asks before deleting (``--yes`` skips the
    question). Each conversation's age is checked again under its lock as it is deleted:
    one written to since the listing is kept.
    """
    try:
        cutoff = datetime.now(UTC) - parse_age(older_than)
    except OverflowError:
        raise fail(f"--older-than is too large (got {older_than!r})", EXIT_CONFIG) from None
    since = cutoff.isoformat(timespec="seconds")
    settings = load_settings()
    _require_existing(settings)
    report = PurgeReport()
    with open_store(settings) as store:
        history = ChatHistory(store, namespace=_namespace(namespace))
        doomed = idle_conversations(history, cutoff)
        if not doomed and next(iter(history.keys()), None) is None:
            # Nothing at all there: more likely a mistyped namespace than a clean store.
            err_console.print(
                f"note: no conversation under namespace {'.'.join(history.namespace)}",
                highlight=False,
                markup=False,
            )
        if not as_json:
            _print_listing(doomed, since)
        if doomed and not dry_run:
            if not yes:
                turns = sum(info.turns for info in doomed)
                _confirm(
                    f"delete {plural(len(doomed), 'conversation')} "
                    f"({plural(turns, 'turn')}) idle since before {since}?"
                )
            report = purge_idle(history, [info.key for info in doomed], cutoff)
    kept = report.kept
    deleted = report.deleted
    if as_json:
        listed = doomed if dry_run else deleted
        console.print_json(
            json.dumps(
                {
                    "dry_run": dry_run,
                    "conversations": [
                        {"key": i.key, "turns": i.turns, "updated_at": i.updated_at} for i in listed
                    ],
                    "kept_written_since": kept,
                    "already_deleted": report.gone,
                }
            )
        )
        return
    for key in kept:
        console.print(f"kept {key}: written to since the listing", highlight=False, markup=False)
    for key in report.gone:
        console.print(f"{key}: already deleted (by another purge?)", highlight=False, markup=False)
    count = len(doomed) if dry_run else len(deleted)
    verb = "would delete" if dry_run else "deleted"
    console.print(
        f"{verb} {plural(count, 'conversation')} idle since before {since}", highlight=False
    )
