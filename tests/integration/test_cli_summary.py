"""`agent-history show KEY` prints the running summary and what it covers."""

from __future__ import annotations

from pathlib import Path

from langchain_core.messages import AIMessage, HumanMessage
from typer.testing import CliRunner

from agent_history.cli import app
from agent_history.history import ChatHistory
from agent_history.settings import HistorySettings
from agent_history.stores import create_graph_store_sync

runner = CliRunner()


def test_show_prints_the_summary_and_what_it_covers(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    settings = HistorySettings(graph_store_backend="sqlite", graph_store_sqlite_path=path)
    with create_graph_store_sync(settings) as store:
        history = ChatHistory(store)
        for i in range(5):
            history.append("telegram:7", [HumanMessage(f"q{i}", id=f"q{i}"), AIMessage(f"a{i}")])
        claim = history.claim_summary("telegram:7", 6, every=2, max_turns=100, owner="me")
        assert claim.granted
        history.write_summary(
            "telegram:7", "They asked q0 to q2.", 6, base_version=0, owner="me", turns=6
        )
    env = {"ORCHEO_GRAPH_STORE_BACKEND": "sqlite", "ORCHEO_GRAPH_STORE_SQLITE_PATH": str(path)}
    shown = runner.invoke(app, ["show", "telegram:7", "--last", "2"], env=env)
    assert shown.exit_code == 0, shown.output
    lines = shown.output.splitlines()
    assert lines[0] == "telegram:7: last 2 of 10 turns"
    assert lines[1].startswith("summary v1: turns 1-6 (6 summarised, 0 skipped), updated ")
    assert lines[2] == "They asked q0 to q2."
    assert [line.split()[0] for line in lines[3:]] == ["9", "10"]
