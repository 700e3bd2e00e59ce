"""The window read: the newest stored turns after the summary, chunk by chunk from the
newest, until the window is full (I/O-free steps).

The read is bounded by the window, never by the log: at most ``n`` turns (the message
limit), and with a token budget it stops at the first chunk that fills it. Turns the
summary covers are not read: the summary stands for them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from agent_history.context.summary import SUMMARY_KEY, Summary
from agent_history.history.layout import (
    HEAD_KEY,
    chunk_index,
    chunk_key,
    chunks_holding,
    collect_turns,
)
from agent_history.history.records import Turn
from agent_history.history.steps import Get, Steps

__all__ = ["TURNS_PER_GET", "ContextRead", "chunks_per_get", "context_steps"]

TURNS_PER_GET = 32
"""Turns a window read asks for per request (in whole chunks): one request for the
windows most agents keep."""


def chunks_per_get(chunk_size: int) -> int:
    """Chunks of ``chunk_size`` turns that hold `TURNS_PER_GET` turns."""
    return chunks_holding(TURNS_PER_GET, chunk_size)


@dataclass(frozen=True, slots=True)
class ContextRead:
    """What a window read found."""

    turns: list[Turn] = field(default_factory=list)
    """The newest turns read, oldest first, all after the summary."""
    summary: Summary | None = None
    """The conversation's summary (when asked for and there is one)."""
    last_seq: int = 0
    """The newest stored turn (0 for a conversation that does not exist)."""


def context_steps(
    n: int,
    value_field: str,
    *,
    with_summary: bool,
    enough: Callable[[Sequence[Turn]], bool] | None = None,
    chunk_hint: int = 2,
    saw_chunk_size: Callable[[object], None] | None = None,
) -> Steps[ContextRead]:
    """Read the newest ``n`` turns after the summary, newest chunk first.

    Args:
        n: Most turns to read (the window's message limit).
        value_field: Record field holding a turn's content.
        with_summary: Also read the summary item (in the same request as the head).
        enough: Called with each chunk's turns, newest chunk first; True stops the read
            (a token budget is full).
        chunk_hint: Chunks the first request asks for beside the head (`Get.newest_chunks`);
            later requests ask for `chunks_per_get` of the conversation's size.
        saw_chunk_size: Told the chunk size the head says.
    """
    keys = (HEAD_KEY, SUMMARY_KEY) if with_summary else (HEAD_KEY,)
    found = yield Get(keys, newest_chunks=max(1, chunk_hint))
    head = found.get(HEAD_KEY)
    if head is None or n <= 0:
        return ContextRead()
    summary = Summary.from_item(found.get(SUMMARY_KEY), head) if with_summary else None
    last_seq = int(head["last_seq"])
    size = int(head["chunk_size"])
    if saw_chunk_size is not None:
        saw_chunk_size(size)
    floor = summary.covers_seq if summary else 0
    first = max(floor + 1, last_seq - n + 1)
    if first > last_seq:
        return ContextRead([], summary, last_seq)
    lowest = chunk_index(first, size)
    index = chunk_index(last_seq, size)
    turns: list[Turn] = []
    while index >= lowest:
        key = chunk_key(index)
        if key not in found:
            batch_keys = tuple(
                chunk_key(i)
                for i in range(index, max(lowest, index - chunks_per_get(size) + 1) - 1, -1)
            )
            found = {**found, **(yield Get(batch_keys))}
        batch = collect_turns((found.get(key),), first, last_seq, value_field)
        turns = batch + turns
        if enough is not None and enough(batch):
            break
        index -= 1
    return ContextRead(turns, summary, last_seq)
