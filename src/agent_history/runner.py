"""Running the node's model: a chat model (bound or configured), a tool agent around one,
or any agent runnable taking ``{"messages": [...]}``.

The calling convention is read from the runnable's declared input type, not its class:
anything that accepts a prompt value (a chat model, and what ``bind_tools``,
``with_config``, ``with_retry`` or ``with_fallbacks`` make of one) gets the message list;
anything else (a compiled graph, a prebuilt agent) gets ``{"messages": payload}``.
Exceptions from the model propagate unchanged.
"""

from __future__ import annotations

import typing
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langchain_core.prompt_values import PromptValue
from langchain_core.runnables import Runnable, RunnableConfig

from agent_history.errors import AgentHistoryError

__all__ = ["Produced", "aproduce", "build_runnable", "produce", "takes_messages"]


def build_runnable(model: Any, tools: Sequence[Any]) -> Runnable[Any, Any]:
    """The runnable the node calls: ``model`` itself, or a tool agent around it."""
    if isinstance(model, str):
        try:
            from langchain.chat_models import init_chat_model
        except ImportError as exc:
            raise AgentHistoryError(
                "a 'provider:model' string needs the langchain package "
                "(pip install 'agent-history[agents]' plus the provider's package)"
            ) from exc
        model = init_chat_model(model)
    if not isinstance(model, Runnable):
        raise TypeError("model must be a chat model, a 'provider:model' string or a runnable")
    if tools:
        if not isinstance(model, BaseChatModel):
            raise ValueError("tools need a plain chat model (the agent binds them itself)")
        return _tool_agent(model, tools)
    return model


def _tool_agent(model: BaseChatModel, tools: Sequence[Any]) -> Runnable[Any, Any]:
    try:
        from langchain.agents import create_agent
    except ImportError:
        from langgraph.prebuilt import create_react_agent

        with warnings.catch_warnings():
            # Moved to langchain.agents in LangGraph 1.0; still shipped until 2.0.
            warnings.simplefilter("ignore")
            return create_react_agent(model, list(tools))
    from agent_history.middleware import MessageIds

    agent: Runnable[Any, Any] = create_agent(model, list(tools), middleware=[MessageIds()])
    return agent


def takes_messages(runnable: Runnable[Any, Any]) -> bool:
    """Whether ``runnable`` is called with a message list (its input accepts a prompt
    value, as a chat model's does) rather than with ``{"messages": [...]}``."""
    try:
        declared = runnable.InputType
    except Exception:  # a runnable that cannot tell its input type
        return False
    options = typing.get_args(declared) or (declared,)
    return any(isinstance(o, type) and issubclass(o, PromptValue) for o in options)


class Produced(list[BaseMessage]):
    """The messages a model call produced; ``ends`` when an agent ended the exchange on
    something other than a final answer: a structured response (a tool call and its
    result), or the result of a tool that returns directly (``return_direct=True``)."""

    ends: bool = False


def _new_messages(output: Any, payload: Sequence[BaseMessage]) -> list[BaseMessage]:
    if isinstance(output, BaseMessage):
        return [output]
    if isinstance(output, Mapping):
        messages = output.get("messages")
        if isinstance(messages, list):
            sent = {m.id for m in payload if m.id}
            tail = messages[len(payload) :] if len(messages) >= len(payload) else messages
            produced = Produced(m for m in tail if isinstance(m, BaseMessage) and m.id not in sent)
            produced.ends = output.get("structured_response") is not None or (
                bool(produced) and isinstance(produced[-1], ToolMessage)
            )
            return produced
        raw = output.get("raw")
        if isinstance(raw, BaseMessage):  # with_structured_output(..., include_raw=True)
            return [raw]
    if isinstance(output, str):
        return [AIMessage(output)]
    raise TypeError(
        f"the model returned {type(output).__name__}; AgentNode needs a message, a string, "
        "or a mapping with 'messages' (use include_raw=True with structured output)"
    )


def _model_input(runnable: Runnable[Any, Any], payload: list[BaseMessage]) -> Any:
    return payload if takes_messages(runnable) else {"messages": payload}


def produce(
    runnable: Runnable[Any, Any], payload: list[BaseMessage], config: RunnableConfig | None
) -> list[BaseMessage]:
    """Run the model on ``payload``; the messages it produced, in order."""
    output = runnable.invoke(_model_input(runnable, payload), config)
    return _new_messages(output, payload)


async def aproduce(
    runnable: Runnable[Any, Any], payload: list[BaseMessage], config: RunnableConfig | None
) -> list[BaseMessage]:
    """Async `produce`."""
    output = await runnable.ainvoke(_model_input(runnable, payload), config)
    return _new_messages(output, payload)
