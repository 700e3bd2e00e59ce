"""Running summaries of what fell out of the window: the stored item, the request a chat
model answers, and the procedures that claim, read and write it (I/O-free steps).

A conversation's summary is one item, ``summary``, in the conversation's own namespace,
beside the log::

    {"kind": "summary", "version", "covers_seq", "epoch", "text", "enc",
     "turns", "skipped", "updated_at", "lease": {"owner", "until"} | None}

``covers_seq`` is the newest turn it summarises; ``version`` goes up by one with every
write, and a write names the version it builds on, so two writers never both succeed
(the second finds a newer version and writes nothing). An update reads only the previous
summary and the turns after ``covers_seq`` that fell out of the window (never the whole
log). A writer first takes a short lease on the item, so no two runs ask a model for the
same conversation's summary at once; the lease ends by itself when its holder gives up.
A summary written for another ``epoch`` of the head (a conversation deleted and begun
again) is ignored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage, get_buffer_string

from agent_history.history.codec import quarantine
from agent_history.history.layout import (
    HEAD_KEY,
    SUMMARY_KEY,
    chunk_index,
    chunk_key,
    collect_turns,
)
from agent_history.history.records import Turn, decode_content, encode_content
from agent_history.history.steps import Get, Put, Steps

__all__ = [
    "DEFAULT_SUMMARY_PROMPT",
    "SUMMARY_KEY",
    "SUMMARY_MESSAGE_ID",
    "Summary",
    "SummaryClaim",
    "SummaryWrite",
    "claim_summary_steps",
    "import_summary_steps",
    "read_summary_steps",
    "release_summary_steps",
    "summary_message",
    "summary_request",
    "write_summary_steps",
]

SUMMARY_MESSAGE_ID = "agent-history:summary"
SUMMARY_HEADING = "Summary of the earlier conversation:"

DEFAULT_SUMMARY_PROMPT = (
    "You keep a running summary of a conversation between a user and an assistant. "
    "The messages below have fallen out of the assistant's view; the summary is all it "
    "will remember of them. Write the updated summary: keep what still matters from the "
    "current summary and add what the new messages establish (facts about the user, "
    "names, numbers, decisions, promises, open questions). Answer with the summary "
    "only, in the conversation's language, in at most about 300 words."
)
"""The instructions a summary model receives (as the system message of its request)."""


@dataclass(frozen=True, slots=True)
class Summary:
    """A stored summary of a conversation's turns up to ``covers_seq``."""

    text: str
    """The summary text ("" after a reset command cleared it)."""
    covers_seq: int
    """The newest turn the summary covers; the window shows turns after it."""
    version: int
    """Write count: 1 for the first summary, one more with every update."""
    turns: int = 0
    """Turns summarised in all (by every version so far)."""
    skipped: int = 0
    """Turns that fell out of the window unsummarised (a backlog larger than one update
    may read)."""
    updated_at: str = ""
    """UTC ISO-8601 time of the write."""

    @classmethod
    def from_item(cls, value: Any, head: dict[str, Any] | None) -> Summary | None:
        """The summary in item ``value``, or None when there is none for this ``head``
        (no item, only a lease, written for an earlier epoch, or unreadable)."""
        if not isinstance(value, dict) or head is None:
            return None
        if value.get("epoch") != head.get("epoch"):
            return None
        try:
            version = int(value.get("version", 0))
            if version < 1:
                return None
            text = decode_content(value.get("text", ""), value.get("enc"))
            if not isinstance(text, str):
                raise TypeError("summary text must be a string")
            return cls(
                text=text,
                covers_seq=int(value["covers_seq"]),
                version=version,
                turns=int(value.get("turns", 0)),
                skipped=int(value.get("skipped", 0)),
                updated_at=str(value.get("updated_at", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            quarantine(type(exc).__name__)
            return None


@dataclass(frozen=True, slots=True)
class SummaryClaim:
    """What an update of the summary starts from."""

    granted: bool
    """Whether the update may go on (and, with an owner, holds the lease)."""
    reason: str
    """``claimed`` (lease taken), ``read`` (no owner: nothing written), ``not_due``
    (fewer than ``every`` new turns fell out since the stored summary), ``busy``
    (another run holds the lease) or ``no_conversation``."""
    previous: Summary | None = None
    """The stored summary the update builds on."""
    turns: list[Turn] = field(default_factory=list)
    """The turns to add: after ``previous.covers_seq`` up to ``upto``, the newest
    ``max_turns`` of them."""
    upto: int = 0
    """The turn the updated summary will cover up to."""
    skipped: int = 0
    """Turns between the previous summary and ``turns`` left out (over ``max_turns``)."""


@dataclass(frozen=True, slots=True)
class SummaryWrite:
    """The outcome of a summary write."""

    written: bool
    reason: str
    """``written``, ``stale`` (the stored summary is no longer the one this update built
    on, or covers as much already) or ``no_conversation``."""
    summary: Summary | None
    """The summary stored now (the new one when written)."""


def summary_message(summary: Summary) -> SystemMessage:
    """The summary as the one system message placed before the window."""
    return SystemMessage(f"{SUMMARY_HEADING}\n{summary.text}", id=SUMMARY_MESSAGE_ID)


def summary_request(
    previous: str, messages: Sequence[BaseMessage], prompt: str = DEFAULT_SUMMARY_PROMPT
) -> list[BaseMessage]:
    """The messages a summary model receives: the instructions, then the current summary
    and the messages to add to it (as a transcript), nothing else."""
    transcript = get_buffer_string(messages, human_prefix="User", ai_prefix="Assistant")
    body = f"<summary>\n{previous}\n</summary>\n\n<messages>\n{transcript}\n</messages>"
    return [SystemMessage(prompt), HumanMessage(body)]


def _lease_holder(value: Any, head: dict[str, Any], now: str) -> str | None:
    """The owner of a lease on the summary item that has not ended by ``now``."""
    owner = _lease_owner(value, head)
    if owner is None:
        return None
    until = _parse_time(value["lease"].get("until"))
    current = _parse_time(now)
    if until is None or current is None or until <= current:
        return None
    return owner


def _lease_owner(value: Any, head: dict[str, Any]) -> str | None:
    """The owner of the last lease taken on the summary item of ``head``'s conversation
    (ended or not): None when none was, or the item belongs to another epoch."""
    if not isinstance(value, dict) or value.get("epoch") != head.get("epoch"):
        return None
    lease = value.get("lease")
    owner = lease.get("owner") if isinstance(lease, dict) else None
    return str(owner) if owner is not None else None


def _parse_time(raw: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(raw))
    except ValueError:
        return None


def read_summary_steps() -> Steps[Summary | None]:
    """Read the conversation's summary (None when there is none)."""
    found = yield Get((HEAD_KEY, SUMMARY_KEY))
    return Summary.from_item(found.get(SUMMARY_KEY), found.get(HEAD_KEY))


def claim_summary_steps(
    upto: int,
    *,
    every: int,
    max_turns: int,
    value_field: str,
    now: str,
    owner: str | None = None,
    lease_until: str = "",
) -> Steps[SummaryClaim]:
    """Start an update of the summary up to turn ``upto``: check it is due, take the
    lease (with ``owner``; run atomically then), read the turns to add.

    Args:
        upto: The newest turn that fell out of the window.
        every: Fewest new turns past the stored summary that make an update due.
        max_turns: Most turns one update reads (older ones in a larger backlog are
            skipped and counted).
        value_field: Record field holding a turn's content.
        now: The current time (UTC ISO-8601).
        owner: The lease holder to be (None: read only, take no lease).
        lease_until: When the lease ends by itself (UTC ISO-8601).
    """
    found = yield Get((HEAD_KEY, SUMMARY_KEY))
    head = found.get(HEAD_KEY)
    if head is None:
        return SummaryClaim(False, "no_conversation")
    item = found.get(SUMMARY_KEY)
    previous = Summary.from_item(item, head)
    covers = previous.covers_seq if previous else 0
    upto = min(upto, int(head["last_seq"]))
    if upto - covers < every:
        return SummaryClaim(False, "not_due", previous, upto=upto)
    holder = _lease_holder(item, head, now)
    if owner is not None and holder is not None and holder != owner:
        return SummaryClaim(False, "busy", previous, upto=upto)
    first = max(covers + 1, upto - max_turns + 1)
    size = int(head["chunk_size"])
    keys = tuple(chunk_key(i) for i in range(chunk_index(first, size), chunk_index(upto, size) + 1))
    chunks = yield Get(keys)
    turns = collect_turns((chunks.get(k) for k in keys), first, upto, value_field)
    if owner is not None:
        base = item if isinstance(item, dict) and item.get("epoch") == head.get("epoch") else {}
        lease = {"owner": owner, "until": lease_until}
        claimed = {**_empty_item(head, now), **base, "lease": lease}
        yield Put({SUMMARY_KEY: claimed})
    reason = "claimed" if owner is not None else "read"
    return SummaryClaim(True, reason, previous, turns, upto, first - covers - 1)


def release_summary_steps(owner: str, *, now: str) -> Steps[bool]:
    """End ``owner``'s lease on the summary item, when it still holds it (an update that
    gave up: the model failed or gave no text), so the next run may update the summary
    instead of finding it busy until the lease ends. Run atomically.
    Returns whether a lease was released."""
    found = yield Get((HEAD_KEY, SUMMARY_KEY))
    head, item = found.get(HEAD_KEY), found.get(SUMMARY_KEY)
    if head is None or _lease_holder(item, head, now) != owner:
        return False
    yield Put({SUMMARY_KEY: {**item, "lease": None}})
    return True


def _empty_item(head: dict[str, Any], now: str) -> dict[str, Any]:
    """A summary item with no summary yet (version 0), for a first lease."""
    return {
        "kind": "summary",
        "version": 0,
        "covers_seq": 0,
        "epoch": head.get("epoch"),
        "text": "",
        "turns": 0,
        "skipped": 0,
        "updated_at": now,
    }


def write_summary_steps(
    text: str,
    covers_seq: int,
    *,
    base_version: int,
    now: str,
    owner: str | None = None,
    turns: int = 0,
    skipped: int = 0,
    reset: bool = False,
) -> Steps[SummaryWrite]:
    """Write the summary covering up to ``covers_seq``, built on version ``base_version``
    (0: on no summary). Run atomically.

    Nothing is written when the stored version is not ``base_version``, when it already
    covers ``covers_seq``, or when another owner holds a lease that has not ended: each
    covered seq gets at most one version, and no version is built on a stale one. With
    ``owner``, nothing is written either when the conversation's summary item no longer
    carries that owner's lease (ended or not): another run took it over, or the
    conversation was deleted meanwhile and another one started under the same key (the
    deleted one's summary was written into it, its turns shown again). ``reset``: the
    clearing of a reset command, which no lease holds up (an update whose model hangs
    keeps its lease; the summary of what the user reset would stay shown, and once the
    reset left the window read, be taken for a summary made after it); the lease ends
    with it, so the update it interrupts writes nothing.
    """
    head, item, current = yield from _stored()
    if head is None:
        return SummaryWrite(False, "no_conversation", None)
    version = current.version if current else 0
    holder = _lease_holder(item, head, now)
    stale = (
        version != base_version
        or (current is not None and current.covers_seq >= covers_seq)
        or (holder is not None and holder != owner and not reset)
        or (owner is not None and _lease_owner(item, head) != owner)
        or covers_seq > int(head["last_seq"])
    )
    if stale:
        return SummaryWrite(False, "stale", current)
    new = Summary(
        text=text,
        covers_seq=covers_seq,
        version=version + 1,
        turns=(current.turns if current else 0) + turns,
        skipped=(current.skipped if current else 0) + skipped,
        updated_at=now,
    )
    yield Put({SUMMARY_KEY: _item(new, head)})
    return SummaryWrite(True, "written", new)


def import_summary_steps(summary: Summary, *, now: str) -> Steps[SummaryWrite]:
    """Store ``summary``, read from another store (an import, a migration), as the
    conversation's summary. Run atomically, after the turns it covers.

    Nothing is written when the conversation does not hold turn ``covers_seq`` yet, or
    already has a summary covering as many turns (run again, the import writes nothing;
    a target that summarised further keeps its own). The stored version never goes back,
    so an update that built on the replaced summary finds it stale; a lease another run
    holds is kept.
    """
    head, item, current = yield from _stored()
    if head is None:
        return SummaryWrite(False, "no_conversation", None)
    if summary.covers_seq > int(head["last_seq"]) or (
        current is not None and current.covers_seq >= summary.covers_seq
    ):
        return SummaryWrite(False, "stale", current)
    version = max(summary.version, (current.version if current else 0) + 1)
    new = replace(summary, version=version, updated_at=summary.updated_at or now)
    lease = item.get("lease") if _lease_holder(item, head, now) is not None else None
    yield Put({SUMMARY_KEY: _item(new, head, lease)})
    return SummaryWrite(True, "written", new)


def _stored() -> Steps[tuple[dict[str, Any] | None, Any, Summary | None]]:
    """Read the head, the summary item and the summary it holds for that head."""
    found = yield Get((HEAD_KEY, SUMMARY_KEY))
    head, item = found.get(HEAD_KEY), found.get(SUMMARY_KEY)
    return head, item, Summary.from_item(item, head)


def _item(summary: Summary, head: dict[str, Any], lease: Any = None) -> dict[str, Any]:
    """The stored item of ``summary`` in the conversation of ``head``."""
    stored, encoding = encode_content(summary.text)
    value: dict[str, Any] = {
        "kind": "summary",
        "version": summary.version,
        "covers_seq": summary.covers_seq,
        "epoch": head.get("epoch"),
        "text": stored,
        "turns": summary.turns,
        "skipped": summary.skipped,
        "updated_at": summary.updated_at,
        "lease": lease,
    }
    if encoding is not None:
        value["enc"] = encoding
    return value
