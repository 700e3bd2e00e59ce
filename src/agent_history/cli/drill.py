"""`agent-history drill`: the rollback drill against the configured store (see
`agent_history.drill`)."""

from __future__ import annotations

import json

import typer
from rich import box
from rich.table import Table

from agent_history.cli.app import (
    EXIT_CHECK_FAILED,
    EXIT_STORE,
    app,
    console,
    err_console,
    fail,
    guarded,
    load_settings,
    open_store,
    plural,
)
from agent_history.drill import (
    DrillCleanup,
    DrillReport,
    DrillTerminated,
    SwitchResult,
    run_drill,
)

__all__ = ["EXIT_TERMINATED", "drill"]

EXIT_TERMINATED = 143
"""SIGTERM ended the drill (after its clean-up): 128 + 15, the shell's status for it."""


@app.command()
@guarded
def drill(
    conversations: int = typer.Option(
        3, "--conversations", min=1, max=20, help="Conversations in the workload."
    ),
    runs: int = typer.Option(
        3,
        "--runs",
        min=1,
        max=20,
        help="Runs under each switch and after each return (at least one per conversation).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Flip every rollback switch while a synthetic workload runs; check each effect.

    Telegram-style callbacks run through an AgentNode graph (offline model) in a
    fresh scratch namespace of the configured store, removed afterwards; the
    production history is never touched. The switches are the drill's own: the
    ORCHEO_GRAPH_CHAT_HISTORY_* variables are neither read nor changed. Exits 1
    when a switch did not take effect, a run failed or a turn was lost. Whatever ends
    it (also Ctrl-C, SIGTERM or a failing store), the last lines say whether the
    scratch namespace was removed, or name it and how to remove it.
    """
    settings = load_settings()
    cleanups: list[DrillCleanup] = []
    with open_store(settings) as store:
        try:
            report = run_drill(
                store, conversations=conversations, runs_per_switch=runs, on_cleanup=cleanups.append
            )
        except DrillTerminated:
            _print_cleanups(cleanups)
            raise fail("terminated", EXIT_TERMINATED) from None
        except BaseException:  # Ctrl-C, a failing store: `guarded` says which, and exits
            _print_cleanups(cleanups)
            raise
    if as_json:
        console.print_json(json.dumps(report.as_dict()))
    else:
        _print(report)
        verdict = "every switch took effect" if report.ok else "the drill failed"
        if report.store_failures:
            verdict = "the store failed during the drill: the rows are no verdict on the switches"
        console.print(verdict, highlight=False)
    _print_cleanups(cleanups)
    if report.store_failures:
        raise typer.Exit(EXIT_STORE)
    if not report.ok:
        raise typer.Exit(EXIT_CHECK_FAILED)


def _print_cleanups(cleanups: list[DrillCleanup]) -> None:
    """One line on stderr per clean-up (the drill's one): the scratch namespace removed,
    or named with the command that removes it (its name is the drill's own, never data)."""
    for cleanup in cleanups:
        where = ".".join(cleanup.namespace)
        if cleanup.removed:
            note = f"scratch namespace {where} removed"
        else:
            note = (
                f"FAIL drill: scratch namespace {where} not removed; remove it with: "
                f"agent-history purge -n {where} --older-than 0s"
            )
        err_console.print(note, highlight=False, markup=False)


def _ms(row: SwitchResult) -> str:
    if row.effect_ms is None:
        return "-" if row.switch == "baseline" else "never"
    return f"{row.effect_ms:,.0f}"


def _print(report: DrillReport) -> None:
    title = (
        f"rollback drill on {report.backend}: {plural(report.conversations, 'conversation')}, "
        f"{plural(report.runs, 'run')}, {report.seconds:.1f} s"
    )
    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left")
    table.add_column("switch")
    for header in (
        "time until\neffect (ms)",
        "runs during\nthe flip",
        "runs\nfailed",
        "turns\nlost",
    ):
        table.add_column(header, justify="right")
    table.add_column("result")
    for row in report.switches:
        table.add_row(
            row.switch,
            _ms(row),
            str(row.runs),
            str(row.failed),
            str(row.lost),
            "[green]ok[/]" if row.ok else "[bold red]FAIL[/]",
        )
    console.print(table)
    for row in report.switches:
        for problem in row.problems:
            console.print(f"FAIL {row.switch}: {problem}", highlight=False, markup=False)
    for problem in report.problems:
        console.print(f"FAIL drill: {problem}", highlight=False, markup=False)
    for failure in report.store_failures:
        console.print(f"FAIL store: {failure}", highlight=False, markup=False)
