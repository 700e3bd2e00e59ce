"""A deterministic offline chat model for the demo, replays, drills and tests: it echoes the
newest user message and records every payload (no network, no keys)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import Field

from agent_history.messages import text_of

__all__ = ["RecordingChatModel"]


class RecordingChatModel(BaseChatModel):
    """Answers ``"<prefix><last user text>"`` and records every payload it receives.

    ``calls`` holds, per invocation, the list of messages the model was given, so tests can
    assert exactly what an agent node sent.
    """

    prefix: str = "echo: "
    """Text put before the echoed user message."""
    calls: list[list[BaseMessage]] = Field(default_factory=list)
    """Payloads received, in order."""

    @property
    def _llm_type(self) -> str:
        return "recording-echo"

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        self.calls.append(list(messages))
        return ChatResult(generations=[ChatGeneration(message=self.reply(messages, **kwargs))])

    def reply(self, messages: list[BaseMessage], **kwargs: Any) -> AIMessage:
        """The answer to ``messages`` (already recorded in ``calls``); ``kwargs`` are the
        call's bound arguments (``tools``, ...). Subclasses override it to answer
        otherwise and keep the recording."""
        last_user = next((m for m in reversed(messages) if m.type == "human"), None)
        return AIMessage(content=self.prefix + (text_of(last_user) if last_user else ""))

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> RecordingChatModel:
        """Tools are accepted and ignored: the model never calls them."""
        return self
