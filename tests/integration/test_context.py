"""Context that fits the model, through real graphs: token budgets on every payload, a
running summary of what fell out of the window (what the summary model is asked, what
is stored, what the model receives), toggles, failures and streaming."""

from __future__ import annotations

import itertools
import logging
import threading
import uuid
import warnings
from collections.abc import Iterable
from typing import Any

import pytest
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.messages.utils import count_tokens_approximately
from langchain_core.tools import BaseTool, tool
from langgraph.graph import START, StateGraph
from langgraph.prebuilt import ToolNode, create_react_agent, tools_condition
from langgraph.store.base import BaseStore, GetOp, Op, PutOp, Result
from langgraph.store.memory import InMemoryStore

from agent_history import METRICS, AgentNode, AgentState, HistoryReport
from agent_history import observability as obs
from agent_history.context import Summary, budget, summary_message, summary_request
from agent_history.history import ChatHistory
from agent_history.settings import HistorySettings
from agent_history.stores import create_graph_store, create_graph_store_sync
from agent_history.testing import RecordingChatModel
from agent_history.toggles import HistoryToggles
from tests.support.agent_graphs import build_graph, new_thread, telegram_callback
from tests.support.patterns import check_pairing
from tests.support.summarisers import FixedSummariser, request_parts
from tests.support.tool_models import WeatherModel

SYSTEM = "You are a test."
HEADING = "Summary of the earlier conversation:"


def chars(messages: list[BaseMessage]) -> int:
    """A known token counter: one token per character of content, plus 4 per message."""
    return sum(4 + len(str(m.content)) for m in messages)


def _texts(messages: Iterable[BaseMessage]) -> list[str]:
    return [str(m.content) for m in messages]


def _node(model: Any, reports: list[HistoryReport], **kwargs: Any) -> AgentNode:
    kwargs.setdefault("use_graph_chat_history", True)
    kwargs.setdefault("toggles", HistoryToggles(env={}))
    kwargs.setdefault("write_backoff_seconds", 0.0)
    kwargs.setdefault("system_prompt", SYSTEM)
    return AgentNode(model, on_report=reports.append, **kwargs)


def _chat() -> int:
    return uuid.uuid4().int % 10**9


# --- 200 turns with a running summary ---------------------------------------------------------


def _check_summary_run(
    model: RecordingChatModel,
    summariser: FixedSummariser,
    reports: list[HistoryReport],
    stored: list[BaseMessage],
    summary: Summary | None,
    every: int,
) -> None:
    assert len(stored) == 400, "the store keeps every message"
    # The last payload: the system prompt, the summary, the window (the newest 8 stored
    # messages that start on a user message, then the new one).
    last = model.calls[-1]
    assert last[0] == SystemMessage(SYSTEM, id=last[0].id)
    assert isinstance(last[1], SystemMessage)
    assert last[1].content == f"{HEADING}\nSUMMARY"
    assert _texts(last[2:]) == _texts(stored[390:399])
    assert all(not isinstance(m, SystemMessage) for m in last[2:])
    # Every summary request held the previous summary and the turns dropped since, only.
    written = [r.summary_written_seq for r in reports if r.summary_outcome == "written"]
    assert len(summariser.calls) == len(written) >= 38
    covered = 0
    for index, (request, upto) in enumerate(zip(summariser.calls, written, strict=True)):
        previous = "SUMMARY" if index else ""
        assert request == summary_request(previous, stored[covered:upto])
        assert every <= upto - covered <= every + 1
        covered = upto
    assert summary is not None
    assert (summary.covers_seq, summary.version, summary.text) == (covered, len(written), "SUMMARY")
    assert summary.turns == covered and summary.skipped == 0
    # Every payload after the first summary carries the summary it read, never more than
    # max_messages chat messages, and what the summary covers is never in the window.
    for report, payload in zip(reports, model.calls, strict=True):
        chat_messages = [m for m in payload if not isinstance(m, SystemMessage)]
        assert len(chat_messages) <= 10
        if report.summary_seq:
            assert payload[1].content == f"{HEADING}\nSUMMARY"
            ids = {m.id for m in stored[: report.summary_seq]}
            assert not any(m.id in ids for m in chat_messages)
            # Between the summary and the window, fewer than `every` turns are missing
            # (turns are summarised once `every` have fallen out of the window).
            first = next(i for i, m in enumerate(stored) if m.id == chat_messages[0].id) + 1
            assert first - report.summary_seq - 1 <= every - 2


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_200_turns_payload_is_system_summary_window(
    persistent_settings: HistorySettings, mode: str
) -> None:
    model, summariser, reports = RecordingChatModel(), FixedSummariser(), []
    node = _node(model, reports, max_messages=10, summary_model=summariser, summary_every=10)
    chat = _chat()
    key = f"telegram:{chat}"
    if mode == "sync":
        with create_graph_store_sync(persistent_settings) as store:
            graph = build_graph(node, store)
            for i in range(200):
                graph.invoke(telegram_callback(chat, f"m{i}", i + 1), new_thread())
            history = ChatHistory(store)
            stored = history.to_messages(list(history.read(key)))
            summary = history.summary(key)
    else:
        async with create_graph_store(persistent_settings) as store:
            graph = build_graph(node, store)
            for i in range(200):
                await graph.ainvoke(telegram_callback(chat, f"m{i}", i + 1), new_thread())
            history = ChatHistory(store)
            stored = history.to_messages([t async for t in history.aread(key)])
            summary = await history.asummary(key)
    _check_summary_run(model, summariser, reports, stored, summary, every=10)


def test_with_summary_every_2_nothing_falls_between_the_summary_and_the_window() -> None:
    store, reports = InMemoryStore(), []
    model, summariser = RecordingChatModel(), FixedSummariser()
    node = _node(model, reports, max_messages=6, summary_model=summariser, summary_every=2)
    graph = build_graph(node, store)
    chat = _chat()
    for i in range(30):
        graph.invoke(telegram_callback(chat, f"m{i}"), new_thread())
    history = ChatHistory(store)
    stored = history.to_messages(list(history.read(f"telegram:{chat}")))
    position = {m.id: seq for seq, m in enumerate(stored, start=1)}
    summarised = [(r, p) for r, p in zip(reports, model.calls, strict=True) if r.summary_seq]
    assert len(summarised) >= 25
    for report, payload in summarised:
        assert position[payload[2].id] == report.summary_seq + 1
    # Each update was sent exactly the turns that fell out since the previous one.
    written = [r.summary_written_seq for r in reports if r.summary_outcome == "written"]
    bounds = [0, *written]
    for request, (low, high) in zip(summariser.calls, itertools.pairwise(bounds), strict=True):
        assert request == summary_request("SUMMARY" if low else "", stored[low:high])


# --- a token budget on every payload ----------------------------------------------------------


def _weather_tool() -> BaseTool:
    served: set[str] = set()

    @tool("get_weather")
    def weather(city: str) -> str:
        """The weather in a city."""
        if city == "Atlantis" and city not in served:
            served.add(city)  # the first answer is far larger than the whole budget
            return "sunny in Atlantis " + "~" * 2000
        return f"sunny in {city}"

    return weather


def test_every_payload_fits_the_token_budget_even_with_an_oversized_tool_result(
    persistent_settings: HistorySettings,
) -> None:
    model, reports = WeatherModel(), []
    weather = _weather_tool()
    node = _node(
        model.bind_tools([weather]),
        reports,
        max_tokens=160,
        token_counter=chars,
        history_scope="full",
    )
    builder = StateGraph(AgentState)
    builder.add_node("agent", node)
    builder.add_node("tools", ToolNode([weather]))
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", tools_condition)
    builder.add_edge("tools", "agent")
    chat = _chat()
    script = ["hello", "weather in Paris", "weather in Atlantis", "weather in Rome", "bye"]
    with create_graph_store_sync(persistent_settings) as store:
        graph = builder.compile(store=store)
        for text in script:
            before = len(model.calls)
            graph.invoke(telegram_callback(chat, text), {**new_thread(), "recursion_limit": 12})
            for payload in model.calls[before:]:
                assert chars(payload) <= 160
                check_pairing(payload)
                humans = [m for m in payload if isinstance(m, HumanMessage)]
                assert humans[-1].content == text, "the newest user message survives"
        history = ChatHistory(store, scope="full")
        stored = history.to_messages(list(history.read(f"telegram:{chat}")))
    huge = next(m for m in stored if isinstance(m, ToolMessage) and len(str(m.content)) > 2000)
    call = next(m for m in stored if isinstance(m, AIMessage) and m.tool_calls and
                m.tool_calls[0]["id"] == huge.tool_call_id)  # fmt: skip
    for payload in model.calls:
        assert huge.id not in {m.id for m in payload}, "the oversized result is never sent"
        assert call.id not in {m.id for m in payload}, "its call is dropped with it"
    # Without its result the model asked again, got a small one and answered.
    assert "final[Atlantis]: sunny in Atlantis" in _texts(stored)
    assert [r.tokens_sent for r in reports] == [chars(p) for p in model.calls]
    assert all(0 < r.tokens_sent <= 160 for r in reports)
    assert any(r.tokens_dropped >= 2000 for r in reports)


def test_a_summary_counts_against_the_budget_and_yields_to_the_newest_user_message() -> None:
    store, reports = InMemoryStore(), []
    model, summariser = RecordingChatModel(), FixedSummariser(text="S" * 40)
    node = _node(model, reports, max_messages=4, summary_model=summariser, summary_every=2,
                 max_tokens=120, token_counter=chars)  # fmt: skip
    graph = build_graph(node, store)
    chat = _chat()
    for i in range(6):
        graph.invoke(telegram_callback(chat, f"m{i}"), new_thread())
    summary = ChatHistory(store).summary(f"telegram:{chat}")
    assert summary is not None and reports[-1].summary_seq > 0
    assert model.calls[-1][1] == summary_message(summary)
    assert all(r.tokens_sent <= 120 for r in reports)
    graph.invoke(telegram_callback(chat, "x" * 60), new_thread())
    # system 19 + summary 81 + the new message 64 is over 120: the summary stays out, and
    # what is left of the budget goes to the turns after it.
    assert reports[-1].summary_seq == 0
    payload = model.calls[-1]
    assert _texts(payload) == [SYSTEM, "echo: m5", "x" * 60]
    assert all(HEADING not in str(m.content) for m in payload)
    assert reports[-1].tokens_sent == chars(model.calls[-1]) <= 120
    assert reports[-1].tokens_dropped >= chars([summary_message(summary)])


def test_a_token_counter_that_fails_leaves_the_budget_approximate_and_the_run_whole(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tokenizer service that is down (or a chat model whose counting needs a package
    the application lacks) used to fail every run before the model was called, or after
    the answer was stored; the budget now holds by LangChain's approximate count."""
    calls = 0

    def down(messages: list[BaseMessage]) -> int:
        nonlocal calls
        calls += 1
        raise ConnectionError("tokenizer service down")

    monkeypatch.setattr(budget, "_warned_at", None)  # the process has not warned yet
    store, reports, model = InMemoryStore(), [], RecordingChatModel()
    node = _node(model, reports, max_messages=30, max_tokens=120, token_counter=down,
                 summary_model=FixedSummariser(), summary_every=2)  # fmt: skip
    graph = build_graph(node, store)
    chat = _chat()
    with caplog.at_level(logging.WARNING, logger="agent_history"):
        for i in range(8):
            out = graph.invoke(telegram_callback(chat, f"message {i} " + "w" * 80), new_thread())
            assert out["messages"][-1].content.startswith(f"echo: message {i}")
    assert calls > 0
    assert all(r.fallbacks == () and r.appended == 2 for r in reports)
    sent = [count_tokens_approximately(call) for call in model.calls]
    assert [r.tokens_sent for r in reports] == sent
    assert all(r.tokens_sent <= 120 for r in reports[1:])  # the first message alone is more
    assert ChatHistory(store).count(f"telegram:{chat}") == 16
    failed = [r.getMessage() for r in caplog.records if "token_counter_failed" in r.getMessage()]
    # Once in the eight runs (paced per process), naming the error class only.
    assert failed == ["event=token_counter_failed error=ConnectionError fallback=approximate"]
    assert not any("read_failed" in r.getMessage() for r in caplog.records)


# --- toggles, failures, resets ------------------------------------------------------------------


class KeyRecordingStore(BaseStore):
    """An in-memory store that records every item key it is asked to read or write."""

    def __init__(self, inner: BaseStore) -> None:
        self.inner = inner
        self.keys: list[str] = []

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        listed = list(ops)
        self.keys.extend(op.key for op in listed if isinstance(op, GetOp | PutOp))
        return self.inner.batch(listed)

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        return self.batch(ops)


def _with_summary(turns: int = 12) -> tuple[InMemoryStore, int, Summary]:
    """A conversation of ``turns`` callbacks whose summary covers its oldest turns."""
    store, chat = InMemoryStore(), _chat()
    node = _node(RecordingChatModel(), [], max_messages=4, summary_model=FixedSummariser(),
                 summary_every=4)  # fmt: skip
    graph = build_graph(node, store)
    for i in range(turns):
        graph.invoke(telegram_callback(chat, f"m{i}"), new_thread())
    summary = ChatHistory(store).summary(f"telegram:{chat}")
    assert summary is not None
    return store, chat, summary


def _mode(mode: str) -> HistoryToggles:
    return HistoryToggles(env={"ORCHEO_GRAPH_CHAT_HISTORY_MODE": mode})


def test_summaries_off_touch_no_summary_item() -> None:
    inner, chat, summary = _with_summary()
    store = KeyRecordingStore(inner)
    model = RecordingChatModel()
    graph = build_graph(_node(model, [], max_messages=4, summarize=False), store)
    graph.invoke(telegram_callback(chat, "again"), new_thread())
    assert store.keys and "summary" not in store.keys
    assert all(HEADING not in str(m.content) for m in model.calls[-1])
    assert ChatHistory(inner).summary(f"telegram:{chat}") == summary


@pytest.mark.parametrize("mode", ["read_only", "off"])
def test_read_only_reads_the_summary_and_writes_none_off_touches_nothing(mode: str) -> None:
    inner, chat, summary = _with_summary()
    store = KeyRecordingStore(inner)
    model, summariser, reports = RecordingChatModel(), FixedSummariser(), []
    node = _node(model, reports, max_messages=4, summary_model=summariser, summary_every=1,
                 toggles=_mode(mode))  # fmt: skip
    graph = build_graph(node, store)
    for i in range(3):
        graph.invoke(telegram_callback(chat, f"later {i}"), new_thread())
    assert summariser.calls == []
    assert ChatHistory(inner).summary(f"telegram:{chat}") == summary
    if mode == "read_only":
        assert model.calls[-1][1] == summary_message(summary)
        assert reports[-1].summary_seq == summary.covers_seq
        assert "summary" in store.keys
    else:
        assert store.keys == []
        assert all(HEADING not in str(m.content) for m in model.calls[-1])


def test_shadow_computes_the_summary_and_stores_none() -> None:
    store, chat, summary = _with_summary()
    model, summariser, reports = RecordingChatModel(), FixedSummariser(text="NEW"), []
    node = _node(model, reports, max_messages=4, summary_model=summariser, summary_every=4,
                 toggles=_mode("shadow"))  # fmt: skip
    graph = build_graph(node, store)
    for i in range(6):
        graph.invoke(telegram_callback(chat, f"later {i}"), new_thread())
    # 12 more turns fell out of the window: computed once per 4 of them, never stored.
    assert [r.summary_outcome for r in reports].count("shadow") == 3
    assert len(summariser.calls) == 3
    assert all(HEADING not in str(m.content) for call in model.calls for m in call)
    history = ChatHistory(store)
    assert history.summary(f"telegram:{chat}") == summary
    assert history.count(f"telegram:{chat}") == 24 + 12


def test_shadow_stores_the_clearing_of_a_reset() -> None:
    # Shadow mode stores the turns, the reset with them. The summary kept from before
    # would be shown at the cut-over once the reset has left the window read.
    store, chat, summary = _with_summary()
    node = _node(RecordingChatModel(), [], max_messages=4, summary_model=FixedSummariser(),
                 summary_every=4, reset_command="/reset", toggles=_mode("shadow"))  # fmt: skip
    build_graph(node, store).invoke(telegram_callback(chat, "/reset"), new_thread())
    cleared = ChatHistory(store).summary(f"telegram:{chat}")
    assert cleared is not None and cleared.text == "" and cleared.version == summary.version + 1


def test_failed_summary_answers_warns_counts_and_keeps_the_previous_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store, chat, summary = _with_summary()
    summariser = FixedSummariser(fail=True)
    reports: list[HistoryReport] = []
    node = _node(RecordingChatModel(), reports, max_messages=4, summary_model=summariser,
                 summary_every=1)  # fmt: skip
    before = METRICS.value(obs.SUMMARY_FAILURES, backend="memory", outcome="error")
    with caplog.at_level(logging.WARNING, logger="agent_history"):
        out = build_graph(node, store).invoke(telegram_callback(chat, "SeNtInEl"), new_thread())
    assert out["messages"][-1].content == "echo: SeNtInEl"
    assert reports[-1].summary_outcome == "failed"
    assert METRICS.value(obs.SUMMARY_FAILURES, backend="memory", outcome="error") == before + 1
    warnings = [r.getMessage() for r in caplog.records if "summary_failed" in r.getMessage()]
    assert len(warnings) == 1 and "model_failed" in warnings[0] and "RuntimeError" in warnings[0]
    assert "SeNtInEl" not in warnings[0] and "SUMMARY" not in warnings[0]
    assert ChatHistory(store).summary(f"telegram:{chat}") == summary


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("failure", ["raises", "no text"])
async def test_the_run_after_a_failed_summary_update_makes_it(mode: str, failure: str) -> None:
    """A failed update gives its lease back: the next run updates the summary with what the
    failed one would have added. (It kept the lease to its end, so for the summary budget
    plus the write timeout every run found the update "busy", and the turns that fell out
    of the window meanwhile were in neither the window nor the summary.)"""
    store, chat, summary = _with_summary()
    summariser = FixedSummariser(fail=failure == "raises", text="" if failure == "no text" else "X")
    reports: list[HistoryReport] = []
    node = _node(RecordingChatModel(), reports, max_messages=4, summary_model=summariser,
                 summary_every=1, summary_budget_seconds=60)  # fmt: skip
    graph = build_graph(node, store)

    async def run(text: str) -> None:
        if mode == "sync":
            graph.invoke(telegram_callback(chat, text), new_thread())
        else:
            await graph.ainvoke(telegram_callback(chat, text), new_thread())

    await run("first")
    assert reports[-1].summary_outcome == "failed"
    summariser.fail, summariser.text = False, "NEXT"
    await run("second")
    assert reports[-1].summary_outcome == "written"
    stored = ChatHistory(store).summary(f"telegram:{chat}")
    assert stored is not None and stored.text == "NEXT"
    assert stored.version == summary.version + 1
    assert stored.covers_seq == reports[-1].summary_written_seq > summary.covers_seq
    # The update added every turn that fell out of the window since the stored summary.
    _, transcript = request_parts(summariser.calls[-1])
    assert "first" in transcript


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_a_slow_summary_model_never_holds_the_answer_past_its_budget(mode: str) -> None:
    store, chat, summary = _with_summary()
    gate = threading.Event()
    summariser = FixedSummariser(gate=gate, text="LATE")
    reports: list[HistoryReport] = []
    node = _node(RecordingChatModel(), reports, max_messages=4, summary_model=summariser,
                 summary_every=1, summary_budget_seconds=0.2)  # fmt: skip
    graph = build_graph(node, store)
    before = METRICS.value(obs.SUMMARY_FAILURES, backend="memory", outcome="timeout")
    try:
        if mode == "sync":
            out = graph.invoke(telegram_callback(chat, "quick"), new_thread())
            again = graph.invoke(telegram_callback(chat, "again"), new_thread())
        else:
            out = await graph.ainvoke(telegram_callback(chat, "quick"), new_thread())
            again = await graph.ainvoke(telegram_callback(chat, "again"), new_thread())
    finally:
        gate.set()
    assert out["messages"][-1].content == "echo: quick"
    assert again["messages"][-1].content == "echo: again"
    # The run that timed out keeps the lease: while the model hangs, the next run does not
    # wait for it too.
    assert [r.summary_outcome for r in reports] == ["failed", "busy"]
    assert METRICS.value(obs.SUMMARY_FAILURES, backend="memory", outcome="timeout") == before + 1
    assert len(summariser.calls) == 1
    assert ChatHistory(store).summary(f"telegram:{chat}") == summary


def test_a_reset_command_clears_the_summary() -> None:
    store, chat, summary = _with_summary()
    model, summariser, reports = RecordingChatModel(), FixedSummariser(text="AFTER"), []
    node = _node(model, reports, max_messages=4, summary_model=summariser, summary_every=4,
                 reset_command="/reset")  # fmt: skip
    graph = build_graph(node, store)
    graph.invoke(telegram_callback(chat, "/reset"), new_thread())
    assert _texts(model.calls[-1]) == [SYSTEM, "/reset"]
    assert reports[-1].summary_outcome == "cleared"
    cleared = ChatHistory(store).summary(f"telegram:{chat}")
    assert cleared is not None and cleared.text == "" and cleared.version == summary.version + 1
    for i in range(6):
        graph.invoke(telegram_callback(chat, f"new {i}"), new_thread())
    assert summariser.calls, "summaries go on after the reset"
    previous = [request_parts(c)[0] for c in summariser.calls]
    assert previous == ["", *["AFTER"] * (len(previous) - 1)], "built on nothing from before"
    transcripts = "\n".join(request_parts(c)[1] for c in summariser.calls)
    assert "User: m" not in transcripts and "User: new 0" in transcripts


def test_after_a_reset_on_a_stable_thread_summaries_go_on() -> None:
    """The reset stays in a stable thread's checkpoint: every later pass sees it. Once the
    summary was cleared, the turns after the reset are summarised and shown as usual
    (they were cleared again on every pass: each turn that fell out of the window was
    lost, and the summary model was never called again)."""
    from langgraph.checkpoint.memory import InMemorySaver

    store, chat = InMemoryStore(), _chat()
    model, summariser, reports = RecordingChatModel(), FixedSummariser(text="AFTER"), []
    node = _node(model, reports, max_messages=4, summary_model=summariser, summary_every=2,
                 reset_command="/reset")  # fmt: skip
    graph = build_graph(node, store, InMemorySaver())
    config = {"configurable": {"thread_id": f"chat-{chat}"}}
    texts = ["my card is 4111", "b", "c", "/reset", *(f"new {i}" for i in range(8))]
    before_reset = 0
    for number, text in enumerate(texts, start=1):
        if text == "/reset":
            before_reset = len(summariser.calls)
        graph.invoke(telegram_callback(chat, text, number), config)

    outcomes = [r.summary_outcome for r in reports]
    assert outcomes[3] == "cleared" and "cleared" not in outcomes[4:]
    summary = ChatHistory(store).summary(f"telegram:{chat}")
    assert summary is not None and summary.text == "AFTER"
    # everything before the window since the reset is covered: nothing fell out unsummarised
    assert summary.covers_seq >= 2 * len(texts) - 6
    after = summariser.calls[before_reset:]
    assert [request_parts(c)[0] for c in after] == ["", *["AFTER"] * (len(after) - 1)]
    transcripts = "\n".join(request_parts(c)[1] for c in after)
    assert "4111" not in transcripts and "User: new 0" in transcripts
    payload = _texts(model.calls[-1])
    assert any("AFTER" in text for text in payload), "the summary after the reset is shown"
    assert not any("4111" in text for text in payload)


def test_a_reset_clears_the_summary_while_another_update_holds_its_lease() -> None:
    """An update whose summary model hangs keeps its lease. The reset's clearing waited
    for it, and once the reset left the window read (it stays in a stable thread) the
    summary of what the user reset was taken for one made after it: shown again."""
    from langgraph.checkpoint.memory import InMemorySaver

    store, chat = InMemoryStore(), _chat()
    key = f"telegram:{chat}"
    model, summariser, reports = RecordingChatModel(), FixedSummariser(text="SECRET"), []
    node = _node(model, reports, max_messages=4, summary_model=summariser, summary_every=2,
                 reset_command="/reset")  # fmt: skip
    graph = build_graph(node, store, InMemorySaver())
    config = {"configurable": {"thread_id": f"chat-{chat}"}}

    def say(number: int, text: str) -> None:
        graph.invoke(telegram_callback(chat, text, number), config)

    for number in range(1, 7):
        say(number, f"card {number}")
    history = ChatHistory(store)
    hung = history.claim_summary(key, history.count(key), every=1, max_turns=100,
                                 owner="hung update", lease_seconds=300)  # fmt: skip
    assert hung.granted
    say(7, "/reset")
    assert reports[-1].summary_outcome == "cleared"
    summariser.text = "AFTER"
    for number in range(8, 16):
        say(number, f"new {number}")
        assert not any("SECRET" in text for text in _texts(model.calls[-1]))
    summary = history.summary(key)
    assert summary is not None and summary.text == "AFTER"
    # the hung update, answering at last, writes nothing over it
    late = history.write_summary(key, "SECRET", hung.upto, base_version=hung.previous.version
                                 if hung.previous else 0, owner="hung update")  # fmt: skip
    assert not late.written


def test_a_reset_before_any_summary_summarises_nothing_from_before_it() -> None:
    """No summary yet: the reset pass must not summarise the turns it resets (they would
    come back as the summary), nor may a re-delivered reset show them."""
    store, chat = InMemoryStore(), _chat()
    model, summariser, reports = RecordingChatModel(), FixedSummariser(text="LEAK"), []
    node = _node(model, reports, summary_model=summariser, summary_every=2,
                 reset_command="/reset")  # fmt: skip
    graph = build_graph(node, store)
    for number, text in enumerate(["my card is 4111", "my pin is 1234", "/reset"], start=1):
        graph.invoke(telegram_callback(chat, text, number), new_thread())
    assert summariser.calls == []
    assert reports[-1].summary_outcome == "cleared"
    summary = ChatHistory(store).summary(f"telegram:{chat}")
    assert summary is not None and (summary.text, summary.covers_seq) == ("", 4)

    graph.invoke(telegram_callback(chat, "/reset", 3), new_thread())  # re-delivered
    assert _texts(model.calls[-1]) == [SYSTEM, "/reset"]
    graph.invoke(telegram_callback(chat, "hello", 4), new_thread())
    assert _texts(model.calls[-1]) == [SYSTEM, "echo: /reset", "hello"]
    # what is summarised since (the reset's own answer) comes after it
    transcripts = "\n".join(request_parts(c)[1] for c in summariser.calls)
    assert "4111" not in transcripts and "1234" not in transcripts


def test_legacy_turns_that_still_fit_the_window_are_not_summarised() -> None:
    """A conversation read from its legacy item: its turns keep their place in the log,
    so the summary covers only what the next window will not hold."""
    store, chat = InMemoryStore(), _chat()
    old = [
        {"role": "user", "content": "my name is Ana"},
        {"role": "assistant", "content": "hi Ana"},
        {"role": "user", "content": "I live in Porto"},
        {"role": "assistant", "content": "nice"},
    ]
    store.put(("agent_chat_history",), f"telegram:{chat}", {"version": 2, "messages": old})
    model, summariser, reports = RecordingChatModel(), FixedSummariser(), []
    node = _node(model, reports, summary_model=summariser, summary_every=2,
                 history_read_legacy=True)  # fmt: skip
    graph = build_graph(node, store)
    for number, text in enumerate(["x", "y"], start=1):
        graph.invoke(telegram_callback(chat, text, number), new_thread())

    assert summariser.calls == []
    assert ChatHistory(store).summary(f"telegram:{chat}") is None
    assert _texts(model.calls[-1]) == [
        SYSTEM, "my name is Ana", "hi Ana", "I live in Porto", "nice", "x", "echo: x", "y"
    ]  # fmt: skip


def test_a_repeated_reset_without_ids_on_a_stable_thread_is_stored_once() -> None:
    """Without ids the second "/reset" is a re-delivery by content: it stores nothing,
    and moves no summary, so the next pass still reads a short window of the log."""
    from langgraph.checkpoint.memory import InMemorySaver

    store, chat = InMemoryStore(), _chat()
    model, reads, reports = RecordingChatModel(), [], []
    node = _node(model, reports, max_messages=4, summary_model=FixedSummariser(),
                 summary_every=2, reset_command="/reset")  # fmt: skip
    graph = build_graph(node, store, InMemorySaver())
    config = {"configurable": {"thread_id": f"chat-{chat}"}}
    for text in ["a", "b", "/reset", "/reset", "c"]:
        graph.invoke(telegram_callback(chat, text), config)
        reads.append(reports[-1].stored_read)

    stored = ChatHistory(store).to_messages(list(ChatHistory(store).read(f"telegram:{chat}")))
    assert _texts(stored) == ["a", "echo: a", "b", "echo: b", "/reset", "echo: /reset", "c", "echo: c"]  # fmt: skip
    assert reports[3].redelivered and reports[3].summary_outcome == ""
    assert reads[4] <= 4, "the pass after the repeat reads a window, not the log"


class _BigOnce(RecordingChatModel):
    """Echoes, but answers "big" with more text than the whole token budget."""

    def reply(self, messages: list[BaseMessage], **kwargs: Any) -> AIMessage:
        last = str(messages[-1].content)
        return AIMessage("X" * 4000 if last == "big" else f"echo: {last}")


@pytest.mark.parametrize("ids", [True, False])
def test_an_answer_over_the_budget_keeps_the_next_read_bounded(ids: bool) -> None:
    """On a stable thread, an exchange that alone fills the window must not let the
    summary cover the whole log: the next pass would find nothing to match the thread
    against, and take all of it for unstored (checking every message, or reading the
    whole log to compare contents)."""
    from langgraph.checkpoint.memory import InMemorySaver

    from tests.support.counting_store import CountingStore

    store, chat = CountingStore(InMemoryStore()), _chat()
    model, reports = _BigOnce(), []
    node = _node(model, reports, max_messages=6, max_tokens=300, summary_model=FixedSummariser(),
                 summary_every=2)  # fmt: skip
    graph = build_graph(node, store, InMemorySaver())
    config = {"configurable": {"thread_id": f"chat-{chat}"}}
    gets = []
    texts = [*(f"m{i}" for i in range(60)), "big", "after", "again"]
    for number, text in enumerate(texts):
        before = store.ops["get"]
        graph.invoke(telegram_callback(chat, text, number if ids else None), config)
        gets.append(store.ops["get"] - before)

    assert _texts(model.calls[-2]) == [SYSTEM, f"{HEADING}\nSUMMARY", "after"]
    assert [r.appended for r in reports[-3:]] == [2, 2, 2]
    assert reports[-2].duplicates == 0, "only the new exchange went to the append"
    assert gets[-2] <= max(gets[50:60]), "no more reads than an ordinary pass"
    stored = ChatHistory(store).to_messages(list(ChatHistory(store).read(f"telegram:{chat}")))
    assert len(stored) == 2 * len(texts) and len({m.id for m in stored}) == len(stored)


# --- which model summarises ---------------------------------------------------------------------


def test_summarize_uses_the_node_model_without_its_tools() -> None:
    store, reports = InMemoryStore(), []
    model = WeatherModel()
    node = _node(model.bind_tools([_weather_tool()]), reports, max_messages=2, summarize=True,
                 summary_every=2)  # fmt: skip
    graph = build_graph(node, store)
    chat = _chat()
    for i in range(4):
        graph.invoke(telegram_callback(chat, f"hi {i}"), new_thread())
    summary = ChatHistory(store).summary(f"telegram:{chat}")
    assert summary is not None and summary.text.startswith("echo: <summary>")
    requests = [c for c in model.calls if c and c[0].content != SYSTEM]
    assert requests and all(isinstance(c[0], SystemMessage) for c in requests)


def test_summarize_with_an_agent_model_needs_a_summary_model() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # moved to langchain.agents; still shipped
        agent = create_react_agent(RecordingChatModel(), [])
    with pytest.raises(ValueError, match="summary_model"):
        AgentNode(agent, use_graph_chat_history=True, summarize=True)
    AgentNode(agent, use_graph_chat_history=True, summarize=True, summary_model=FixedSummariser())
    with pytest.raises(ValueError, match="summary_model"):
        AgentNode(RecordingChatModel(), summary_model=agent)


def test_the_summary_is_never_streamed_as_the_node_answer() -> None:
    store, chat, _ = _with_summary()
    summariser = FixedSummariser(text="SECRET-SUMMARY")
    node = _node(RecordingChatModel(), [], max_messages=4, summary_model=summariser,
                 summary_every=1)  # fmt: skip
    graph = build_graph(node, store)
    chunks = [
        chunk
        for chunk, _meta in graph.stream(
            telegram_callback(chat, "stream me"), new_thread(), stream_mode="messages"
        )
    ]
    assert len(summariser.calls) == 1
    assert _texts(chunks) == ["echo: stream me"]


# --- deleting a conversation deletes its summary ------------------------------------------------


def test_deleting_a_conversation_deletes_its_summary(store: BaseStore) -> None:
    from datetime import UTC, datetime, timedelta

    history = ChatHistory(store, namespace=("agent_chat_history", uuid.uuid4().hex[:8]))
    for key in ("a", "b"):
        history.append(key, [HumanMessage(f"q {i}") for i in range(6)])
        assert history.write_summary(key, "private summary", 4, base_version=0).written
    history.delete("a")
    history.delete_if_idle("b", datetime.now(UTC) + timedelta(days=1))
    for key in ("a", "b"):
        assert history.summary(key) is None
        assert store.get(history.conversation_namespace(key), "summary") is None


def test_an_update_begun_before_a_delete_writes_nothing_into_the_next_conversation(
    store: BaseStore,
) -> None:
    # A run claims the summary update and asks the model; meanwhile the user's "/forget"
    # deletes the conversation and the user starts over under the same key. The update
    # built on nothing (version 0), as the new conversation's summary is: it was written
    # there, and the deleted turns came back in the new conversation's payloads.
    history = ChatHistory(store, namespace=("agent_chat_history", uuid.uuid4().hex[:8]))
    history.append("k", [HumanMessage(f"secret {i}", id=f"s{i}") for i in range(6)])
    claim = history.claim_summary("k", 4, every=2, max_turns=100, owner="old run",
                                  lease_seconds=60)  # fmt: skip
    assert claim.granted and [t.content for t in claim.turns][:1] == ["secret 0"]
    history.delete("k")
    history.append("k", [HumanMessage(f"new {i}", id=f"n{i}") for i in range(6)])

    written = history.write_summary("k", "they said secret 0 to 3", claim.upto,
                                    base_version=0, owner="old run", turns=4)  # fmt: skip
    assert (written.written, written.reason) == (False, "stale")
    assert history.summary("k") is None
    # the new conversation's own updates go on
    fresh = history.claim_summary("k", 4, every=2, max_turns=100, owner="new run",
                                  lease_seconds=60)  # fmt: skip
    assert [t.content for t in fresh.turns] == ["new 0", "new 1", "new 2", "new 3"]
    assert history.write_summary("k", "new 0 to 3", 4, base_version=0, owner="new run").written


@pytest.mark.parametrize("surface", ["middleware", "hooks"])
@pytest.mark.parametrize("summarize", [None, True, False])
def test_the_middleware_and_the_hooks_take_summarize_as_agent_node_does(
    surface: str, summarize: bool | None
) -> None:
    """``summarize`` is one of the settings the surfaces share (context.md): ``False``
    switches summaries off beside a configured ``summary_model`` (a config file's
    switch), ``None`` and ``True`` keep them on; it used to be refused as unknown.
    ``True`` without a ``summary_model`` is refused, naming it."""
    from langchain.agents import create_agent

    from agent_history import HistoryHooks
    from agent_history.middleware import HistoryMiddleware

    summariser, store, model = FixedSummariser(), InMemoryStore(), RecordingChatModel()
    settings: dict[str, Any] = {"max_messages": 2, "summary_model": summariser}
    settings.update({"summary_every": 2, "summarize": summarize})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # create_react_agent has moved
        if surface == "middleware":
            agent = create_agent(model, [], middleware=[HistoryMiddleware(**settings)], store=store)
        else:
            agent = create_react_agent(model, [], **HistoryHooks(**settings).hooks(), store=store)
    for number in range(6):
        agent.invoke(telegram_callback(7, f"q{number}", number), new_thread())
    assert ChatHistory(store).count("telegram:7") == 12
    if summarize is False:
        assert summariser.calls == []
        assert all(m.type != "system" for m in model.calls[-1])
    else:
        assert summariser.calls and model.calls[-1][0].type == "system"
        assert "SUMMARY" in str(model.calls[-1][0].content)
    surface_type = HistoryMiddleware if surface == "middleware" else HistoryHooks
    with pytest.raises(ValueError, match="summarize=True needs a summary_model"):
        surface_type(summarize=True)
