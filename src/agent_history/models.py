"""Running the node's model: a chat model, a tool agent around one, or any agent runnable."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.runnables import Runnable, RunnableConfig

from agent_history.errors import AgentHistoryError

__all__ = ["aproduce", "build_runnable", "produce"]


def build_runnable(model: Any, tools: Sequence[Any]) -> Runnable[Any, Any]:
    if isinstance(model, str):
        try:
            from langchain.chat_models import init_chat_model  # type: ignore[import-not-found]
        except ImportError as exc:
            raise AgentHistoryError(
                "a 'provider:model' string needs the langchain package "
                "(pip install 'agent-history[agents]' plus the provider's package)"
            ) from exc
        model = init_chat_model(model)
    if tools:
        if not isinstance(model, BaseChatModel):
            raise ValueError("tools need a chat model, not a prebuilt agent runnable")
        return _tool_agent(model, tools)
    if not isinstance(model, Runnable):
        raise TypeError("model must be a chat model, a 'provider:model' string or a runnable")
    return model


def _tool_agent(model: BaseChatModel, tools: Sequence[Any]) -> Runnable[Any, Any]:
    try:
        from langchain.agents import create_agent  # type: ignore[import-not-found]
    except ImportError:
        from langgraph.prebuilt import create_react_agent

        with warnings.catch_warnings():
            # Moved to langchain.agents in LangGraph 1.0; still shipped until 2.0.
            warnings.simplefilter("ignore")
            return create_react_agent(model, list(tools))
    agent: Runnable[Any, Any] = create_agent(model, list(tools))
    return agent


def _split_output(output: Any, sent: int) -> list[BaseMessage]:
    if isinstance(output, BaseMessage):
        return [output]
    if isinstance(output, Mapping) and isinstance(output.get("messages"), list):
        return [m for m in output["messages"][sent:] if isinstance(m, BaseMessage)]
    if isinstance(output, str):
        return [AIMessage(output)]
    raise TypeError(f"unexpected model output of type {type(output).__name__}")


def _model_input(runnable: Runnable[Any, Any], payload: list[BaseMessage]) -> Any:
    return payload if isinstance(runnable, BaseChatModel) else {"messages": payload}


def produce(
    runnable: Runnable[Any, Any], payload: list[BaseMessage], config: RunnableConfig | None
) -> list[BaseMessage]:
    output = runnable.invoke(_model_input(runnable, payload), config)
    return _split_output(output, len(payload))


async def aproduce(
    runnable: Runnable[Any, Any], payload: list[BaseMessage], config: RunnableConfig | None
) -> list[BaseMessage]:
    output = await runnable.ainvoke(_model_input(runnable, payload), config)
    return _split_output(output, len(payload))
