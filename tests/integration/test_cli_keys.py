"""The CLI takes and prints free-form conversation keys as they were given."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent_history.cli import app
from agent_history.history import ChatHistory
from agent_history.settings import HistorySettings
from agent_history.stores import create_graph_store_sync

KEYS = ["tenant.a/user 17", "alice@example.com", "50%.off", "用户 😀", "telegram:-100123"]
runner = CliRunner()


def _store_with(path: Path, keys: list[str]) -> dict[str, str]:
    settings = HistorySettings(graph_store_backend="sqlite", graph_store_sqlite_path=path)
    with create_graph_store_sync(settings) as store:
        for key in keys:
            ChatHistory(store).append(key, [{"role": "user", "content": f"hi {key}"}])
    return {"ORCHEO_GRAPH_STORE_BACKEND": "sqlite", "ORCHEO_GRAPH_STORE_SQLITE_PATH": str(path)}


def test_show_export_and_stats_use_the_original_keys(tmp_path: Path) -> None:
    env = _store_with(tmp_path / "store.sqlite", KEYS)
    exported = runner.invoke(app, ["export"], env=env)
    assert exported.exit_code == 0, exported.output
    lines = [json.loads(line) for line in exported.output.splitlines() if line.startswith("{")]
    assert sorted(line["key"] for line in lines) == sorted(KEYS)
    assert all(line["content"] == f"hi {line['key']}" for line in lines)
    for key in KEYS:
        shown = runner.invoke(app, ["show", key], env=env)
        assert shown.exit_code == 0, shown.output
        assert shown.output.startswith(f"{key}: last 1 of 1 turn"), shown.output
    stats = runner.invoke(app, ["stats", "--json"], env=env)
    assert json.loads(stats.output)["conversations"] == len(KEYS)


def test_a_key_with_a_control_character_is_a_usage_error(tmp_path: Path) -> None:
    env = _store_with(tmp_path / "store.sqlite", KEYS)
    result = runner.invoke(app, ["show", "a\nb"], env=env)
    assert result.exit_code == 2
    assert "invalid_chars" in result.output


@pytest.mark.parametrize("key", ["a[/]b", "[bold red]x"])
def test_keys_that_look_like_markup_are_printed_as_they_are(tmp_path: Path, key: str) -> None:
    env = _store_with(tmp_path / "store.sqlite", [key])
    shown = runner.invoke(app, ["show", key], env=env)
    assert shown.exit_code == 0, shown.output
    assert shown.output.startswith(f"{key}: last 1 of 1 turn"), shown.output


@pytest.mark.parametrize("namespace", ["a..b", "a.", " .b"])
def test_a_namespace_with_an_empty_or_blank_label_is_a_usage_error(
    tmp_path: Path, namespace: str
) -> None:
    env = _store_with(tmp_path / "store.sqlite", KEYS)
    result = runner.invoke(app, ["stats", "-n", namespace], env=env)
    assert result.exit_code == 2, result.output
    assert "--namespace" in result.output and "label" in result.output
