"""Token budgets: which counter counts, and when a read from the newest turn back has
read enough to fill a window (I/O-free)."""

from __future__ import annotations

import math
import operator
import time
from collections.abc import Callable, Sequence
from typing import Any, SupportsIndex, cast

from langchain_core.language_models import BaseLanguageModel
from langchain_core.messages import BaseMessage
from langchain_core.messages.utils import count_tokens_approximately

from agent_history import observability as obs
from agent_history.errors import InvalidArgument
from agent_history.history.records import Turn
from agent_history.messages import TokenCounter

__all__ = ["GuardedCounter", "TokenCounterLike", "WindowFill", "token_counter_for"]

TokenCounterLike = TokenCounter | BaseLanguageModel[Any] | None
"""What a ``token_counter`` option accepts: a callable counting a message list, a model
(its ``get_num_tokens_from_messages``), or None for LangChain's
``count_tokens_approximately``."""


def token_counter_for(counter: TokenCounterLike) -> TokenCounter:
    """The callable that counts tokens for ``counter`` (see `TokenCounterLike`); one of the
    application's is guarded (`GuardedCounter`).

    Raises:
        InvalidArgument: ``counter`` is none of these.
    """
    if counter is None:
        return count_tokens_approximately
    if isinstance(counter, BaseLanguageModel):
        return GuardedCounter(counter.get_num_tokens_from_messages)
    if callable(counter):
        return GuardedCounter(counter)
    raise InvalidArgument(
        "token_counter must be a callable counting a message list, a chat model, or None "
        f"(got {type(counter).__name__})"
    )


class GuardedCounter:
    """An application's token counter that never fails a run: when it raises, or answers
    anything but a whole number of tokens from 0 (a float is rounded up), the message list
    is counted by LangChain's ``count_tokens_approximately`` instead, with a warning
    ``token_counter_failed`` (the error class only) at most once a minute per process.

    A chat model's own counting may need a package the application lacks (LangChain's
    default needs ``transformers``); a tokenizer service may be down. The budget then
    holds approximately rather than every run failing."""

    def __init__(self, count: TokenCounter) -> None:
        self.count = count

    def __call__(self, messages: list[BaseMessage]) -> int:
        try:
            tokens: object = self.count(messages)
        except Exception as exc:
            return _fall_back(messages, type(exc).__name__)
        if not isinstance(tokens, bool):
            try:  # int, and numpy's integers
                whole = operator.index(cast(SupportsIndex, tokens))
            except TypeError:
                whole = None
            if whole is not None and whole >= 0:
                return whole
            if isinstance(tokens, float) and math.isfinite(tokens) and tokens >= 0:
                return math.ceil(tokens)
        return _fall_back(messages, f"answered {type(tokens).__name__}")


_WARN_EVERY_SECONDS = 60.0
_warned_at: float | None = None
"""When the process last warned of a failing counter: the warnings are paced per process
(an `AgentNode` makes its options, and so its counter, on every run)."""


def _fall_back(messages: list[BaseMessage], error: str) -> int:
    global _warned_at
    now = time.monotonic()
    if _warned_at is None or now - _warned_at >= _WARN_EVERY_SECONDS:
        _warned_at = now
        obs.log_event("token_counter_failed", error=error, fallback="approximate")
    return count_tokens_approximately(messages)


class WindowFill:
    """Decides when a tail read, going back chunk by chunk from the newest turn, has
    read enough turns to fill a window of ``max_tokens`` (the window cuts the rest).

    Called with each batch of turns read (newest batch first, each oldest first); the
    count stops at the budget, so it costs one count per batch.
    """

    def __init__(
        self,
        max_tokens: int,
        counter: TokenCounter,
        to_messages: Callable[[Sequence[Turn]], list[BaseMessage]],
    ) -> None:
        self.max_tokens = max_tokens
        self.counter = counter
        self.to_messages = to_messages
        self.tokens = 0

    def __call__(self, batch: Sequence[Turn]) -> bool:
        if batch:
            self.tokens += self.counter(self.to_messages(batch))
        return self.tokens >= self.max_tokens
