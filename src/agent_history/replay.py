"""Replaying recorded callbacks through a workflow and checking the rollout checklist."""

from __future__ import annotations

import importlib
import json
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from langgraph.graph import START, StateGraph
from langgraph.store.base import BaseStore

from agent_history.errors import AgentHistoryError
from agent_history.history import ChatHistory
from agent_history.node import REPORT_LISTENERS, AgentNode, AgentState, HistoryReport
from agent_history.offline_model import RecordingChatModel

__all__ = [
    "SCRATCH_PREFIX",
    "NotAGraph",
    "ReplayCheck",
    "ReplayReport",
    "load_graph",
    "read_records",
    "reference_graph",
    "replay",
    "scratch_namespace",
]

SCRATCH_PREFIX = "agent_history_replay"


def scratch_namespace() -> tuple[str, ...]:
    """A fresh namespace for one replay, so replays never write into production history
    nor pile up in one another."""
    return (SCRATCH_PREFIX, "r" + uuid.uuid4().hex[:12])


def reference_graph(
    store: BaseStore, *, max_messages: int = 30, namespace: Sequence[str] = ("agent_chat_history",)
) -> Any:
    """The reference workflow: one `AgentNode` with history on and an offline model."""
    builder = StateGraph(AgentState)
    node = AgentNode(
        RecordingChatModel(),
        name="agent",
        use_graph_chat_history=True,
        max_messages=max_messages,
        history_namespace=list(namespace),
    )
    builder.add_node("agent", node)
    builder.add_edge(START, "agent")
    return builder.compile(store=store)


class NotAGraph(AgentHistoryError, TypeError):
    """What ``--graph`` names is neither a graph nor a factory that builds one."""


def load_graph(spec: str) -> Callable[[BaseStore], Any]:
    """Load ``module:attribute``: a compiled graph, a `StateGraph`, or a callable taking
    the store and returning a compiled graph."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"--graph must look like module:attribute (got {spec!r})")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(
            f"--graph {spec}: cannot import {module_name} ({exc}); run from the directory "
            "that holds it, or add that directory to PYTHONPATH"
        ) from None
    try:
        target = getattr(module, attribute)
    except AttributeError:
        raise ValueError(f"--graph {spec}: {module_name} has no attribute {attribute}") from None
    if isinstance(target, StateGraph):
        return lambda store: target.compile(store=store)
    if hasattr(target, "invoke") and hasattr(target, "get_graph"):
        return lambda store: target
    if callable(target):
        return target  # type: ignore[no-any-return]
    raise NotAGraph(f"{spec} is neither a graph nor a graph factory")


def read_records(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    """Parse JSONL callbacks: each line holds ``inputs``/``results`` (and optional ``config``)."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"line {number}: invalid JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise ValueError(f"line {number}: expected an object")
        yield record


@dataclass(frozen=True, slots=True)
class ReplayCheck:
    """One item of the validation checklist."""

    name: str
    ok: bool
    detail: str


@dataclass(slots=True)
class ReplayReport:
    """What a replay did and whether the checklist holds."""

    runs: int = 0
    errors: list[str] = field(default_factory=list)
    reports: list[HistoryReport] = field(default_factory=list)
    """Every pass of every run (an agent in a tool loop makes several per run)."""
    by_run: list[list[HistoryReport]] = field(default_factory=list)
    """The passes of each run, in order."""
    checks: list[ReplayCheck] = field(default_factory=list)
    identities: dict[str, int] = field(default_factory=dict)
    """Runs per resolved key."""

    @property
    def ok(self) -> bool:
        """True when every check holds."""
        return all(check.ok for check in self.checks)

    @property
    def keyless(self) -> list[HistoryReport]:
        """The first pass of each run that had no valid key (and ran in memory)."""
        return [
            passes[0]
            for passes in self.by_run
            if passes
            and all(r.key is None for r in passes)
            and any(KEYLESS & set(r.fallbacks) for r in passes)
        ]


KEYLESS = frozenset({"no_valid_key", "breaker_open"})
"""Fallback reasons of a pass without a key that say why: none resolved (a pass cut off
by the open breaker resolves its key too)."""


STORE_FAILURES = frozenset(
    {"no_store", "read_failed", "read_timeout", "write_failed", "write_timeout", "breaker_open"}
)
"""Fallback reasons of a run that the store (not the run's input) caused."""


def replay(
    records: Iterable[dict[str, Any]],
    store: BaseStore,
    graph_factory: Callable[[BaseStore], Any] | None = None,
    *,
    max_messages: int = 30,
    namespace: Sequence[str] = ("agent_chat_history",),
) -> ReplayReport:
    """Run every record as its own graph run (own thread id) and check the playbook:

    - continuity: every later run of an identity read the earlier turns;
    - degradation: runs without a valid key completed, in memory;
    - window: no payload exceeded ``max_messages``;
    - durability: the store holds every turn the runs appended.

    ``namespace`` is where the reference workflow stores history, and where the
    durability check looks (a ``graph_factory``'s graph must store there too).
    """
    graph = (
        _built(graph_factory, store)
        if graph_factory is not None
        else reference_graph(store, max_messages=max_messages, namespace=namespace)
    )
    report = ReplayReport()
    REPORT_LISTENERS.append(report.reports.append)
    try:
        for record in records:
            report.runs += 1
            state = {k: v for k, v in record.items() if k in ("inputs", "results", "messages")}
            config = dict(record.get("config") or {})
            config.setdefault("configurable", {}).setdefault("thread_id", uuid.uuid4().hex)
            first = len(report.reports)
            try:
                graph.invoke(state, config)
            except Exception as exc:
                report.errors.append(f"run {report.runs}: {type(exc).__name__}")
            report.by_run.append(report.reports[first:])
    finally:
        REPORT_LISTENERS.remove(report.reports.append)
    _check(report, store, namespace)
    return report


def _built(factory: Callable[[BaseStore], Any], store: BaseStore) -> Any:
    """The graph ``factory`` builds for ``store``.

    Raises:
        NotAGraph: the factory failed, or what it returned cannot be invoked.
    """
    try:
        graph = factory(store)
    except Exception as exc:
        raise NotAGraph(
            f"it is not a graph, and calling it with the store failed ({type(exc).__name__})"
        ) from None
    if not callable(getattr(graph, "invoke", None)):
        raise NotAGraph(
            f"calling it with the store returned {type(graph).__name__}, not a compiled graph"
        )
    return graph


def _check(report: ReplayReport, store: BaseStore, namespace: Sequence[str]) -> None:
    if report.runs == 0:  # every check below would hold on nothing
        report.checks.append(ReplayCheck("callbacks replayed", False, "the file holds none"))
    # A run's identity is its first pass with a key; a later run of it must have read the
    # earlier runs' turns when it began (its first pass).
    by_key: dict[str, list[HistoryReport]] = defaultdict(list)
    for passes in report.by_run:
        first = next((r for r in passes if r.key), None)
        if first is not None:
            by_key[str(first.key)].append(first)
    report.identities = {key: len(items) for key, items in by_key.items()}
    broken = [k for k, items in by_key.items() if any(r.stored_read == 0 for r in items[1:])]
    report.checks.append(
        ReplayCheck(
            "continuity per identity",
            not broken,
            f"{len(by_key)} identities"
            + (f"; no earlier turns for {', '.join(broken)}" if broken else ""),
        )
    )
    keyless = report.keyless
    report.checks.append(
        ReplayCheck(
            "unresolved or invalid keys degrade without a crash",
            not report.errors and all(report.by_run),
            f"{len(keyless)} runs without a valid key ran in memory; {len(report.errors)} crashed",
        )
    )
    over = [r for r in report.reports if r.payload_messages > r.max_messages]
    report.checks.append(
        ReplayCheck("payload <= max_messages", not over, f"{len(over)} payloads over the window")
    )
    history = ChatHistory(store, namespace=tuple(namespace))
    appended: Counter[str] = Counter()
    for item in report.reports:
        if item.key:
            appended[item.key] += item.appended
    stored = {key: history.count(key) for key in appended}  # one read per conversation
    missing = [key for key, turns in appended.items() if stored[key] < turns]
    # A run that fell back to memory for the store's sake stored nothing: the store did
    # not keep its turns (a read-only replica, a store down, an open breaker).
    failures = Counter(
        reason for r in report.reports for reason in r.fallbacks if reason in STORE_FAILURES
    )
    report.checks.append(
        ReplayCheck(
            "the store keeps every turn",
            not missing and not failures,
            f"{sum(r.appended for r in report.reports)} turns appended"
            + (f"; missing in {', '.join(missing)}" if missing else "")
            + (
                "; store failures: " + ", ".join(f"{n}x {why}" for why, n in failures.items())
                if failures
                else ""
            ),
        )
    )
