"""`agent-history replay FILE`: replay recorded callbacks and check the rollout checklist."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import typer
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
)
from agent_history.history import ChatHistory
from agent_history.replay import NotAGraph, load_graph, read_records, scratch_namespace
from agent_history.replay import replay as run_replay

__all__ = ["replay"]


@app.command()
@guarded
def replay(
    file: Path = typer.Argument(
        ..., exists=True, dir_okay=False, help="JSONL: one callback (inputs/results) a line."
    ),
    graph: str = typer.Option(
        None, "--graph", help="module:attribute of your graph (default: the reference workflow)."
    ),
    max_messages: int = typer.Option(
        30, "--max-messages", min=1, help="Window of the reference workflow."
    ),
    namespace: str = typer.Option(
        None,
        "--namespace",
        "-n",
        help="Where the runs store history (default: a fresh scratch namespace, "
        "removed afterwards). Required with --graph: the namespace your graph uses.",
    ),
    keep: bool = typer.Option(False, "--keep", help="Keep the scratch namespace afterwards."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Replay callbacks as separate runs; check continuity, degradation, window, durability.

    By default the runs write into a fresh scratch namespace of the configured store,
    never into the production history, and the scratch namespace is removed afterwards.
    """
    if graph and namespace is None:
        raise fail(
            "--graph needs --namespace: the namespace your graph stores history in", EXIT_CONFIG
        )
    scratch = namespace is None
    labels = scratch_namespace() if scratch else tuple(p for p in namespace.split(".") if p)
    if not labels:
        raise fail("--namespace must not be empty", EXIT_CONFIG)
    try:
        if graph:
            _import_as_python_m_does()
        factory = load_graph(graph) if graph else None
        with file.open(encoding="utf-8") as handle:
            records = list(read_records(handle))
    except (ValueError, TypeError, ImportError, AttributeError) as exc:
        raise fail(str(exc), EXIT_CONFIG) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise fail(f"cannot read {file}: {type(exc).__name__}", EXIT_CONFIG) from None
    settings = load_settings()
    with open_store(settings) as store:
        try:
            report = run_replay(
                records, store, factory, max_messages=max_messages, namespace=labels
            )
        except NotAGraph as exc:
            raise fail(f"--graph {graph}: {exc}", EXIT_CONFIG) from None
        finally:
            if scratch and not keep:
                history = ChatHistory(store, namespace=labels)
                for key in list(history.keys()):
                    history.delete(key)
    where = ".".join(labels)
    removed = scratch and not keep
    if as_json:
        console.print_json(
            json.dumps(
                {
                    "runs": report.runs,
                    "ok": report.ok,
                    "namespace": where,
                    "kept": not removed,
                    "identities": report.identities,
                    "keyless_runs": len(report.keyless),
                    "checks": [
                        {"name": c.name, "ok": c.ok, "detail": c.detail} for c in report.checks
                    ],
                }
            )
        )
    else:
        table = Table(title=f"replayed {plural(report.runs, 'callback')} from {file.name}")
        table.add_column("check")
        table.add_column("result")
        table.add_column("detail")
        for check in report.checks:
            table.add_row(check.name, "[green]PASS" if check.ok else "[red]FAIL", check.detail)
        console.print(table)
        for item in report.keyless:
            rejected = ", ".join(item.rejected) or "-"
            console.print(
                f"run without a valid key: rejected {rejected} -> in-memory", highlight=False
            )
        if removed:
            note = f"history written to scratch namespace {where}, removed (--keep keeps it)"
        else:
            note = f"history written to namespace {where}"
        err_console.print(note, highlight=False, markup=False)
    if not report.ok:
        raise typer.Exit(EXIT_CHECK_FAILED)


def _import_as_python_m_does() -> None:
    """Put the current directory first on the import path, as ``python -m`` does (an
    installed command's path lacks it), for the rest of the command: a graph factory may
    import its siblings only when it is called."""
    here = os.getcwd()
    if "" not in sys.path and here not in sys.path:
        sys.path.insert(0, here)
