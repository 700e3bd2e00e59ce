"""A cancelled async run stops: a cancellation that arrives just as a store call ends is
not lost.

``asyncio.wait_for`` on Python 3.11 returns the inner call's result when the caller is
cancelled in the same turn of the event loop as that call ends, and forgets the
cancellation. The history's store steps were wrapped in it, so a run cancelled by its
caller (a client that hung up, an ``asyncio.wait_for`` timeout around ``ainvoke``) often
went on: it called the model, stored the exchange and returned normally. The moment is
reached here without timing: the store itself schedules the cancellation while answering.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable
from typing import Any

import pytest
from langgraph.graph import START, StateGraph
from langgraph.store.base import BaseStore, Op, Result
from langgraph.store.memory import InMemoryStore

from agent_history import AgentNode, AgentState, ChatHistory
from agent_history.testing import RecordingChatModel
from agent_history.toggles import HistoryToggles
from tests.support.agent_graphs import telegram_callback


class CancelsItsCaller(BaseStore):
    """An in-memory store that, on its ``n``-th async call, cancels ``victim`` as it
    answers (the cancellation lands in the turn of the loop in which the call ends)."""

    def __init__(self, n: int) -> None:
        self.inner = InMemoryStore()
        self.n = n
        self.calls = 0
        self.victim: asyncio.Task[Any] | None = None

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        return self.inner.batch(ops)

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        self.calls += 1
        if self.calls == self.n and self.victim is not None:
            asyncio.get_running_loop().call_soon(self.victim.cancel)
        return self.inner.batch(ops)


def _graph(model: RecordingChatModel, store: BaseStore) -> Any:
    node = AgentNode(model, use_graph_chat_history=True, toggles=HistoryToggles(env={}))
    builder = StateGraph(AgentState)
    builder.add_node("agent", node)
    builder.add_edge(START, "agent")
    return builder.compile(store=store)


@pytest.mark.parametrize("call", [1, 2, 3, 4])
async def test_a_run_cancelled_as_a_store_call_ends_is_cancelled(call: int) -> None:
    """Cancelled as its window read, the append's read or either of the append's writes
    ends (the store calls 1-4 of a run here): the run raises `CancelledError`, and the
    conversation holds the whole exchange or none of it; the client's retry of the same
    message then leaves it exactly once."""
    store, model = CancelsItsCaller(call), RecordingChatModel()
    graph = _graph(model, store)
    run = asyncio.create_task(
        graph.ainvoke(
            telegram_callback(5, "hello", message_id=1),
            {"configurable": {"thread_id": uuid.uuid4().hex}},
        )
    )
    store.victim = run
    with pytest.raises(asyncio.CancelledError):
        await run
    assert store.calls >= call  # the cancellation was scheduled
    # It is delivered at the run's next await (asyncio interrupts nothing between two),
    # so the append may have been made: all of it, or none.
    stored = [t.content for t in ChatHistory(store.inner).read("telegram:5")]
    assert stored in ([], ["hello", "echo: hello"])

    store.victim = None
    again = await graph.ainvoke(
        telegram_callback(5, "hello", message_id=1),
        {"configurable": {"thread_id": uuid.uuid4().hex}},
    )
    assert again["messages"][-1].content == "echo: hello"
    assert [t.content for t in ChatHistory(store.inner).read("telegram:5")] == [
        "hello",
        "echo: hello",
    ]
