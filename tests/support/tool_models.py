"""A deterministic, offline tool-calling chat model and a tool, for the pattern matrix."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langchain_core.runnables import Runnable
from langchain_core.tools import tool

from agent_history.messages import text_of
from agent_history.offline_model import RecordingChatModel

__all__ = ["LookupModel", "WeatherModel", "get_weather", "lookup", "signature"]

_WEATHER = re.compile(r"weather in (\w+)")


@tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


class WeatherModel(RecordingChatModel):
    """Records every payload. With tools bound, a user message "weather in X" gets a
    ``get_weather(city=X)`` call and a tool result gets ``final[X]: <result>``; anything
    else is answered ``echo: <newest user text>``. Answers carry usage and response
    metadata, so full-fidelity storage has fields to keep."""

    always_tools: bool = False
    """Call tools even when none were bound (a model configured with tools elsewhere)."""

    @property
    def _llm_type(self) -> str:
        return "weather-test"

    def reply(self, messages: list[BaseMessage], **kwargs: Any) -> AIMessage:
        last = messages[-1] if messages else None
        meta: dict[str, Any] = {
            "usage_metadata": {
                "input_tokens": len(messages),
                "output_tokens": 3,
                "total_tokens": len(messages) + 3,
            },
            "response_metadata": {"model_name": "weather-test", "finish_reason": "stop"},
        }
        tools = bool(kwargs.get("tools")) or self.always_tools
        if tools and isinstance(last, ToolMessage):
            city = str(last.content).removeprefix("sunny in ")
            reply = AIMessage(f"final[{city}]: {last.content}", **meta)
        else:
            user = next((m for m in reversed(messages) if m.type == "human"), None)
            text = text_of(user) if user else ""
            match = _WEATHER.search(text)
            if tools and match and not isinstance(last, AIMessage):
                call = {
                    "name": "get_weather",
                    "args": {"city": match.group(1)},
                    "id": f"call-{len(self.calls)}",
                }
                reply = AIMessage("", tool_calls=[call], **meta)
            else:
                reply = AIMessage(f"echo: {text}", name="weather-bot", **meta)
        return reply

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> Runnable[Any, BaseMessage]:
        """Like a real chat model: a binding, not a chat model."""
        return self.bind(tools=[getattr(t, "name", str(t)) for t in tools], **kwargs)


def signature(message: BaseMessage) -> tuple[Any, ...]:
    """What the matrix compares: type, text and tool calls (ids are checked separately)."""
    calls = tuple(
        (c["name"], tuple(sorted(c["args"].items()))) for c in getattr(message, "tool_calls", [])
    )
    return message.type, text_of(message), calls


@tool(return_direct=True)
def lookup(order_id: str) -> str:
    """Look an order up; its result is the answer (the agent ends on it)."""
    return f"order {order_id} shipped"


class LookupModel(RecordingChatModel):
    """Calls ``lookup`` (a tool that returns directly) for a user message about an order;
    answers anything else ``echo: <text>``."""

    def reply(self, messages: list[BaseMessage], **kwargs: Any) -> AIMessage:
        last = messages[-1]
        if "order" in str(last.content) and not isinstance(last, ToolMessage):
            call = {"name": "lookup", "args": {"order_id": "42"}, "id": f"call-{len(self.calls)}"}
            return AIMessage("", tool_calls=[call])
        return AIMessage(f"echo: {last.content}")

    def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
        return self
