"""`KeyedMessageHistory`: one conversation of a `ChatHistory` as LangChain's
`BaseChatMessageHistory`, for anything built on that interface (``RunnableWithMessageHistory``
while langchain-core ships it, or a plain loop).

Made by `ChatHistory.for_key`. Reads are bounded when a ``window`` is given (a tail read
of the newest messages); without one, ``messages`` streams the whole transcript. Appends
are `ChatHistory.append`'s: atomic, and a message whose id is already stored is skipped.
A message added without an id gets one, set on the message itself (as the graph state
does), so adding the same message objects again (a retry) stores nothing twice.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING

from langchain_core.chat_history import BaseChatMessageHistory
from langchain_core.messages import BaseMessage

from agent_history.errors import InvalidMessage
from agent_history.history.arguments import count_arg
from agent_history.keys import require_history_key
from agent_history.messages import MessageLike, tool_call_before, tool_safe_units

if TYPE_CHECKING:
    from agent_history.history.chat_history import ChatHistory

__all__ = ["KeyedMessageHistory"]


class KeyedMessageHistory(BaseChatMessageHistory):
    """The conversation ``key`` of ``history`` as a `BaseChatMessageHistory`.

    Args:
        history: The `ChatHistory` (store, namespace, scope) the conversation lives in.
        key: Conversation key (checked by `validate_history_key`).
        window: Newest messages ``messages`` returns (None: the whole transcript).

    Raises:
        InvalidKey: ``key`` is rejected (with its reason code).
        InvalidArgument: ``window`` is not a whole number from 1 (a larger window than
            `arguments.MAX_COUNT` reads every message).
    """

    def __init__(self, history: ChatHistory, key: str, *, window: int | None = None) -> None:
        self.history = history
        self.key = require_history_key(key)
        self.window = None if window is None else count_arg("window", window, minimum=1)

    @property
    def messages(self) -> list[BaseMessage]:  # type: ignore[override]
        """The newest ``window`` messages (all of them without a window), oldest first.

        A window is tool-call safe, as a model needs it: tool results whose call is older
        than the window, and a tool call whose results were never all stored, are left
        out."""
        if self.window is not None:
            return _tool_safe(self.history.tail(self.key, self.window))
        return self.history.to_messages(list(self.history.read(self.key)), self.key)

    async def aget_messages(self) -> list[BaseMessage]:
        """Async `messages`."""
        if self.window is not None:
            return _tool_safe(await self.history.atail(self.key, self.window))
        turns = [turn async for turn in self.history.aread(self.key)]
        return self.history.to_messages(turns, self.key)

    def add_messages(self, messages: Sequence[MessageLike]) -> None:
        """Append ``messages`` in one atomic write (the history's scope decides which are
        kept: ``turns`` keeps user messages and final answers).

        LangChain messages without an id get one; role/content dicts are taken as
        `ChatHistory.append` takes them (stored under their own ``id``, if any).

        Raises:
            InvalidMessage: a message cannot be stored exactly (or is not a message, such
                as a string); nothing is written.
        """
        self.history.append(self.key, _with_ids(messages))

    async def aadd_messages(self, messages: Sequence[MessageLike]) -> None:
        """Async `add_messages`."""
        await self.history.aappend(self.key, _with_ids(messages))

    def clear(self) -> None:
        """Delete the conversation."""
        self.history.delete(self.key)

    async def aclear(self) -> None:
        """Async `clear`."""
        await self.history.adelete(self.key)


def _with_ids(messages: Sequence[MessageLike]) -> list[MessageLike]:
    """``messages`` with an id set on each LangChain message that has none (dicts and
    anything else are left to `ChatHistory.append`, which refuses what is not a message)."""
    if isinstance(messages, str | bytes) or not isinstance(messages, Sequence):
        raise InvalidMessage(
            f"messages must be a sequence of messages, not {type(messages).__name__}"
        )
    for message in messages:
        if isinstance(message, BaseMessage) and not message.id:
            message.id = str(uuid.uuid4())
    return list(messages)


def _tool_safe(messages: list[BaseMessage]) -> list[BaseMessage]:
    """``messages`` without what a model rejects: tool results whose call is not among
    them (the window cut it off) and a tool call whose results were never all stored with
    other messages after it (a loop that stopped mid-tool), as `messages.tool_safe_units`
    groups them. A tool call that is the newest message, with any results after it, is
    kept: a loop under way, whose caller adds the results next (as the whole transcript,
    and LangChain's own histories, give it)."""
    call = tool_call_before(messages, len(messages))
    start = len(messages) if call is None else call
    kept = [message for unit in tool_safe_units(messages[:start]) for message in unit]
    return [*kept, *messages[start:]]
