"""The single-item history layout of earlier Orcheo deployments: reading it and moving it
into the log.

Those deployments kept each conversation as one store item: namespace
``("agent_chat_history",)``, key = the conversation key, value
``{"version": n, "messages": [{"role": ..., "content": ...}, ...]}``. The log keeps each
conversation in a namespace of its own below that prefix (``("agent_chat_history", key)``),
so both can live in the same store.

- `read_legacy_messages` / `aread_legacy_messages`: a conversation's legacy messages, for
  a node that finds no log for it yet (never raises on a malformed item);
- `migrate_legacy`: copies every legacy item into the log at sequence numbers 1..n,
  resumably, idempotently and verified by checksum (``agent-history migrate
  --from-legacy``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from langchain_core.messages import BaseMessage
from langgraph.store.base import BaseStore, GetOp, Item
from langgraph.store.postgres import PostgresStore
from langgraph.store.sqlite import SqliteStore
from psycopg_pool import ConnectionPool

from agent_history import observability as obs
from agent_history.errors import AgentHistoryError, InvalidMessage
from agent_history.history import ChatHistory, Turn
from agent_history.history.codec import dict_message, in_scope, message_parts, role_for_type
from agent_history.history.drivers import driver_for
from agent_history.history.drivers.base import uses_own_io
from agent_history.keys import validate_history_key
from agent_history.transfer import ConversationCheck, MigrationReport, copy_conversation

__all__ = [
    "LEGACY_NAMESPACE",
    "LegacyFormatError",
    "aread_legacy_messages",
    "aread_legacy_turns",
    "legacy_keys",
    "legacy_turns",
    "migrate_legacy",
    "read_legacy_messages",
    "read_legacy_turns",
]

LEGACY_NAMESPACE: tuple[str, ...] = ("agent_chat_history",)
_PAGE = 500
_PLAIN_KEYS = {"role", "type", "content", "id", "message_id"}
_log = logging.getLogger(__name__)


class LegacyFormatError(AgentHistoryError, ValueError):
    """A store item is not a legacy history item (the text never quotes its body)."""


def legacy_turns(value: Any, *, strict: bool = True) -> list[Turn]:
    """The turns a legacy item value holds, numbered from 1.

    Messages the log does not keep (system messages, unknown roles, tool results without
    a tool call id) are left out; the numbering counts only the kept ones, so it is the
    same every time the item is read. A user or assistant message without ``content``
    makes the item malformed (``strict``, for a migration) or is left out too.

    Raises:
        LegacyFormatError: the value is not ``{"version": n, "messages": [...]}``.
        InvalidMessage: a message's content cannot be stored exactly.
    """
    if not isinstance(value, dict) or not isinstance(value.get("messages"), list):
        raise LegacyFormatError("not a legacy history item (no 'messages' list)")
    version = value.get("version")
    if version is not None and (not isinstance(version, int) or isinstance(version, bool)):
        raise LegacyFormatError("not a legacy history item ('version' is not a number)")
    turns: list[Turn] = []
    for index, raw in enumerate(value["messages"]):
        if not isinstance(raw, dict):
            raise LegacyFormatError(f"message {index} is not an object")
        # (One without ``content`` is judged below, once its role is known.)
        message = dict_message({**raw, "content": raw.get("content")}, f"message {index}")
        if message is None or not in_scope(message, "full"):
            continue
        if "content" not in raw and not raw.get("tool_calls"):
            # Its text is elsewhere (``text``, a photo's caption...): as an empty turn it
            # would be lost while a migration verified. Reading for a run leaves it out.
            if strict:
                raise LegacyFormatError(f"message {index} has no 'content'")
            continue
        if raw.keys() <= _PLAIN_KEYS:  # role and content only: nothing else to keep
            kind, extra = message.type, None
        else:
            _, _, _, kind, fields = message_parts(message)
            extra = fields or None
        seq = len(turns) + 1
        turns.append(Turn(seq, role_for_type(kind), message.content, message.id, None, kind, extra))
    return turns


def _readable(namespace: Sequence[str], key: str, value: Any) -> list[Turn]:
    """`legacy_turns`, or nothing with a warning (no body) when the item is malformed."""
    try:
        return legacy_turns(value, strict=False)
    except (LegacyFormatError, InvalidMessage) as exc:
        obs.log_event(
            "history_legacy_item_unreadable",
            namespace="/".join(namespace),
            key=key,
            reason=type(exc).__name__,
            level=logging.WARNING,
        )
        return []


def read_legacy_turns(store: BaseStore, namespace: Sequence[str], key: str) -> list[Turn]:
    """The legacy turns of conversation ``key``; empty when there is no (readable) item.

    Store errors propagate; a malformed item is logged (without its body) and read as
    empty.
    """
    item = store.get(tuple(namespace), key)
    return [] if item is None else _readable(namespace, key, item.value)


async def aread_legacy_turns(store: BaseStore, namespace: Sequence[str], key: str) -> list[Turn]:
    """Async `read_legacy_turns`."""
    # (on the store's own event loop, as every history call: see `on_own_loop`)
    item = await driver_for(store).on_own_loop(store.aget(tuple(namespace), key))
    return [] if item is None else _readable(namespace, key, item.value)


def read_legacy_messages(
    store: BaseStore, namespace: Sequence[str], key: str, *, last: int | None = None
) -> list[BaseMessage]:
    """The legacy messages of conversation ``key`` as LangChain messages, oldest first.

    Args:
        store: The graph store that holds the legacy items.
        namespace: Their namespace, usually `LEGACY_NAMESPACE`.
        key: The conversation key.
        last: Only the newest ``last`` messages.

    Returns:
        The messages; empty when there is no item, or when it is malformed (logged
        without its body). Store errors propagate.
    """
    turns = read_legacy_turns(store, namespace, key)
    return [t.to_message() for t in _newest(turns, last)]


async def aread_legacy_messages(
    store: BaseStore, namespace: Sequence[str], key: str, *, last: int | None = None
) -> list[BaseMessage]:
    """Async `read_legacy_messages`."""
    turns = await aread_legacy_turns(store, namespace, key)
    return [t.to_message() for t in _newest(turns, last)]


def _newest(turns: list[Turn], last: int | None) -> list[Turn]:
    if last is None:
        return turns
    return turns[-last:] if last > 0 else []


# --- listing the legacy items -----------------------------------------------------------


def _sql_keys(store: BaseStore, prefix: str, after: str) -> list[str] | None:
    """A page of item keys in exactly namespace ``prefix`` (not below it), through the
    store's own SQL connection; None for a store without one."""
    if uses_own_io(store, SqliteStore):  # a subclass overriding batch: its own calls
        if not store.is_setup:
            store.setup()
        with store.lock:
            cur = store.conn.execute(
                "SELECT key FROM store WHERE prefix = ? AND key > ? ORDER BY key LIMIT ?",
                (prefix, after, _PAGE),
            )
            return [str(row[0]) for row in cur.fetchall()]
    if uses_own_io(store, PostgresStore) and store.pipe is None:
        sql = "SELECT key FROM store WHERE prefix = %s AND key > %s ORDER BY key LIMIT %s"
        if isinstance(store.conn, ConnectionPool):
            with store.conn.connection() as conn:
                rows = conn.execute(sql, (prefix, after, _PAGE)).fetchall()
        else:
            with store.lock:
                rows = store.conn.execute(sql, (prefix, after, _PAGE)).fetchall()
        return [str(row["key"] if isinstance(row, dict) else row[0]) for row in rows]
    return None


def legacy_keys(store: BaseStore, namespace: Sequence[str] = LEGACY_NAMESPACE) -> Iterator[str]:
    """Keys of the items stored directly in ``namespace``, in key order.

    The log's own items live in namespaces below it and are not listed. SQLite and
    PostgreSQL stores answer with an exact-namespace query; other stores are searched
    page by page.
    """
    labels = tuple(namespace)
    after = ""
    page = _sql_keys(store, ".".join(labels), after)
    if page is not None:
        while page:
            yield from page
            if len(page) < _PAGE:
                return
            after = page[-1]
            page = _sql_keys(store, ".".join(labels), after)
        return
    offset = 0
    while True:
        items = store.search(labels, limit=_PAGE, offset=offset)
        yield from (item.key for item in items if tuple(item.namespace) == labels)
        if len(items) < _PAGE:
            return
        offset += len(items)


# --- migration --------------------------------------------------------------------------


def migrate_legacy(
    source: BaseStore,
    target: ChatHistory,
    *,
    namespace: Sequence[str] = LEGACY_NAMESPACE,
    keys: Iterable[str] | None = None,
    on_progress: Callable[[str, int], None] | None = None,
) -> MigrationReport:
    """Copy every legacy item of ``source`` into the log ``target``, then verify it.

    Each conversation's kept messages become turns 1..n, written in one transaction;
    turns the log already holds (by sequence number) are skipped, so the migration can be
    interrupted and run again, or run twice at once, without a duplicate. Afterwards the
    log's first n turns must match the item (count and checksum); a log that already
    held other turns for the key is reported as a mismatch, not overwritten.

    Args:
        source: The store holding the legacy items.
        target: The log to fill (its store may be ``source``).
        namespace: The legacy items' namespace.
        keys: Only these conversations (default: every legacy item).
        on_progress: Called with each conversation's key and turns written.
    """
    labels = tuple(namespace)
    wanted = list(keys) if keys is not None else list(legacy_keys(source, labels))
    checks: list[ConversationCheck] = []
    copied = 0
    for start in range(0, len(wanted), _PAGE):
        page = wanted[start : start + _PAGE]
        items = source.batch([GetOp(labels, key) for key in page])
        for key, item in zip(page, items, strict=True):
            written, check = _migrate_item(
                target, key, item.value if isinstance(item, Item) else None
            )
            copied += written
            checks.append(check)
            if on_progress is not None:
                on_progress(key, written)
    return MigrationReport(len(checks), copied, tuple(checks))


def _migrate_item(target: ChatHistory, key: str, value: Any) -> tuple[int, ConversationCheck]:
    reason = validate_history_key(key)
    if reason is not None:
        problem = f"not a valid conversation key ({reason.value})"
        return 0, ConversationCheck(key, 0, 0, False, problem)
    if value is None:
        return 0, ConversationCheck(key, 0, target.count(key), False, "no legacy item")
    try:
        turns = legacy_turns(value)
    except (LegacyFormatError, InvalidMessage) as exc:
        return 0, ConversationCheck(key, 0, target.count(key), False, str(exc))
    if not turns:
        return 0, ConversationCheck(key, 0, target.count(key), True)
    return copy_conversation(target, key, turns)
