"""Storage layout of a conversation and the pure (I/O-free) plans for reads and appends.

A conversation lives in its own namespace ``(*namespace, key)`` of the graph store:

- ``head``: ``{"kind": "head", "last_seq", "chunk_size", "epoch", "created_at", "updated_at"}``;
- ``chunk:0000000000`` ...: ``{"kind": "chunk", "index", "turns": [record, ...]}``, turns
  ``index * chunk_size + 1`` to ``(index + 1) * chunk_size``;
- ``msgid:<id>``: ``{"kind": "msgid", "seq", "epoch"}``, so a re-delivered message id is
  found with one key lookup;
- ``summary``: the running summary of turns that fell out of the window (see
  `agent_history.context.summary`).

Turns are never rewritten once stored, so a reader that sees a head with ``last_seq = N``
may ignore any record above N (it belongs to a newer append or an abandoned epoch).
"""

from __future__ import annotations

import functools
import hashlib
import random
import re
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from agent_history.history.codec import quarantine
from agent_history.history.records import AppendResult, Turn, make_record

__all__ = [
    "HEAD_KEY",
    "SUMMARY_KEY",
    "AppendPlan",
    "PendingTurn",
    "chunk_index",
    "chunk_key",
    "chunks_holding",
    "collect_records",
    "collect_turns",
    "msgid_key",
    "plan_append",
    "read_records",
    "tail_chunk_keys",
    "turn_reader",
]

T = TypeVar("T")

HEAD_KEY = "head"
SUMMARY_KEY = "summary"
SCHEMA_VERSION = 1


def chunk_key(index: int) -> str:
    """Item key of chunk ``index`` (zero-padded so keys sort in order)."""
    return f"chunk:{index:010d}"


_PLAIN_ID = re.compile(r"^[\x21-\x7e]{1,200}$")


def msgid_key(message_id: str) -> str:
    """Item key of the id index entry for ``message_id``: the id itself when it is short
    printable ASCII, else a digest of it (a store key must be plain text)."""
    if _PLAIN_ID.match(message_id):
        return f"msgid:{message_id}"
    digest = hashlib.sha256(message_id.encode("utf-8", "surrogatepass")).hexdigest()
    return f"msgid#{digest}"


def chunk_index(seq: int, chunk_size: int) -> int:
    """The chunk holding turn ``seq`` (1-based)."""
    return (seq - 1) // chunk_size


def chunks_holding(turns: int, chunk_size: int) -> int:
    """Whole chunks of ``chunk_size`` turns that hold ``turns`` turns (at least one): how
    many a request asks for when it reads a number of turns at a time."""
    return max(1, -(-turns // max(1, chunk_size)))


def tail_chunk_keys(head: dict[str, Any], n: int) -> tuple[list[str], int]:
    """Keys of the chunks that hold the newest ``n`` turns, and the first seq wanted."""
    last_seq = int(head["last_seq"])
    if n <= 0 or last_seq <= 0:
        return [], last_seq + 1
    size = int(head["chunk_size"])
    first_seq = max(1, last_seq - n + 1)
    indexes = range(chunk_index(first_seq, size), chunk_index(last_seq, size) + 1)
    return [chunk_key(i) for i in indexes], first_seq


def collect_records(
    chunks: Iterable[dict[str, Any] | None],
    first_seq: int,
    last_seq: int,
    namespace: Sequence[str] = (),
) -> list[tuple[int, dict[str, Any]]]:
    """``(seq, record)`` for the records with ``first_seq <= seq <= last_seq`` in the given
    chunk values, in seq order (a record whose seq is not a number is skipped and reported,
    see `read_records`)."""
    wanted: list[tuple[int, dict[str, Any]]] = []
    for chunk in chunks:
        if not chunk:
            continue
        for record in chunk.get("turns", ()):
            try:
                seq = int(record["seq"])
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                quarantine(type(exc).__name__, namespace=namespace, seq=_seq_of(record))
                continue
            if first_seq <= seq <= last_seq:
                wanted.append((seq, record))
    wanted.sort(key=_first)
    return wanted


def _first(pair: tuple[int, Any]) -> int:
    return pair[0]


def read_records(
    records: Iterable[tuple[int, dict[str, Any]]],
    read: Callable[[dict[str, Any]], T],
    namespace: Sequence[str] = (),
) -> list[T]:
    """``read(record)`` for each of ``records`` (see `collect_records`), in order.

    A record that cannot be read is skipped and reported (`codec.quarantine`): one bad
    record must not make a conversation unreadable. Errors are reported by class only:
    pydantic's quote the body.
    """
    values: list[T] = []
    for seq, record in records:
        try:
            values.append(read(record))
        except Exception as exc:
            quarantine(type(exc).__name__, namespace=namespace, seq=seq)
    return values


def collect_turns(
    chunks: Iterable[dict[str, Any] | None],
    first_seq: int,
    last_seq: int,
    value_field: str,
) -> list[Turn]:
    """The `Turn`s with ``first_seq <= seq <= last_seq`` (see `collect_records`)."""
    return read_records(collect_records(chunks, first_seq, last_seq), turn_reader(value_field))


def turn_reader(value_field: str) -> Callable[[dict[str, Any]], Turn]:
    """``record -> Turn`` for records whose content is in ``value_field``."""
    return functools.partial(Turn.from_record, value_field=value_field)


def _has_seq(record: Any) -> bool:
    try:
        int(record["seq"])
    except (KeyError, TypeError, ValueError):
        return False
    return True


def _seq_of(record: Any) -> object:
    return record.get("seq") if isinstance(record, dict) else None


@dataclass(frozen=True, slots=True)
class PendingTurn:
    """A turn waiting to be appended (its seq is assigned by the plan)."""

    role: str
    content: Any
    id: str | None = None
    kind: str | None = None
    """LangChain message type; None for a plain role/content turn."""
    extra: dict[str, Any] | None = None
    """The message's non-default fields (see `Turn.extra`)."""
    plain: bool | None = None
    """`codec.is_plain` of content and fields, when already known."""

    def record(self, seq: int, now: str, value_field: str) -> dict[str, Any]:
        """The chunk record of this turn at ``seq``."""
        return make_record(
            seq, self.role, self.content, self.id, now, self.kind, self.extra, value_field,
            self.plain,
        )  # fmt: skip


@dataclass(slots=True)
class AppendPlan:
    """The items an append writes, and the result it reports."""

    puts: dict[str, dict[str, Any]] = field(default_factory=dict)
    result: AppendResult | None = None


def new_head(chunk_size: int, now: str) -> dict[str, Any]:
    """The head of an empty conversation."""
    return {
        "kind": "head",
        "version": SCHEMA_VERSION,
        "last_seq": 0,
        "chunk_size": chunk_size,
        # Unique, not secret: the random module's generator (seeded from the system's, and
        # again in a forked child) spares a system call (os.urandom) on every append.
        "epoch": f"{random.getrandbits(128):032x}",
        "created_at": now,
        "updated_at": now,
    }


def plan_append(
    head: dict[str, Any] | None,
    last_chunk: dict[str, Any] | None,
    known_ids: dict[str, dict[str, Any] | None],
    pending: Sequence[PendingTurn],
    *,
    chunk_size: int,
    value_field: str,
    now: str,
    skipped: int = 0,
    anchor_id: str | None = None,
    anchor_next: str | None = None,
    anchor_seen: Collection[str] = (),
) -> AppendPlan:
    """Plan the writes that append ``pending`` after the current ``head``.

    Args:
        head: The conversation's head item value, or None for a new conversation.
        last_chunk: The value of the chunk holding ``head["last_seq"]`` (None when that
            chunk is full or absent).
        known_ids: ``msgid:<id>`` item values found for the pending ids (None = unknown).
        pending: Turns to append, in order.
        chunk_size: Chunk size for a new conversation (an existing one keeps its own).
        value_field: Record field that holds the content.
        now: Timestamp written on new turns and the head.
        skipped: Messages the caller dropped for their role, echoed in the result.
        anchor_id: The id of the user message this batch answers.
        anchor_next: A token of the run: the id of its answer (no other run, nor
            another branch of a run forked from a checkpoint, has it). The anchor's id
            entry records it when the anchor is written.
        anchor_seen: The ids of the messages that follow the anchor in the run's
            conversation. When the anchor is already stored with a token that is neither
            ``anchor_next`` nor among them (or with none), another run answered it (a
            re-delivered callback, or another branch of a fork): nothing is written and
            every turn counts as a duplicate. A token among them is an earlier pass of
            this run (an agent sent back to revise its answer follows that answer); the
            anchor's entry then takes ``anchor_next`` as its token, so only a pass that
            follows this one passes next.

    Returns:
        The items to put (chunks, id entries, head) and the result to report.
    """
    current = dict(head) if head else new_head(chunk_size, now)
    size = int(current["chunk_size"])
    epoch = current["epoch"]
    last_seq = int(current["last_seq"])

    def stored(message_id: str) -> bool:
        entry = known_ids.get(message_id)
        return entry is not None and entry.get("epoch") == epoch

    if anchor_id is not None and stored(anchor_id):
        entry = known_ids.get(anchor_id) or {}
        token = entry.get("next")
        ours = token == anchor_next or token in anchor_seen
        answered_by_another_run = anchor_next is None or token is None or not ours
    else:
        answered_by_another_run = False
    if answered_by_another_run:
        plan = AppendPlan()
        plan.result = AppendResult(0, len(pending), skipped, None, None, last_seq)
        return plan

    seen: set[str] = set()
    fresh: list[PendingTurn] = []
    duplicates = 0
    for turn in pending:
        if turn.id is not None:
            if turn.id in seen or stored(turn.id):
                duplicates += 1
                continue
            seen.add(turn.id)
        fresh.append(turn)

    plan = AppendPlan()
    if not fresh:
        plan.result = AppendResult(0, duplicates, skipped, None, None, last_seq)
        return plan

    chunks: dict[int, list[dict[str, Any]]] = {}
    if last_seq % size:
        # Records above last_seq belong to an abandoned epoch: drop them on rewrite. A
        # record whose seq cannot be read is kept as it is (reads skip it): an append
        # never destroys what it cannot interpret.
        kept = [
            r
            for r in (last_chunk or {}).get("turns", ())
            if not _has_seq(r) or int(r["seq"]) <= last_seq
        ]
        chunks[chunk_index(last_seq, size)] = kept
    first_new = last_seq + 1
    for offset, turn in enumerate(fresh):
        seq = first_new + offset
        record = turn.record(seq, now, value_field)
        chunks.setdefault(chunk_index(seq, size), []).append(record)
        if turn.id is not None:
            entry = {"kind": "msgid", "seq": seq, "epoch": epoch}
            if turn.id == anchor_id and anchor_next is not None:
                entry["next"] = anchor_next
            plan.puts[msgid_key(turn.id)] = entry
    if anchor_id is not None and anchor_next is not None and stored(anchor_id):
        # A later pass of the run: its answer becomes the token, so a branch forked
        # before it (a replay, or a second resume, of that pass) no longer passes; the
        # entry also names the pass's first message (where the pass starts in the log).
        entry = known_ids.get(anchor_id) or {}
        if entry.get("next") != anchor_next:
            renewed = {**entry, "next": anchor_next}
            renewed.pop("from", None)
            if fresh[0].id is not None:
                renewed["from"] = fresh[0].id
            plan.puts[msgid_key(anchor_id)] = renewed
    for index, records in chunks.items():
        plan.puts[chunk_key(index)] = {"kind": "chunk", "index": index, "turns": records}
    new_last = last_seq + len(fresh)
    current.update(last_seq=new_last, updated_at=now)
    plan.puts[HEAD_KEY] = current
    plan.result = AppendResult(len(fresh), duplicates, skipped, first_new, new_last, new_last)
    return plan
