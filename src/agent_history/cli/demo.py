"""`agent-history demo`: the offline tour, on the configured store (SQLite by default)."""

from __future__ import annotations

import shutil
import sys
import uuid
from typing import Any

from langgraph.graph import START, StateGraph
from langgraph.store.base import BaseStore
from rich.panel import Panel
from rich.table import Table

from agent_history.cli.app import app, console, load_settings, open_store
from agent_history.history import ChatHistory
from agent_history.node import AgentNode, AgentState, HistoryReport
from agent_history.offline_model import RecordingChatModel
from agent_history.toggles import HistoryToggles

__all__ = ["demo"]

NAMESPACE = "agent_history_demo"
MAX_MESSAGES = 6
TELEGRAM_CHAT = 424242
WECOM = {"open_kf_id": "wkDemoKf", "external_userid": "wmDemoUser"}
SCRIPT: list[tuple[str, dict[str, Any]]] = [
    ("telegram", {"results": {"telegram_events_parser": {"chat_id": TELEGRAM_CHAT}}}),
    ("wecom_cs", {"results": {"wecom_cs_sync": WECOM}}),
]
TEXTS = ["hi, I'm Ana", "what is my name?", "thanks!", "and one more thing", "bye"]


def _graph(store: BaseStore, toggles: HistoryToggles, reports: list[HistoryReport]) -> Any:
    node = AgentNode(
        RecordingChatModel(),
        use_graph_chat_history=True,
        max_messages=MAX_MESSAGES,
        history_namespace=[NAMESPACE],
        toggles=toggles,
        on_report=reports.append,
    )
    builder = StateGraph(AgentState)
    builder.add_node("agent", node)
    builder.add_edge(START, "agent")
    return builder.compile(store=store)


def _callback(base: dict[str, Any], text: str) -> dict[str, Any]:
    return {"inputs": {"message": {"text": text}}, **base}


def _run(graph: Any, state: dict[str, Any]) -> None:
    graph.invoke(state, {"configurable": {"thread_id": uuid.uuid4().hex}})


@app.command()
def demo() -> None:
    """Replay scripted Telegram and WeCom callbacks through AgentNode, then flip the toggles."""
    settings = load_settings()
    with open_store(settings) as store:
        history = ChatHistory(store, namespace=(NAMESPACE,))
        for key in list(history.keys()):
            history.delete(key)  # a fresh tour every time
        reports: list[HistoryReport] = []
        graph = _graph(store, HistoryToggles(env={}), reports)

        table = Table(title=f"separate graph runs per callback (max_messages={MAX_MESSAGES})")
        for column in ("run", "resolved key", "turns read", "payload / max", "stored now"):
            table.add_column(column, justify="right" if column != "resolved key" else "left")
        for number, text in enumerate(TEXTS, start=1):
            for _, base in SCRIPT:
                _run(graph, _callback(base, text))
                report = reports[-1]
                stored = history.count(report.key) if report.key else 0
                table.add_row(
                    str(number), str(report.key), str(report.stored_read),
                    f"{report.payload_messages} / {report.max_messages}", str(stored),
                )  # fmt: skip
        console.print(table)

        keyless: list[HistoryReport] = []
        _graph(store, HistoryToggles(env={}), keyless).invoke(
            {
                "inputs": {"message": "no chat id here"},
                "results": {"telegram_events_parser": {"chat_id": None}},
            }
        )
        fallbacks = ", ".join(keyless[-1].fallbacks)
        console.print(
            f"callback without a chat id: fallback={fallbacks}, answered, nothing stored",
            highlight=False,
        )

        telegram_key = f"telegram:{TELEGRAM_CHAT}"
        toggles_table = Table(
            title="ORCHEO_GRAPH_CHAT_HISTORY_MODE, flipped between runs of the same workflow"
        )
        for column in ("mode", "turns read", "payload", "appended", "stored now", "shadow diff"):
            toggles_table.add_column(column, justify="left" if column == "mode" else "right")
        for mode in ("off", "read_only", "shadow", "read_write"):
            mode_reports: list[HistoryReport] = []
            toggled = _graph(
                store, HistoryToggles(env={"ORCHEO_GRAPH_CHAT_HISTORY_MODE": mode}), mode_reports
            )
            _run(toggled, _callback(SCRIPT[0][1], f"message in {mode} mode"))
            report = mode_reports[-1]
            differs = report.shadow_difference
            toggles_table.add_row(
                mode, str(report.stored_read), str(report.payload_messages),
                str(report.appended), str(history.count(telegram_key)),
                "-" if differs is None else ("yes" if differs else "no"),
            )  # fmt: skip
        console.print(toggles_table)

        transcript = [
            f"{t.seq}. {t.role}: {t.content}" for t in history.tail_turns(telegram_key, 4)
        ]
        console.print(
            Panel("\n".join(transcript), title=f"newest turns of {telegram_key}", expand=False)
        )
    where = settings.describe()
    location = (
        where.get("graph_store_sqlite_path") or where.get("postgres") or "memory (gone on exit)"
    )
    console.print(
        f"data lives in the {settings.graph_store_backend.value} graph store: {location}",
        highlight=False,
    )
    console.print("look at it with:", highlight=False)
    program = "agent-history" if shutil.which("agent-history") else sys.argv[0]
    if program.endswith("__main__.py"):
        program = f"{sys.executable} -m agent_history.cli"
    for command in (
        f"{program} stats -n {NAMESPACE}",
        f"{program} show {telegram_key} -n {NAMESPACE} --last 10",
        f"{program} export -n {NAMESPACE} -o demo.jsonl",
    ):
        console.print(f"  {command}", highlight=False, markup=False)
