"""Token budgets: which counter counts, and when a read from the newest turn back has
read enough to fill a window (I/O-free)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.language_models import BaseLanguageModel
from langchain_core.messages import BaseMessage
from langchain_core.messages.utils import count_tokens_approximately

from agent_history.history.records import Turn
from agent_history.messages import TokenCounter

__all__ = ["TokenCounterLike", "WindowFill", "token_counter_for"]

TokenCounterLike = TokenCounter | BaseLanguageModel[Any] | None
"""What a ``token_counter`` option accepts: a callable counting a message list, a model
(its ``get_num_tokens_from_messages``), or None for LangChain's
``count_tokens_approximately``."""


def token_counter_for(counter: TokenCounterLike) -> TokenCounter:
    """The callable that counts tokens for ``counter`` (see `TokenCounterLike`)."""
    if counter is None:
        return count_tokens_approximately
    if isinstance(counter, BaseLanguageModel):
        return counter.get_num_tokens_from_messages
    if callable(counter):
        return counter
    raise TypeError(
        "token_counter must be a callable counting a message list, a chat model, or None"
    )


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
