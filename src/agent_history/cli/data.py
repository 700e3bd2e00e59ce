"""Data commands: export, import, migrate, stats, show, delete, purge."""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from agent_history.cli.app import (
    EXIT_CHECK_FAILED,
    EXIT_CONFIG,
    app,
    console,
    err_console,
    fail,
    load_settings,
    open_store,
)
from agent_history.history import ChatHistory
from agent_history.keys import channel_of
from agent_history.settings import Backend
from agent_history.transfer import export_jsonl, import_jsonl, migrate_history

__all__ = ["delete", "export", "import_", "migrate", "purge", "show", "stats"]

NamespaceOption = typer.Option(
    "agent_chat_history", "--namespace", "-n", help="History namespace (dot-separated labels)."
)


def _namespace(value: str) -> tuple[str, ...]:
    labels = tuple(label for label in value.split(".") if label)
    if not labels:
        raise fail("--namespace must not be empty", EXIT_CONFIG)
    return labels


@app.command()
def export(
    key: list[str] = typer.Option(
        None, "--key", "-k", help="Only these conversations (repeatable)."
    ),
    namespace: str = NamespaceOption,
    out: Path = typer.Option(Path("-"), "--out", "-o", help="Output file; '-' for stdout."),
) -> None:
    """Stream turns as JSON lines (one turn a line)."""
    settings = load_settings()
    with open_store(settings) as store:
        history = ChatHistory(store, namespace=_namespace(namespace))
        if str(out) == "-":
            conversations, turns = export_jsonl(history, sys.stdout, key or None)
        else:
            with out.open("w", encoding="utf-8") as handle:
                conversations, turns = export_jsonl(history, handle, key or None)
    err_console.print(f"exported {turns} turns of {conversations} conversations")


@app.command("import")
def import_(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help="JSONL from `export`."),
    namespace: str = NamespaceOption,
) -> None:
    """Import an export; turns already present are skipped, so it can be re-run."""
    settings = load_settings()
    with open_store(settings) as store, file.open(encoding="utf-8") as handle:
        history = ChatHistory(store, namespace=_namespace(namespace))
        try:
            conversations, turns = import_jsonl(history, handle)
        except (ValueError, KeyError) as exc:
            raise fail(f"{file}: {exc}", EXIT_CHECK_FAILED) from None
    console.print(f"imported {turns} new turns into {conversations} conversations")


@app.command()
def migrate(
    from_backend: Backend = typer.Option(..., "--from-backend", help="Source backend."),
    to_backend: Backend = typer.Option(..., "--to-backend", help="Target backend."),
    from_sqlite_path: Path = typer.Option(
        None, help="Source SQLite file (default: ORCHEO_GRAPH_STORE_SQLITE_PATH)."
    ),
    to_sqlite_path: Path = typer.Option(None, help="Target SQLite file."),
    namespace: str = NamespaceOption,
    as_json: bool = typer.Option(False, "--json", help="Machine-readable report."),
) -> None:
    """Copy every conversation between backends, resumably, then verify counts and checksums."""
    source_settings = load_settings(
        graph_store_backend=from_backend.value, graph_store_sqlite_path=from_sqlite_path
    )
    target_settings = load_settings(
        graph_store_backend=to_backend.value, graph_store_sqlite_path=to_sqlite_path
    )
    if source_settings.describe() == target_settings.describe():
        raise fail("source and target are the same store", EXIT_CONFIG)
    labels = _namespace(namespace)
    with open_store(source_settings) as source_store, open_store(target_settings) as target_store:
        source = ChatHistory(source_store, namespace=labels)
        target = ChatHistory(target_store, namespace=labels)
        keys = list(source.keys())
        with Progress(
            TextColumn("migrating"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[turns]} turns"),
            console=err_console,
            disable=as_json,
        ) as progress:
            task = progress.add_task("migrate", total=len(keys), turns=0)
            copied = 0

            def advance(_key: str, turns: int) -> None:
                nonlocal copied
                copied += turns
                progress.update(task, advance=1, turns=copied)

            result = migrate_history(source, target, keys=keys, on_progress=advance)
    mismatches = [c.key for c in result.checks if not c.matches]
    summary = {
        "conversations": result.conversations,
        "turns_copied": result.turns_copied,
        "verified": result.ok,
        "mismatches": mismatches,
    }
    if as_json:
        console.print_json(json.dumps(summary))
    else:
        console.print(
            f"migrated {result.conversations} conversations, {result.turns_copied} turns copied; "
            f"verification: {'all counts and checksums match' if result.ok else 'MISMATCH'}"
        )
    if not result.ok:
        raise fail(f"verification failed for {', '.join(mismatches)}", EXIT_CHECK_FAILED)


@app.command()
def stats(namespace: str = NamespaceOption, as_json: bool = typer.Option(False, "--json")) -> None:
    """Conversations, turns, the largest conversation, and counts per channel."""
    settings = load_settings()
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
    table = Table(title=f"history in {settings.graph_store_backend.value} / {namespace}")
    table.add_column("channel")
    table.add_column("conversations", justify="right")
    table.add_column("turns", justify="right")
    for channel, numbers in summary["channels"].items():
        table.add_row(channel, str(numbers["conversations"]), str(numbers["turns"]))
    table.add_row("[bold]total", str(summary["conversations"]), str(total))
    console.print(table)
    if largest:
        console.print(f"largest: {largest[0]} ({largest[1]} turns)")


@app.command()
def show(
    key: str = typer.Argument(..., help="Conversation key."),
    last: int = typer.Option(20, "--last", "-l", min=1, help="How many of the newest turns."),
    namespace: str = NamespaceOption,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Print the newest turns of a conversation."""
    settings = load_settings()
    with open_store(settings) as store:
        history = ChatHistory(store, namespace=_namespace(namespace))
        turns = history.tail_turns(key, last)
        total = history.count(key)
    if as_json:
        console.print_json(
            json.dumps(
                [
                    {"seq": t.seq, "role": t.role, "content": t.content, "id": t.id, "ts": t.ts}
                    for t in turns
                ]
            )
        )
        return
    if not turns:
        console.print(f"no turns stored under {key}")
        return
    console.print(f"[bold]{key}[/]: last {len(turns)} of {total} turns", highlight=False)
    for turn in turns:
        text = (
            turn.content
            if isinstance(turn.content, str)
            else json.dumps(turn.content, ensure_ascii=False)
        )
        console.print(f"{turn.seq:>6} {turn.role:<9} {text}", highlight=False, markup=False)


@app.command()
def delete(
    key: str = typer.Argument(..., help="Conversation key."),
    namespace: str = NamespaceOption,
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Delete one conversation."""
    if not yes and not typer.confirm(f"delete every turn of {key}?"):
        raise typer.Exit(EXIT_CHECK_FAILED)
    settings = load_settings()
    with open_store(settings) as store:
        removed = ChatHistory(store, namespace=_namespace(namespace)).delete(key)
    console.print(f"deleted {removed} turns of {key}")


_AGE = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_age(text: str) -> timedelta:
    """Parse ``30d``, ``12h``, ``90m``, ``2w`` or ``45s``."""
    match = _AGE.match(text.strip())
    if not match:
        raise fail(f"--older-than must look like 30d, 12h, 90m, 2w (got {text!r})", EXIT_CONFIG)
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


@app.command()
def purge(
    older_than: str = typer.Option(
        ..., "--older-than", help="Delete conversations idle longer than this (e.g. 30d)."
    ),
    namespace: str = NamespaceOption,
    dry_run: bool = typer.Option(False, "--dry-run", help="Only show what would be deleted."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Retention: delete conversations whose newest turn is older than the given age."""
    cutoff = datetime.now(UTC) - parse_age(older_than)
    settings = load_settings()
    doomed: list[tuple[str, int, str]] = []
    with open_store(settings) as store:
        history = ChatHistory(store, namespace=_namespace(namespace))
        for key in list(history.keys()):
            info = history.info(key)
            if info and datetime.fromisoformat(info.updated_at) < cutoff:
                doomed.append((key, info.turns, info.updated_at))
                if not dry_run:
                    history.delete(key)
    if as_json:
        console.print_json(
            json.dumps(
                {
                    "dry_run": dry_run,
                    "conversations": [
                        {"key": k, "turns": n, "updated_at": u} for k, n, u in doomed
                    ],
                }
            )
        )
        return
    verb = "would delete" if dry_run else "deleted"
    for key, turns, updated in doomed:
        console.print(f"{verb} {key} ({turns} turns, last update {updated})", highlight=False)
    since = cutoff.isoformat(timespec="seconds")
    console.print(f"{verb} {len(doomed)} conversations idle since before {since}")
