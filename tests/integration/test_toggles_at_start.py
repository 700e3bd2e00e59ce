"""A bad rollback switch fails the start, naming it.

An operator rolling back sets ``MODE=off`` (and a flags file holding ``"mode": "off"``)
while another switch of the same deployment has a typo. Read leniently, the one bad value
made the process run on the defaults, ``read_write`` without the flags file, so the
rollback did nothing and health said ``ok``. The node, the middleware and the hooks now
refuse to be made, with the variable in the message; a bad value appearing later (an
in-process change, a flags file edited wrongly) still keeps the last good configuration.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from langgraph.store.memory import InMemoryStore

from agent_history import (
    AgentNode,
    ChatHistory,
    ConfigError,
    HistoryHooks,
    HistoryMode,
    HistoryToggles,
)
from agent_history.middleware import HistoryMiddleware
from agent_history.testing import RecordingChatModel
from tests.support.agent_graphs import build_graph, new_thread, telegram_callback

PREFIX = "ORCHEO_GRAPH_CHAT_HISTORY_"

SURFACES: dict[str, Callable[[], Any]] = {
    "AgentNode": lambda: AgentNode(RecordingChatModel(), use_graph_chat_history=True),
    "HistoryMiddleware": lambda: HistoryMiddleware(),
    "HistoryHooks": lambda: HistoryHooks(),
}


@pytest.fixture
def rolled_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The fleet-wide off switch, in the environment and in the flags file."""
    flags = tmp_path / "flags.json"
    flags.write_text(json.dumps({"mode": "off"}))
    monkeypatch.setenv(PREFIX + "MODE", "off")
    monkeypatch.setenv(PREFIX + "FLAGS_FILE", str(flags))
    return flags


@pytest.mark.parametrize("surface", SURFACES)
@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("TRIGGER_ERROR_RATE", "10%"),
        ("BREAKER_WINDOW_SECONDS", "nan"),
        ("READ_TIMEOUT_SECONDS", "-1"),
        ("BREAKER_MIN_CALLS", "zero"),
    ],
)
def test_one_bad_switch_beside_a_rollback_fails_the_start_naming_it(
    surface: str,
    variable: str,
    value: str,
    rolled_back: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(PREFIX + variable, value)
    with pytest.raises(ConfigError) as failed:
        SURFACES[surface]()
    assert failed.value.variable == PREFIX + variable
    assert str(failed.value).startswith(f"{PREFIX}{variable}: ")


@pytest.mark.parametrize("surface", SURFACES)
def test_a_bad_flags_file_at_start_fails_it_naming_the_file(
    surface: str, rolled_back: Path
) -> None:
    rolled_back.write_text('{"mode": "of"}')
    with pytest.raises(ConfigError) as failed:
        SURFACES[surface]()
    assert failed.value.variable == PREFIX + "FLAGS_FILE"
    assert str(rolled_back) in failed.value.problem


def test_with_every_switch_valid_the_rollback_holds(rolled_back: Path) -> None:
    store, model = InMemoryStore(), RecordingChatModel()
    graph = build_graph(AgentNode(model, use_graph_chat_history=True), store)
    graph.invoke(telegram_callback(7, "hi", uuid.uuid4().hex), new_thread())
    assert [str(m.content) for m in model.calls[0]] == ["hi"]
    assert ChatHistory(store).count("telegram:7") == 0  # off: nothing stored


def test_a_node_without_history_ignores_the_switches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PREFIX + "MODE", "sideways")
    AgentNode(RecordingChatModel(), use_graph_chat_history=False)
    HistoryMiddleware(use_graph_chat_history=False)


def test_a_bad_value_after_the_start_keeps_the_last_good_configuration(
    rolled_back: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, model = InMemoryStore(), RecordingChatModel()
    graph = build_graph(AgentNode(model, use_graph_chat_history=True), store)
    monkeypatch.setenv(PREFIX + "TRIGGER_ERROR_RATE", "10%")  # changed in the process
    rolled_back.write_text("{not json")  # and the file edited wrongly
    graph.invoke(telegram_callback(7, "hi", uuid.uuid4().hex), new_thread())
    assert ChatHistory(store).count("telegram:7") == 0  # still off


@pytest.mark.parametrize("goes_bad", ["environment", "flags file", "both"])
def test_a_switch_that_goes_bad_before_the_first_run_keeps_the_checked_rollback(
    goes_bad: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A worker starts during a rollback (checked: off), and before its first request the
    # environment or the file is edited wrongly. The configuration checked at start is the
    # last good one: the defaults (read_write) would undo the rollback.
    flags = tmp_path / "flags.json"
    flags.write_text(json.dumps({"mode": "off"}))
    monkeypatch.setenv(PREFIX + "FLAGS_FILE", str(flags))
    if goes_bad != "flags file":
        monkeypatch.setenv(PREFIX + "MODE", "off")
    store, model = InMemoryStore(), RecordingChatModel()
    toggles = HistoryToggles()  # a process that has not run anything yet
    graph = build_graph(AgentNode(model, use_graph_chat_history=True, toggles=toggles), store)
    if goes_bad != "flags file":
        monkeypatch.setenv(PREFIX + "TRIGGER_ERROR_RATE", "10%")
    if goes_bad != "environment":
        flags.write_text('{"mode": "of"}')
    graph.invoke(telegram_callback(7, "hi", uuid.uuid4().hex), new_thread())
    assert [str(m.content) for m in model.calls[0]] == ["hi"]  # answered, in memory
    assert ChatHistory(store).count("telegram:7") == 0  # still off: nothing stored
    assert toggles.current().mode.value == "off"


def test_a_flags_file_that_does_not_exist_yet_is_created_when_needed(
    rolled_back: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workers may start before the file exists (it is written when a switch is needed)."""
    rolled_back.unlink()
    monkeypatch.delenv(PREFIX + "MODE")
    store, model = InMemoryStore(), RecordingChatModel()
    graph = build_graph(AgentNode(model, use_graph_chat_history=True), store)
    graph.invoke(telegram_callback(7, "one", uuid.uuid4().hex), new_thread())
    assert ChatHistory(store).count("telegram:7") == 2  # no flags: read_write
    rolled_back.write_text(json.dumps({"mode": "off"}))
    graph.invoke(telegram_callback(7, "two", uuid.uuid4().hex), new_thread())
    assert ChatHistory(store).count("telegram:7") == 2  # the file, once written, holds


def test_the_flags_file_in_force_is_the_one_checked(tmp_path: Path) -> None:
    """A file given in code replaces the environment's: it is the one read at start."""
    bad, good = tmp_path / "bad.json", tmp_path / "good.json"
    bad.write_text('{"mode": "of"}')
    good.write_text('{"mode": "off"}')
    with pytest.raises(ConfigError) as failed:
        AgentNode(
            RecordingChatModel(),
            use_graph_chat_history=True,
            toggles=HistoryToggles(env={}, flags_file=str(bad)),
        )
    assert failed.value.variable == PREFIX + "FLAGS_FILE" and str(bad) in failed.value.problem

    toggles = HistoryToggles(env={PREFIX + "FLAGS_FILE": str(bad)}, flags_file=str(good))
    AgentNode(RecordingChatModel(), use_graph_chat_history=True, toggles=toggles)
    assert toggles.current().mode.value == "off"


def test_a_link_to_a_flags_file_not_written_yet_lets_the_worker_start(tmp_path: Path) -> None:
    link = tmp_path / "flags.json"
    link.symlink_to(tmp_path / "mounted" / "flags.json")
    toggles = HistoryToggles(env={PREFIX + "FLAGS_FILE": str(link)})
    AgentNode(RecordingChatModel(), use_graph_chat_history=True, toggles=toggles)


def test_a_loop_of_links_as_flags_file_fails_the_start(tmp_path: Path) -> None:
    link = tmp_path / "flags.json"
    link.symlink_to(tmp_path / "other.json")
    (tmp_path / "other.json").symlink_to(link)
    toggles = HistoryToggles(env={PREFIX + "FLAGS_FILE": str(link)})
    with pytest.raises(ConfigError) as failed:
        AgentNode(RecordingChatModel(), use_graph_chat_history=True, toggles=toggles)
    assert "Too many levels of symbolic links" in failed.value.problem


@pytest.mark.parametrize("surface", SURFACES)
@pytest.mark.parametrize("name", ["flags.yaml", "flags", "flags.json.bak"])
def test_a_flags_file_named_in_no_format_it_is_read_in_fails_the_start(
    surface: str, name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only ``.json`` and ``.toml`` say how the file is read. A path in another format
    used to pass the start while the file was not there yet; a YAML ``mode: off`` written
    there later was then refused at run time, and the rollback ignored with a warning."""
    monkeypatch.setenv(PREFIX + "FLAGS_FILE", str(tmp_path / name))
    with pytest.raises(ConfigError) as failed:
        SURFACES[surface]()
    assert failed.value.variable == PREFIX + "FLAGS_FILE"
    assert failed.value.problem.startswith("must end in .json or .toml (got ")
    with pytest.raises(ConfigError) as in_code:
        HistoryToggles(flags_file=tmp_path / name)
    assert in_code.value.variable == "HistoryToggles.flags_file"


def test_a_flags_file_is_read_whatever_the_case_of_its_extension(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flags = tmp_path / "FLAGS.JSON"
    monkeypatch.setenv(PREFIX + "FLAGS_FILE", str(flags))  # not there yet: the start holds
    toggles = HistoryToggles()
    toggles.check()
    flags.write_text(json.dumps({"mode": "off"}))
    assert toggles.current().mode is HistoryMode.OFF
