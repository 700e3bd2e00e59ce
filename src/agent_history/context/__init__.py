"""Context that fits the model: token budgets for the window and running summaries of
what fell out of it (I/O-free; `session.HistoryPass` and `ChatHistory` run them)."""

from agent_history.context.budget import TokenCounterLike, WindowFill, token_counter_for
from agent_history.context.summary import (
    DEFAULT_SUMMARY_PROMPT,
    SUMMARY_KEY,
    SUMMARY_MESSAGE_ID,
    Summary,
    SummaryClaim,
    SummaryWrite,
    summary_message,
    summary_request,
)
from agent_history.context.window import ContextRead

__all__ = [
    "DEFAULT_SUMMARY_PROMPT",
    "SUMMARY_KEY",
    "SUMMARY_MESSAGE_ID",
    "ContextRead",
    "Summary",
    "SummaryClaim",
    "SummaryWrite",
    "TokenCounterLike",
    "WindowFill",
    "summary_message",
    "summary_request",
    "token_counter_for",
]
