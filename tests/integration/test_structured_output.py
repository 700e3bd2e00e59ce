"""A structured answer given as a tool call (langchain's ``ToolStrategy``) ends the
exchange: it is stored, with its result, through the middleware and through AgentNode."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage
from langgraph.store.base import BaseStore
from pydantic import BaseModel

from agent_history import AgentNode, ChatHistory
from agent_history.toggles import HistoryToggles
from tests.support.agent_graphs import build_graph, new_thread, telegram_callback

pytest.importorskip("langchain.agents")
from langchain.agents import create_agent
from langchain.agents.structured_output import ToolStrategy

from agent_history.middleware import HistoryMiddleware


class Weather(BaseModel):
    city: str
    sky: str


class _Scripted(GenericFakeChatModel):
    def bind_tools(self, tools: Any, **kwargs: Any) -> _Scripted:  # type: ignore[override]
        return self


def _answer() -> _Scripted:
    call = {"name": "Weather", "args": {"city": "Paris", "sky": "sunny"}, "id": "w1"}
    return _Scripted(messages=iter([AIMessage("", tool_calls=[call])]))


@pytest.mark.parametrize("scope", ["turns", "full"])
def test_middleware_stores_a_structured_answer(store: BaseStore, scope: str) -> None:
    key = f"chat:{uuid.uuid4().hex[:8]}"
    middleware = HistoryMiddleware(
        history_key_candidates=[key], history_scope=scope, toggles=HistoryToggles(env={})
    )
    graph = create_agent(
        _answer(),
        tools=[],
        response_format=ToolStrategy(Weather),
        middleware=[middleware],
        store=store,
    )
    state = graph.invoke({"messages": [{"role": "user", "content": "weather?"}]})
    assert state["structured_response"] == Weather(city="Paris", sky="sunny")
    history = ChatHistory(store, scope="full")
    stored = history.to_messages(list(history.read(key)))
    assert stored == state["messages"]
    assert [m.type for m in stored] == ["human", "ai", "tool"]


def test_agent_node_stores_a_structured_answer_of_its_agent(store: BaseStore) -> None:
    agent = create_agent(_answer(), tools=[], response_format=ToolStrategy(Weather))
    node = AgentNode(agent, use_graph_chat_history=True, toggles=HistoryToggles(env={}))
    chat = uuid.uuid4().int % 10**9
    build_graph(node, store).invoke(telegram_callback(chat, "weather?", 5), new_thread())
    stored = [(t.role, t.content) for t in ChatHistory(store).read(f"telegram:{chat}")]
    assert [role for role, _ in stored] == ["user", "assistant", "tool"]
    assert stored[2][1].startswith("Returning structured response")


def _weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


class _AnswersWithATool(_Scripted):
    """Gives its structured answer and a tool call beside it, in one message."""

    calls: list[list[str]] = []

    def _generate(self, messages: Any, stop: Any = None, **kwargs: Any) -> Any:
        from langchain_core.outputs import ChatGeneration, ChatResult

        self.calls.append([m.type for m in messages])
        n = sum(1 for m in messages if m.type == "human")
        calls = [
            {"name": "_weather", "args": {"city": "Paris"}, "id": f"t{n}"},
            {"name": "Weather", "args": {"city": "Paris", "sky": "sunny"}, "id": f"w{n}"},
        ]
        return ChatResult(generations=[ChatGeneration(message=AIMessage("", tool_calls=calls))])


@pytest.mark.parametrize("thread", ["new thread per run", "stable thread"])
@pytest.mark.parametrize("scope", ["turns", "full"])
def test_a_structured_answer_beside_another_tool_call_is_stored_with_that_tools_result(
    store: BaseStore, scope: str, thread: str
) -> None:
    """The model gives its structured answer and calls another tool in the same message:
    the agent runs that tool after the answer. The answer was stored before the tool's
    result existed, a call without its result: a later turn's window left the exchange
    out (a call without its result is refused by providers), on a new thread per run
    for good. The exchange is now stored when the run ends, with both results."""
    from langgraph.checkpoint.memory import InMemorySaver

    key = f"chat:{uuid.uuid4().hex[:8]}"
    model = _AnswersWithATool(messages=iter([]))
    middleware = HistoryMiddleware(
        history_key_candidates=[key], history_scope=scope, toggles=HistoryToggles(env={})
    )
    graph = create_agent(
        model,
        tools=[_weather],
        response_format=ToolStrategy(Weather),
        middleware=[middleware],
        store=store,
        checkpointer=InMemorySaver(),
    )
    stable = new_thread()
    for text, message_id in [("weather?", 1), ("and tomorrow?", 2)]:
        config = stable if thread == "stable thread" else new_thread()
        callback = {"inputs": {"message": {"text": text, "message_id": message_id}}}
        state = graph.invoke(callback, config)
        assert state["structured_response"] == Weather(city="Paris", sky="sunny")
    stored = [(t.role, t.content) for t in ChatHistory(store, scope=scope).read(key)]
    answer = [("assistant", ""), ("tool", "Returning structured response: city='Paris' sky='sunny'"),
              ("tool", "sunny in Paris")]  # fmt: skip
    assert stored == [("user", "weather?"), *answer, ("user", "and tomorrow?"), *answer]
    assert model.calls == [["human"], ["human", "ai", "tool", "tool", "human"]]
