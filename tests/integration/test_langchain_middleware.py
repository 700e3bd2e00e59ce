"""`HistoryMiddleware` beside langchain's built-in middleware, listed first as
docs/middleware.md advises.

The summarization middleware puts a summary (a user message marked
``additional_kwargs["lc_source"] == "summarization"``) in place of the older messages,
in the middle of a tool loop too. It took the delivered question out of the thread after
the first tool call; the history middleware then put the question back after the tool
results, the model saw it unanswered and called its tool again on every pass, until
LangGraph's recursion limit. The summary was stored as a user turn, the question never,
and on a stable thread a re-delivery of the question was answered (and its tools run)
again.
"""

from __future__ import annotations

import itertools
import operator
import uuid
from typing import Annotated, Any, TypedDict

import pytest
from langchain.agents import create_agent
from langchain.agents.middleware import (
    AgentMiddleware,
    ClearToolUsesEdit,
    ContextEditingMiddleware,
    ModelCallLimitMiddleware,
    ModelRetryMiddleware,
    SummarizationMiddleware,
    ToolCallLimitMiddleware,
    hook_config,
)
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.messages import AIMessage, AnyMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.tools import InjectedToolCallId, tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.prebuilt import InjectedState
from langgraph.store.sqlite import SqliteStore
from langgraph.types import Command

from agent_history import ChatHistory, HistoryReport
from agent_history.middleware import HistoryMiddleware, _RecentIds
from agent_history.node import merge_results
from agent_history.testing import RecordingChatModel
from tests.support.agent_graphs import telegram_callback
from tests.support.tool_models import LookupModel, WeatherModel, get_weather, lookup

SUMMARY = "Here is a summary of the conversation to date:\n\nThe user asks about the weather."


def _shape(messages: list[BaseMessage]) -> list[tuple[str, str]]:
    return [(m.type, str(m.content) or ",".join(c["name"] for c in m.tool_calls)) for m in messages]  # type: ignore[attr-defined]


@pytest.fixture
def store(tmp_path: Any) -> Any:
    with SqliteStore.from_conn_string(str(tmp_path / "store.sqlite")) as opened:
        opened.setup()
        yield opened


def _agent(store: Any, order: str, scope: str, stable: bool) -> tuple[Any, WeatherModel, list[Any]]:
    model = WeatherModel()
    reports: list[HistoryReport] = []
    history = HistoryMiddleware(history_scope=scope, on_report=reports.append)
    # three messages trigger a summary keeping the newest two: in the tool loop, right
    # after the first tool result, the question is summarised away
    summarize = SummarizationMiddleware(
        FakeListChatModel(responses=["The user asks about the weather."]),
        trigger=("messages", 3),
        keep=("messages", 2),
    )
    middleware = [history, summarize] if order == "history first" else [summarize, history]
    agent = create_agent(
        model,
        [get_weather],
        middleware=middleware,
        store=store,
        checkpointer=InMemorySaver() if stable else None,
    )
    return agent, model, reports


def _config(stable: bool) -> dict[str, Any]:
    thread = "chat-42" if stable else uuid.uuid4().hex
    return {"configurable": {"thread_id": thread}, "recursion_limit": 12}


@pytest.mark.parametrize("scope", ["turns", "full"])
@pytest.mark.parametrize("stable", [False, True], ids=["fresh thread", "stable thread"])
@pytest.mark.parametrize("order", ["history first", "summary first"])
def test_a_summary_in_the_middle_of_a_tool_loop_ends_the_loop_and_stores_the_question(
    store: Any, order: str, stable: bool, scope: str
) -> None:
    agent, model, _ = _agent(store, order, scope, stable)
    result = agent.invoke(telegram_callback(42, "weather in Paris", 1), _config(stable))

    assert result["messages"][-1].content == "final[Paris]: sunny in Paris"
    assert [_shape(call) for call in model.calls] == [
        [("human", "weather in Paris")],
        # the question goes back before this run's tool steps, where it stood
        [("human", SUMMARY), ("human", "weather in Paris"), ("ai", "get_weather"),
         ("tool", "sunny in Paris")],
    ]  # fmt: skip
    stored = ChatHistory(store, scope=scope).tail("telegram:42", 20)
    exchange = [("human", "weather in Paris"), ("ai", "final[Paris]: sunny in Paris")]
    if scope == "full":
        exchange[1:1] = [("ai", "get_weather"), ("tool", "sunny in Paris")]
    assert _shape(stored) == exchange  # the summary is context, never a user turn
    assert stored[0].id == "1"

    agent.invoke(telegram_callback(42, "thanks", 2), _config(stable))
    stored = ChatHistory(store, scope=scope).tail("telegram:42", 20)
    assert _shape(stored) == [*exchange, ("human", "thanks"), ("ai", "echo: thanks")]
    assert not any(str(m.content).startswith("Here is a summary") for m in stored)


def test_a_redelivered_question_the_summary_replaced_is_not_answered_again(store: Any) -> None:
    agent, model, reports = _agent(store, "history first", "turns", stable=True)
    agent.invoke(telegram_callback(42, "weather in Paris", 1), _config(True))
    calls, stored = len(model.calls), ChatHistory(store).tail("telegram:42", 20)

    # the channel re-delivers the webhook: the thread holds a summary in place of the
    # question, and the agent's record says it answered it
    result = agent.invoke(telegram_callback(42, "weather in Paris", 1), _config(True))
    assert len(model.calls) == calls  # no model call, no tool run again
    assert result["messages"][-1].content == "final[Paris]: sunny in Paris"
    assert ChatHistory(store).tail("telegram:42", 20) == stored
    assert (reports[-1].redelivered, reports[-1].model_called) == (True, False)

    # a plain-messages run on the same thread (an operator's tool) is still answered
    result = agent.invoke({"messages": [HumanMessage("and tomorrow?", id="web-1")]}, _config(True))
    assert result["messages"][-1].content == "echo: and tomorrow?"
    assert len(model.calls) == calls + 1


class _FailsOnce(WeatherModel):
    """Fails every call for the user message "fail", answers the others."""

    def reply(self, messages: list[BaseMessage], **kwargs: Any) -> AIMessage:
        if messages and messages[-1].content == "fail":
            raise RuntimeError("provider down")
        return super().reply(messages, **kwargs)


def test_a_retry_that_gives_up_stores_the_answer_the_user_saw(store: Any) -> None:
    model = _FailsOnce()
    retry = ModelRetryMiddleware(
        max_retries=1, initial_delay=0, jitter=False, on_failure="continue"
    )
    agent = create_agent(model, [], middleware=[HistoryMiddleware(), retry], store=store)
    failed = agent.invoke(telegram_callback(42, "fail", 1), _config(False))
    told = str(failed["messages"][-1].content)
    assert told == "Model call failed after 2 attempts with RuntimeError: provider down"
    agent.invoke(telegram_callback(42, "hi", 2), _config(False))  # a fresh thread

    assert _shape(model.calls[-1]) == [("human", "fail"), ("ai", told), ("human", "hi")]
    stored = ChatHistory(store).tail("telegram:42", 20)
    assert _shape(stored) == [("human", "fail"), ("ai", told), ("human", "hi"), ("ai", "echo: hi")]


@pytest.mark.parametrize("stable", [False, True], ids=["fresh thread", "stable thread"])
def test_context_editing_inside_keeps_the_log_whole(store: Any, stable: bool) -> None:
    model = WeatherModel()
    clear = ContextEditingMiddleware(edits=[ClearToolUsesEdit(trigger=0, keep=1)])
    history = HistoryMiddleware(history_scope="full")
    agent = create_agent(model, [get_weather], middleware=[history, clear], store=store,
                         checkpointer=InMemorySaver() if stable else None)  # fmt: skip
    for message_id, city in enumerate(["Paris", "Rome"], start=1):
        agent.invoke(telegram_callback(42, f"weather in {city}", message_id), _config(stable))

    # the model saw the older tool result cleared ...
    assert [str(m.content) for m in model.calls[-1] if m.type == "tool"] == [
        "[cleared]",
        "sunny in Rome",
    ]
    # ... and the log keeps both whole
    stored = ChatHistory(store, scope="full").tail("telegram:42", 20)
    assert [str(m.content) for m in stored if m.type == "tool"] == [
        "sunny in Paris",
        "sunny in Rome",
    ]


class Parent(TypedDict, total=False):
    messages: Annotated[list[AnyMessage], add_messages]
    inputs: dict[str, Any]
    results: Annotated[dict[str, Any], operator.or_]
    answered: Annotated[dict[str, str], merge_results]


@tool
def transfer_to_worker(
    state: Annotated[dict[str, Any], InjectedState],
    tool_call_id: Annotated[str, InjectedToolCallId],
) -> Command:  # type: ignore[type-arg]
    """Hand the question to the worker."""
    handed = ToolMessage("transferred", tool_call_id=tool_call_id)
    return Command(
        goto="worker",
        graph=Command.PARENT,
        update={"messages": [state["messages"][-1], handed]},
    )


@pytest.mark.parametrize("checkpointer", [None, True])
def test_a_supervisor_that_handed_off_answers_after_its_worker(
    store: Any, checkpointer: bool | None
) -> None:
    """The supervisor's handoff leaves its subgraph by a parent command (its run does not
    end there) and the worker answers; back in the supervisor, the worker's answer is
    not taken for the supervisor's own: it gives the final answer."""

    class Supervisor(RecordingChatModel):
        def reply(self, messages: list[BaseMessage], **kwargs: Any) -> AIMessage:
            last = messages[-1]
            if last.type == "ai" and str(last.content).startswith("worker:"):
                return AIMessage(f"final: {last.content}")
            call = {"name": "transfer_to_worker", "args": {}, "id": f"t{len(self.calls)}"}
            return AIMessage("", tool_calls=[call])

        def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
            return self

    class Worker(RecordingChatModel):
        def reply(self, messages: list[BaseMessage], **kwargs: Any) -> AIMessage:
            user = next(m for m in reversed(messages) if m.type == "human")
            return AIMessage(f"worker: {user.content}")

    boss, helper = Supervisor(), Worker()
    supervisor = create_agent(
        boss,
        tools=[transfer_to_worker],
        middleware=[HistoryMiddleware(node_name="supervisor")],
        checkpointer=checkpointer,
    )
    worker = create_agent(
        helper, middleware=[HistoryMiddleware(node_name="worker")], checkpointer=checkpointer
    )
    builder = StateGraph(Parent)
    builder.add_node("supervisor", supervisor, destinations=("worker",))
    builder.add_node("worker", worker)
    builder.add_edge(START, "supervisor")
    builder.add_edge("worker", "supervisor")
    graph = builder.compile(checkpointer=InMemorySaver(), store=store)
    thread = {"configurable": {"thread_id": uuid.uuid4().hex}, "recursion_limit": 20}
    finals = []
    for number, text in enumerate(["one", "two"], start=1):
        out = graph.invoke(telegram_callback(33, text, number), thread)
        finals.append((str(out["messages"][-1].content), len(boss.calls), len(helper.calls)))
    assert finals == [("final: worker: one", 2, 1), ("final: worker: two", 4, 2)]


def test_a_summarised_question_keeps_the_key_spans_of_a_thread_serving_two_keys(
    store: Any,
) -> None:
    """The summary takes the delivered question out of the thread inside the tool loop;
    the run's exchange still opens its key's span, so on a thread serving two users no
    exchange of one is stored in the other's log."""
    model = WeatherModel()
    summarize = SummarizationMiddleware(
        FakeListChatModel(responses=["SUMMARY"] * 20), trigger=("messages", 3), keep=("messages", 2)
    )
    agent = create_agent(
        model,
        [get_weather],
        middleware=[HistoryMiddleware(history_key_template="user:{{ inputs.user }}"), summarize],
        store=store,
        checkpointer=InMemorySaver(),
    )
    thread = {"configurable": {"thread_id": uuid.uuid4().hex}}
    for number, (text, user) in enumerate(
        [
            ("weather in Oslo?", "A"),
            ("hi from B", "B"),
            ("hi again from A", "A"),
            ("bye from B", "B"),
        ],
        start=1,
    ):
        callback = telegram_callback(34, text, number)
        agent.invoke({**callback, "inputs": {**callback["inputs"], "user": user}}, thread)
    assert "history_span:agent" in agent.get_state(thread).values["answered"]
    b_log = [str(m.content) for m in ChatHistory(store).tail("user:B", 20)]
    assert b_log == ["hi from B", "echo: hi from B", "bye from B", "echo: bye from B"]
    a_log = [str(m.content) for m in ChatHistory(store).tail("user:A", 20)]
    assert not any("from B" in text for text in a_log)


class _Guard:
    """An output guard (``after_model`` that may jump back to the model): it takes out
    an answer with bad words and has the model answer again."""

    def __init__(self) -> None:
        from langchain.agents.middleware import AgentMiddleware, hook_config
        from langchain_core.messages import RemoveMessage

        class Guard(AgentMiddleware):  # type: ignore[type-arg]
            @hook_config(can_jump_to=["model"])
            def after_model(self, state: Any, runtime: Any) -> dict[str, Any] | None:
                last = state["messages"][-1]
                if "BAD" in str(last.content):
                    return {"messages": [RemoveMessage(id=last.id)], "jump_to": "model"}
                return None

        self.middleware = Guard()


def test_an_answer_a_guard_took_out_does_not_mark_the_callback_answered(store: Any) -> None:
    """The guard rejected the first answer and the model failed on the second try: the
    user got no answer, so the retried callback is answered (it was taken for a
    re-delivery when the rejected answer had marked it answered)."""

    class Scripted(RecordingChatModel):
        script: list[str] = []

        def reply(self, messages: list[BaseMessage], **kwargs: Any) -> AIMessage:
            step = self.script.pop(0)
            if step == "down":
                raise ConnectionError("provider down")
            return AIMessage("BAD words" if step == "bad" else f"echo: {messages[-1].content}")

    model = Scripted(script=["bad", "down", "ok"])
    agent = create_agent(
        model,
        middleware=[HistoryMiddleware(), _Guard().middleware],
        store=store,
        checkpointer=InMemorySaver(),
    )
    thread = {"configurable": {"thread_id": uuid.uuid4().hex}}
    with pytest.raises(ConnectionError):
        agent.invoke(telegram_callback(35, "hi", 1), thread)
    out = agent.invoke(telegram_callback(35, "hi", 1), thread)  # the webhook again
    assert [str(m.content) for m in out["messages"]] == ["hi", "echo: hi"]
    assert len(model.calls) == 3


@pytest.mark.parametrize("calls", ["sync", "async"])
@pytest.mark.parametrize("thread", ["new thread per run", "stable thread"])
@pytest.mark.parametrize("scope", ["full", "turns"])
async def test_an_exchange_a_tool_ends_by_returning_directly_is_stored_once(
    store: Any, calls: str, thread: str, scope: str
) -> None:
    """A tool with ``return_direct=True`` ends the agent on its result, which is the answer:
    no model call ends that exchange, so no pass stored it (the question was lost too).
    The middleware now stores it when the agent ends: the question, the tool call and its
    result, once, in the ``turns`` scope too; a re-delivery stores nothing."""
    model, reports = LookupModel(), []
    history = HistoryMiddleware(history_scope=scope, on_report=reports.append)
    stable = thread == "stable thread"
    agent = create_agent(
        model, [lookup], middleware=[history], store=store, checkpointer=InMemorySaver()
    )
    config = {"configurable": {"thread_id": uuid.uuid4().hex}}
    for message_id, text in [(1, "hi"), (2, "my order?"), (2, "my order?"), (3, "thanks")]:
        callback = telegram_callback(7, text, message_id)
        run_config = config if stable else {"configurable": {"thread_id": uuid.uuid4().hex}}
        if calls == "sync":
            out = agent.invoke(callback, run_config)
        else:
            out = await agent.ainvoke(callback, run_config)
        answer = {1: "echo: hi", 2: "order 42 shipped", 3: "echo: thanks"}[message_id]
        assert str(out["messages"][-1].content) == answer
    stored = [(t.role, t.content) for t in ChatHistory(store, scope=scope).read("telegram:7")]
    assert stored == [
        ("user", "hi"), ("assistant", "echo: hi"),
        ("user", "my order?"), ("assistant", ""), ("tool", "order 42 shipped"),
        ("user", "thanks"), ("assistant", "echo: thanks"),
    ]  # fmt: skip
    assert sum(r.appended for r in reports) == 7
    assert all(r.fallbacks == () for r in reports)
    assert len(model.calls) == (3 if stable else 4)  # a new thread answers the re-delivery
    sent = [str(m.content) for m in model.calls[-1]]
    assert sent == ["hi", "echo: hi", "my order?", "", "order 42 shipped", "thanks"]


class _InputGuard(AgentMiddleware[Any, Any]):
    """Ends the run before the agent starts when the delivered text says BLOCKED (a
    moderation or rate-limit guard listed before the history)."""

    @hook_config(can_jump_to=["end"])
    def before_agent(self, state: Any, runtime: Any) -> dict[str, Any] | None:
        message = (state.get("inputs") or {}).get("message") or {}
        return {"jump_to": "end"} if "BLOCKED" in str(message.get("text")) else None


@pytest.mark.parametrize("calls", ["sync", "async"])
async def test_a_message_a_guard_blocks_after_a_return_direct_exchange_is_not_stored(
    store: Any, calls: str, caplog: pytest.LogCaptureFixture
) -> None:
    """On a stable thread whose last run a return_direct tool ended, a guard before the
    history ends the next run before the agent: the state still ends on that tool result.
    The blocked message was stored as an unanswered question (and sent to the model with
    every later turn); nothing of that run is the agent's to store. A later exchange a
    tool ends is stored as before."""
    model, reports = LookupModel(), []
    history = HistoryMiddleware(on_report=reports.append)
    agent = create_agent(
        model,
        [lookup],
        middleware=[_InputGuard(), history],
        store=store,
        checkpointer=InMemorySaver(),
    )
    config = {"configurable": {"thread_id": uuid.uuid4().hex}}
    runs = [(1, "my order?"), (2, "BLOCKED card 4111"), (3, "thanks"), (4, "my order?")]
    for message_id, text in runs:
        callback = telegram_callback(7, text, message_id)
        if calls == "sync":
            agent.invoke(callback, config)
        else:
            await agent.ainvoke(callback, config)
    stored = [(t.role, t.content) for t in ChatHistory(store).read("telegram:7")]
    assert stored == [
        ("user", "my order?"), ("assistant", ""), ("tool", "order 42 shipped"),
        ("user", "thanks"), ("assistant", "echo: thanks"),
        ("user", "my order?"), ("assistant", ""), ("tool", "order 42 shipped"),
    ]  # fmt: skip
    # (A model call that calls a tool stores nothing yet; the blocked run reports nothing.)
    assert [r.appended for r in reports] == [0, 3, 2, 0, 3]
    assert [[str(m.content) for m in payload] for payload in model.calls] == [
        ["my order?"],
        ["my order?", "", "order 42 shipped", "thanks"],
        ["my order?", "", "order 42 shipped", "thanks", "echo: thanks", "my order?"],
    ]
    assert "BLOCKED" not in caplog.text and "4111" not in caplog.text


def _limit(kind: str) -> AgentMiddleware[Any, Any]:
    """A call limit that ends the run after one tool call: its hook adds the answer."""
    if kind == "model calls":
        return ModelCallLimitMiddleware(run_limit=1, exit_behavior="end")
    return ToolCallLimitMiddleware(run_limit=0, exit_behavior="end")


@pytest.mark.parametrize("calls", ["sync", "async"])
@pytest.mark.parametrize("scope", ["turns", "full"])
@pytest.mark.parametrize("limit", ["model calls", "tool calls"])
async def test_an_exchange_a_call_limit_ended_is_stored_when_the_run_ends(
    store: Any, limit: str, scope: str, calls: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A call limit with ``exit_behavior="end"`` ends the run in a hook, after tool
    results, with an answer of its own: no model call ended that exchange, so no pass
    stored it, and on a new thread per callback it was lost, question and all (a stable
    thread stored it with the next turn). It is stored when the run ends, once; its
    re-delivery, a sticker and a message a guard blocks after it store nothing."""
    model, reports = WeatherModel(), []
    history = HistoryMiddleware(history_scope=scope, on_report=reports.append)
    agent = create_agent(
        model,
        [get_weather],
        middleware=[_InputGuard(), history, _limit(limit)],
        store=store,
        checkpointer=InMemorySaver(),
    )
    sticker = {"inputs": {"message": {"sticker": "thumbs up", "message_id": 2}},
               "results": {"telegram_events_parser": {"chat_id": 7}}}  # fmt: skip
    runs = [
        telegram_callback(7, "weather in Paris", 1),
        telegram_callback(7, "weather in Paris", 1),  # the webhook again
        sticker,
        telegram_callback(7, "BLOCKED card 4111", 3),
    ]
    answers = []
    for callback in runs:
        config = {"configurable": {"thread_id": uuid.uuid4().hex}}
        if calls == "sync":
            out = agent.invoke(callback, config)
        else:
            out = await agent.ainvoke(callback, config)
        answers.append(str(out["messages"][-1].content) if out["messages"] else None)
    said = "Model call limits exceeded" if limit == "model calls" else "Tool call limit reached"
    assert answers[0] is not None and answers[0].startswith(said)
    stored = [(t.role, t.content) for t in ChatHistory(store, scope=scope).read("telegram:7")]
    exchange = [("user", "weather in Paris"), ("assistant", answers[0])]
    if scope == "full":
        result = "sunny in Paris" if limit == "model calls" else "Tool call limit exceeded."
        exchange[1:1] = [("assistant", ""), ("tool", stored[2][1])]
        assert stored[2][1].startswith(result)
    assert stored == exchange
    assert sum(r.appended for r in reports) == len(exchange)
    assert all(r.fallbacks == () for r in reports)
    assert "4111" not in caplog.text and "Paris" not in caplog.text

    # the next question sees the exchange, once
    out = agent.invoke(telegram_callback(7, "thanks", 4), {"configurable": {"thread_id": "n"}})
    assert str(out["messages"][-1].content) == "echo: thanks"
    sent = [(m.type, str(m.content)) for m in model.calls[-1]]
    types = {"user": "human", "assistant": "ai", "tool": "tool"}
    assert sent == [(types[role], text) for role, text in exchange] + [("human", "thanks")]


@pytest.mark.parametrize("thread", ["new thread per run", "stable thread"])
def test_tool_loops_whose_answers_this_process_forgot_are_stored_once(
    store: Any, thread: str
) -> None:
    """A tool loop the model ended is stored by its pass; the run's end takes an answer
    this process did not see given (another worker's, or one it forgot) for a hook's and
    stores the exchange again: that stores nothing twice."""
    model, reports = WeatherModel(), []
    history = HistoryMiddleware(history_scope="full", on_report=reports.append)
    history._answers = _RecentIds(size=0)  # remembers nothing
    agent = create_agent(
        model, [get_weather], middleware=[history], store=store, checkpointer=InMemorySaver()
    )
    stable = {"configurable": {"thread_id": uuid.uuid4().hex}}
    for message_id, text in [(1, "weather in Paris"), (2, "weather in Rome"), (3, "hi")]:
        new = {"configurable": {"thread_id": uuid.uuid4().hex}}
        agent.invoke(
            telegram_callback(7, text, message_id),
            new if thread == "new thread per run" else stable,
        )
    stored = [(t.role, t.content) for t in ChatHistory(store, scope="full").read("telegram:7")]
    assert stored == [
        ("user", "weather in Paris"), ("assistant", ""), ("tool", "sunny in Paris"),
        ("assistant", "final[Paris]: sunny in Paris"),
        ("user", "weather in Rome"), ("assistant", ""), ("tool", "sunny in Rome"),
        ("assistant", "final[Rome]: sunny in Rome"),
        ("user", "hi"), ("assistant", "echo: hi"),
    ]  # fmt: skip
    assert sum(r.appended for r in reports) == 10
    assert not any(r.redelivered for r in reports)  # (one report per model call, no more)
    assert len(reports) == len(model.calls)


class _Footer(AgentMiddleware[Any, Any]):
    """Adds a footer after the agent's answer (listed after the history, it runs first)."""

    def after_agent(self, state: Any, runtime: Any) -> dict[str, Any] | None:
        return {"messages": [AIMessage("-- sent by bot")]}


@pytest.mark.parametrize("scope", ["turns", "full"])
def test_a_footer_after_a_tool_ended_run_is_stored_on_a_new_thread_per_run(
    store: Any, scope: str
) -> None:
    """A footer an ``after_agent`` hook adds after a ``return_direct`` result ends the
    run on that footer: the exchange was stored only by a stable thread's next turn, and
    lost with a new thread per callback. It is stored when the run ends."""
    agent = create_agent(
        LookupModel(),
        [lookup],
        middleware=[HistoryMiddleware(history_scope=scope), _Footer()],
        store=store,
        checkpointer=InMemorySaver(),
    )
    for message_id, text in [(1, "my order?"), (2, "thanks")]:
        config = {"configurable": {"thread_id": uuid.uuid4().hex}}
        agent.invoke(telegram_callback(7, text, message_id), config)
    stored = [(t.role, t.content) for t in ChatHistory(store, scope=scope).read("telegram:7")]
    tool_steps = [("assistant", ""), ("tool", "order 42 shipped")] if scope == "full" else []
    assert stored == [
        ("user", "my order?"), *tool_steps, ("assistant", "-- sent by bot"),
        ("user", "thanks"), ("assistant", "echo: thanks"),
    ]  # fmt: skip


@pytest.mark.parametrize("calls", ["sync", "async"])
async def test_an_agent_that_speaks_first_on_an_empty_thread_ends_its_run(
    store: Any, calls: str
) -> None:
    """A run on an empty thread (an assistant greeting first) ends on the model's one
    message: the run's end looks before it for tool results and finds none."""
    model = RecordingChatModel(prefix="hello")
    history = HistoryMiddleware(history_key=lambda state, runtime: "web:8")
    agent = create_agent(model, middleware=[history], store=store, checkpointer=InMemorySaver())
    config = {"configurable": {"thread_id": uuid.uuid4().hex}}
    if calls == "sync":
        out = agent.invoke({"messages": []}, config)
    else:
        out = await agent.ainvoke({"messages": []}, config)
    assert [str(m.content) for m in out["messages"]] == ["hello"]
    assert [t.content for t in ChatHistory(store).read("web:8")] == ["hello"]


class _SystemFirst(RecordingChatModel):
    """Refuses a system message after another kind, as Anthropic's and Google's chat
    integrations do ("Received multiple non-consecutive system messages")."""

    def reply(self, messages: list[BaseMessage], **kwargs: Any) -> AIMessage:
        kinds = [m.type == "system" for m in messages]
        if any(later and not earlier for earlier, later in itertools.pairwise(kinds)):
            raise ValueError("Received multiple non-consecutive system messages.")
        return super().reply(messages, **kwargs)


@pytest.mark.parametrize("order", ["history first", "summary first"])
def test_a_running_summary_beside_langchains_summary_keeps_system_messages_first(
    store: Any, order: str
) -> None:
    """The middleware's own running summary (a system message) went after langchain's
    summary (a human message marked as context): providers that want system messages
    first refused every later message of the chat. The payload now leads with the
    system prompt and the summary, then langchain's summary, then the window."""
    model = _SystemFirst()
    history = HistoryMiddleware(
        max_messages=4,
        summary_model=FakeListChatModel(responses=["OWN SUMMARY"] * 50),
        summary_every=2,
    )
    summarize = SummarizationMiddleware(
        FakeListChatModel(responses=["LC SUMMARY"] * 50),
        trigger=("messages", 6),
        keep=("messages", 2),
    )
    agent = create_agent(
        model,
        system_prompt="You are a bot.",
        middleware=[history, summarize] if order == "history first" else [summarize, history],
        store=store,
        checkpointer=InMemorySaver(),
    )
    config = {"configurable": {"thread_id": uuid.uuid4().hex}}
    for i in range(1, 9):
        out = agent.invoke(telegram_callback(1, f"message {i}", i), config)
        assert str(out["messages"][-1].content) == f"echo: message {i}"
    last = model.calls[-1]
    heads = [(m.type, str(m.content)[:20]) for m in last[:3]]
    assert heads[0] == ("system", "You are a bot.")
    assert heads[1][0] == "system" and "OWN SUMMARY" in str(last[1].content)
    assert heads[2][0] == "human" and "LC SUMMARY" in str(last[2].content)
    assert str(last[-1].content) == "message 8"
    stored = [t.content for t in ChatHistory(store).read("telegram:1")]
    assert stored == [text for i in range(1, 9) for text in (f"message {i}", f"echo: message {i}")]


@pytest.mark.parametrize("calls", ["sync", "async"])
@pytest.mark.parametrize("scope", ["turns", "full"])
async def test_a_message_a_guard_blocks_in_another_worker_after_a_tool_loop_is_not_stored(
    store: Any, scope: str, calls: str
) -> None:
    """A stable thread's tool loop the model answered, then a message a guard ends before
    the agent, in another worker (its middleware never saw that answer given): the run's
    end took the answer for a hook's, and stored the blocked text as an unanswered
    question sent with every later turn. A run that never reached the agent stores
    nothing."""
    model = WeatherModel()
    saver = InMemorySaver()

    def worker() -> Any:
        history = HistoryMiddleware(history_scope=scope)
        return create_agent(
            model,
            [get_weather],
            middleware=[_InputGuard(), history],
            store=store,
            checkpointer=saver,
        )

    config = {"configurable": {"thread_id": uuid.uuid4().hex}}
    runs = [(1, "weather in Paris"), (2, "BLOCKED card 4111"), (3, "hi")]
    for message_id, text in runs:
        agent = worker()  # each callback served by another worker
        callback = telegram_callback(7, text, message_id)
        if calls == "sync":
            agent.invoke(callback, config)
        else:
            await agent.ainvoke(callback, config)
    stored = [(t.role, t.content) for t in ChatHistory(store, scope=scope).read("telegram:7")]
    tool_steps = [("assistant", ""), ("tool", "sunny in Paris")] if scope == "full" else []
    assert stored == [
        ("user", "weather in Paris"), *tool_steps,
        ("assistant", "final[Paris]: sunny in Paris"),
        ("user", "hi"), ("assistant", "echo: hi"),
    ]  # fmt: skip
    assert not any("4111" in str(m.content) for m in model.calls[-1])
