"""Retention commands as an operator runs them: from cron (no one to answer), by hand
(Ctrl-C at the question), with a typo in a path or a namespace, two at once, and keys
that look like emoji short codes."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from langchain_core.messages import HumanMessage
from typer.testing import CliRunner

from agent_history.cli import app
from agent_history.history import ChatHistory
from agent_history.retention import purge_idle
from agent_history.settings import HistorySettings
from agent_history.stores import create_graph_store_sync

REPO = Path(__file__).resolve().parents[2]


def _settings(tmp_path: Path) -> HistorySettings:
    return HistorySettings(
        graph_store_sqlite_path=tmp_path / "store.sqlite",
        checkpoint_sqlite_path=tmp_path / "checkpoints.sqlite",
    )


def _env(tmp_path: Path) -> dict[str, str]:
    return {
        "ORCHEO_GRAPH_STORE_BACKEND": "sqlite",
        "ORCHEO_GRAPH_STORE_SQLITE_PATH": str(tmp_path / "store.sqlite"),
        "ORCHEO_CHECKPOINT_SQLITE_PATH": str(tmp_path / "checkpoints.sqlite"),
    }


def _seed(tmp_path: Path, keys: list[str], text: str = "hi :thumbs_up:") -> None:
    with create_graph_store_sync(_settings(tmp_path)) as store:
        history = ChatHistory(store)
        for key in keys:
            history.append(key, [HumanMessage(text)])


def _cli(tmp_path: Path, *args: str, shell_suffix: str = "") -> subprocess.CompletedProcess[str]:
    command = " ".join([f"'{sys.executable}'", "-m", "agent_history.cli", *args]) + shell_suffix
    return subprocess.run(
        ["sh", "-c", command], cwd=REPO, env={**os.environ, **_env(tmp_path)},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_keys_and_messages_are_printed_exactly_not_as_emoji(tmp_path: Path) -> None:
    _seed(tmp_path, ["wecom:id:42"])
    runner = CliRunner()
    shown = runner.invoke(app, ["show", "wecom:id:42"], env=_env(tmp_path))
    assert shown.exit_code == 0, shown.output
    assert "wecom:id:42" in shown.output and ":thumbs_up:" in shown.output
    assert "🆔" not in shown.output and "👍" not in shown.output
    listing = runner.invoke(app, ["purge", "--older-than", "0s", "--dry-run"], env=_env(tmp_path))
    assert "wecom:id:42" in listing.output and "🆔" not in listing.output


def test_no_one_to_answer_the_question_deletes_nothing_and_says_so(tmp_path: Path) -> None:
    """A cron job: stdin closed (`<&-`) or empty."""
    _seed(tmp_path, ["telegram:1"])
    for suffix in (" <&-", " </dev/null"):
        for args in (("delete", "telegram:1"), ("purge", "--older-than", "0s")):
            result = _cli(tmp_path, *args, shell_suffix=suffix)
            assert result.returncode == 1, result.stderr
            assert "not confirmed; nothing deleted" in result.stderr
            assert "unexpected" not in result.stderr and "Traceback" not in result.stderr
    with create_graph_store_sync(_settings(tmp_path)) as store:
        assert ChatHistory(store).count("telegram:1") == 1


def test_a_mistyped_sqlite_path_creates_nothing(tmp_path: Path) -> None:
    env = {**_env(tmp_path), "ORCHEO_GRAPH_STORE_SQLITE_PATH": str(tmp_path / "typo.sqlite")}
    for args in (["purge", "--older-than", "30d", "--dry-run"], ["delete", "k", "--yes"]):
        result = CliRunner().invoke(app, args, env=env)
        assert result.exit_code == 2, result.output
        assert "does not exist" in result.output
    assert not (tmp_path / "typo.sqlite").exists()


def test_a_namespace_with_no_conversation_is_pointed_out(tmp_path: Path) -> None:
    _seed(tmp_path, ["telegram:1"])
    result = CliRunner().invoke(
        app,
        ["purge", "--older-than", "0s", "-n", "agent_chat_histroy", "--yes"],
        env=_env(tmp_path),
    )
    assert result.exit_code == 0
    assert "no conversation under namespace agent_chat_histroy" in result.output


def test_a_conversation_another_purge_deleted_is_not_reported_as_written_to(
    tmp_path: Path,
) -> None:
    _seed(tmp_path, ["telegram:1", "telegram:2"])
    cutoff = datetime.now(UTC) + timedelta(seconds=1)
    with create_graph_store_sync(_settings(tmp_path)) as store:
        history = ChatHistory(store)
        history.delete("telegram:1")  # the other purge got there first
        history.append("telegram:2", [HumanMessage("new")])
        report = purge_idle(history, ["telegram:1", "telegram:2"], cutoff - timedelta(hours=1))
    assert (report.gone, report.kept, report.deleted) == (["telegram:1"], ["telegram:2"], [])


def test_ctrl_c_at_the_question_exits_130(tmp_path: Path, monkeypatch: Any) -> None:
    import typer

    _seed(tmp_path, ["telegram:1"])

    def interrupted(*args: Any, **kwargs: Any) -> bool:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise typer.Abort() from None  # what click does with Ctrl-C at a prompt

    monkeypatch.setattr(typer, "confirm", interrupted)
    result = CliRunner().invoke(app, ["delete", "telegram:1"], env=_env(tmp_path))
    assert result.exit_code == 130, result.output
    assert "interrupted; nothing deleted" in result.output


def test_an_imported_conversation_is_as_old_as_its_newest_turn_not_its_last(
    tmp_path: Path,
) -> None:
    """Workers' clocks differ: a conversation whose last turn (by seq) is dated 45 days ago
    but whose second was written yesterday is in use; ``purge --older-than 30d`` used to
    delete it after an import or a migration (the head took the last turn's time)."""
    import json

    now = datetime.now(UTC)
    lines = [
        {"namespace": ["agent_chat_history"], "key": "skew:1", "seq": seq, "role": role,
         "content": f"turn {seq}", "id": f"m{seq}", "ts": (now - timedelta(days=days)).isoformat()}
        for seq, role, days in [(1, "user", 60), (2, "assistant", 1), (3, "user", 45)]
    ]  # fmt: skip
    exported = tmp_path / "in.jsonl"
    exported.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    assert _cli(tmp_path, "import", str(exported)).returncode == 0
    purged = _cli(tmp_path, "purge", "--older-than", "30d", "--yes")
    assert purged.returncode == 0, purged.stderr
    assert "deleted 0 conversations" in purged.stdout
    with create_graph_store_sync(_settings(tmp_path)) as store:
        assert [t.content for t in ChatHistory(store).read("skew:1")] == [
            "turn 1",
            "turn 2",
            "turn 3",
        ]


def test_turns_kept_under_another_value_field_are_exported_whole(tmp_path: Path) -> None:
    """A deployment with ``history_value_field="text"`` (migration.md's advice for items
    of an older layout): the operator commands, which have no such option, exported
    every turn with empty content, and ``migrate`` copied empty turns and verified."""
    import json

    with create_graph_store_sync(_settings(tmp_path)) as store:
        ChatHistory(store, value_field="text").append(
            "telegram:5", [HumanMessage("the question", id="u1")]
        )
        assert [t.content for t in ChatHistory(store).read("telegram:5")] == ["the question"]
    exported = _cli(tmp_path, "export", "-o", "-")
    assert exported.returncode == 0, exported.stderr
    [line] = [json.loads(text) for text in exported.stdout.splitlines()]
    assert line["content"] == "the question"
    shown = _cli(tmp_path, "show", "telegram:5")
    assert "the question" in shown.stdout
