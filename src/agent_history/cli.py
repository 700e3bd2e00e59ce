"""The `agent-history` command."""

from __future__ import annotations

import typer
from rich.console import Console

from agent_history.errors import AgentHistoryError
from agent_history.settings import HistorySettings
from agent_history.stores import create_graph_store_sync

__all__ = ["app", "main"]

app = typer.Typer(help="Durable chat history for LangGraph agents: demo and operations.")
console = Console()


@app.callback()
def _root() -> None:
    """Durable chat history for LangGraph agents."""


@app.command()
def demo() -> None:
    """Run the offline demo on the configured store (embedded SQLite by default)."""
    try:
        settings = HistorySettings()
        with create_graph_store_sync(settings) as store:
            store.put(("agent_history_demo",), "probe", {"text": "hello"})
            item = store.get(("agent_history_demo",), "probe")
    except AgentHistoryError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    console.print(f"round-tripped {item.value if item else None}")
    for name, value in settings.describe().items():
        console.print(f"{name}: {value}")


def main() -> None:
    """Console-script entry point."""
    app()
