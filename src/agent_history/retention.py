"""Retention: find conversations idle since a cutoff and delete them without losing a turn
written after they were listed."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

from agent_history.history import ChatHistory, ConversationInfo
from agent_history.history.bulk import is_idle

__all__ = ["PurgeReport", "idle_conversations", "purge_idle"]


def idle_conversations(history: ChatHistory, before: datetime) -> list[ConversationInfo]:
    """Conversations whose newest write is older than ``before`` (timezone-aware), in key
    order. A listing only: each one is checked again when it is deleted."""
    found = []
    for key in sorted(history.keys()):
        info = history.info(key)
        if info is not None and is_idle({"updated_at": info.updated_at}, before):
            found.append(info)
    return found


@dataclass(slots=True)
class PurgeReport:
    """What `purge_idle` did."""

    deleted: list[ConversationInfo] = field(default_factory=list)
    """Conversations deleted, as they were when deleted."""
    kept: list[str] = field(default_factory=list)
    """Listed conversations that were written to since."""
    gone: list[str] = field(default_factory=list)
    """Listed conversations already deleted elsewhere (another purge, a delete)."""


def purge_idle(
    history: ChatHistory,
    keys: Iterable[str],
    before: datetime,
    *,
    on_progress: Callable[[str, bool], None] | None = None,
) -> PurgeReport:
    """Delete each of ``keys`` that is still idle since ``before``.

    The age is checked under the conversation's lock, in the transaction that deletes
    it (`ChatHistory.delete_if_idle`): a turn appended after the listing keeps the
    conversation, and is never deleted with it.
    """
    report = PurgeReport()
    for key in keys:
        gone = history.delete_if_idle(key, before)
        if gone is not None:
            report.deleted.append(gone)
        elif history.info(key) is None:
            report.gone.append(key)
        else:
            report.kept.append(key)
        if on_progress is not None:
            on_progress(key, gone is not None)
    return report
