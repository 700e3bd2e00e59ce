"""Every history setting of `AgentNode`, `HistoryMiddleware` and `HistoryHooks` is checked
when the surface is made, by type as well as range, with an error naming the parameter.

A value a pass cannot use must not get through: ``max_messages=30.0`` (a number read from
a JSON or YAML file) used to be accepted, after which every run lost its history with a
warning and the user never saw why; ``history_chunk_size=0`` or a reserved value field
made every run raise."""

from __future__ import annotations

import math
import uuid
import warnings
from typing import Any

import pytest
from langgraph.graph import START, StateGraph
from langgraph.store.memory import InMemoryStore

from agent_history import AgentNode, AgentState, ChatHistory, HistoryReport
from agent_history.middleware import HistoryMiddleware
from agent_history.prebuilt import HistoryHooks
from agent_history.testing import RecordingChatModel
from agent_history.toggles import HistoryToggles
from tests.support.agent_graphs import telegram_callback

SURFACES = ("node", "middleware", "hooks")

BAD = [
    ("max_messages", 30.0),
    ("max_messages", True),
    ("max_messages", "30"),
    ("max_messages", 0),
    ("max_tokens", 1.5),
    ("max_tokens", "100"),
    ("max_tokens", 0),
    ("history_chunk_size", 0),
    ("history_chunk_size", -5),
    ("history_chunk_size", 1.5),
    ("history_chunk_size", True),
    ("history_value_field", "id"),
    ("history_value_field", "type"),
    ("history_value_field", "ts"),
    ("history_value_field", ""),
    ("history_value_field", 5),
    ("write_attempts", 2.5),
    ("write_attempts", 0),
    ("write_attempts", "3"),
    ("write_backoff_seconds", -1),
    ("write_backoff_seconds", math.nan),
    ("write_backoff_seconds", math.inf),
    ("write_backoff_seconds", "0.1"),
    ("write_backoff_seconds", True),
    ("reset_command", 5),
    ("history_key_template", 5),
    # A string used to become one candidate per character: every chat shared the key "t".
    ("history_key_candidates", "telegram:{{ results.telegram_events_parser.chat_id }}"),
    ("history_key_candidates", {"telegram": "x"}),
    ("history_key_candidates", [42]),
    ("history_namespace", "myapp"),
    ("history_namespace", ["a.b"]),
    ("history_key_candidates", ["inputs.chat_id", None]),
    # Keys no run could ever have, or every chat would share: refused, not a warning per run.
    ("history_key_candidates", []),
    ("history_key_candidates", ["tenant-a:{chat_id}"]),  # Python's format field
    ("history_key_candidates", ["telegram:{ results.telegram_events_parser.chat_id }"]),
    ("history_key_candidates", ["{{ inputs.chat_id }"]),  # a syntax error
    ("history_key_candidates", ["{% for c in inputs %}{{ c }}{% endfor %}"]),
    ("history_key_candidates", [""]),
    ("history_key_candidates", ["line\nbreak"]),
    ("history_key_template", "tenant-a:{conversation_key}"),
    ("history_key_template", ""),
    ("summary_every", 1.5),
    ("summary_budget_seconds", "15"),
    ("summary_budget_seconds", 0),
    ("history_read_legacy", "yes"),
    ("use_graph_chat_history", "false"),
    ("on_report", "print"),
]


@pytest.mark.parametrize(
    ("name", "value"), [("system_prompt", 5), ("tools", "search"), ("tools", None)]
)
def test_the_nodes_own_settings_are_checked_when_it_is_made(name: str, value: Any) -> None:
    with pytest.raises(ValueError, match=name):
        AgentNode(RecordingChatModel(), **{name: value})


def _make(surface: str, model: Any = None, **settings: Any) -> Any:
    settings.setdefault("toggles", HistoryToggles(env={}))
    if surface == "node":
        settings.setdefault("use_graph_chat_history", True)
        return AgentNode(model or RecordingChatModel(), **settings)
    if surface == "middleware":
        return HistoryMiddleware(**settings)
    return HistoryHooks(**settings)


@pytest.mark.parametrize("surface", SURFACES)
@pytest.mark.parametrize(("name", "value"), BAD, ids=[f"{n}={v!r}" for n, v in BAD])
def test_a_setting_no_pass_could_use_is_refused_when_the_surface_is_made(
    surface: str, name: str, value: Any
) -> None:
    with pytest.raises(ValueError, match=name):
        _make(surface, **{name: value})


def _graph(surface: str, model: Any, store: InMemoryStore, **settings: Any) -> Any:
    if surface == "node":
        builder = StateGraph(AgentState)
        builder.add_node("agent", _make("node", model, **settings))
        builder.add_edge(START, "agent")
        return builder.compile(store=store)
    if surface == "middleware":
        from langchain.agents import create_agent

        return create_agent(model, middleware=[_make(surface, **settings)], store=store)
    from langgraph.prebuilt import create_react_agent

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # moved to langchain.agents; still shipped
        return create_react_agent(model, [], store=store, **_make(surface, **settings).hooks())


@pytest.mark.parametrize("surface", SURFACES)
def test_the_smallest_valid_settings_run_and_store_every_turn(surface: str) -> None:
    """The edges of every range are accepted and do what they say: one-turn chunks, a
    window of one message, one write attempt without backoff, a summary-free pass."""
    store, model, reports = InMemoryStore(), RecordingChatModel(), []
    settings: dict[str, Any] = {
        "history_chunk_size": 1,
        "max_messages": 1,
        "write_attempts": 1,
        "write_backoff_seconds": 0,
        "history_value_field": "text",
        "history_key_candidates": ["telegram:{{ results.telegram_events_parser.chat_id }}"],
        "on_report": reports.append,
    }
    graph = _graph(surface, model, store, **settings)
    for n in range(3):
        graph.invoke(
            telegram_callback(4, f"m{n}", message_id=n + 1),
            {"configurable": {"thread_id": uuid.uuid4().hex}},
        )
    history = ChatHistory(store, chunk_size=1, value_field="text")
    stored = [(t.role, t.content) for t in history.read("telegram:4")]
    assert stored == [
        ("user", "m0"), ("assistant", "echo: m0"),
        ("user", "m1"), ("assistant", "echo: m1"),
        ("user", "m2"), ("assistant", "echo: m2"),
    ]  # fmt: skip
    assert all(isinstance(r, HistoryReport) and r.fallbacks == () for r in reports)
    # A window of one message: the model saw only the message it answers.
    assert [[str(m.content) for m in call] for call in model.calls] == [["m0"], ["m1"], ["m2"]]


def test_numbers_and_flags_of_other_libraries_and_a_missing_prompt_are_accepted() -> None:
    """What a config loader or a data library hands over: numpy's integers, floats and
    bools are numbers and flags; a prompt or reset command read from a config that has
    none is None (no prompt, no reset command, the default summary prompt)."""
    import numpy as np

    store, model = InMemoryStore(), RecordingChatModel()
    node = AgentNode(
        model,
        use_graph_chat_history=np.bool_(True),
        history_read_legacy=np.bool_(False),
        max_messages=np.int64(2),
        write_attempts=np.int64(1),
        write_backoff_seconds=np.int64(0),
        summary_budget_seconds=np.float64(5),
        system_prompt=None,
        reset_command=None,
        summary_prompt=None,
        toggles=HistoryToggles(env={}),
    )
    builder = StateGraph(AgentState)
    builder.add_node("agent", node)
    builder.add_edge(START, "agent")
    graph = builder.compile(store=store)
    for n in range(2):
        graph.invoke(
            telegram_callback(8, f"m{n}", message_id=n + 1),
            {"configurable": {"thread_id": uuid.uuid4().hex}},
        )
    assert [[str(m.content) for m in call] for call in model.calls] == [
        ["m0"],
        ["echo: m0", "m1"],
    ]
    assert ChatHistory(store).count("telegram:8") == 4


@pytest.mark.parametrize("surface", SURFACES)
def test_a_dead_candidate_beside_working_ones_is_a_warning_not_a_refusal(
    surface: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A configuration that ran before (the later candidates served every run) still
    starts after an upgrade: its dead candidate is named in a warning. Only a list no run
    could use, or a format field (every chat in one conversation), is refused."""
    import logging

    from agent_history.history import arguments
    from agent_history.keys import DEFAULT_HISTORY_KEY_CANDIDATES

    arguments._warn_once.cache_clear()  # once per process: this test's own
    dead = ["{{ inputs.chat_id|int }}", "{{ inputs._id }}", "{{ x is defined }}"]
    with caplog.at_level(logging.WARNING, logger="agent_history"):
        _make(surface, history_key_candidates=[*dead, *DEFAULT_HISTORY_KEY_CANDIDATES])
    warned = [
        r.getMessage() for r in caplog.records if "history_key_candidate_unusable" in r.getMessage()
    ]
    assert len(warned) == 3 and "history_key_candidates[0]" in warned[0]
    with pytest.raises(ValueError, match=r"history_key_candidates\[0\].*no candidate could"):
        _make(surface, history_key_candidates=dead)
    with pytest.raises(ValueError, match="format field"):
        _make(surface, history_key_candidates=["x:{0}", *DEFAULT_HISTORY_KEY_CANDIDATES])
    _make(surface, history_key_template="single-conversation-app")  # a literal is a key


@pytest.mark.parametrize("surface", SURFACES)
@pytest.mark.parametrize("candidates", [[], ["{{ x|int }}"], ["tenant-a:{chat_id}"]])
def test_a_surface_with_history_off_does_not_check_its_key_candidates(
    surface: str, candidates: list[str]
) -> None:
    """An upgrade must not stop a node, middleware or hooks that never resolve a key."""
    _make(surface, use_graph_chat_history=False, history_key_candidates=candidates)


@pytest.mark.parametrize(
    "candidate", ["telegram:%(chat_id)s", "{chat_id|lower}", "{chat-id}", "tg:${chat_id}"]
)
def test_placeholders_of_other_template_languages_are_refused(candidate: str) -> None:
    with pytest.raises(ValueError, match="format field"):
        _make("node", history_key_candidates=[candidate, "telegram:{{ inputs.chat }}"])


def test_a_key_template_without_conversation_key_is_named_in_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import logging

    from agent_history.history import arguments

    arguments._warn_once.cache_clear()
    with caplog.at_level(logging.WARNING, logger="agent_history"):
        _make("middleware", history_key_template="tenant-{{ config.configurable.tenant }}")
    assert any("history_key_template_constant" in r.getMessage() for r in caplog.records)
