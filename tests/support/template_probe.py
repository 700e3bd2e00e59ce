"""Resolve key candidates in a child process whose memory is capped; report each outcome.

Usage: ``python -m tests.support.template_probe HEADROOM_MB [keys|node]`` with a JSON list
of ``[candidate, state]`` pairs on stdin; prints one JSON object per pair. ``keys`` (the
default) calls `resolve_history_key`; ``node`` runs a graph whose `AgentNode` has the
candidate as its only key candidate, on the state as a Telegram callback. The address space
is capped at the size after start-up plus ``HEADROOM_MB``, so a template that tries to
build a huge value fails with ``MemoryError`` (reported as such) instead of exhausting
the machine; the parent's timeout proves that every render terminates.
"""

from __future__ import annotations

import json
import resource
import sys
from typing import Any


def _address_space_bytes() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("VmSize not found")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def probe(candidate: str, state: Any) -> dict[str, Any]:
    from agent_history.keys import resolve_history_key

    before = _peak_rss_mb()
    try:
        resolution = resolve_history_key(state, candidates=[candidate])
    except MemoryError:
        return {"outcome": "memory_error", "peak_growth_mb": _peak_rss_mb() - before}
    if resolution.key is not None:
        return {"outcome": "key", "length": len(resolution.key)}
    rejection = resolution.rejected[0]
    return {
        "outcome": "rejected",
        "reason": rejection.reason.value,
        "detail": rejection.detail,
        "peak_growth_mb": _peak_rss_mb() - before,
    }


def probe_node(candidate: str, state: Any) -> dict[str, Any]:
    from langgraph.store.memory import InMemoryStore

    from agent_history import AgentNode
    from agent_history.testing import RecordingChatModel
    from tests.support.agent_graphs import build_graph, new_thread, toggles

    node = AgentNode(
        RecordingChatModel(),
        use_graph_chat_history=True,
        history_key_candidates=[candidate],
        toggles=toggles(),
    )
    graph = build_graph(node, InMemoryStore())
    before = _peak_rss_mb()
    try:
        out = graph.invoke(state, new_thread())
    except BaseException as exc:
        return {"outcome": "raised", "error": type(exc).__name__}
    return {
        "outcome": "answered",
        "answer": str(out["messages"][-1].content),
        "peak_growth_mb": _peak_rss_mb() - before,
    }


def main(headroom_mb: int, mode: str = "keys") -> None:
    # Import (and warm up) everything before the cap is set.
    run = probe_node if mode == "node" else probe
    run("warm-up", {"inputs": {"message": "warm-up"}})

    pairs = json.load(sys.stdin)
    limit = _address_space_bytes() + headroom_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    for candidate, state in pairs:
        print(json.dumps(run(candidate, state)), flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), *sys.argv[2:3])
