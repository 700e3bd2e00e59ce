"""The pattern matrix's machinery: the graphs LangGraph users write around `AgentNode`, a
callback script with re-deliveries, and an oracle for what the model must receive and
what must be stored.

The oracle is written independently of the library: it keeps the conversation as it
should be (the stored log per scope, and for a stable thread everything the thread
holds) and cuts windows with its own simple rule (whole tool units, the current
exchange always, the rest newest first, starting on a user message when one fits).
"""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langgraph.graph import END, START, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition

from agent_history import AgentNode, AgentState, HistoryReport
from agent_history.history import ChatHistory
from agent_history.settings import HistorySettings
from agent_history.stores import (
    create_checkpointer,
    create_checkpointer_sync,
    create_graph_store,
    create_graph_store_sync,
)
from agent_history.toggles import HistoryToggles
from tests.support.tool_models import WeatherModel, get_weather, signature

__all__ = ["PATTERNS", "SCRIPT", "Cell", "arun_cell", "check_pairing", "run_cell"]

PATTERNS = ("plain", "toolnode", "tools_in_node", "prebuilt")
SYSTEM = "You are a test."
# (text, channel message id); a repeated id is a re-delivered callback.
SCRIPT: tuple[tuple[str, int], ...] = (
    ("hello", 101),
    ("weather in Paris", 102),
    ("weather in Paris", 102),  # re-delivered at once
    ("weather in Rome", 103),
    ("weather in Paris", 102),  # re-delivered after a later turn
    ("bye", 104),
)


@dataclass(frozen=True)
class Cell:
    pattern: str
    thread: str  # "fresh" (a thread per callback) or "stable" (one per chat)
    ids: bool  # callbacks carry channel message ids
    scope: str  # "turns" or "full"
    max_messages: int

    @property
    def tools(self) -> bool:
        return self.pattern != "plain"


def build_graph(
    cell: Cell, model: WeatherModel, store: Any, saver: Any, namespace: tuple[str, ...]
) -> tuple[Any, list[HistoryReport]]:
    reports: list[HistoryReport] = []
    options: dict[str, Any] = {
        "system_prompt": SYSTEM,
        "max_messages": cell.max_messages,
        "use_graph_chat_history": True,
        "history_namespace": namespace,
        "history_scope": cell.scope,
        "toggles": HistoryToggles(env={}),
        "write_backoff_seconds": 0.0,
        "on_report": reports.append,
    }
    builder = StateGraph(AgentState)
    if cell.pattern == "plain":
        builder.add_node("agent", AgentNode(model, **options))
        builder.add_edge(START, "agent")
    elif cell.pattern == "toolnode":
        builder.add_node("agent", AgentNode(model.bind_tools([get_weather]), **options))
        builder.add_node("tools", ToolNode([get_weather]))
        builder.add_edge(START, "agent")
        builder.add_conditional_edges("agent", tools_condition)
        builder.add_edge("tools", "agent")
    elif cell.pattern == "tools_in_node":
        builder.add_node("agent", AgentNode(model, tools=[get_weather], **options))
        builder.add_edge(START, "agent")
    else:
        from langgraph.prebuilt import create_react_agent

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # moved to langchain.agents; still shipped
            agent = create_react_agent(model, [get_weather])
        builder.add_node("agent", AgentNode(agent, **options))
        builder.add_edge(START, "agent")
    if cell.pattern != "toolnode":
        builder.add_edge("agent", END)
    return builder.compile(store=store, checkpointer=saver), reports


def callback(chat: int, text: str, message_id: int | None) -> dict[str, Any]:
    message: dict[str, Any] = {"text": text, "chat_id": chat}
    if message_id is not None:
        message["message_id"] = message_id
    return {
        "inputs": {"message": message},
        "results": {"telegram_events_parser": {"chat_id": chat}},
    }


# --- the oracle ------------------------------------------------------------------------


@dataclass
class Expected:
    """What the conversation should look like, as signatures and ids."""

    log: list[tuple[tuple[Any, ...], str | None]] = field(default_factory=list)
    thread: list[tuple[Any, ...]] = field(default_factory=list)
    answered: set[int] = field(default_factory=set)


def _exchange(cell: Cell, text: str) -> list[tuple[Any, ...]]:
    city = text.removeprefix("weather in ") if text.startswith("weather in ") else None
    human = ("human", text, ())
    if cell.tools and city:
        call = ("ai", "", (("get_weather", (("city", city),)),))
        return [
            human,
            call,
            ("tool", f"sunny in {city}", ()),
            ("ai", f"final[{city}]: sunny in {city}", ()),
        ]
    return [human, ("ai", f"echo: {text}", ())]


def _in_scope(cell: Cell, sig: tuple[Any, ...]) -> bool:
    if cell.scope == "full":
        return True
    return sig[0] == "human" or (sig[0] == "ai" and not sig[2])


def _units(messages: list[tuple[Any, ...]]) -> list[list[tuple[Any, ...]]]:
    units: list[list[tuple[Any, ...]]] = []
    i = 0
    while i < len(messages):
        m = messages[i]
        if m[0] == "tool":
            i += 1
            continue
        if m[0] == "ai" and m[2]:
            j = i + 1
            results = []
            while j < len(messages) and messages[j][0] == "tool":
                results.append(messages[j])
                j += 1
            if len(results) >= len(m[2]):
                units.append([m, *results])
            i = j
            continue
        units.append([m])
        i += 1
    return units


def oracle_window(
    older: list[tuple[Any, ...]], current: list[tuple[Any, ...]], max_messages: int
) -> list[tuple[Any, ...]]:
    room = max_messages - len(current)
    kept: list[list[tuple[Any, ...]]] = []
    for unit in reversed(_units(older)):
        if sum(len(u) for u in kept) + len(unit) > room:
            break
        kept.insert(0, unit)
    flat = [m for unit in kept for m in unit]
    first = next((i for i, m in enumerate(flat) if m[0] == "human"), 0)
    return [("system", SYSTEM, ()), *flat[first:], *current]


def expected_calls(
    cell: Cell, exp: Expected, text: str, cid: int, redelivered: bool
) -> list[list[tuple[Any, ...]]]:
    """Every payload the model must receive in this run."""
    exchange = _exchange(cell, text)
    if cell.thread == "stable":
        older = list(exp.thread)
    else:
        tail = exp.log[-cell.max_messages :]
        if redelivered:
            ids = [mid for _, mid in tail]
            if str(cid) in ids:
                tail = tail[: ids.index(str(cid))]  # as of the re-delivered message
        older = [sig for sig, _ in tail]
    first = oracle_window(older, [exchange[0]], cell.max_messages)
    if len(exchange) == 2:
        return [first]
    if cell.pattern == "toolnode":
        return [first, oracle_window(older, exchange[:3], cell.max_messages)]
    return [first, [*first, *exchange[1:3]]]  # the agent inside the node loops itself


def advance(cell: Cell, exp: Expected, text: str, cid: int, redelivered: bool) -> None:
    """The conversation after the run."""
    exchange = _exchange(cell, text)
    if cell.thread == "stable" and redelivered and cell.ids:
        return  # the thread already answered it: nothing happens
    if cell.thread == "stable":
        exp.thread.extend(exchange)
    if redelivered and cell.ids:
        return  # stored by its first delivery
    scoped = [s for s in exchange if _in_scope(cell, s)]
    if not cell.ids and [s for s, _ in exp.log[-len(scoped) :]] == scoped:
        return  # an identical exchange without ids is stored once
    human_id = str(cid) if cell.ids else None
    exp.log.extend((s, human_id if s[0] == "human" else None) for s in scoped)
    if cell.ids:
        exp.answered.add(cid)


# --- checks ------------------------------------------------------------------------------


def check_pairing(payload: list[BaseMessage]) -> None:
    """No orphan tool result, no call without all its results, nothing between a call
    and its results."""
    i = 0
    while i < len(payload):
        m = payload[i]
        assert not isinstance(m, ToolMessage), f"orphan tool result at {i}"
        if isinstance(m, AIMessage) and m.tool_calls:
            wanted = {c["id"] for c in m.tool_calls}
            got = set()
            j = i + 1
            while j < len(payload) and isinstance(payload[j], ToolMessage):
                got.add(payload[j].tool_call_id)
                j += 1
            assert wanted <= got, f"unanswered tool call at {i}"
            i = j
            continue
        i += 1


def _sigs(messages: list[BaseMessage]) -> list[tuple[Any, ...]]:
    return [signature(m) for m in messages]


@dataclass
class Outcome:
    produced: dict[str, BaseMessage] = field(default_factory=dict)
    stored: list[BaseMessage] = field(default_factory=list)
    stored_ids: list[str | None] = field(default_factory=list)


def _check_run(
    cell: Cell,
    model: WeatherModel,
    before: int,
    exp: Expected,
    text: str,
    cid: int,
    redelivered: bool,
    result: Any,
) -> None:
    calls = model.calls[before:]
    if cell.thread == "stable" and redelivered and cell.ids:
        assert calls == [], "a re-delivery the thread already answered must not call the model"
        return
    wanted = expected_calls(cell, exp, text, cid, redelivered)
    assert [_sigs(c) for c in calls] == wanted, f"payloads of {text!r}"
    for payload in calls:
        check_pairing(payload)
        humans = [m for m in payload if isinstance(m, HumanMessage)]
        assert humans and humans[-1].content == text, "the newest user message is in the payload"
        assert isinstance(payload[0], SystemMessage)


def _collect(outcome: Outcome, result: Any) -> None:
    for message in result.get("messages", []):
        outcome.produced[message.id] = message


def finish(cell: Cell, exp: Expected, outcome: Outcome) -> None:
    assert [signature(m) for m in outcome.stored] == [s for s, _ in exp.log], "stored transcript"
    ids = [m.id for m in outcome.stored]
    assert len(set(ids)) == len(ids), "a message stored twice"
    assert all(ids), "every stored message has an id"
    for (_, human_id), message in zip(exp.log, outcome.stored, strict=True):
        if human_id is not None:
            assert message.id == human_id, "the channel id is the stored user message's id"
    for message in outcome.stored:
        assert message == outcome.produced[message.id], "stored == produced, every field"


def _plan(cell: Cell) -> Iterator[tuple[str, int, bool, dict[str, Any]]]:
    seen: set[int] = set()
    for text, cid in SCRIPT:
        redelivered = cid in seen
        seen.add(cid)
        yield text, cid, redelivered, {}


def _config(cell: Cell, stable_thread: str) -> dict[str, Any]:
    thread = stable_thread if cell.thread == "stable" else uuid.uuid4().hex
    # A plain LangGraph tool loop needs 4 steps; a node that re-adds its input loops on.
    return {"configurable": {"thread_id": thread}, "recursion_limit": 8}


def run_cell(cell: Cell, settings: HistorySettings) -> Outcome:
    model = WeatherModel()
    chat = uuid.uuid4().int % 10**9
    namespace = ("agent_chat_history", "m" + uuid.uuid4().hex[:10])
    exp, outcome = Expected(), Outcome()
    stable = uuid.uuid4().hex
    with create_graph_store_sync(settings) as store, create_checkpointer_sync(settings) as saver:
        graph, _ = build_graph(cell, model, store, saver, namespace)
        for text, cid, redelivered, _ in _plan(cell):
            before = len(model.calls)
            result = graph.invoke(
                callback(chat, text, cid if cell.ids else None), _config(cell, stable)
            )
            _check_run(cell, model, before, exp, text, cid, redelivered, result)
            _collect(outcome, result)
            advance(cell, exp, text, cid, redelivered)
        history = ChatHistory(store, namespace=namespace, scope=cell.scope)  # type: ignore[arg-type]
        outcome.stored = history.to_messages(list(history.read(f"telegram:{chat}")))
    finish(cell, exp, outcome)
    return outcome


async def arun_cell(cell: Cell, settings: HistorySettings) -> Outcome:
    model = WeatherModel()
    chat = uuid.uuid4().int % 10**9
    namespace = ("agent_chat_history", "m" + uuid.uuid4().hex[:10])
    exp, outcome = Expected(), Outcome()
    stable = uuid.uuid4().hex
    async with create_graph_store(settings) as store, create_checkpointer(settings) as saver:
        graph, _ = build_graph(cell, model, store, saver, namespace)
        for text, cid, redelivered, _ in _plan(cell):
            before = len(model.calls)
            result = await graph.ainvoke(
                callback(chat, text, cid if cell.ids else None), _config(cell, stable)
            )
            _check_run(cell, model, before, exp, text, cid, redelivered, result)
            _collect(outcome, result)
            advance(cell, exp, text, cid, redelivered)
        history = ChatHistory(store, namespace=namespace, scope=cell.scope)  # type: ignore[arg-type]
        turns = [t async for t in history.aread(f"telegram:{chat}")]
        outcome.stored = history.to_messages(turns)
    finish(cell, exp, outcome)
    return outcome
