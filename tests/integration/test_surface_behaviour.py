"""`HistoryMiddleware` (``create_agent``) and `HistoryHooks` (``create_react_agent``) beyond
the pattern matrix: continuity across thread ids, key functions, toggles, store faults,
no store, settings checked at construction, and the message stream."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import uuid
import warnings
from dataclasses import dataclass
from typing import Any

import pytest
from langchain_core.messages import BaseMessage, HumanMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.store.memory import InMemoryStore

from agent_history import HistoryReport
from agent_history.history import ChatHistory
from agent_history.middleware import HistoryMiddleware
from agent_history.prebuilt import HistoryHooks
from agent_history.settings import HistorySettings
from agent_history.stores import create_checkpointer_sync, create_graph_store_sync
from agent_history.testing import RecordingChatModel
from agent_history.toggles import HistoryToggles
from tests.support.agent_graphs import telegram_callback, toggles
from tests.support.fault_stores import FaultyStore, UntouchableStore

SURFACES = ("middleware", "hooks")


@dataclass
class Ctx:
    user: str


def _agent(
    surface: str,
    model: Any,
    store: Any,
    reports: list[HistoryReport] | None = None,
    checkpointer: Any = None,
    **fields: Any,
) -> Any:
    fields.setdefault("toggles", HistoryToggles(env={}))
    fields.setdefault("write_backoff_seconds", 0.0)
    if reports is not None:
        fields["on_report"] = reports.append
    if surface == "middleware":
        from langchain.agents import create_agent

        return create_agent(
            model,
            middleware=[HistoryMiddleware(**fields)],
            store=store,
            checkpointer=checkpointer,
            context_schema=Ctx,
        )
    from langgraph.prebuilt import create_react_agent

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # moved to langchain.agents; still shipped
        return create_react_agent(
            model,
            [],
            store=store,
            checkpointer=checkpointer,
            context_schema=Ctx,
            **HistoryHooks(**fields).hooks(),
        )


def _texts(messages: list[BaseMessage]) -> list[str]:
    return [str(m.content) for m in messages]


def _thread(name: str | None = None) -> dict[str, Any]:
    return {"configurable": {"thread_id": name or uuid.uuid4().hex}}


@pytest.mark.parametrize("surface", SURFACES)
def test_a_new_thread_for_the_same_key_sees_the_earlier_turns(
    surface: str, persistent_settings: HistorySettings
) -> None:
    model, reports = RecordingChatModel(), []
    chat = uuid.uuid4().int % 10**9
    stable = uuid.uuid4().hex
    with (
        create_graph_store_sync(persistent_settings) as store,
        create_checkpointer_sync(persistent_settings) as saver,
    ):
        agent = _agent(surface, model, store, reports, saver)
        agent.invoke(telegram_callback(chat, "one", 1), _thread(stable))
        agent.invoke(telegram_callback(chat, "two", 2), _thread(stable))
        out = agent.invoke(telegram_callback(chat, "three", 3), _thread())  # a new thread
        assert _texts(out["messages"]) == ["three", "echo: three"]
        assert _texts(model.calls[-1]) == ["one", "echo: one", "two", "echo: two", "three"]
        stored = list(ChatHistory(store).read(f"telegram:{chat}"))
    assert [t.content for t in stored] == [
        "one",
        "echo: one",
        "two",
        "echo: two",
        "three",
        "echo: three",
    ]
    assert [r.stored_read for r in reports] == [0, 2, 4]


@pytest.mark.parametrize("surface", SURFACES)
def test_a_key_function_reads_the_runtime_context(surface: str) -> None:
    store, model, reports = InMemoryStore(), RecordingChatModel(), []

    def key(state: Any, runtime: Any) -> str:
        return f"user:{runtime.context.user}"

    agent = _agent(surface, model, store, reports, history_key=key)
    for text in ["hi", "again"]:
        agent.invoke(
            {"messages": [HumanMessage(text)]}, _thread(), context=Ctx("alice@example.com")
        )
    agent.invoke({"messages": [HumanMessage("other")]}, _thread(), context=Ctx("bob"))
    assert _texts(model.calls[1]) == ["hi", "echo: hi", "again"]
    assert _texts(model.calls[2]) == ["other"]
    assert sorted(ChatHistory(store).keys()) == ["user:alice@example.com", "user:bob"]
    assert [r.key for r in reports] == ["user:alice@example.com"] * 2 + ["user:bob"]


@pytest.mark.parametrize("surface", SURFACES)
@pytest.mark.parametrize("outcome", ["none", "raises", "control_character"])
def test_a_key_function_without_a_key_degrades(
    surface: str, outcome: str, caplog: pytest.LogCaptureFixture
) -> None:
    def key(state: Any, runtime: Any) -> str | None:
        if outcome == "raises":
            raise LookupError("no user")
        return "a\nb" if outcome == "control_character" else None

    store, model, reports = InMemoryStore(), RecordingChatModel(), []
    agent = _agent(surface, model, store, reports, history_key=key)
    with caplog.at_level(logging.WARNING, logger="agent_history"):
        out = agent.invoke(telegram_callback(7, "hi"), _thread(), context=Ctx("x"))
    assert _texts(out["messages"]) == ["hi", "echo: hi"]
    assert reports[-1].key is None and reports[-1].fallbacks == ("no_valid_key",)
    assert any("no_valid_key" in r.getMessage() for r in caplog.records)
    assert list(ChatHistory(store).keys()) == []


@pytest.mark.parametrize("surface", SURFACES)
def test_read_only_mode_reads_but_never_writes(surface: str) -> None:
    store, model = InMemoryStore(), RecordingChatModel()
    ChatHistory(store).append("telegram:5", [{"role": "user", "content": "before"}])
    agent = _agent(surface, model, store, toggles=toggles(mode="read_only"))
    agent.invoke(telegram_callback(5, "hi"), _thread())
    assert _texts(model.calls[0]) == ["before", "hi"]
    assert [t.content for t in ChatHistory(store).read("telegram:5")] == ["before"]


@pytest.mark.parametrize("surface", SURFACES)
@pytest.mark.parametrize(
    "switch",
    [
        {"use_graph_chat_history": False},
        {"toggles": toggles(mode="off")},
        {"toggles": toggles(disabled_nodes="support")},
    ],
    ids=["node-off", "mode-off", "disabled-node"],
)
def test_switched_off_never_touches_the_store(surface: str, switch: dict[str, Any]) -> None:
    store, model, reports = UntouchableStore(), RecordingChatModel(), []
    agent = _agent(surface, model, store, reports, node_name="support", **switch)
    out = agent.invoke(telegram_callback(5, "hi"), _thread())
    assert _texts(out["messages"]) == ["hi", "echo: hi"]
    assert store.touched == []
    assert reports[-1].node == "support" and reports[-1].appended == 0


@pytest.mark.parametrize("surface", SURFACES)
def test_read_failure_answers_from_the_thread(
    surface: str, caplog: pytest.LogCaptureFixture
) -> None:
    inner = InMemoryStore()
    ChatHistory(inner).append("telegram:3", [{"role": "user", "content": "before"}])
    faulty = FaultyStore(inner)
    faulty.fail_reads = True
    model, reports = RecordingChatModel(), []
    with caplog.at_level(logging.WARNING, logger="agent_history"):
        out = _agent(surface, model, faulty, reports).invoke(telegram_callback(3, "hi"), _thread())
    assert _texts(out["messages"]) == ["hi", "echo: hi"]
    assert _texts(model.calls[0]) == ["hi"]
    assert "read_failed" in reports[-1].fallbacks and reports[-1].appended == 0
    messages = [r.getMessage() for r in caplog.records]
    assert any("read_failed" in m and "telegram:3" in m for m in messages)
    assert not any("before" in m for m in messages)
    assert [t.content for t in ChatHistory(inner).read("telegram:3")] == ["before"]


@pytest.mark.parametrize("surface", SURFACES)
def test_write_failure_retries_then_warns(surface: str) -> None:
    inner = InMemoryStore()
    faulty = FaultyStore(inner)
    faulty.fail_writes = True
    model, reports = RecordingChatModel(), []
    out = _agent(surface, model, faulty, reports).invoke(telegram_callback(4, "hi"), _thread())
    assert _texts(out["messages"]) == ["hi", "echo: hi"]
    assert faulty.calls.count("put") == 3  # three attempts
    assert "write_failed" in reports[-1].fallbacks
    assert list(ChatHistory(inner).keys()) == []


@pytest.mark.parametrize("surface", SURFACES)
def test_without_a_store_the_agent_answers_from_the_thread(surface: str) -> None:
    model, reports = RecordingChatModel(), []
    out = _agent(surface, model, None, reports).invoke(telegram_callback(4, "hi"), _thread())
    assert _texts(out["messages"]) == ["hi", "echo: hi"]
    assert reports[-1].fallbacks == ("no_store",)


@pytest.mark.parametrize("surface", SURFACES)
async def test_async_agent_on_the_memory_store(surface: str) -> None:
    store, model = InMemoryStore(), RecordingChatModel()
    agent = _agent(surface, model, store, checkpointer=InMemorySaver())
    for n, text in enumerate(["a", "b"]):
        await agent.ainvoke(telegram_callback(8, text, n), _thread())
    assert _texts(model.calls[-1]) == ["a", "echo: a", "b"]
    assert await ChatHistory(store).acount("telegram:8") == 4


@pytest.mark.parametrize("surface", SURFACES)
async def test_the_message_stream_does_not_attribute_the_delivered_message_to_a_hook(
    surface: str,
) -> None:
    agent = _agent(surface, RecordingChatModel(), InMemoryStore())
    streamed = [
        message.type
        async for message, _ in agent.astream(
            telegram_callback(9, "hi", message_id=5), _thread(), stream_mode="messages"
        )
    ]
    assert streamed == ["ai"]


@pytest.mark.parametrize("surface", SURFACES)
@pytest.mark.parametrize("sync", [True, False])
async def test_the_message_stream_carries_only_the_new_answer_not_the_history_window(
    surface: str, sync: bool
) -> None:
    """A bot forwards the AI messages it streams: the stored turns the model is given
    (and the running summary before them) are not this run's output, so they must not
    be streamed again on every later turn."""
    store, model = InMemoryStore(), RecordingChatModel()
    agent = _agent(surface, model, store, summary_model=RecordingChatModel(), summary_every=1)
    agent.invoke(telegram_callback(10, "hi, I'm Ana", 1), _thread())
    agent.invoke(telegram_callback(10, "I live in Lyon", 2), _thread())
    callback = telegram_callback(10, "what is my name?", 3)
    if sync:
        chunks = list(agent.stream(callback, _thread(), stream_mode="messages"))
    else:
        chunks = [c async for c in agent.astream(callback, _thread(), stream_mode="messages")]
    assert [(m.type, m.content) for m, _ in chunks] == [("ai", "echo: what is my name?")]
    assert len(model.calls[-1]) > 2  # the window (history) did reach the model


@pytest.mark.parametrize("surface", SURFACES)
def test_settings_are_checked_when_the_surface_is_made(surface: str) -> None:
    make = HistoryMiddleware if surface == "middleware" else HistoryHooks
    with pytest.raises(TypeError, match="max_mesages"):
        make(max_mesages=3)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="history_scope"):
        make(history_scope="all")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_messages"):
        make(max_messages=0)
    with pytest.raises(TypeError, match="history_key"):
        make(history_key="telegram:1")  # type: ignore[typeddict-item]


@pytest.mark.parametrize("surface", SURFACES)
def test_the_breaker_opens_on_a_failing_store_and_stops_calling_it(surface: str) -> None:
    faulty = FaultyStore(InMemoryStore())
    faulty.fail_reads = True
    model, reports = RecordingChatModel(), []
    switches = toggles(breaker_min_calls="2", breaker_cooldown_seconds="3600")
    agent = _agent(surface, model, faulty, reports, toggles=switches)
    for n in range(3):
        out = agent.invoke(telegram_callback(6, f"m{n}"), _thread())
        assert _texts(out["messages"]) == [f"m{n}", f"echo: m{n}"]
        if n == 1:
            calls = len(faulty.calls)
    assert [r.fallbacks for r in reports] == [("read_failed",)] * 2 + [("breaker_open",)]
    assert len(faulty.calls) == calls  # no store call once the breaker is open
    # Whose run went on in memory: the key, as for any other fallback (it was None).
    assert [(r.key, r.channel) for r in reports] == [("telegram:6", "telegram")] * 3


def test_without_langchain_only_the_middleware_needs_the_extra() -> None:
    code = (
        "import sys\n"
        "sys.modules['langchain'] = None  # as if the agents extra were not installed\n"
        "import agent_history\n"
        "from agent_history import HistoryHooks, KeyedMessageHistory\n"
        "try:\n"
        "    import agent_history.middleware\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout == (
        "HistoryMiddleware needs the langchain package: pip install 'agent-history[agents]'\n"
    )
    assert done.stderr == ""


@pytest.mark.parametrize("surface", SURFACES)
def test_token_budget_and_running_summary(surface: str) -> None:
    from langchain_core.language_models.fake_chat_models import FakeListChatModel

    store, model, reports = InMemoryStore(), RecordingChatModel(), []
    summarizer = FakeListChatModel(responses=["Ana plans a trip."])
    agent = _agent(
        surface,
        model,
        store,
        reports,
        max_messages=30,
        max_tokens=4,
        token_counter=len,  # one token per message
        summary_model=summarizer,
        summary_every=2,
    )
    for n in range(5):
        agent.invoke(telegram_callback(11, f"m{n}", n), _thread())
    for payload in model.calls:
        assert len(payload) <= 4  # the summary counts, and so does no system prompt here
    last = model.calls[-1]
    assert last[0].type == "system" and "Ana plans a trip." in str(last[0].content)
    assert _texts(last)[-1] == "m4"
    assert reports[-1].summary_seq > 0 and reports[-1].tokens_sent == len(last)
    assert ChatHistory(store).count("telegram:11") == 10


def test_the_agents_system_prompt_counts_against_the_token_budget() -> None:
    from langchain.agents import create_agent

    store, model = InMemoryStore(), RecordingChatModel()
    history = HistoryMiddleware(max_tokens=3, token_counter=len, toggles=HistoryToggles(env={}))
    agent = create_agent(model, system_prompt="Be brief.", middleware=[history], store=store)
    for n in range(3):
        agent.invoke(telegram_callback(12, f"m{n}", n), _thread())
    assert [(m.type, m.content) for m in model.calls[-1]] == [
        ("system", "Be brief."),
        ("ai", "echo: m1"),
        ("human", "m2"),
    ]


class _OrderedModel(RecordingChatModel):
    """Chat 1's answer waits until chat 2's run has reached the model too (both passes
    begun); chat 2's answer waits until chat 1's run has ended."""

    reached: Any = None
    ended: Any = None

    async def _agenerate(self, messages: Any, stop: Any = None, run_manager: Any = None,
                         **kwargs: Any) -> Any:  # fmt: skip
        if "chat 1" in str(messages[-1].content):
            await self.reached.wait()
        else:
            self.reached.set()
            await self.ended.wait()
        return self._generate(messages, stop, None, **kwargs)


@pytest.mark.parametrize("surface", SURFACES)
async def test_two_chats_answered_at_once_keep_their_own_exchanges(surface: str) -> None:
    # No checkpointer, so no thread id; channels number messages per chat, so both chats
    # deliver their message 5 at the same moment. The hooks handed chat 2's pass to chat
    # 1's post hook: chat 1's answer was stored in chat 2's log, and chat 1's in none.
    store = InMemoryStore()
    model = _OrderedModel(reached=asyncio.Event(), ended=asyncio.Event())
    agent = _agent(surface, model, store)
    first = asyncio.create_task(agent.ainvoke(telegram_callback(1, "chat 1: my IBAN is X", 5)))
    second = asyncio.create_task(agent.ainvoke(telegram_callback(2, "chat 2: hello", 5)))
    assert (await first)["messages"][-1].content == "echo: chat 1: my IBAN is X"
    model.ended.set()
    assert (await second)["messages"][-1].content == "echo: chat 2: hello"
    history = ChatHistory(store)
    assert _texts(history.tail("telegram:1", 10)) == [
        "chat 1: my IBAN is X", "echo: chat 1: my IBAN is X",
    ]  # fmt: skip
    assert _texts(history.tail("telegram:2", 10)) == ["chat 2: hello", "echo: chat 2: hello"]


def test_a_key_function_that_reads_the_messages_keeps_its_key_in_the_post_hook() -> None:
    # The post hook's state ends with the answer, not the user's message: keyed by the
    # function's value there, the hand-off from the pre hook was missed and the post hook
    # resolved another key (or none: nothing was stored).
    store, model = InMemoryStore(), RecordingChatModel()

    def by_sender(state: Any, runtime: Any) -> str:  # the newest message's sender
        return f"user:{state['messages'][-1].name or 'anon'}"

    agent = _agent("hooks", model, store, history_key=by_sender)
    for text in ["one", "two", "three"]:
        agent.invoke({"messages": [HumanMessage(text, name="ana")]}, _thread())
    assert _texts(model.calls[-1]) == ["one", "echo: one", "two", "echo: two", "three"]
    assert _texts(ChatHistory(store).tail("user:ana", 10)) == [
        "one", "echo: one", "two", "echo: two", "three", "echo: three",
    ]  # fmt: skip
