"""`ChatHistory`: the append-only chat log kept as ordinary items of a LangGraph store."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable, Generator, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from langchain_core.messages import BaseMessage
from langgraph.store.base import BaseStore

from agent_history import observability as obs
from agent_history.budget import deadline_after
from agent_history.context.summary import (
    Summary,
    SummaryClaim,
    SummaryWrite,
    claim_summary_steps,
    import_summary_steps,
    read_summary_steps,
    release_summary_steps,
    write_summary_steps,
)
from agent_history.context.window import ContextRead, chunks_per_get, context_steps
from agent_history.errors import InvalidArgument, InvalidMessage, InvalidNamespace
from agent_history.history.arguments import budget_arg, count_arg, value_field_arg
from agent_history.history.bulk import (
    ID_RULE,
    ImportConflict,
    ImportedTurn,
    ImportResult,
    delete_if_idle_steps,
    import_steps,
    imported_turn,
    is_idle,
)
from agent_history.history.codec import (
    HistoryScope,
    check_content,
    check_rebuilds,
    is_plain,
    message_parts,
    messages_of,
    quarantine,
)
from agent_history.history.drivers import AppendRequest, HistoryDriver, driver_for
from agent_history.history.drivers.base import PageCursor
from agent_history.history.faults import store_faults
from agent_history.history.layout import PendingTurn, read_records, turn_reader
from agent_history.history.message_history import KeyedMessageHistory
from agent_history.history.naming import conversation_namespace, key_of_label, validate_namespace
from agent_history.history.records import (
    AppendResult,
    ConversationInfo,
    RunToken,
    Turn,
    id_or_none,
    is_utc_time,
    message_from_record,
)
from agent_history.history.steps import (
    ReadBatch,
    Request,
    Steps,
    anchor_tokens_steps,
    delete_legacy_item_steps,
    delete_steps,
    head_steps,
    read_steps,
    tail_steps,
)
from agent_history.messages import MessageLike

__all__ = ["DEFAULT_CHUNK_SIZE", "DEFAULT_NAMESPACE", "ChatHistory"]

DEFAULT_NAMESPACE: tuple[str, ...] = ("agent_chat_history",)
DEFAULT_CHUNK_SIZE = 8
_DELETE_BATCH_CHUNKS = 16
_READ_BATCH_TURNS = 256
_KEYS_PAGE = 500

T = TypeVar("T")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def to_pending(
    messages: Sequence[MessageLike | Turn],
    message_ids: Sequence[str | None] | None = None,
    scope: HistoryScope = "turns",
) -> tuple[list[PendingTurn], int]:
    """Validate ``messages`` and keep the ones ``scope`` stores; count the others as skipped.

    ``turns`` keeps user messages and final assistant answers; ``full`` keeps every
    message but system messages (assistant tool-call steps and tool results included).
    Each kept message is stored with all of its fields, so it reads back equal.

    Raises:
        InvalidMessage: a message's content or fields cannot be stored exactly, or its id
            is not text; nothing is written. Nothing here touches a store, so any other
            error a message causes is reported as this one too: callers (`AgentNode`)
            count it against the message, not the store.
    """
    try:
        return _to_pending(messages, message_ids, scope)
    except (InvalidMessage, InvalidArgument):
        raise
    except Exception as exc:  # pydantic's errors quote the body: the class only
        raise InvalidMessage(f"a message cannot be stored ({type(exc).__name__})") from None


def _to_pending(
    messages: Sequence[MessageLike | Turn],
    message_ids: Sequence[str | None] | None,
    scope: HistoryScope,
) -> tuple[list[PendingTurn], int]:
    if isinstance(messages, str | bytes) or not isinstance(messages, Sequence):
        raise InvalidMessage(
            f"messages must be a sequence of messages, not {type(messages).__name__}"
        )
    if message_ids is not None and (
        isinstance(message_ids, str | bytes) or not isinstance(message_ids, Sequence)
    ):
        raise InvalidArgument("message_ids must be a sequence with one entry per message")
    if message_ids is not None and len(message_ids) != len(messages):
        raise InvalidArgument("message_ids must have one entry per message")
    turns = [m for m in messages if isinstance(m, Turn)]
    if turns and len(turns) != len(messages):
        raise InvalidMessage("messages must be all Turns or all messages, not a mix")
    pending: list[PendingTurn] = []
    if turns:
        kept = []
        for index, turn in enumerate(turns):
            check_content(turn.content, f"message {index}")
            kept.append((index, turn.to_message()))
        skipped = 0
    else:
        kept, skipped, unsupported = messages_of(messages, scope)  # type: ignore[arg-type]
        if unsupported:
            # No scope stores them: say so (by count and type, never content) rather than
            # let them vanish without a trace.
            obs.log_event(
                "history_messages_unsupported",
                count=len(unsupported),
                types=",".join(sorted(set(unsupported))),
            )
    for index, message in kept:
        role, content, mid, kind, extra = message_parts(message)
        if message_ids is not None and message_ids[index] not in (None, ""):
            mid = str(message_ids[index])
        mid = id_or_none(mid)
        if mid is not None and (not isinstance(mid, str) or not is_plain(mid)):
            raise InvalidMessage(f"message {index}: {ID_RULE}")
        where = f"message {index}"
        check_rebuilds(role, content, mid, kind, extra, where)
        plain = is_plain(content, where) & is_plain(extra, where)
        pending.append(PendingTurn(role, content, mid, kind, extra or None, plain))
    return pending, skipped


class ChatHistory:
    """An append-only chat log per conversation key, stored in a LangGraph `BaseStore`.

    Tail reads touch the head and the one or two newest chunks, whatever the length of
    the conversation. Appends are atomic per conversation, and a turn whose message id
    is already stored is skipped, so re-delivered callbacks are stored once. The store's
    driver (`drivers.driver_for`), chosen once, does the I/O: SQL of its own on SQLite
    and PostgreSQL, the store's ``batch`` elsewhere.

    Reads and writes take an optional ``budget`` (seconds): the call then returns or
    raises `StoreTimeout` by then, and nothing it started is left running.

    Args:
        store: Any LangGraph store; SQLite and PostgreSQL stores get cross-process atomic
            appends, the in-memory store an in-process lock, others a best-effort path.
        namespace: Namespace prefix, a sequence of labels (``("myapp",)``, never a bare
            string); a conversation lives in ``(*namespace, key)``.
        chunk_size: Turns per chunk item for new conversations.
        value_field: Record field holding a turn's content.
        scope: What `append` keeps: ``turns`` (user messages and final assistant
            answers) or ``full`` (every message but system ones, tool steps included).

    Raises:
        InvalidNamespace: ``namespace`` is a string or not a sequence (its labels are
            checked by `validate_namespace` on each call).
        InvalidArgument: ``chunk_size``, ``value_field`` or ``scope`` cannot be used.
    """

    def __init__(
        self,
        store: BaseStore,
        *,
        namespace: Sequence[str] = DEFAULT_NAMESPACE,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        value_field: str = "content",
        scope: HistoryScope = "turns",
    ) -> None:
        chunk_size = count_arg("chunk_size", chunk_size, minimum=1, clamp=False)
        value_field = value_field_arg("value_field", value_field)
        if not isinstance(scope, str) or scope not in ("turns", "full"):
            raise InvalidArgument(f"scope must be 'turns' or 'full' (got {scope!r})")
        self.store = store
        self._driver: HistoryDriver = driver_for(store)
        self.namespace = _namespace_labels(namespace)
        self.chunk_size = chunk_size
        self.value_field = value_field
        self.scope: HistoryScope = scope

    def conversation_namespace(self, key: str) -> tuple[str, ...]:
        """The store namespace that holds conversation ``key``: the prefix, then the key
        encoded as one label (see `naming.key_label`).

        Raises:
            InvalidKey: ``key`` is rejected by `validate_history_key` (with its reason).
            InvalidNamespace: a label of the prefix is rejected.
        """
        return conversation_namespace(self.namespace, key)

    def for_key(self, key: str, *, window: int | None = None) -> KeyedMessageHistory:
        """Conversation ``key`` as LangChain's `BaseChatMessageHistory` (``messages``,
        ``add_messages``, ``aget_messages``, ``aadd_messages``, ``clear``).

        Args:
            key: Conversation key.
            window: Newest messages ``messages`` returns (None: the whole transcript).

        Raises:
            InvalidKey: ``key`` is rejected by `validate_history_key` (with its reason).
        """
        return KeyedMessageHistory(self, key, window=window)

    # --- the driver: procedures run atomically, or as reads -----------------------------------

    def _run_atomic(self, key: str, steps: Steps[T], *, budget: float | None = None) -> T:
        """Run the step procedure ``steps`` on conversation ``key`` as one atomic unit of
        work (the store's transaction, or its driver's lock), within ``budget`` seconds."""
        return self._run_in(self.conversation_namespace(key), steps, budget)

    async def _arun_atomic(self, key: str, steps: Steps[T], *, budget: float | None = None) -> T:
        """Async `_run_atomic`."""
        return await self._arun_in(self.conversation_namespace(key), steps, budget)

    def _run_in(self, namespace: tuple[str, ...], steps: Steps[T], budget: float | None) -> T:
        with deadline_after(budget_arg(budget)), store_faults(self._driver.backend):
            return self._driver.run(namespace, steps)

    async def _arun_in(
        self, namespace: tuple[str, ...], steps: Steps[T], budget: float | None
    ) -> T:
        with deadline_after(budget_arg(budget)), store_faults(self._driver.backend):
            return await self._driver.on_own_loop(self._driver.arun(namespace, steps))

    def _read(self, key: str, steps: Steps[T], budget: float | None = None) -> T:
        namespace = self.conversation_namespace(key)
        with deadline_after(budget_arg(budget)), store_faults(self._driver.backend):
            return self._driver.read(namespace, steps)

    async def _aread(self, key: str, steps: Steps[T], budget: float | None = None) -> T:
        namespace = self.conversation_namespace(key)
        with deadline_after(budget_arg(budget)), store_faults(self._driver.backend):
            return await self._driver.on_own_loop(self._driver.aread(namespace, steps))

    # --- reads ---------------------------------------------------------------------------

    def tail_turns(self, key: str, n: int, *, budget: float | None = None) -> list[Turn]:
        """The newest ``n`` stored turns, oldest first (within ``budget`` seconds)."""
        records = self._read(key, self._tail(key, n), budget)
        return read_records(records, turn_reader(self.value_field), (*self.namespace, key))

    async def atail_turns(self, key: str, n: int, *, budget: float | None = None) -> list[Turn]:
        """Async `tail_turns`."""
        records = await self._aread(key, self._tail(key, n), budget)
        return read_records(records, turn_reader(self.value_field), (*self.namespace, key))

    def tail(self, key: str, n: int, *, budget: float | None = None) -> list[BaseMessage]:
        """The newest ``n`` turns as LangChain messages, oldest first (a stored turn that
        cannot be read is skipped and reported, see `codec.quarantine`)."""
        records = self._read(key, self._tail(key, n), budget)
        return read_records(records, self._message_reader, (*self.namespace, key))

    async def atail(self, key: str, n: int, *, budget: float | None = None) -> list[BaseMessage]:
        """Async `tail`."""
        records = await self._aread(key, self._tail(key, n), budget)
        return read_records(records, self._message_reader, (*self.namespace, key))

    def _tail(self, key: str, n: int) -> Steps[list[tuple[int, dict[str, Any]]]]:
        size, saw = self._chunk_size_of(key)
        return tail_steps(count_arg("n", n), size, (*self.namespace, key), saw)

    def _chunk_size_of(self, key: str) -> tuple[int, Callable[[object], None]]:
        """The chunk size to plan a read of ``key`` with (its head's, when the driver
        has seen it, else this history's), and how to tell the driver what the head
        says (see `drivers.base.ChunkSizes`)."""
        namespace = self.conversation_namespace(key)
        sizes = self._driver.chunk_sizes
        return sizes.hint(namespace, self.chunk_size), functools.partial(
            sizes.saw, namespace, self.chunk_size
        )

    def _message_reader(self, record: dict[str, Any]) -> BaseMessage:
        return message_from_record(record, self.value_field)

    def to_messages(self, turns: Sequence[Turn], key: str = "") -> list[BaseMessage]:
        """Stored turns as LangChain messages, skipping (and reporting) unreadable ones."""
        messages: list[BaseMessage] = []
        for turn in turns:
            try:
                messages.append(turn.to_message())
            except Exception as exc:  # pydantic errors quote the body: report the class only
                quarantine(type(exc).__name__, namespace=(*self.namespace, key), seq=turn.seq)
        return messages

    def read(self, key: str, *, start_seq: int = 1) -> Iterator[Turn]:
        """Stream the whole transcript from ``start_seq`` on, a few chunks at a time.

        Raises:
            InvalidKey: ``key`` is rejected (when called, not when iterated).
            InvalidArgument: ``start_seq`` is not a whole number from 1.
        """
        namespace = self.conversation_namespace(key)
        first = count_arg("start_seq", start_seq, minimum=1)
        return _streamed(
            self._driver, namespace, read_steps(first, _READ_BATCH_TURNS, self.value_field)
        )

    def aread(self, key: str, *, start_seq: int = 1) -> AsyncIterator[Turn]:
        """Async `read`."""
        namespace = self.conversation_namespace(key)
        first = count_arg("start_seq", start_seq, minimum=1)
        return _astreamed(
            self._driver, namespace, read_steps(first, _READ_BATCH_TURNS, self.value_field)
        )

    def info(self, key: str, *, budget: float | None = None) -> ConversationInfo | None:
        """Turn count and timestamps of a conversation, None when it does not exist."""
        return _info(key, self._read(key, head_steps(), budget))

    async def ainfo(self, key: str, *, budget: float | None = None) -> ConversationInfo | None:
        """Async `info`."""
        return _info(key, await self._aread(key, head_steps(), budget))

    def count(self, key: str) -> int:
        """Number of stored turns in the conversation."""
        found = self.info(key)
        return found.turns if found else 0

    async def acount(self, key: str) -> int:
        """Async `count`."""
        found = await self.ainfo(key)
        return found.turns if found else 0

    def anchor_tokens(
        self, key: str, ids: Sequence[str], *, budget: float | None = None
    ) -> dict[str, RunToken]:
        """The run token of each of ``ids`` stored as an anchor (a user message an append
        answered, see `append`): the id of the latest answer stored for it, and where
        the pass that stored it starts. Ids without one are left out. One read."""
        return self._read(key, anchor_tokens_steps(list(ids)), budget)

    async def aanchor_tokens(
        self, key: str, ids: Sequence[str], *, budget: float | None = None
    ) -> dict[str, RunToken]:
        """Async `anchor_tokens`."""
        return await self._aread(key, anchor_tokens_steps(list(ids)), budget)

    def _key_candidates(self, page: list[tuple[str, ...]]) -> list[tuple[tuple[str, ...], str]]:
        """The namespaces of ``page`` that can hold a conversation, with its original key.

        A label no valid key encodes to (written by other code, or a key today's rules
        reject) is left out: no `ChatHistory` method could reach it.
        """
        prefix = validate_namespace(self.namespace)
        found = []
        for ns in page:
            if len(ns) == len(prefix) + 1 and ns[:-1] == prefix:
                key = key_of_label(ns[-1])
                if key is not None:
                    found.append((ns, key))
        return found

    def keys(self) -> Iterator[str]:
        """Every conversation key under the namespace, as it was given to `append`
        (for operations tools)."""
        validate_namespace(self.namespace)
        cursor: PageCursor = None
        while True:
            with store_faults(self._driver.backend):
                page, cursor = self._driver.namespace_page(self.namespace, cursor, _KEYS_PAGE)
                candidates = self._key_candidates(page)
                heads = self._driver.heads([ns for ns, _ in candidates])
            # A namespace can exist without a head (e.g. probed by a read on some stores,
            # or a delete interrupted half-way): only a head makes a conversation.
            yield from (key for (_, key), head in zip(candidates, heads, strict=True) if head)
            if cursor is None:
                return

    async def akeys(self) -> AsyncIterator[str]:
        """Async `keys`."""
        validate_namespace(self.namespace)
        cursor: PageCursor = None
        while True:
            with store_faults(self._driver.backend):
                page, cursor = await self._driver.on_own_loop(
                    self._driver.anamespace_page(self.namespace, cursor, _KEYS_PAGE)
                )
                candidates = self._key_candidates(page)
                heads = await self._driver.on_own_loop(
                    self._driver.aheads([ns for ns, _ in candidates])
                )
            for (_, key), head in zip(candidates, heads, strict=True):
                if head:
                    yield key
            if cursor is None:
                return

    # --- writes --------------------------------------------------------------------------

    def append(
        self,
        key: str,
        messages: Sequence[MessageLike | Turn],
        *,
        message_ids: Sequence[str | None] | None = None,
        anchor_id: str | None = None,
        anchor_next: str | None = None,
        anchor_seen: Sequence[str] = (),
        budget: float | None = None,
    ) -> AppendResult:
        """Append messages atomically, with every field they carry.

        Args:
            key: Conversation key.
            messages: LangChain messages, role/content dicts or `Turn`s, in order; the
                history's ``scope`` decides which are kept.
            message_ids: Optional ids overriding each message's own id (``None`` or
                ``""`` keeps it); a turn whose id is already stored in the conversation
                is skipped as a duplicate. An empty id is no id.
            anchor_id: The id of the user message this batch answers.
            anchor_next: A token of the answering run: the id of its answer, which no
                other run (nor another branch of a run forked from a checkpoint) has.
                The anchor's id entry records it when the anchor is written.
            anchor_seen: The ids of the messages that follow the anchor in the
                answering run's conversation. When the anchor is already stored with a
                token that is neither ``anchor_next`` nor among them, another run
                answered it (a re-delivered exchange, another branch of a fork):
                nothing is written. A token among them is an earlier pass of the same
                run (an agent sent back to revise its answer), and ``anchor_next``
                becomes the anchor's token.
            budget: Seconds the call may take (None: no limit of its own).

        Returns:
            What was written: counts, first and last sequence numbers, new total.

        Raises:
            InvalidMessage: a message cannot be stored exactly; nothing is written.
            StoreTimeout: ``budget`` passed; the append was stopped (if it had been
                committed, appending the same ids again stores nothing twice).
        """
        with deadline_after(budget_arg(budget)), store_faults(self._driver.backend):
            pending, skipped = to_pending(messages, message_ids, self.scope)
            namespace = self.conversation_namespace(key)
            if not pending:
                return AppendResult(0, 0, skipped, None, None, self.count(key))
            request = self._append_request(pending, skipped, anchor_id, anchor_next, anchor_seen)
            return self._driver.append(namespace, request)

    async def aappend(
        self,
        key: str,
        messages: Sequence[MessageLike | Turn],
        *,
        message_ids: Sequence[str | None] | None = None,
        anchor_id: str | None = None,
        anchor_next: str | None = None,
        anchor_seen: Sequence[str] = (),
        budget: float | None = None,
    ) -> AppendResult:
        """Async `append`."""
        with deadline_after(budget_arg(budget)), store_faults(self._driver.backend):
            pending, skipped = to_pending(messages, message_ids, self.scope)
            namespace = self.conversation_namespace(key)
            if not pending:
                return AppendResult(0, 0, skipped, None, None, await self.acount(key))
            request = self._append_request(pending, skipped, anchor_id, anchor_next, anchor_seen)
            return await self._driver.on_own_loop(self._driver.aappend(namespace, request))

    def _append_request(
        self,
        pending: list[PendingTurn],
        skipped: int,
        anchor_id: str | None,
        anchor_next: str | None,
        anchor_seen: Sequence[str],
    ) -> AppendRequest:
        return AppendRequest(
            pending,
            chunk_size=self.chunk_size,
            value_field=self.value_field,
            now=_now(),
            skipped=skipped,
            anchor_id=id_or_none(anchor_id),
            anchor_next=id_or_none(anchor_next),
            anchor_seen=tuple(dict.fromkeys(i for i in anchor_seen if i != "")),
        )

    def delete(self, key: str, *, budget: float | None = None) -> int:
        """Delete a conversation; returns the number of turns it had.

        The item the single-item layout of earlier deployments kept it in (under this
        history's namespace, named by the key; see `legacy`) is deleted first: left in
        place, a node reading that layout, or a second migration, would bring the deleted
        history back. ``budget`` bounds both."""
        with deadline_after(budget_arg(budget)):
            self._delete_legacy_item(key, None)
            return self._run_atomic(key, delete_steps(_DELETE_BATCH_CHUNKS))

    async def adelete(self, key: str, *, budget: float | None = None) -> int:
        """Async `delete`."""
        with deadline_after(budget_arg(budget)):
            await self._adelete_legacy_item(key, None)
            return await self._arun_atomic(key, delete_steps(_DELETE_BATCH_CHUNKS))

    def _delete_legacy_item(self, key: str, budget: float | None) -> None:
        self.conversation_namespace(key)  # the key is checked before anything is deleted
        self._run_in(self.namespace, delete_legacy_item_steps(key), budget)

    async def _adelete_legacy_item(self, key: str, budget: float | None) -> None:
        self.conversation_namespace(key)
        await self._arun_in(self.namespace, delete_legacy_item_steps(key), budget)

    # --- operator procedures: imports, migrations, retention ------------------------------

    def import_turns(self, key: str, turns: Sequence[Turn]) -> ImportResult:
        """Write ``turns`` at the sequence numbers they carry, atomically (imports and
        migrations).

        Turns whose seq the conversation already holds are skipped, so an import run
        again, or by two processes at once, writes each turn once. Every field is kept,
        the time each turn was first stored (``ts``) included.

        Args:
            key: Conversation key.
            turns: Turns with contiguous sequence numbers, in order.

        Raises:
            InvalidMessage: a turn cannot be stored exactly; nothing is written.
            ImportConflict: the turns do not continue the conversation (a gap), or one of
                their ids is stored at another position; nothing is written.
        """
        pending, first_seq = _imported(turns)
        if not pending:
            return ImportResult(0, 0, self.count(key))
        return self._run_atomic(key, self._import_steps(pending, first_seq))

    async def aimport_turns(self, key: str, turns: Sequence[Turn]) -> ImportResult:
        """Async `import_turns`."""
        pending, first_seq = _imported(turns)
        if not pending:
            return ImportResult(0, 0, await self.acount(key))
        return await self._arun_atomic(key, self._import_steps(pending, first_seq))

    def _import_steps(self, pending: list[ImportedTurn], first_seq: int) -> Steps[ImportResult]:
        return import_steps(
            pending,
            first_seq,
            chunk_size=self.chunk_size,
            value_field=self.value_field,
            now=_now(),
        )

    def delete_if_idle(self, key: str, before: datetime) -> ConversationInfo | None:
        """Delete a conversation only if its newest write is older than ``before``.

        The age is read under the same lock as the delete, so a turn appended after the
        caller listed the conversation keeps it.

        Args:
            key: Conversation key.
            before: Timezone-aware cutoff.

        Returns:
            The deleted conversation's info; None when it does not exist or is not idle.
        """
        if before.tzinfo is None:
            raise InvalidArgument("before must be timezone-aware")
        if _idle(self._read(key, head_steps()), before):
            self._delete_legacy_item(key, None)  # first, as `delete` does
        head = self._run_atomic(key, delete_if_idle_steps(before, _DELETE_BATCH_CHUNKS))
        return _info(key, head)

    async def adelete_if_idle(self, key: str, before: datetime) -> ConversationInfo | None:
        """Async `delete_if_idle`."""
        if before.tzinfo is None:
            raise InvalidArgument("before must be timezone-aware")
        if _idle(await self._aread(key, head_steps()), before):
            await self._adelete_legacy_item(key, None)
        head = await self._arun_atomic(key, delete_if_idle_steps(before, _DELETE_BATCH_CHUNKS))
        return _info(key, head)

    # --- context: the window read and the running summary (see `agent_history.context`) --

    def tail_context(
        self,
        key: str,
        n: int,
        *,
        with_summary: bool = False,
        enough: Callable[[Sequence[Turn]], bool] | None = None,
        budget: float | None = None,
    ) -> ContextRead:
        """The newest ``n`` turns after the summary (and the summary, ``with_summary``),
        read chunk by chunk from the newest until ``enough`` says the window is full."""
        steps = self._context(key, n, with_summary, enough)
        return self._read(key, steps, budget)

    async def atail_context(
        self,
        key: str,
        n: int,
        *,
        with_summary: bool = False,
        enough: Callable[[Sequence[Turn]], bool] | None = None,
        budget: float | None = None,
    ) -> ContextRead:
        """Async `tail_context`."""
        steps = self._context(key, n, with_summary, enough)
        return await self._aread(key, steps, budget)

    def _context(
        self,
        key: str,
        n: int,
        with_summary: bool,
        enough: Callable[[Sequence[Turn]], bool] | None,
    ) -> Steps[ContextRead]:
        size, saw = self._chunk_size_of(key)
        return context_steps(
            count_arg("n", n),
            self.value_field,
            with_summary=with_summary,
            enough=enough,
            chunk_hint=chunks_per_get(size),
            saw_chunk_size=saw,
        )

    def summary(self, key: str, *, budget: float | None = None) -> Summary | None:
        """The conversation's running summary and the turn it covers up to (None when
        there is none)."""
        return self._read(key, read_summary_steps(), budget)

    async def asummary(self, key: str, *, budget: float | None = None) -> Summary | None:
        """Async `summary`."""
        return await self._aread(key, read_summary_steps(), budget)

    def claim_summary(
        self,
        key: str,
        upto: int,
        *,
        every: int,
        max_turns: int,
        owner: str | None = None,
        lease_seconds: float = 0.0,
        budget: float | None = None,
    ) -> SummaryClaim:
        """Start an update of the summary up to turn ``upto`` (see
        `summary.claim_summary_steps`): with ``owner``, atomically, taking a lease of
        ``lease_seconds``; without, as a read that writes nothing."""
        steps = self._claim_steps(upto, every, max_turns, owner, lease_seconds)
        if owner is None:
            return self._read(key, steps, budget)
        return self._run_atomic(key, steps, budget=budget)

    async def aclaim_summary(
        self,
        key: str,
        upto: int,
        *,
        every: int,
        max_turns: int,
        owner: str | None = None,
        lease_seconds: float = 0.0,
        budget: float | None = None,
    ) -> SummaryClaim:
        """Async `claim_summary`."""
        steps = self._claim_steps(upto, every, max_turns, owner, lease_seconds)
        if owner is None:
            return await self._aread(key, steps, budget)
        return await self._arun_atomic(key, steps, budget=budget)

    def _claim_steps(
        self, upto: int, every: int, max_turns: int, owner: str | None, lease_seconds: float
    ) -> Steps[SummaryClaim]:
        now = datetime.now(UTC)
        return claim_summary_steps(
            count_arg("upto", upto),
            every=count_arg("every", every, minimum=1),
            max_turns=count_arg("max_turns", max_turns, minimum=1),
            value_field=self.value_field,
            now=now.isoformat(timespec="microseconds"),
            owner=owner,
            lease_until=(now + timedelta(seconds=max(0.0, lease_seconds))).isoformat(
                timespec="microseconds"
            ),
        )

    def release_summary(self, key: str, owner: str, *, budget: float | None = None) -> bool:
        """End ``owner``'s lease on the summary (see `summary.release_summary_steps`)."""
        return self._run_atomic(key, self._release_steps(owner), budget=budget)

    async def arelease_summary(self, key: str, owner: str, *, budget: float | None = None) -> bool:
        """Async `release_summary`."""
        return await self._arun_atomic(key, self._release_steps(owner), budget=budget)

    def _release_steps(self, owner: str) -> Steps[bool]:
        now = datetime.now(UTC).isoformat(timespec="microseconds")
        return release_summary_steps(owner, now=now)

    def write_summary(
        self,
        key: str,
        text: str,
        covers_seq: int,
        *,
        base_version: int,
        owner: str | None = None,
        turns: int = 0,
        skipped: int = 0,
        budget: float | None = None,
        reset: bool = False,
    ) -> SummaryWrite:
        """Store ``text`` as the summary up to turn ``covers_seq``, atomically and only
        if the stored summary is still version ``base_version`` (see
        `summary.write_summary_steps`): one version per covered seq, none built on a
        stale one. With ``owner``, only while the update's lease (`claim_summary`) is
        still the owner's. ``reset``: a reset command clears the summary, whatever lease
        another update holds (that update then writes nothing)."""
        steps = self._write_summary_steps(
            text, covers_seq, base_version, owner, turns, skipped, reset
        )
        return self._run_atomic(key, steps, budget=budget)

    async def awrite_summary(
        self,
        key: str,
        text: str,
        covers_seq: int,
        *,
        base_version: int,
        owner: str | None = None,
        turns: int = 0,
        skipped: int = 0,
        budget: float | None = None,
        reset: bool = False,
    ) -> SummaryWrite:
        """Async `write_summary`."""
        steps = self._write_summary_steps(
            text, covers_seq, base_version, owner, turns, skipped, reset
        )
        return await self._arun_atomic(key, steps, budget=budget)

    def import_summary(self, key: str, summary: Summary) -> SummaryWrite:
        """Store a summary read from another store (imports, migrations), atomically,
        unless the conversation lacks turn ``summary.covers_seq`` or already has a
        summary covering as many turns (see `summary.import_summary_steps`)."""
        return self._run_atomic(key, self._import_summary_steps(summary))

    async def aimport_summary(self, key: str, summary: Summary) -> SummaryWrite:
        """Async `import_summary`."""
        return await self._arun_atomic(key, self._import_summary_steps(summary))

    @staticmethod
    def _import_summary_steps(summary: Summary) -> Steps[SummaryWrite]:
        if not isinstance(summary, Summary) or not isinstance(summary.text, str):
            raise InvalidMessage("a summary must be a Summary holding text")
        count_arg("covers_seq", summary.covers_seq, minimum=1, clamp=False)
        count_arg("version", summary.version, minimum=1, clamp=False)
        count_arg("turns", summary.turns, clamp=False)
        count_arg("skipped", summary.skipped, clamp=False)
        if summary.updated_at and not is_utc_time(summary.updated_at):
            raise InvalidArgument("a summary's updated_at must be an ISO-8601 time with an offset")
        return import_summary_steps(summary, now=_now())

    @staticmethod
    def _write_summary_steps(
        text: str,
        covers_seq: int,
        base_version: int,
        owner: str | None,
        turns: int,
        skipped: int,
        reset: bool,
    ) -> Steps[SummaryWrite]:
        if not isinstance(text, str):
            raise InvalidMessage("a summary must be text")
        return write_summary_steps(
            text,
            count_arg("covers_seq", covers_seq, minimum=1, clamp=False),
            base_version=count_arg("base_version", base_version, clamp=False),
            now=_now(),
            owner=owner,
            turns=turns,
            skipped=skipped,
            reset=reset,
        )


def _streamed(
    driver: HistoryDriver,
    namespace: tuple[str, ...],
    steps: Generator[Request | ReadBatch, Any, None],
) -> Iterator[Turn]:
    """Perform the read procedure ``steps`` request by request, yielding its batches."""
    perform = driver.reader(namespace)
    try:
        item = next(steps)
        while True:
            if isinstance(item, list):
                yield from item
                item = next(steps)
            else:
                with store_faults(driver.backend):
                    found = perform(item)
                item = steps.send(found)
    except StopIteration:
        return


async def _astreamed(
    driver: HistoryDriver,
    namespace: tuple[str, ...],
    steps: Generator[Request | ReadBatch, Any, None],
) -> AsyncIterator[Turn]:
    """Async `_streamed`."""
    perform = driver.areader(namespace)
    try:
        item = next(steps)
        while True:
            if isinstance(item, list):
                for turn in item:
                    yield turn
                item = next(steps)
            else:
                with store_faults(driver.backend):
                    found = await driver.on_own_loop(perform(item))
                item = steps.send(found)
    except StopIteration:
        return


def _namespace_labels(namespace: Sequence[str]) -> tuple[str, ...]:
    """The prefix as a tuple; a bare string (which would split into one label per
    character) or a value that is not a sequence is refused here, the labels themselves by
    `validate_namespace` on each call."""
    if isinstance(namespace, str | bytes) or not isinstance(namespace, Sequence):
        raise InvalidNamespace(
            "a history namespace is a sequence of labels, not "
            f"{type(namespace).__name__}: pass e.g. ('myapp',)"
        )
    return tuple(namespace)


def _imported(turns: Sequence[Turn]) -> tuple[list[ImportedTurn], int]:
    """Validate turns to import; return them as pending turns and their first seq."""
    if not turns:
        return [], 1
    first_seq = turns[0].seq
    imported = []
    for offset, turn in enumerate(turns):
        if turn.seq != first_seq + offset:
            raise ImportConflict(
                f"sequence numbers must be contiguous (seq {turn.seq} at position {offset})"
            )
        imported.append(imported_turn(turn, f"seq {turn.seq}"))
    return imported, first_seq


def _idle(head: dict[str, Any] | None, before: datetime) -> bool:
    """Whether a conversation's head says it is idle since ``before`` (read before its
    lock is taken: `bulk.delete_if_idle_steps` decides again under the lock)."""
    return head is not None and is_idle(head, before)


def _info(key: str, head: dict[str, Any] | None) -> ConversationInfo | None:
    if head is None:
        return None
    return ConversationInfo(
        key=key,
        turns=int(head["last_seq"]),
        created_at=str(head.get("created_at", "")),
        updated_at=str(head.get("updated_at", "")),
        chunk_size=int(head["chunk_size"]),
    )
