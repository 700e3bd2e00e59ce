"""The history procedures as I/O-free generators, shared by the sync and async paths.

Each procedure yields `Get` / `Put` requests for one conversation namespace and receives
their results; a driver (sync or async, per backend) performs them. This keeps every
decision in one place, testable without a database.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard, TypeVar

from agent_history.errors import ConversationChanged
from agent_history.history.layout import (
    HEAD_KEY,
    SUMMARY_KEY,
    PendingTurn,
    chunk_index,
    chunk_key,
    chunks_holding,
    collect_records,
    collect_turns,
    msgid_key,
    plan_append,
    tail_chunk_keys,
)
from agent_history.history.records import AppendResult, RunToken, Turn

__all__ = [
    "Get",
    "Put",
    "Steps",
    "anchor_tokens_steps",
    "append_steps",
    "committed_ids_steps",
    "delete_steps",
    "drive",
    "drive_async",
    "read_steps",
    "tail_steps",
]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Get:
    """Read these item keys; the answer is ``{key: value}`` for the keys that exist.

    ``newest_chunks`` is a hint: a driver that can do it in the same round trip also
    returns up to that many chunk items with the highest keys. Drivers may ignore it, so
    the procedures check what came back and ask again for anything still missing.
    """

    keys: tuple[str, ...]
    newest_chunks: int = 0


@dataclass(frozen=True, slots=True)
class Put:
    """Write these items; a value of None deletes the item."""

    items: Mapping[str, dict[str, Any] | None]


Request = Get | Put
Steps = Generator[Request, Any, T]
ReadBatch = list[Turn]


def drive(steps: Steps[T], perform: Callable[[Request], Any]) -> T:
    """Run ``steps`` to completion with a sync ``perform``."""
    try:
        request = next(steps)
        while True:
            request = steps.send(perform(request))
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


async def drive_async(steps: Steps[T], perform: Callable[[Request], Awaitable[Any]]) -> T:
    """Run ``steps`` to completion with an async ``perform``."""
    try:
        request = next(steps)
        while True:
            request = steps.send(await perform(request))
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


def head_steps() -> Steps[dict[str, Any] | None]:
    """Read the head item."""
    found = yield Get((HEAD_KEY,))
    head: dict[str, Any] | None = found.get(HEAD_KEY)
    return head


def tail_steps(
    n: int,
    chunk_size_hint: int = 0,
    namespace: Sequence[str] = (),
    saw_chunk_size: Callable[[object], None] | None = None,
) -> Steps[list[tuple[int, dict[str, Any]]]]:
    """``(seq, record)`` for the newest ``n`` turns, oldest first: the head plus the
    chunks that hold them (see `layout.collect_records`). The caller reads the records
    (`layout.read_records`) after the driver call, so no lock or connection is held
    while messages are built.

    With ``chunk_size_hint`` (the conversation's chunk size, as far as the caller
    knows), the head read also asks for the newest chunks, so SQL backends answer a
    tail in one round trip; ``saw_chunk_size`` is told the size the head says.
    """
    if n <= 0:
        return []
    hint = n // chunk_size_hint + 2 if chunk_size_hint > 0 else 0
    found = yield Get((HEAD_KEY,), newest_chunks=hint)
    head = found.get(HEAD_KEY)
    if head is None:
        return []
    keys, first_seq = tail_chunk_keys(head, n)
    if saw_chunk_size is not None:
        saw_chunk_size(head.get("chunk_size"))
    missing = tuple(k for k in keys if k not in found)
    if missing:
        found = {**found, **(yield Get(missing))}
    chunks = (found.get(k) for k in keys)
    return collect_records(chunks, first_seq, int(head["last_seq"]), namespace)


def read_steps(
    start_seq: int, batch_turns: int, value_field: str
) -> Generator[Request | ReadBatch, Any, None]:
    """Yield `Get` requests and, between them, batches of turns from ``start_seq`` on.

    A batch is a plain list of turns (not a request); drivers hand it to the caller.
    Each request asks for the chunks holding about ``batch_turns`` turns, whatever the
    conversation's chunk size.
    """
    head = yield from head_steps()
    if head is None:
        return
    last_seq = int(head["last_seq"])
    size = int(head["chunk_size"])
    first = max(1, start_seq)
    if first > last_seq:
        return
    indexes = list(range(chunk_index(first, size), chunk_index(last_seq, size) + 1))
    batch_chunks = chunks_holding(batch_turns, size)
    for start in range(0, len(indexes), batch_chunks):
        keys = tuple(chunk_key(i) for i in indexes[start : start + batch_chunks])
        # The head again with each page: chunks carry no epoch, so a conversation deleted
        # and begun again between pages would be read half old, half new.
        found = yield Get((HEAD_KEY, *keys))
        now = found.get(HEAD_KEY)
        if now is None or now.get("epoch") != head.get("epoch"):
            raise ConversationChanged(
                "the conversation was deleted while it was read; read it again"
            )
        turns = collect_turns((found.get(k) for k in keys), first, last_seq, value_field)
        if turns:
            yield turns


def append_steps(
    pending: Sequence[PendingTurn],
    *,
    chunk_size: int,
    value_field: str,
    now: str,
    skipped: int = 0,
    anchor_id: str | None = None,
    anchor_next: str | None = None,
    anchor_seen: Sequence[str] = (),
) -> Steps[AppendResult]:
    """Append ``pending``: read head and known ids, read the open chunk, write. Run atomically.

    ``anchor_id``/``anchor_next``/``anchor_seen``: the user message the batch answers,
    the run's token and what follows the anchor in its conversation (see
    `layout.plan_append`).
    """
    wanted = (*(t.id for t in pending), anchor_id)
    ids = tuple(dict.fromkeys(i for i in wanted if i is not None))
    found = yield Get((HEAD_KEY, *(msgid_key(i) for i in ids)), newest_chunks=1)
    head = found.get(HEAD_KEY)
    known = {i: found.get(msgid_key(i)) for i in ids}
    last_chunk = None
    if head is not None:
        last_seq = int(head["last_seq"])
        size = int(head["chunk_size"])
        if last_seq % size:
            key = chunk_key(chunk_index(last_seq, size))
            last_chunk = found[key] if key in found else (yield Get((key,))).get(key)
            found = {**found, key: last_chunk}
        known = yield from _committed(known, head, found)
    plan = plan_append(
        head,
        last_chunk,
        known,
        pending,
        chunk_size=chunk_size,
        value_field=value_field,
        now=now,
        skipped=skipped,
        anchor_id=anchor_id,
        anchor_next=anchor_next,
        anchor_seen=anchor_seen,
    )
    if plan.puts:
        # The head goes last so a reader never sees a head ahead of its chunks.
        head_value = plan.puts.pop(HEAD_KEY)
        yield Put(plan.puts)
        yield Put({HEAD_KEY: head_value})
    assert plan.result is not None
    return plan.result


def _committed(
    known: dict[str, dict[str, Any] | None], head: dict[str, Any], found: dict[str, Any]
) -> Steps[dict[str, dict[str, Any] | None]]:
    """``known`` without the id entries of turns that were never committed.

    A store without transactions can fail between an append's two writes (chunk and id
    entries, then the head): its id entries then point above the head, or, once a later
    append has taken those numbers, at another turn. An entry counts only when the turn
    at its ``seq`` carries its id (the chunks read here are the ones the entries name,
    one more read at most, and only for ids found: re-deliveries, not new messages).
    What cannot be read (an entry's or a record's ``seq`` that is not a whole number, a
    chunk that is not one) is left as it is: an append never destroys what it cannot
    interpret.
    """
    epoch = head.get("epoch")
    last_seq = int(head["last_seq"])
    size = int(head["chunk_size"])
    checked = dict(known)
    claims: dict[str, int] = {}
    for message_id, entry in known.items():
        if entry is None or entry.get("epoch") != epoch:
            continue
        seq = _whole(entry.get("seq"))
        if seq is None or seq <= 0:
            continue
        if seq > last_seq:
            checked[message_id] = None  # above the head: never committed
        else:
            claims[message_id] = seq
    if not claims:
        return checked
    keys = {chunk_key(chunk_index(seq, size)) for seq in claims.values()}
    missing = tuple(sorted(k for k in keys if k not in found))
    if missing:
        found = {**found, **(yield Get(missing))}
    for message_id, seq in claims.items():
        chunk = found.get(chunk_key(chunk_index(seq, size)))
        if chunk is None:
            checked[message_id] = None  # its turn was never written
            continue
        turns = chunk.get("turns") if isinstance(chunk, dict) else None
        if not isinstance(turns, list):
            continue  # a chunk that cannot be read: left as it is
        readable = [r for r in turns if isinstance(r, dict) and _whole(r.get("seq")) is not None]
        record = next((r for r in readable if _whole(r.get("seq")) == seq), None)
        if record is None and len(readable) < len(turns):
            continue  # maybe one of the records that cannot be read: left as it is
        if record is None or record.get("id") != message_id:
            checked[message_id] = None
    return checked


def committed_ids_steps(ids: Sequence[str]) -> Steps[set[str]]:
    """Which of ``ids`` are stored in the conversation (their turn is there): for a
    driver that must tell its own lost turns from turns stored before."""
    found = yield Get((HEAD_KEY, *(msgid_key(i) for i in ids)))
    head = found.get(HEAD_KEY)
    if head is None:
        return set()
    known = {i: found.get(msgid_key(i)) for i in ids}
    known = yield from _committed(known, head, found)
    epoch = head.get("epoch")
    return {i for i, entry in known.items() if entry is not None and entry.get("epoch") == epoch}


def anchor_tokens_steps(ids: Sequence[str]) -> Steps[dict[str, RunToken]]:
    """The run token recorded for each of ``ids`` stored as an anchor (see
    `layout.plan_append`), one read."""
    found = yield Get((HEAD_KEY, *(msgid_key(i) for i in ids)))
    head = found.get(HEAD_KEY)
    if head is None:
        return {}
    epoch = head.get("epoch")
    tokens: dict[str, RunToken] = {}
    for message_id in ids:
        entry = found.get(msgid_key(message_id))
        if not isinstance(entry, dict) or entry.get("epoch") != epoch:
            continue
        answer, first = entry.get("next"), entry.get("from")
        if isinstance(answer, str):
            tokens[message_id] = RunToken(answer, first if isinstance(first, str) else None)
    return tokens


def _whole(value: Any) -> int | None:
    """``value`` as a whole number (``3``, ``3.0``, ``"3"``), or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return None
    return None


def delete_legacy_item_steps(key: str) -> Steps[bool]:
    """Run on a history's own namespace: delete the item the single-item layout of
    earlier deployments kept conversation ``key`` in (named by the key), when it is one
    (a mapping with a ``messages`` list). Any other item stored so is left alone: with
    nested namespaces, it may be another conversation's head or summary."""
    found = yield Get((key,))
    if not is_legacy_item(found.get(key)):
        return False
    yield Put({key: None})
    return True


def is_legacy_item(value: Any) -> TypeGuard[Mapping[str, Any]]:
    """Whether a store item's value is in the single-item layout (see `legacy`)."""
    return isinstance(value, Mapping) and isinstance(value.get("messages"), list)


def delete_steps(batch_chunks: int) -> Steps[int]:
    """Delete a conversation: chunks and their id entries first, the head (and the
    summary of the conversation) last."""
    head = yield from head_steps()
    if head is None:
        return 0
    last_seq = int(head["last_seq"])
    size = int(head["chunk_size"])
    count = chunk_index(last_seq, size) + 1 if last_seq else 0
    for start in range(0, count, batch_chunks):
        keys = tuple(chunk_key(i) for i in range(start, min(count, start + batch_chunks)))
        found = yield Get(keys)
        doomed: dict[str, dict[str, Any] | None] = dict.fromkeys(keys)
        for chunk in found.values():
            for record in chunk.get("turns", ()):
                if record.get("id") is not None:
                    doomed[msgid_key(str(record["id"]))] = None
        yield Put(doomed)
    yield Put({SUMMARY_KEY: None, HEAD_KEY: None})
    return last_seq
