"""Moving history between stores: streamed export/import, resumable migration, checksums."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TextIO

from agent_history.history import ChatHistory, Turn

__all__ = [
    "ConversationCheck",
    "MigrationReport",
    "conversation_checksum",
    "export_jsonl",
    "import_jsonl",
    "migrate_history",
    "turn_from_json",
    "turn_to_json",
]

_BATCH = 500


def turn_to_json(key: str, turn: Turn, namespace: tuple[str, ...]) -> dict[str, Any]:
    """One JSONL export line: the turn with its conversation key and namespace."""
    return {
        "namespace": list(namespace),
        "key": key,
        "seq": turn.seq,
        "role": turn.role,
        "content": turn.content,
        "id": turn.id,
        "ts": turn.ts,
    }


def turn_from_json(line: dict[str, Any]) -> tuple[str, Turn]:
    """Parse an export line back into its key and turn."""
    return str(line["key"]), Turn(
        seq=int(line["seq"]),
        role=str(line["role"]),
        content=line.get("content", ""),
        id=line.get("id"),
        ts=line.get("ts"),
    )


def export_jsonl(
    history: ChatHistory, out: TextIO, keys: Iterable[str] | None = None
) -> tuple[int, int]:
    """Write every turn of ``keys`` (default: all conversations) as JSON lines.

    Returns:
        (conversations, turns) written.
    """
    conversations = turns = 0
    for key in keys if keys is not None else history.keys():
        conversations += 1
        for turn in history.read(key):
            out.write(json.dumps(turn_to_json(key, turn, history.namespace), ensure_ascii=False))
            out.write("\n")
            turns += 1
    return conversations, turns


def _resume_batches(history: ChatHistory, key: str, turns: Iterable[Turn]) -> Iterator[list[Turn]]:
    """Batches of ``turns`` the destination does not have yet (seq above its count)."""
    have = history.count(key)
    batch: list[Turn] = []
    for turn in turns:
        if turn.seq <= have:
            continue
        batch.append(turn)
        if len(batch) >= _BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def _append_batches(history: ChatHistory, key: str, turns: Iterable[Turn]) -> int:
    written = 0
    for batch in _resume_batches(history, key, turns):
        expected_first = history.count(key) + 1
        if batch[0].seq != expected_first:
            raise ValueError(
                f"conversation {key}: turns must be contiguous (expected seq "
                f"{expected_first}, got {batch[0].seq})"
            )
        written += history.append(key, batch).appended
    return written


def import_jsonl(history: ChatHistory, lines: Iterable[str]) -> tuple[int, int]:
    """Import an export: turns already present (by sequence number) are skipped.

    Lines are grouped by key in file order, so an interrupted import can be run again.

    Returns:
        (conversations touched, turns written).
    """
    written = 0
    keys: set[str] = set()
    current_key: str | None = None
    pending: list[Turn] = []
    for raw in lines:
        if not raw.strip():
            continue
        key, turn = turn_from_json(json.loads(raw))
        if key != current_key and pending:
            written += _append_batches(history, str(current_key), pending)
            pending = []
        current_key = key
        keys.add(key)
        pending.append(turn)
    if pending and current_key is not None:
        written += _append_batches(history, current_key, pending)
    return len(keys), written


def conversation_checksum(turns: Iterable[Turn]) -> tuple[int, str]:
    """Count and SHA-256 over (seq, role, content, id) of a conversation, in order."""
    digest = hashlib.sha256()
    count = 0
    for turn in turns:
        record = [turn.seq, turn.role, turn.content, turn.id]
        digest.update(json.dumps(record, sort_keys=True, ensure_ascii=False).encode())
        digest.update(b"\n")
        count += 1
    return count, digest.hexdigest()


@dataclass(frozen=True, slots=True)
class ConversationCheck:
    """Verification of one migrated conversation."""

    key: str
    source_turns: int
    target_turns: int
    matches: bool


@dataclass(frozen=True, slots=True)
class MigrationReport:
    """Outcome of `migrate_history`."""

    conversations: int
    turns_copied: int
    checks: tuple[ConversationCheck, ...]

    @property
    def ok(self) -> bool:
        """True when every conversation's count and checksum match."""
        return all(check.matches for check in self.checks)


def migrate_history(
    source: ChatHistory,
    target: ChatHistory,
    *,
    keys: Iterable[str] | None = None,
    on_progress: Callable[[str, int], None] | None = None,
) -> MigrationReport:
    """Copy conversations from ``source`` to ``target``, resumably, then verify them.

    Each conversation is copied from the target's current length on, in batches that are
    each one atomic append: a migration killed half-way and started again continues where
    it stopped, with no duplicate. Afterwards counts and checksums are compared per
    conversation. Run it while writes go to the source only (or with writes stopped via
    ``ORCHEO_GRAPH_CHAT_HISTORY_MODE=read_only``).
    """
    checks: list[ConversationCheck] = []
    copied = 0
    for key in list(keys) if keys is not None else list(source.keys()):
        copied_here = _append_batches(target, key, source.read(key))
        copied += copied_here
        if on_progress is not None:
            on_progress(key, copied_here)
        src_count, src_sum = conversation_checksum(source.read(key))
        dst_count, dst_sum = conversation_checksum(target.read(key))
        checks.append(ConversationCheck(key, src_count, dst_count, src_sum == dst_sum))
    return MigrationReport(len(checks), copied, tuple(checks))
