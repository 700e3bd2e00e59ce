"""What durable history adds to one full `AgentNode` turn in a compiled LangGraph graph.

The model is the instant, offline `RecordingChatModel`, so the difference between a run
with ``use_graph_chat_history=True`` and one with ``False`` is the history's cost: key
resolution, toggles, the tail read, merging, and the append. The node keeps its history
under the run's own namespace (``history_namespace``), never the default one, so the
conversation of chat 42 it writes to is the benchmark's, not an application's.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from typing import Any

from langgraph.store.base import BaseStore

from agent_history.history import ChatHistory
from agent_history.testing import RecordingChatModel
from benchmarks.backends import BackendRun
from benchmarks.measure import quiet_gc, summarize
from benchmarks.modes import BenchConfig
from benchmarks.workload import synthetic_turns

__all__ = ["AGENT_KEY", "run_agent_overhead"]

AGENT_KEY = "telegram:42"


def _input(n: int) -> dict[str, Any]:
    """A Telegram callback with a new message (text and id) each time: a repeated one
    would be recognised as a re-delivery and append nothing."""
    message = {"chat_id": 42, "text": f"hi #{n}", "message_id": n}
    return {"inputs": {"platform": "telegram", "message": message}}


Log = Callable[[str], None]


def _graph(store: BaseStore, namespace: Sequence[str], *, history: bool, reports: list[Any]) -> Any:
    from langgraph.graph import START, StateGraph

    from agent_history import AgentNode, AgentState

    node = AgentNode(
        name="agent",
        model=RecordingChatModel(),
        use_graph_chat_history=history,
        history_namespace=namespace,
        max_messages=30,
        on_report=reports.append,
    )
    builder = StateGraph(AgentState)
    builder.add_node("agent", node)
    builder.add_edge(START, "agent")
    return builder.compile(store=store)


def run_agent_overhead(
    run: BackendRun, cfg: BenchConfig, log: Log
) -> tuple[list[dict[str, Any]], str | None]:
    """Rows of (backend, length) overheads, or no rows and the reason they were skipped."""
    try:
        from agent_history import AgentNode, AgentState  # noqa: F401
    except ImportError as exc:
        return [], f"AgentNode overhead skipped: {exc}"

    store, backend = run.store, run.name
    namespace = (*run.namespace, "agent_node")
    reports: list[Any] = []
    try:
        with_history = _graph(store, namespace, history=True, reports=reports)
        without = _graph(store, namespace, history=False, reports=[])
    except TypeError as exc:  # the node's constructor differs from the planned API
        return [], f"AgentNode overhead skipped: {exc}"
    history = ChatHistory(store, namespace=namespace)
    rows: list[dict[str, Any]] = []
    counter = itertools.count(1)
    for length in cfg.agent_lengths:

        def populate(length: int = length) -> None:
            history.delete(AGENT_KEY)
            history.append(AGENT_KEY, synthetic_turns(1, length, cfg.content_chars))

        populate()
        run.settle()
        on: list[int] = []
        off: list[int] = []
        rebuilds = 0
        with quiet_gc():
            # Alternate the two graphs so drift (caches, the OS) hits both alike.
            for i in range(cfg.warmup + cfg.agent_reps):
                # Each run with history appends 2 turns: rebuild (untimed) once the
                # conversation has outgrown its length by more than the growth limit.
                if history.count(AGENT_KEY) > length * (1 + cfg.growth_limit):
                    populate()
                    rebuilds += 1
                for graph, samples in ((without, off), (with_history, on)):
                    state = _input(next(counter))
                    t0 = time.perf_counter_ns()
                    graph.invoke(state)
                    elapsed = time.perf_counter_ns() - t0
                    if i >= cfg.warmup:
                        samples.append(elapsed)
        on_stats, off_stats = summarize(on), summarize(off)
        last = reports[-1] if reports else None
        row = {
            "backend": backend,
            "length": length,
            "length_after": history.count(AGENT_KEY),
            "rebuilds": rebuilds,
            "with_history": on_stats.as_dict(),
            "without_history": off_stats.as_dict(),
            "overhead_p50_ms": on_stats.p50_ms - off_stats.p50_ms,
            "overhead_mean_ms": on_stats.mean_ms - off_stats.mean_ms,
            # Proof the history really was used: turns read into the payload and appended.
            "stored_read": getattr(last, "stored_read", None),
            "appended": getattr(last, "appended", None),
            "fallbacks": list(getattr(last, "fallbacks", ()) or ()),
        }
        rows.append(row)
        log(
            f"[{backend}] AgentNode len {length:>6}: overhead p50 "
            f"{row['overhead_p50_ms']:.3f} ms (on {on_stats.p50_ms:.3f}, "
            f"off {off_stats.p50_ms:.3f}), read {row['stored_read']}, "
            f"appended {row['appended']}"
        )
    history.delete(AGENT_KEY)
    return rows, None
