"""Hostile key templates are rejected, run no code, and render in bounded memory."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from langgraph.store.base import BaseStore

from agent_history import AgentNode, HistoryReport
from agent_history.errors import InvalidArgument
from agent_history.history import ChatHistory
from agent_history.keys import resolve_history_key
from agent_history.settings import HistorySettings
from agent_history.stores import create_graph_store_sync
from agent_history.testing import RecordingChatModel
from tests.reliability.conftest import Record
from tests.support.agent_graphs import build_graph, new_thread, telegram_callback, toggles

REPO = Path(__file__).resolve().parents[2]
PROBE_TIMEOUT = 120.0  # generous: only a runaway render gets anywhere near it
PROBE_HEADROOM_MB = 512
PEAK_GROWTH_LIMIT_MB = 64.0  # a key is at most 4096 characters; kilobytes would do

EXECUTED: list[str] = []
"""Module-level flag: anything a template manages to run or touch lands here."""


def flip(*args: Any, **kwargs: Any) -> str:
    """A function a template would have to call to flip the flag."""
    EXECUTED.append("flip() called")
    return "flipped"


class Sentinel:
    """Records every method call and every attribute access a template could make.

    Only the library's own state introspection (``model_dump`` lookup, ``__dict__``,
    ``__class__`` for isinstance) is exempt: it inspects state, it runs nothing.
    """

    _EXEMPT = frozenset({"model_dump", "__dict__", "__class__"})

    def __init__(self) -> None:
        self.secret = "sentinel-attribute"

    def __getattribute__(self, name: str) -> Any:
        if name not in Sentinel._EXEMPT:
            EXECUTED.append(f"getattr {name}")
        return object.__getattribute__(self, name)

    def __call__(self, *args: Any, **kwargs: Any) -> str:
        EXECUTED.append("call")
        return "called"

    def __str__(self) -> str:
        EXECUTED.append("str")
        return "sentinel"

    def __repr__(self) -> str:
        EXECUTED.append("repr")
        return "sentinel"

    def __format__(self, spec: str) -> str:
        EXECUTED.append("format")
        return "sentinel"

    def __iter__(self) -> Any:
        EXECUTED.append("iter")
        return iter(())

    def __getitem__(self, item: Any) -> Any:
        EXECUTED.append("getitem")
        return "item"

    def __len__(self) -> int:
        EXECUTED.append("len")
        return 0

    def __eq__(self, other: object) -> bool:
        EXECUTED.append("eq")
        return False

    __hash__ = object.__hash__


ONE_MB = 1024 * 1024
# The abuse named by the tracker: each must be rejected as render_error or too_long.
ABUSE: dict[str, str] = {
    "mro": "{{ ''.__class__.__mro__ }}",
    "subclasses": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "cycler_globals": "{{ cycler.__init__.__globals__ }}",
    "config_class": "{{ config.__class__ }}",
    "range_loop": "{% for i in range(10**9) %}x{% endfor %}",
    "nested_loops": "{% for i in range(10**5) %}{% for j in range(10**5) %}x{% endfor %}{% endfor %}",
    "string_multiply": "{{ 'a' * 10**9 }}",
    "power": "{{ 10**10**10 }}",
    "lipsum": "{{ lipsum(10**6) }}",
    "template_1mb": "{{ inputs.x }}" + "y" * ONE_MB,
    "literal_1mb": "k" * ONE_MB,
    "expression_1mb": "{{ '" + "z" * ONE_MB + "' }}",
}
# More ways in; these must be rejected for some reason and run nothing.
MORE_ABUSE: dict[str, str] = {
    "attr_filter": "{{ config | attr('__class__') }}",
    "concat_dunder_item": "{{ config['__cla' ~ 'ss__'] }}",
    "sentinel_call": "{{ results.sentinel() }}",
    "sentinel_str": "{{ results.sentinel }}",
    "flip_call": "{{ results.flip() }}",
    "flip_ref": "x{{ results.flip }}",
    "set_block": "{% set x = results.flip %}{{ x }}",
    "macro": "{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}",
    "include": "{% include '/etc/passwd' %}",
    "import": "{% import 'os' as os %}",
    "namespace_call": "{{ namespace(a=1) }}",
    "format_filter": "{{ '%s' | format(config) }}",
    "map_filter": "{{ results | map('upper') | list }}",
    "self_ref": "{{ self }}",
    "dict_method": "{{ config.configurable.items }}",
    "str_method": "{{ 'a'.join }}",
    "unclosed": "{{ results.sentinel",
}

# Plain data held by an object in state is copied out of its ``__dict__`` before rendering:
# a template reads the copy (a valid key here), and the object's code never runs.
DATA_READS: dict[str, str] = {
    "sentinel_attr": "{{ results.sentinel.secret }}",
    "sentinel_item": "{{ results.sentinel['secret'] }}",
    "config_sentinel": "{{ config.configurable.sentinel.secret }}",
    "inputs_sentinel": "{{ inputs.sentinel.secret }}",
}


def _state() -> dict[str, Any]:
    return {
        "inputs": {"message": {"text": "hello"}, "sentinel": Sentinel(), "x": "v"},
        "results": {
            "sentinel": Sentinel(),
            "flip": flip,
            "telegram_events_parser": {"chat_id": 77},
        },
    }


def _config() -> dict[str, Any]:
    return {"configurable": {"thread_id": "t", "sentinel": Sentinel(), "flip": flip}}


@pytest.fixture(autouse=True)
def _fresh_flag() -> None:
    EXECUTED.clear()


def test_sentinel_really_flips_when_touched() -> None:
    # The detector works: direct use of the sentinel and of flip() is recorded.
    sentinel = Sentinel()
    assert sentinel.secret == "sentinel-attribute"
    str(sentinel)
    flip()
    assert EXECUTED == ["getattr secret", "str", "flip() called"]


@pytest.mark.parametrize("name", sorted(ABUSE))
def test_named_abuse_is_rejected_as_render_error_or_too_long(name: str) -> None:
    template = ABUSE[name]
    as_candidate = resolve_history_key(_state(), _config(), candidates=[template])
    assert as_candidate.key is None
    assert [r.reason.value for r in as_candidate.rejected] in (["render_error"], ["too_long"])
    # The same text as the key template applied to a valid candidate.
    as_template = resolve_history_key(
        _state(), _config(), candidates=["ok-key"], key_template=template
    )
    assert as_template.key is None
    assert [r.reason.value for r in as_template.rejected] in (["render_error"], ["too_long"])
    assert EXECUTED == []


@pytest.mark.parametrize("name", sorted(MORE_ABUSE))
def test_more_abuse_is_rejected_and_runs_nothing(name: str) -> None:
    resolution = resolve_history_key(_state(), _config(), candidates=[MORE_ABUSE[name]])
    assert resolution.key is None, resolution.key
    assert len(resolution.rejected) == 1
    assert EXECUTED == []


@pytest.mark.parametrize("name", sorted(DATA_READS))
def test_objects_in_state_are_read_as_copied_data_only(name: str) -> None:
    resolution = resolve_history_key(_state(), _config(), candidates=[DATA_READS[name]])
    assert resolution.key == "sentinel-attribute"
    assert EXECUTED == []


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Any:
    settings = HistorySettings(
        graph_store_backend="sqlite", graph_store_sqlite_path=tmp_path / "store.sqlite"
    )
    with create_graph_store_sync(settings) as store:
        yield store


def test_node_with_abusive_templates_answers_and_stores_nothing_under_them(
    sqlite_store: BaseStore, record_figures: Record
) -> None:
    """A template the sandbox refuses to compile is refused when the node is made, naming
    the setting; one that compiles but cannot render sends each run in-memory."""
    templates = {**ABUSE, **MORE_ABUSE}
    refused = runs = 0
    for name, template in templates.items():
        for setting in ("history_key_candidates", "history_key_template"):
            reports: list[HistoryReport] = []
            values: dict[str, Any] = (
                {setting: [template]}
                if setting == "history_key_candidates"
                else {setting: template}
            )
            try:
                node = AgentNode(
                    RecordingChatModel(),
                    use_graph_chat_history=True,
                    toggles=toggles(),
                    on_report=reports.append,
                    **values,
                )
            except InvalidArgument as exc:
                assert setting in str(exc), (name, str(exc))
                refused += 1
                continue
            state = {**_state(), **telegram_callback(77, f"hi {name}")}
            state["results"] = {**_state()["results"], **state["results"]}
            out = build_graph(node, sqlite_store).invoke(state, {**_config(), **new_thread()})
            assert out["messages"][-1].content == f"echo: hi {name}", name
            assert reports[-1].key is None and reports[-1].fallbacks == ("no_valid_key",), name
            runs += 1
    assert refused and runs  # both paths are taken
    assert EXECUTED == []
    assert list(ChatHistory(sqlite_store).keys()) == []
    record_figures(scenario="template_abuse", templates=len(templates), node_runs=runs)


def _probe(pairs: list[tuple[str, Any]], mode: str = "keys") -> list[dict[str, Any]]:
    """Resolve each candidate in a memory-capped child; the timeout proves termination."""
    completed = subprocess.run(
        [sys.executable, "-m", "tests.support.template_probe", str(PROBE_HEADROOM_MB), mode],
        input=json.dumps(pairs),
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=PROBE_TIMEOUT,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    return [json.loads(line) for line in completed.stdout.splitlines()]


def test_named_abuse_renders_in_bounded_memory() -> None:
    state = {"inputs": {"x": "v"}}
    outcomes = _probe([(template, state) for template in ABUSE.values()])
    assert len(outcomes) == len(ABUSE)
    for name, outcome in zip(ABUSE, outcomes, strict=True):
        assert outcome["outcome"] == "rejected", (name, outcome)
        assert outcome["reason"] in ("render_error", "too_long"), (name, outcome)
        assert outcome["detail"] != "MemoryError", (name, outcome)
        assert outcome["peak_growth_mb"] < PEAK_GROWTH_LIMIT_MB, (name, outcome)


def _replace_bomb(levels: int) -> str:
    # Each replace('', s) puts s between every character: the length grows ~11x a level.
    return "{{ 'aaaaaaaaaa'" + " | replace('', 'aaaaaaaaaa')" * levels + " }}"


def test_replace_bomb_detector_sees_small_bombs_rejected() -> None:
    # Three levels (~16 k characters) are cheap and rejected as too long: the probe works.
    [outcome] = _probe([(_replace_bomb(3), {})])
    assert outcome["outcome"] == "rejected" and outcome["reason"] == "too_long", outcome


def test_replace_filter_bomb_renders_in_bounded_memory() -> None:
    template = _replace_bomb(12)
    assert len(template) < 400
    [outcome] = _probe([(template, {})])
    # Each replace('', s) would grow the value ~11x: twelve levels are terabytes. The
    # bounded filter refuses before building anything too long for a key.
    assert outcome["outcome"] == "rejected" and outcome["reason"] == "too_long", outcome
    assert outcome["detail"] != "MemoryError", outcome
    assert outcome["peak_growth_mb"] < PEAK_GROWTH_LIMIT_MB, outcome


def test_replace_filter_bomb_in_a_node_still_answers() -> None:
    [outcome] = _probe([(_replace_bomb(12), telegram_callback(5, "hi"))], mode="node")
    assert outcome["outcome"] == "answered" and outcome["answer"] == "echo: hi", outcome
    assert outcome["peak_growth_mb"] < PEAK_GROWTH_LIMIT_MB, outcome


def test_node_probe_answers_with_a_harmless_template() -> None:
    # The node probe itself works: a benign candidate answers in bounded memory.
    [outcome] = _probe([("fixed-key", telegram_callback(5, "hi"))], mode="node")
    assert outcome["outcome"] == "answered" and outcome["answer"] == "echo: hi", outcome
    assert outcome["peak_growth_mb"] < PEAK_GROWTH_LIMIT_MB, outcome


def test_unique_conversation_keys_are_untouched_by_abuse(sqlite_store: BaseStore) -> None:
    # A valid run next to the abusive ones still works and stores under its own key.
    chat = int(uuid.uuid4().int % 10**9)
    graph = build_graph(
        AgentNode(RecordingChatModel(), use_graph_chat_history=True, toggles=toggles()),
        sqlite_store,
    )
    graph.invoke(telegram_callback(chat, "plain"), new_thread())
    assert [t.content for t in ChatHistory(sqlite_store).read(f"telegram:{chat}")] == [
        "plain",
        "echo: plain",
    ]
