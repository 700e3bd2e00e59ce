"""Deterministic offline summary models: they record what they were asked and answer
without a network, so tests can assert every summary request exactly."""

from __future__ import annotations

import re
import threading
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage
from pydantic import ConfigDict

from agent_history.offline_model import RecordingChatModel

__all__ = ["AccumulatingSummariser", "FixedSummariser", "request_parts"]

_REQUEST = re.compile(r"^<summary>\n(.*)\n</summary>\n\n<messages>\n(.*)\n</messages>$", re.S)


def request_parts(request: list[BaseMessage]) -> tuple[str, str]:
    """The previous summary and the transcript of a summary request."""
    found = _REQUEST.match(str(request[-1].content))
    assert found is not None, "a summary request has a <summary> and a <messages> part"
    return found.group(1), found.group(2)


class FixedSummariser(RecordingChatModel):
    """Answers every request with ``text``; records the requests. ``fail`` makes it
    raise; ``gate`` makes it wait until the event is set (a model that is slow)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    text: str = "SUMMARY"
    fail: bool = False
    gate: threading.Event | None = None

    @property
    def _llm_type(self) -> str:
        return "fixed-summary"

    def reply(self, messages: list[BaseMessage], **kwargs: Any) -> AIMessage:
        if self.gate is not None:
            self.gate.wait(60)
        if self.fail:
            raise RuntimeError("summary model down")
        return AIMessage(self.text)


class AccumulatingSummariser(RecordingChatModel):
    """Answers with the previous summary followed by the new transcript: the stored
    summary then shows exactly which turns every version added (none lost, none twice)."""

    @property
    def _llm_type(self) -> str:
        return "accumulating-summary"

    def reply(self, messages: list[BaseMessage], **kwargs: Any) -> AIMessage:
        previous, transcript = request_parts(messages)
        return AIMessage(f"{previous}\n{transcript}" if previous else transcript)
