"""One regression test per defect found by wiring `AgentNode` the way LangGraph users do:
each failed before one identity per message, once-per-run input, tool-safe windows,
calling conventions and full-fidelity storage."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.outputs import ChatResult
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import START, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition
from langgraph.store.base import BaseStore

from agent_history import AgentNode, AgentState, ChatHistory, HistoryReport
from agent_history.settings import HistorySettings
from agent_history.stores import create_checkpointer_sync, create_graph_store_sync
from agent_history.testing import RecordingChatModel
from agent_history.toggles import HistoryToggles
from tests.support.agent_graphs import build_graph, telegram_callback
from tests.support.patterns import check_pairing
from tests.support.tool_models import WeatherModel, get_weather, signature

NS = ("agent_chat_history",)


class VaryingModel(RecordingChatModel):
    """Answers like a real model: never twice the same text."""

    def reply(self, messages: list[BaseMessage], **kwargs: Any) -> AIMessage:
        asked = next((m.content for m in reversed(messages) if m.type == "human"), "<nothing>")
        return AIMessage(f"answer {len(self.calls)} to: {asked}")


def _node(model: Any, **kwargs: Any) -> AgentNode:
    kwargs.setdefault("use_graph_chat_history", True)
    kwargs.setdefault("toggles", HistoryToggles(env={}))
    return AgentNode(model, **kwargs)


def _tool_loop(node: AgentNode, store: BaseStore, saver: Any = None) -> Any:
    builder = StateGraph(AgentState)
    builder.add_node("agent", node)
    builder.add_node("tools", ToolNode([get_weather]))
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", tools_condition)
    builder.add_edge("tools", "agent")
    return builder.compile(store=store, checkpointer=saver)


def _one_node(node: AgentNode, store: BaseStore, saver: Any = None) -> Any:
    builder = StateGraph(AgentState)
    builder.add_node("agent", node)
    builder.add_edge(START, "agent")
    return builder.compile(store=store, checkpointer=saver)


def _stored(store: BaseStore, key: str, scope: str = "turns") -> list[BaseMessage]:
    history = ChatHistory(store, scope=scope)  # type: ignore[arg-type]
    return history.to_messages(list(history.read(key)))


def test_stable_thread_with_channel_ids_stores_each_answer_once(store: BaseStore) -> None:
    model = RecordingChatModel()
    graph = _one_node(_node(model), store, InMemorySaver())
    chat = uuid.uuid4().int % 10**9
    config = {"configurable": {"thread_id": f"chat-{chat}"}}
    for number, text in enumerate(["one", "two", "three"], start=1):
        graph.invoke(telegram_callback(chat, text, message_id=number), config)
    stored = [m.content for m in _stored(store, f"telegram:{chat}")]
    assert stored == ["one", "echo: one", "two", "echo: two", "three", "echo: three"]
    assert [m.content for m in model.calls[-1]] == ["one", "echo: one", "two", "echo: two", "three"]


def test_toolnode_loop_with_the_documented_payload_ends(store: BaseStore) -> None:
    model = WeatherModel(always_tools=True)
    graph = _tool_loop(_node(model), store)
    chat = uuid.uuid4().int % 10**9
    # The payload the docs show: no message id. A plain tool loop needs 4 steps.
    result = graph.invoke(
        telegram_callback(chat, "weather in Paris"),
        {"configurable": {"thread_id": "t"}, "recursion_limit": 6},
    )
    assert result["messages"][-1].content == "final[Paris]: sunny in Paris"
    assert [signature(m)[0] for m in model.calls[1]] == ["human", "ai", "tool"]
    assert [m.content for m in _stored(store, f"telegram:{chat}")] == [
        "weather in Paris",
        "final[Paris]: sunny in Paris",
    ]


def test_stable_thread_tool_loop_never_puts_old_tool_steps_after_the_question(
    store: BaseStore,
) -> None:
    model = WeatherModel()
    graph = _tool_loop(_node(model.bind_tools([get_weather])), store, InMemorySaver())
    chat = uuid.uuid4().int % 10**9
    config = {"configurable": {"thread_id": f"chat-{chat}"}, "recursion_limit": 10}
    graph.invoke(telegram_callback(chat, "weather in Paris"), config)
    graph.invoke(telegram_callback(chat, "weather in Rome"), config)
    rome_first_call = [signature(m)[:2] for m in model.calls[2]]
    assert rome_first_call == [
        ("human", "weather in Paris"),
        ("ai", ""),
        ("tool", "sunny in Paris"),
        ("ai", "final[Paris]: sunny in Paris"),
        ("human", "weather in Rome"),
    ]
    for payload in model.calls:
        check_pairing(payload)


def test_a_model_after_bind_tools_is_called_with_messages(store: BaseStore) -> None:
    model = WeatherModel()
    bound = model.bind_tools([get_weather])
    assert not isinstance(bound, BaseChatModel)
    graph = _one_node(_node(bound), store)
    chat = uuid.uuid4().int % 10**9
    result = graph.invoke(telegram_callback(chat, "hello"))
    assert result["messages"][-1].content == "echo: hello"
    assert [m.content for m in model.calls[0]] == ["hello"]


def test_a_window_of_one_keeps_the_question_and_the_tool_result(store: BaseStore) -> None:
    model = WeatherModel()
    graph = _tool_loop(_node(model.bind_tools([get_weather]), max_messages=1), store)
    chat = uuid.uuid4().int % 10**9
    graph.invoke(telegram_callback(chat, "hello"), {"recursion_limit": 6})
    graph.invoke(telegram_callback(chat, "weather in Oslo"), {"recursion_limit": 6})
    payloads = [[signature(m)[:2] for m in call] for call in model.calls]
    assert payloads == [
        [("human", "hello")],
        [("human", "weather in Oslo")],  # never [] and never starting on the old answer
        [("human", "weather in Oslo"), ("ai", ""), ("tool", "sunny in Oslo")],
    ]


def test_full_scope_stores_every_message_field_for_field(store: BaseStore) -> None:
    model = WeatherModel()
    graph = _tool_loop(_node(model.bind_tools([get_weather]), history_scope="full"), store)
    chat = uuid.uuid4().int % 10**9
    result = graph.invoke(telegram_callback(chat, "weather in Lima", message_id=7))
    stored = _stored(store, f"telegram:{chat}", "full")
    assert stored == result["messages"]
    ai_call, tool_result, answer = stored[1], stored[2], stored[3]
    assert isinstance(ai_call, AIMessage) and ai_call.tool_calls[0]["args"] == {"city": "Lima"}
    assert isinstance(tool_result, ToolMessage) and tool_result.name == "get_weather"
    assert answer.usage_metadata == {"input_tokens": 3, "output_tokens": 3, "total_tokens": 6}
    assert answer.response_metadata["model_name"] == "weather-test"
    assert stored[0].id == "7"
    # and the stored conversation replays into the same agent
    replayed = _node(model.bind_tools([get_weather]), use_graph_chat_history=False)
    again = _tool_loop(replayed, store).invoke({"messages": [*stored, HumanMessage("thanks")]})
    assert again["messages"][-1].content == "echo: thanks"


class _Exhausted(BaseChatModel):
    @property
    def _llm_type(self) -> str:
        return "exhausted"

    def _generate(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> ChatResult:
        raise StopIteration


def test_stop_iteration_from_the_model_propagates(store: BaseStore) -> None:
    node = _node(_Exhausted())
    with pytest.raises(StopIteration):
        node.invoke(telegram_callback(1, "hi"))
    graph = _one_node(node, store)
    with pytest.raises((StopIteration, RuntimeError)):
        graph.invoke(telegram_callback(1, "hi"))


async def test_message_stream_does_not_attribute_the_delivered_message_to_the_node(
    store: BaseStore,
) -> None:
    graph = _one_node(_node(RecordingChatModel()), store)
    chat = uuid.uuid4().int % 10**9
    streamed = [
        (message.type, meta["langgraph_node"])
        async for message, meta in graph.astream(
            telegram_callback(chat, "hi", message_id=5), stream_mode="messages"
        )
    ]
    assert ("human", "agent") not in streamed
    assert streamed[-1] == ("ai", "agent")
    updates = [
        u async for u in graph.astream(telegram_callback(chat, "again", 6), stream_mode="updates")
    ]
    emitted = [m.id for update in updates for m in update["agent"]["messages"]]
    assert len(emitted) == len(set(emitted)) == 2


def _sticker(chat: int) -> dict[str, Any]:
    callback = telegram_callback(chat, "x")
    callback["inputs"]["message"] = {"sticker": {"file_id": "abc"}, "message_id": 2}
    return callback


def _event(chat: int, inputs: Any) -> dict[str, Any]:
    """An event the workflow maps into no `inputs` (a WeCom enter_agent, a Telegram
    update type it ignores): only the parser's result, which resolves the key."""
    state: dict[str, Any] = {"results": {"telegram_events_parser": {"chat_id": chat}}}
    if inputs != "absent":
        state["inputs"] = inputs
    return state


@pytest.mark.parametrize(
    ("thread", "callback"),
    [
        ("stable", "sticker"),
        ("fresh", "sticker"),
        # A stable thread's state keeps the last callback's `inputs` when an event sets none.
        ("stable", "no inputs"),
        ("fresh", "no inputs"),
        ("fresh", "empty inputs"),
        ("fresh", "inputs None"),
        # (A stable thread given an empty `inputs` is a plain-messages run: see the docs.)
    ],
)
def test_a_callback_without_a_user_message_answers_nothing_twice(
    store: BaseStore, thread: str, callback: str
) -> None:
    reports: list[HistoryReport] = []
    model = VaryingModel()  # a real model answers the same question differently
    graph = _one_node(_node(model, on_report=reports.append), store, InMemorySaver())
    chat = uuid.uuid4().int % 10**9
    stable = {"configurable": {"thread_id": f"chat-{chat}"}}

    def config() -> dict[str, Any]:
        return stable if thread == "stable" else {"configurable": {"thread_id": uuid.uuid4().hex}}

    graph.invoke(telegram_callback(chat, "hi", message_id=1), config())
    delivered = {
        "sticker": _sticker(chat),
        "no inputs": _event(chat, "absent"),
        "empty inputs": _event(chat, {}),
        "inputs None": _event(chat, None),
    }[callback]
    result = graph.invoke(delivered, config())
    assert len(model.calls) == 1  # nothing new to answer: no model call
    assert [m.content for m in result["messages"]][-1:] in (["answer 1 to: hi"], [])
    stored = [m.content for m in _stored(store, f"telegram:{chat}")]
    assert stored == ["hi", "answer 1 to: hi"]  # no second answer without a question
    # Nothing was delivered, so nothing was re-delivered either (except that a stable
    # thread's state still holds the last callback's `inputs` when the event sets none).
    stale = thread == "stable" and callback == "no inputs"
    assert (reports[-1].model_called, reports[-1].redelivered) == (False, stale)
    # A chat whose first callback delivers no message: no model call on an empty payload.
    first = uuid.uuid4().int % 10**9
    fresh = {"configurable": {"thread_id": uuid.uuid4().hex}}
    graph.invoke(_event(first, {}) if callback != "sticker" else _sticker(first), fresh)
    assert len(model.calls) == 1
    assert _stored(store, f"telegram:{first}") == []


def test_plain_message_graphs_with_an_empty_inputs_default_still_run_every_agent(
    store: BaseStore,
) -> None:
    """A pipeline's second agent and an assistant that speaks first: their state may carry
    an empty `inputs` (a pydantic default), which is not a callback."""
    writer, reviewer = RecordingChatModel(prefix="draft: "), RecordingChatModel(prefix="ok: ")
    builder = StateGraph(AgentState)
    builder.add_node("writer", _node(writer, history_key_candidates=["web:7"]))
    builder.add_node("reviewer", _node(reviewer, history_namespace=["reviews"],
                                       history_key_candidates=["web:7"]))  # fmt: skip
    builder.add_edge(START, "writer")
    builder.add_edge("writer", "reviewer")
    graph = builder.compile(store=store)
    out = graph.invoke({"messages": [HumanMessage("a poem", id="p1")], "inputs": {}})
    assert (len(writer.calls), len(reviewer.calls)) == (1, 1)
    assert out["messages"][-1].content.startswith("ok: ")
    greeter = RecordingChatModel(prefix="hello")
    first = _one_node(_node(greeter, system_prompt="Greet the user.",
                            history_key_candidates=["web:8"]), store)  # fmt: skip
    spoken = first.invoke({"messages": []})
    assert len(greeter.calls) == 1 and spoken["messages"][-1].content == "hello"


def test_a_graph_driven_with_plain_messages_answers_its_thread_as_it_stands(
    store: BaseStore,
) -> None:
    """Without a callback (no `inputs`, no `results`), the thread is what the run gives:
    a run with a new user message is answered, and the rule above does not apply."""
    model = RecordingChatModel()
    graph = _one_node(_node(model, history_key_candidates=["web:42"]), store, InMemorySaver())
    stable = {"configurable": {"thread_id": "web-42"}}
    graph.invoke({"messages": [HumanMessage("hi", id="h1")]}, stable)
    graph.invoke({"messages": [HumanMessage("and you?", id="h2")]}, stable)
    assert [m[-1].content for m in model.calls] == ["hi", "and you?"]
    stored = [m.content for m in _stored(store, "web:42")]
    assert stored == ["hi", "echo: hi", "and you?", "echo: and you?"]


def test_an_upgrade_onto_a_log_of_32_turn_chunks_with_a_stable_thread_and_redeliveries(
    tmp_path: Path,
) -> None:
    """What an operator upgrading brings: a log written with 32-turn chunks (the old
    default), a stable thread per chat with a SQLite checkpointer, and a webhook that
    re-delivers a message without ids. Every payload is the window of the old log and the
    thread, the re-delivery stores nothing, and the log goes on from where it was."""
    settings = HistorySettings(
        graph_store_sqlite_path=tmp_path / "store.sqlite",
        checkpoint_sqlite_path=tmp_path / "checkpoints.sqlite",
    )
    chat = 7001
    key = f"telegram:{chat}"
    with (
        create_graph_store_sync(settings) as store,
        create_checkpointer_sync(settings) as checkpointer,
    ):
        old = ChatHistory(store, chunk_size=32)
        old.append(key, [m for i in range(20) for m in (HumanMessage(f"q{i}"), AIMessage(f"a{i}"))])
        model = RecordingChatModel()
        node = AgentNode(
            model, use_graph_chat_history=True, max_messages=6, toggles=HistoryToggles(env={})
        )
        graph = build_graph(node, store, checkpointer)
        thread = {"configurable": {"thread_id": f"chat-{chat}"}}
        graph.invoke(telegram_callback(chat, "new"), thread)
        graph.invoke(telegram_callback(chat, "new"), thread)  # re-delivered, no ids
        graph.invoke(telegram_callback(chat, "after"), thread)

        # Without an id the re-delivery is the user saying "new" again (the thread keeps
        # it, the model answers it); the log stores the repeated exchange once.
        assert [[m.content for m in call] for call in model.calls] == [
            ["q18", "a18", "q19", "a19", "new"],
            ["q19", "a19", "new", "echo: new", "new"],
            ["new", "echo: new", "new", "echo: new", "after"],
        ]
        stored = [t.content for t in ChatHistory(store).read(key)]
        assert stored[:40] == [t for i in range(20) for t in (f"q{i}", f"a{i}")]
        assert stored[40:] == ["new", "echo: new", "after", "echo: after"]
        assert ChatHistory(store).info(key).chunk_size == 32  # type: ignore[union-attr]
