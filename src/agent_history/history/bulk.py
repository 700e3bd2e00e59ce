"""Operator procedures on one conversation as I/O-free steps: seq-exact imports and
conditional deletes.

Like `steps`, each procedure yields `Get` / `Put` requests and is run by a driver inside
the conversation's transaction, so what it checks still holds when it writes:

- `import_steps` writes turns at the sequence numbers they carry. Turns the conversation
  already holds (the same turn at the same seq) are skipped, so an import or a migration
  can be run again, or by two processes at once, without a duplicate; a gap, another turn
  stored at one of the seqs, or an id stored elsewhere in the conversation refuses the
  whole batch.
- `delete_if_idle_steps` deletes a conversation only if its newest write is older than a
  cutoff when it is read under the lock, so a turn appended after a retention listing is
  never deleted with it.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from agent_history.errors import AgentHistoryError, InvalidMessage
from agent_history.history.codec import check_content, is_plain, type_fits_role
from agent_history.history.layout import (
    HEAD_KEY,
    PendingTurn,
    chunk_index,
    chunk_key,
    collect_records,
    msgid_key,
    plan_append,
)
from agent_history.history.records import Turn, id_or_none, make_record
from agent_history.history.steps import Get, Put, Steps, delete_steps, head_steps

__all__ = [
    "STORED_ROLES",
    "ImportConflict",
    "ImportResult",
    "ImportedTurn",
    "delete_if_idle_steps",
    "import_steps",
    "imported_turn",
    "is_idle",
    "same_turn",
]

_IDS_PER_READ = 500
_CHUNKS_PER_READ = 64
_ITEMS_PER_WRITE = 1_000

ID_RULE = "its id must be text without U+0000 or a lone surrogate"
"""What a stored message id may be (PostgreSQL's text holds neither)."""


class ImportConflict(AgentHistoryError, ValueError):
    """The conversation cannot take the imported turns at their sequence numbers (a gap,
    another turn already stored at one of their seqs, or an id the conversation already
    holds at another position); nothing was written."""

    def __init__(self, message: str, seq: int | None = None) -> None:
        super().__init__(message)
        self.seq = seq
        """The imported turn's seq the conflict is about, when it is about one."""


@dataclass(frozen=True, slots=True)
class ImportedTurn(PendingTurn):
    """A turn to import: it keeps the time it was first stored."""

    ts: str | None = None
    """UTC ISO-8601 time from the source; the import time when None."""

    def record(self, seq: int, now: str, value_field: str) -> dict[str, Any]:
        """The chunk record of this turn at ``seq``, with its original time."""
        return make_record(
            seq, self.role, self.content, self.id, self.ts or now, self.kind, self.extra,
            value_field, self.plain,
        )  # fmt: skip


STORED_ROLES = ("user", "assistant", "tool")
"""Roles a conversation stores (system messages are configuration, never stored)."""


def imported_turn(turn: Turn, where: str = "turn") -> ImportedTurn:
    """Check that ``turn`` can be stored exactly and read back as a message, keeping its
    fields as they are (type, fields, id, time).

    Raises:
        InvalidMessage: naming ``where`` and the problem, never quoting the body.
    """
    if turn.role not in STORED_ROLES:
        raise InvalidMessage(f"{where}: role is not one of {', '.join(STORED_ROLES)}")
    if turn.kind is not None and (
        not isinstance(turn.kind, str) or not type_fits_role(turn.kind, turn.role)
    ):
        raise InvalidMessage(f"{where}: type does not match role {turn.role!r}")
    message_id = id_or_none(turn.id)
    if message_id is not None and not isinstance(message_id, str):
        raise InvalidMessage(f"{where}: id must be a string or None")
    if turn.extra is not None and not isinstance(turn.extra, dict):
        raise InvalidMessage(f"{where}: fields must be an object")
    check_content(turn.content, where)
    plain = is_plain(turn.content, where) & is_plain(turn.extra, where)
    if message_id is not None and not is_plain(message_id, where):
        raise InvalidMessage(f"{where}: {ID_RULE}")
    try:
        turn.to_message()
    except Exception as exc:  # pydantic errors quote the body: the class only
        raise InvalidMessage(f"{where}: not a valid message ({type(exc).__name__})") from None
    return ImportedTurn(
        turn.role, turn.content, message_id, turn.kind, turn.extra or None, plain, ts=turn.ts
    )


@dataclass(frozen=True, slots=True)
class ImportResult:
    """What one seq-exact import into a conversation did."""

    written: int
    """Turns written."""
    present: int
    """Turns skipped because the conversation already held their sequence numbers."""
    total: int
    """Turns in the conversation afterwards."""


def same_turn(stored: Turn, turn: ImportedTurn) -> bool:
    """Whether a stored turn is the one being imported at its seq: the same id and role
    when either has an id, else the same role and content."""
    if stored.id is not None or turn.id is not None:
        return stored.id == turn.id and stored.role == turn.role
    return stored.role == turn.role and stored.content == turn.content


def _check_overlap(
    head: dict[str, Any],
    found: dict[str, Any],
    pending: Sequence[ImportedTurn],
    first_seq: int,
    last_seq: int,
    value_field: str,
) -> Steps[None]:
    """Raise `ImportConflict` unless the stored turns ``first_seq..last_seq`` are the
    imported ones at those seqs (`same_turn`): only then are they "already present"."""
    size = int(head["chunk_size"])
    indexes = range(chunk_index(first_seq, size), chunk_index(last_seq, size) + 1)
    keys = [chunk_key(i) for i in indexes]
    seen = first_seq - 1
    for start in range(0, len(keys), _CHUNKS_PER_READ):
        batch = tuple(keys[start : start + _CHUNKS_PER_READ])
        missing = tuple(k for k in batch if k not in found)
        chunks = dict(found)
        if missing:
            chunks.update((yield Get(missing)))
        for seq, record in collect_records((chunks.get(k) for k in batch), first_seq, last_seq):
            if seq <= seen:
                continue
            try:
                stored = Turn.from_record(record, value_field)
            except Exception:  # an unreadable record is not the imported turn
                stored = None
            turn = pending[seq - first_seq]
            if seq != seen + 1 or stored is None or not same_turn(stored, turn):
                where = seen + 1 if seq != seen + 1 else seq
                raise ImportConflict(
                    f"the conversation already holds another turn at seq {where}", seq=where
                )
            seen = seq
    if seen != last_seq:
        raise ImportConflict(
            f"the conversation already holds another turn at seq {seen + 1}", seq=seen + 1
        )


def _later(first: str | None, second: str | None) -> str | None:
    """The later of two ISO times (either may be missing or unparsable)."""
    if not (first and second):
        return first or second
    try:
        return first if datetime.fromisoformat(first) >= datetime.fromisoformat(second) else second
    except (TypeError, ValueError):
        return first


def import_steps(
    pending: Sequence[ImportedTurn],
    first_seq: int,
    *,
    chunk_size: int,
    value_field: str,
    now: str,
) -> Steps[ImportResult]:
    """Write ``pending`` as turns ``first_seq, first_seq + 1, ...``. Run atomically.

    Turns the conversation already holds at their seq are skipped (idempotent), when the
    stored turn is the imported one (`same_turn`); the rest must continue the
    conversation exactly, and none of their ids may be stored in it already. The head
    keeps the source's times (its newest turn's ``ts``), so retention sees the
    conversation's real age.

    Raises:
        ImportConflict: the conversation holds fewer turns than ``first_seq - 1``,
            another turn at one of the seqs (``seq`` names the first), or one of the new
            turns' ids at another position. Nothing is written.
    """
    if first_seq < 1:
        raise ImportConflict(f"sequence numbers start at 1 (got {first_seq})")
    found = yield Get((HEAD_KEY,), newest_chunks=1)
    head = found.get(HEAD_KEY)
    last_seq = int(head["last_seq"]) if head else 0
    end = first_seq + len(pending) - 1
    if last_seq < first_seq - 1:
        raise ImportConflict(
            f"the conversation holds {last_seq} turns; these turns start at seq {first_seq}"
        )
    if head is not None and last_seq >= first_seq:
        yield from _check_overlap(head, found, pending, first_seq, min(last_seq, end), value_field)
    if last_seq >= end:
        return ImportResult(0, len(pending), last_seq)
    fresh = list(pending[last_seq - first_seq + 1 :])
    ids = [t.id for t in fresh if t.id is not None]
    if len(set(ids)) != len(ids):
        raise ImportConflict("an id occurs twice among the turns")
    if head is not None:
        for start in range(0, len(ids), _IDS_PER_READ):
            keys = tuple(msgid_key(i) for i in ids[start : start + _IDS_PER_READ])
            entries = yield Get(keys)
            for message_id in ids[start : start + _IDS_PER_READ]:
                entry = entries.get(msgid_key(message_id))
                if entry is not None and entry.get("epoch") == head["epoch"]:
                    raise ImportConflict(
                        f"id {message_id!r} is already stored at seq {entry.get('seq')}"
                    )
    last_chunk = None
    if head is not None and last_seq % int(head["chunk_size"]):
        key = chunk_key(chunk_index(last_seq, int(head["chunk_size"])))
        last_chunk = found[key] if key in found else (yield Get((key,))).get(key)
    plan = plan_append(
        head, last_chunk, {}, fresh, chunk_size=chunk_size, value_field=value_field, now=now
    )
    assert plan.result is not None and plan.result.appended == len(fresh)
    head_value = plan.puts.pop(HEAD_KEY)
    # The newest time of any turn, not the last turn's: writers' clocks differ, and a
    # head dated by an older last turn would make retention delete a conversation in use.
    newest = functools.reduce(_later, (turn.ts for turn in fresh), None)
    if newest:
        head_value["updated_at"] = _later(newest, head["updated_at"] if head else None)
    if head is None and pending[0].ts:
        head_value["created_at"] = pending[0].ts
    items = list(plan.puts.items())
    for start in range(0, len(items), _ITEMS_PER_WRITE):
        yield Put(dict(items[start : start + _ITEMS_PER_WRITE]))
    # The head goes last so a reader never sees a head ahead of its chunks.
    yield Put({HEAD_KEY: head_value})
    return ImportResult(len(fresh), len(pending) - len(fresh), plan.result.total)


def is_idle(head: dict[str, Any], before: datetime) -> bool:
    """Whether the conversation's newest write is older than ``before`` (timezone-aware).

    A head without a readable time is never idle: retention must not guess.
    """
    try:
        updated = datetime.fromisoformat(str(head["updated_at"]))
    except (KeyError, ValueError):
        return False
    if updated.tzinfo is None:
        return False
    return updated < before


def delete_if_idle_steps(before: datetime, batch_chunks: int) -> Steps[dict[str, Any] | None]:
    """Delete the conversation if it is idle since ``before``; run atomically.

    Returns:
        The head of the deleted conversation, or None when it does not exist or was
        written to at or after ``before`` (then nothing is deleted).
    """
    head = yield from head_steps()
    if head is None or not is_idle(head, before):
        return None
    yield from delete_steps(batch_chunks)
    return head
