"""`agent-history drill`: the rollback drill against the configured store (see
`agent_history.drill`)."""

from __future__ import annotations

import json

import typer
from rich import box
from rich.table import Table

from agent_history.cli.app import (
    EXIT_CHECK_FAILED,
    app,
    console,
    err_console,
    guarded,
    load_settings,
    open_store,
    plural,
)
from agent_history.drill import DrillReport, SwitchResult, run_drill

__all__ = ["drill"]


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
    when a switch did not take effect, a run failed or a turn was lost.
    """
    settings = load_settings()
    with open_store(settings) as store:
        report = run_drill(store, conversations=conversations, runs_per_switch=runs)
    if as_json:
        console.print_json(json.dumps(report.as_dict()))
    else:
        _print(report)
    if not report.ok:
        raise typer.Exit(EXIT_CHECK_FAILED)


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
    where = ".".join(report.namespace)
    if report.namespace_removed:
        note = f"scratch namespace {where} removed"
    else:
        note = f"FAIL drill: scratch namespace {where} not removed"
    err_console.print(note, highlight=False, markup=False)
    verdict = "every switch took effect" if report.ok else "the drill failed"
    console.print(verdict, highlight=False)
