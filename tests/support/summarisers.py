"""Deterministic offline summary models: they record what they were asked and answer
without a network, so tests can assert every summary request exactly."""

from __future__ import annotations

import re
import threading
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import ConfigDict, Field

__all__ = ["AccumulatingSummariser", "FixedSummariser", "request_parts"]

_REQUEST = re.compile(r"^<summary>\n(.*)\n</summary>\n\n<messages>\n(.*)\n</messages>$", re.S)


def request_parts(request: list[BaseMessage]) -> tuple[str, str]:
    """The previous summary and the transcript of a summary request."""
    found = _REQUEST.match(str(request[-1].content))
    assert found is not None, "a summary request has a <summary> and a <messages> part"
    return found.group(1), found.group(2)


class FixedSummariser(BaseChatModel):
    """Answers every request with ``text``; records the requests. ``fail`` makes it
    raise; ``gate`` makes it wait until the event is set (a model that is slow)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    text: str = "SUMMARY"
    calls: list[list[BaseMessage]] = Field(default_factory=list)
    fail: bool = False
    gate: threading.Event | None = None

    @property
    def _llm_type(self) -> str:
        return "fixed-summary"

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        self.calls.append(list(messages))
        if self.gate is not None:
            self.gate.wait(60)
        if self.fail:
            raise RuntimeError("summary model down")
        return ChatResult(generations=[ChatGeneration(message=AIMessage(self.text))])


class AccumulatingSummariser(BaseChatModel):
    """Answers with the previous summary followed by the new transcript: the stored
    summary then shows exactly which turns every version added (none lost, none twice)."""

    calls: list[list[BaseMessage]] = Field(default_factory=list)

    @property
    def _llm_type(self) -> str:
        return "accumulating-summary"

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        self.calls.append(list(messages))
        previous, transcript = request_parts(messages)
        text = f"{previous}\n{transcript}" if previous else transcript
        return ChatResult(generations=[ChatGeneration(message=AIMessage(text))])
