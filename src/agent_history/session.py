"""One pass over a conversation, shared by every way in (`AgentNode`, the ``create_agent``
middleware, the prebuilt agent hooks): resolve the key, decide what the pass may do, read
the newest stored window, merge it with the thread, (the caller runs the model), append
the exchange when it ends, report.

A pass is a generator of steps (`Read`, `Append`, `Model`, `Sleep`, and for context
budgets and running summaries `ReadContext`, `ClaimSummary`, `Summarize`, `WriteSummary`):
the decisions live here once, and `drive_sync` / `drive_async` perform the I/O for sync
and async callers.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import random
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.runnables.config import merge_configs
from langgraph.constants import TAG_NOSTREAM
from langgraph.store.base import BaseStore

from agent_history import observability as obs
from agent_history.budget import call_with_budget
from agent_history.context.budget import TokenCounterLike, WindowFill, token_counter_for
from agent_history.context.summary import (
    DEFAULT_SUMMARY_PROMPT,
    Summary,
    SummaryClaim,
    SummaryWrite,
    summary_message,
    summary_request,
)
from agent_history.context.window import ContextRead
from agent_history.errors import WriteConflict
from agent_history.history import AppendResult, ChatHistory
from agent_history.history.chat_history import DEFAULT_CHUNK_SIZE
from agent_history.history.codec import HistoryScope, in_scope, is_final_answer
from agent_history.history.records import Turn
from agent_history.incoming import ThreadView
from agent_history.keys import (
    DEFAULT_HISTORY_KEY_CANDIDATES,
    DEFAULT_HISTORY_KEY_TEMPLATE,
    KeyResolution,
    resolve_history_key,
)
from agent_history.messages import (
    MergedPayload,
    TokenCounter,
    apply_reset,
    exchange_overlap,
    merge_history,
    newest_human,
    role_of,
    text_of,
    tool_safe_units,
    window,
)
from agent_history.stores import backend_of
from agent_history.toggles import DEFAULT_TOGGLES, CircuitBreaker, HistoryDecision, HistoryToggles

__all__ = [
    "REPORT_LISTENERS",
    "Append",
    "ClaimSummary",
    "HistoryOptions",
    "HistoryPass",
    "HistoryReport",
    "Model",
    "Read",
    "ReadContext",
    "Sleep",
    "Step",
    "Summarize",
    "WriteSummary",
    "drive_async",
    "drive_sync",
]

SYSTEM_PROMPT_ID = "agent-history:system-prompt"


@dataclass(frozen=True, slots=True)
class HistoryReport:
    """What one pass did with the history (no message bodies), passed to ``on_report``."""

    node: str
    key: str | None
    channel: str
    mode: str
    decision_reason: str
    stored_read: int = 0
    payload_messages: int = 0
    stored_in_payload: int = 0
    max_messages: int = 0
    truncated: int = 0
    appended: int = 0
    duplicates: int = 0
    fallbacks: tuple[str, ...] = ()
    shadow_difference: bool | None = None
    rejected: tuple[str, ...] = field(default_factory=tuple)
    redelivered: bool = False
    """The delivered message was already answered (stored by an earlier run, or answered
    in this thread): the pass stored nothing."""
    model_called: bool = True
    """False when the pass had nothing to answer (a re-delivery this thread answered)."""
    tokens_sent: int = 0
    """Tokens of the payload (system prompt, summary, window), counted with the token
    counter; 0 when the pass counts no tokens (no ``max_tokens``, no ``token_counter``)."""
    tokens_dropped: int = 0
    """Tokens of what the window cut (and of a summary left out for the budget)."""
    summary_seq: int = 0
    """The turn the summary in the payload covers up to; 0 without a summary."""
    summary_outcome: str = ""
    """What the pass did about the summary: ``""`` (nothing to do), ``not_due``,
    ``busy`` (another run updates it), ``written``, ``cleared`` (a reset command),
    ``stale`` (another run wrote first), ``shadow`` (computed, not stored), ``failed``."""
    summary_written_seq: int = 0
    """The turn a summary written by this pass covers up to; 0 when none was written."""


REPORT_LISTENERS: list[Callable[[HistoryReport], None]] = []
"""Process-wide subscribers to every pass's `HistoryReport` (the CLI's replay uses it)."""


@dataclass(frozen=True, slots=True)
class HistoryOptions:
    """How a surface uses the history (the fields `AgentNode` documents)."""

    enabled: bool = False
    namespace: tuple[str, ...] = ("agent_chat_history",)
    key_template: str = DEFAULT_HISTORY_KEY_TEMPLATE
    key_candidates: tuple[str, ...] = DEFAULT_HISTORY_KEY_CANDIDATES
    value_field: str = "content"
    chunk_size: int = DEFAULT_CHUNK_SIZE
    scope: HistoryScope = "turns"
    max_messages: int = 30
    reset_command: str = ""
    toggles: HistoryToggles = DEFAULT_TOGGLES
    write_attempts: int = 3
    write_backoff_seconds: float = 0.05
    on_report: Callable[[HistoryReport], None] | None = None
    max_tokens: int | None = None
    """Token budget of the payload (system prompt, summary, window); the tighter of it
    and ``max_messages`` wins. None: messages only."""
    token_counter: TokenCounterLike = None
    """Counts tokens (see `context.budget.token_counter_for`); None: LangChain's
    ``count_tokens_approximately``."""
    summarize: bool = False
    """Keep a running summary of what falls out of the window (needs ``summary_model``)."""
    summary_model: Runnable[Any, Any] | None = None
    """The chat model that writes the summary."""
    summary_every: int = 4
    """Fewest stored turns that must fall out past the summary before it is updated."""
    summary_max_turns: int = 100
    """Most turns one update reads (a larger backlog keeps its newest turns)."""
    summary_budget_seconds: float = 15.0
    """Longest a pass spends on the summary after the answer; then it gives up."""
    summary_prompt: str = DEFAULT_SUMMARY_PROMPT
    """The summary model's instructions."""

    def __post_init__(self) -> None:
        if self.max_messages < 1:
            raise ValueError("max_messages must be >= 1")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError("max_tokens must be >= 1 (or None)")
        token_counter_for(self.token_counter)  # raises TypeError for an unusable counter
        if self.summary_every < 1 or self.summary_max_turns < self.summary_every:
            raise ValueError("summary_every must be >= 1 and summary_max_turns >= summary_every")
        budget = self.summary_budget_seconds
        if not (math.isfinite(budget) and budget > 0):
            raise ValueError("summary_budget_seconds must be a positive number")
        if self.summarize and self.summary_model is None:
            raise ValueError("summarize needs a summary_model (a chat model)")
        if self.write_attempts < 1:
            raise ValueError("write_attempts must be >= 1")
        if self.scope not in ("turns", "full"):
            raise ValueError(f"history_scope must be 'turns' or 'full' (got {self.scope!r})")
        if not self.namespace or any(not label or "." in label for label in self.namespace):
            raise ValueError("history_namespace labels must be non-empty and contain no '.'")

    @property
    def counts_tokens(self) -> bool:
        """Whether passes count tokens (a budget is set, or a counter is given)."""
        return self.max_tokens is not None or self.token_counter is not None

    @property
    def counter(self) -> TokenCounter:
        """The token counter passes use."""
        return token_counter_for(self.token_counter)


# --- steps -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Read:
    """Read the newest ``n`` stored turns within ``budget`` seconds."""

    history: ChatHistory
    key: str
    n: int
    budget: float


@dataclass(frozen=True, slots=True)
class Append:
    """Append ``messages`` (see `ChatHistory.append`) within ``budget`` seconds."""

    history: ChatHistory
    key: str
    messages: list[BaseMessage]
    anchor_id: str | None
    anchor_next: str | None
    budget: float


@dataclass(frozen=True, slots=True)
class ReadContext:
    """Read the newest ``n`` stored turns after the summary, chunk by chunk until
    ``enough`` says the window is full (`ChatHistory.tail_context`), within ``budget``."""

    history: ChatHistory
    key: str
    n: int
    budget: float
    with_summary: bool
    enough: Callable[[Sequence[Turn]], bool] | None = None


@dataclass(frozen=True, slots=True)
class ClaimSummary:
    """Start a summary update (`ChatHistory.claim_summary`) within ``budget`` seconds."""

    history: ChatHistory
    key: str
    upto: int
    every: int
    max_turns: int
    owner: str | None
    lease_seconds: float
    budget: float


@dataclass(frozen=True, slots=True)
class WriteSummary:
    """Write a summary version (`ChatHistory.write_summary`) within ``budget`` seconds."""

    history: ChatHistory
    key: str
    text: str
    covers_seq: int
    base_version: int
    owner: str | None
    turns: int
    skipped: int
    budget: float


@dataclass(frozen=True, slots=True)
class Summarize:
    """Ask ``model`` for a summary (the answer is ``(ok, text or exception)``), giving up
    after ``budget`` seconds."""

    model: Runnable[Any, Any]
    request: list[BaseMessage]
    budget: float
    config: RunnableConfig | None = None


@dataclass(frozen=True, slots=True)
class Model:
    """Run the model on ``payload``; the answer is the list of messages it produced."""

    payload: list[BaseMessage]


@dataclass(frozen=True, slots=True)
class Sleep:
    """Back off before a retry."""

    seconds: float


Step = Read | Append | Model | Sleep | ReadContext | ClaimSummary | WriteSummary | Summarize
StoreStep = Read | Append | ReadContext | ClaimSummary | WriteSummary


def _store_call(step: StoreStep) -> Callable[[], Any]:
    if isinstance(step, Read):
        return lambda: step.history.tail_turns(step.key, step.n)
    if isinstance(step, ReadContext):
        return lambda: step.history.tail_context(
            step.key, step.n, with_summary=step.with_summary, enough=step.enough
        )
    if isinstance(step, ClaimSummary):
        return lambda: step.history.claim_summary(
            step.key,
            step.upto,
            every=step.every,
            max_turns=step.max_turns,
            owner=step.owner,
            lease_seconds=step.lease_seconds,
        )
    if isinstance(step, WriteSummary):
        return lambda: step.history.write_summary(
            step.key,
            step.text,
            step.covers_seq,
            base_version=step.base_version,
            owner=step.owner,
            turns=step.turns,
            skipped=step.skipped,
        )
    return lambda: step.history.append(
        step.key, step.messages, anchor_id=step.anchor_id, anchor_next=step.anchor_next
    )


def _store_coro(step: StoreStep) -> Awaitable[Any]:
    if isinstance(step, Read):
        return step.history.atail_turns(step.key, step.n)
    if isinstance(step, ReadContext):
        return step.history.atail_context(
            step.key, step.n, with_summary=step.with_summary, enough=step.enough
        )
    if isinstance(step, ClaimSummary):
        return step.history.aclaim_summary(
            step.key,
            step.upto,
            every=step.every,
            max_turns=step.max_turns,
            owner=step.owner,
            lease_seconds=step.lease_seconds,
        )
    if isinstance(step, WriteSummary):
        return step.history.awrite_summary(
            step.key,
            step.text,
            step.covers_seq,
            base_version=step.base_version,
            owner=step.owner,
            turns=step.turns,
            skipped=step.skipped,
        )
    return step.history.aappend(
        step.key, step.messages, anchor_id=step.anchor_id, anchor_next=step.anchor_next
    )


def _attempt_sync(step: StoreStep) -> tuple[bool, Any]:
    try:
        return True, call_with_budget(_store_call(step), step.budget)
    except Exception as exc:
        return False, exc


async def _attempt_async(step: StoreStep) -> tuple[bool, Any]:
    try:
        return True, await asyncio.wait_for(_store_coro(step), step.budget)
    except Exception as exc:
        return False, exc


def _summary_text(output: Any) -> str:
    """The text of a summary model's answer (a message or a string)."""
    text = text_of(output) if isinstance(output, BaseMessage) else output
    if not isinstance(text, str) or not text.strip():
        raise ValueError("the summary model gave no text")
    return text.strip()


def _summarize_sync(step: Summarize) -> tuple[bool, Any]:
    """Run the summary model in a worker thread and wait at most ``step.budget``: a
    model call cannot be interrupted, so a late one is left to finish on its own and
    its answer is dropped (nothing is written after the pass gave up)."""
    box: dict[str, Any] = {}
    done = threading.Event()

    def work() -> None:
        try:
            box["text"] = _summary_text(step.model.invoke(step.request, step.config))
        except Exception as exc:
            box["error"] = exc
        finally:
            done.set()

    context = contextvars.copy_context()
    worker = threading.Thread(
        target=context.run, args=(work,), name="agent-history-summary", daemon=True
    )
    worker.start()
    if not done.wait(max(0.0, step.budget)):
        return False, TimeoutError("the summary model did not answer within its budget")
    if "error" in box:
        return False, box["error"]
    return True, box["text"]


async def _summarize_async(step: Summarize) -> tuple[bool, Any]:
    try:
        output = await asyncio.wait_for(
            step.model.ainvoke(step.request, step.config), max(0.0, step.budget)
        )
        return True, _summary_text(output)
    except Exception as exc:
        return False, exc


def drive_sync(
    steps: Generator[Step, Any, Any],
    model: Callable[[list[BaseMessage]], list[BaseMessage]] | None = None,
) -> Any:
    """Run ``steps`` with sync I/O; ``model`` answers `Model` steps. Exceptions from the
    model propagate unchanged (StopIteration included); store failures never do."""
    answer: Any = None
    while True:
        try:
            step = steps.send(answer)
        except StopIteration as done:
            return done.value
        if isinstance(step, Model):
            if model is None:
                raise TypeError("these steps need a model")
            answer = model(step.payload)
        elif isinstance(step, Sleep):
            time.sleep(step.seconds)
            answer = None
        elif isinstance(step, Summarize):
            answer = _summarize_sync(step)
        else:
            answer = _attempt_sync(step)


async def drive_async(
    steps: Generator[Step, Any, Any],
    model: Callable[[list[BaseMessage]], Awaitable[list[BaseMessage]]] | None = None,
) -> Any:
    """Async `drive_sync`."""
    answer: Any = None
    while True:
        try:
            step = steps.send(answer)
        except StopIteration as done:
            return done.value
        if isinstance(step, Model):
            if model is None:
                raise TypeError("these steps need a model")
            answer = await model(step.payload)
        elif isinstance(step, Sleep):
            await asyncio.sleep(step.seconds)
            answer = None
        elif isinstance(step, Summarize):
            answer = await _summarize_async(step)
        else:
            answer = await _attempt_async(step)


# --- one pass ----------------------------------------------------------------------------


@dataclass(slots=True)
class HistoryPass:
    """One pass over a conversation: what it may do, what it read, what it appended."""

    options: HistoryOptions
    node: str
    view: ThreadView
    decision: HistoryDecision
    backend: str
    breaker: CircuitBreaker | None = None
    resolution: KeyResolution | None = None
    history: ChatHistory | None = None
    key: str = ""
    fallbacks: list[str] = field(default_factory=list)
    stored: list[BaseMessage] = field(default_factory=list)
    merged: MergedPayload | None = None
    payload: MergedPayload | None = None
    shadow_difference: bool | None = None
    appended: AppendResult | None = None
    redelivered: bool = False
    config: RunnableConfig | None = None
    summary: Summary | None = None
    """The stored summary read with the window (when summaries are on)."""
    summary_in_payload: Summary | None = None
    tokens_sent: int = 0
    tokens_dropped: int = 0
    summary_outcome: str = ""
    summary_written_seq: int = 0
    last_seq: int = 0
    """The newest stored turn the window read saw."""
    _seq_of: dict[int, int] = field(default_factory=dict)
    """Stored turn seq per message object read (``id()``), and per message id."""
    _seq_of_id: dict[str, int] = field(default_factory=dict)
    _appended: list[BaseMessage] = field(default_factory=list)
    """The messages this pass appended, when their seqs are known."""
    _reserved: int = 0
    """Tokens of what goes before the window (system prompt, thread system messages, the
    summary), when counting."""

    @classmethod
    def begin(
        cls,
        options: HistoryOptions,
        node: str,
        view: ThreadView,
        state: Any,
        config: RunnableConfig | None,
        store: BaseStore | None,
    ) -> HistoryPass:
        """Resolve the key and decide what this pass may do (no I/O)."""
        store = store if options.enabled else None
        backend = backend_of(store) if store is not None else "other"
        toggles = options.toggles
        breaker = toggles.breaker_for(store, backend) if store is not None else None
        decision = toggles.decide(node, node_enabled=options.enabled, breaker=breaker)
        run = cls(options, node, view, decision, backend, breaker)
        run.config = config
        if not decision.enabled:
            if options.enabled and decision.reason == "breaker_open":
                run._fallback("breaker_open")
            return run
        if store is None:
            run._fallback("no_store")
            return run
        run.resolution = resolve_history_key(
            state, config, candidates=options.key_candidates, key_template=options.key_template
        )
        if run.resolution.key is None:
            obs.METRICS.inc(obs.KEY_RESOLUTION_FAILURES, backend=backend, outcome="fallback")
            run._fallback("no_valid_key")
            return run
        run.key = run.resolution.key
        run.history = ChatHistory(
            store,
            namespace=options.namespace,
            chunk_size=options.chunk_size,
            value_field=options.value_field,
            scope=options.scope,
        )
        return run

    # --- the steps --------------------------------------------------------------------

    def read(self) -> Generator[Step, Any, None]:
        """Read the newest stored window (when this pass may)."""
        if self.history is None or not self.decision.read:
            return
        started = time.perf_counter()
        budget = self.options.toggles.current().read_timeout_seconds
        n = self.options.max_messages
        step: Read | ReadContext = Read(self.history, self.key, n, budget)
        if self._reads_context():
            step = ReadContext(self.history, self.key, n, budget, self.summary_on, self._fill())
        ok, value = yield step
        self._record(obs.STORE_READ_LATENCY, started, ok)
        if not ok:
            self._read_failed(value)
            self.history = None
        elif isinstance(value, ContextRead):
            self._took(value)
        else:
            self.stored = self.history.to_messages(value, self.key)

    @property
    def summary_on(self) -> bool:
        """Whether this pass keeps a running summary."""
        return self.options.summarize and self.options.summary_model is not None

    def _reads_context(self) -> bool:
        return self.options.max_tokens is not None or self.summary_on

    def _fill(self) -> WindowFill | None:
        if self.options.max_tokens is None:
            return None
        return WindowFill(self.options.max_tokens, self.options.counter, _readable)

    def _took(self, read: ContextRead) -> None:
        """Keep what the window read found, with each stored message's seq."""
        assert self.history is not None
        self.summary = read.summary
        self.last_seq = read.last_seq
        for turn in read.turns:
            for message in self.history.to_messages([turn], self.key):
                self.stored.append(message)
                self._seq_of[id(message)] = turn.seq
                if message.id:
                    self._seq_of_id[message.id] = turn.seq

    def build_payload(self, system_prompt: str = "") -> list[BaseMessage]:
        """The model payload: the system prompt, the thread's system messages, the
        summary (when there is one), the window.

        With ``max_tokens`` the whole payload fits the budget (the newest user message
        always stays): the system prompt and the summary count first, the window gets
        what is left, and a summary too large to leave room for the newest user message
        is left out.
        """
        thread = self.view.messages
        self.tokens_sent = self.tokens_dropped = 0
        system = [SystemMessage(system_prompt, id=SYSTEM_PROMPT_ID)] if system_prompt else []
        prefix = [*system, *(m for m in thread if role_of(m) == "system")]
        from_store = self.history is not None and self.decision.payload_from_store
        summary = self._fitting_summary(prefix, thread) if from_store else None
        self.merged = self._merge(self.stored, prefix, summary)
        if summary is not None and self.merged.dropped_by_reset:
            # A reset command cleared what came before it, the summary of it included.
            summary = None
            self.merged = self._merge(self.stored, prefix, None)
        payload = self.merged
        # Merging against what is stored tells which thread messages are new (to append),
        # even when the payload ignores the store (shadow mode).
        if self.history is not None and not self.decision.payload_from_store:
            payload = self._merge([], prefix, None)
            self._compare_shadow(payload)
        self.payload = payload
        self.redelivered = self.merged.redelivered
        if payload.truncated:
            obs.METRICS.inc(obs.TRUNCATION_EVENTS, backend=self.backend)
        self.summary_in_payload = summary
        before = [*prefix, summary_message(summary)] if summary is not None else prefix
        return self._count(before, payload)

    def _merge(
        self, stored: Sequence[BaseMessage], prefix: list[BaseMessage], summary: Summary | None
    ) -> MergedPayload:
        options = self.options
        counting = options.max_tokens is not None
        reserved = 0
        if counting and (prefix or summary is not None):
            extra = [summary_message(summary)] if summary is not None else []
            reserved = options.counter([*prefix, *extra])
        if stored is self.stored:
            self._reserved = reserved
        return merge_history(
            stored,
            self.view.messages,
            max_messages=options.max_messages,
            reset_command=options.reset_command,
            max_tokens=options.max_tokens,
            token_counter=options.counter if counting else None,
            reserved_tokens=reserved,
        )

    def _fitting_summary(
        self, prefix: list[BaseMessage], thread: Sequence[BaseMessage]
    ) -> Summary | None:
        """The stored summary when it goes in the payload: it has text, and with a token
        budget it leaves room for the system prompt and the newest user message."""
        summary = self.summary
        if summary is None or not summary.text:
            return None
        budget = self.options.max_tokens
        if budget is None:
            return summary
        chat = [m for m in thread if role_of(m) != "system"]
        newest = newest_human(chat)
        needed = [
            *prefix,
            summary_message(summary),
            *([chat[newest]] if newest is not None else []),
        ]
        if self.options.counter(needed) <= budget:
            return summary
        self.tokens_dropped += self.options.counter([summary_message(summary)])
        return None

    def _count(self, before: list[BaseMessage], payload: MergedPayload) -> list[BaseMessage]:
        """The payload, its tokens and the tokens the window cut (when counting)."""
        options = self.options
        window = list(payload.messages)
        if options.max_tokens is not None:
            window = _shave(before, window, options.max_tokens, options.counter)
        result = [*before, *window]
        if options.counts_tokens:
            counter = options.counter
            kept = {id(m) for m in window}
            cut = [*payload.dropped, *(m for m in payload.messages if id(m) not in kept)]
            self.tokens_sent = counter(result)
            self.tokens_dropped += counter(cut) if cut else 0
        return result

    def append(self, produced: Sequence[BaseMessage]) -> Generator[Step, Any, None]:
        """Append the exchange when this pass ends it (its last message is a final answer):
        the thread's unstored messages and what the model produced, once. Then, with
        summaries on, update the summary of what fell out of the window (`summarize`)."""
        if (yield from self._append_exchange(produced)):
            yield from self.summarize()

    def _append_exchange(self, produced: Sequence[BaseMessage]) -> Generator[Step, Any, bool]:
        """`append` without the summary; True when the exchange was written."""
        for message in produced:
            if not message.id:
                # The id it has in the graph state is the id it is stored under.
                message.id = str(uuid.uuid4())
        ends = bool(produced) and is_final_answer(produced[-1])
        if self.history is None or not self.decision.write or not ends:
            return False
        pending, anchor_id, anchor_next = self._to_append(produced)
        budgets = self.options.toggles.current()
        if pending and self._by_content():
            # Without ids, a re-delivered exchange is recognised by content: it repeats
            # the end of what is stored (read more of it if the window read too little).
            stored = self.stored
            full = len(stored) == self.options.max_messages or self._reads_context()
            if len(stored) < len(pending) and full:
                ok, value = yield Read(
                    self.history, self.key, len(pending), budgets.read_timeout_seconds
                )
                stored = self.history.to_messages(value, self.key) if ok else stored
            pending = pending[exchange_overlap(stored, pending) :]
        if not pending:
            return True
        step = Append(
            self.history, self.key, pending, anchor_id, anchor_next, budgets.write_timeout_seconds
        )
        for attempt in range(self.options.write_attempts):
            started = time.perf_counter()
            ok, value = yield step
            self._record(obs.STORE_WRITE_LATENCY, started, ok)
            if ok:
                self._wrote(value)
                self._note_appended(pending, value)
                return True
            if attempt + 1 == self.options.write_attempts or self._breaker_open():
                self._write_failed(value)
                return False
            yield Sleep(self._backoff(attempt))
        return False

    # --- the running summary ------------------------------------------------------------

    def summarize(self) -> Generator[Step, Any, None]:
        """Update the running summary with the stored turns that have fallen out of the
        window (as the conversation stands after this exchange), when at least
        ``summary_every`` have since the summary (after the answer; `append` calls it
        once the exchange is written).

        Only a pass that may write updates it (``read_only`` reads the summary and
        writes none); in ``shadow`` mode it is computed and not stored. The update
        takes a lease, so one run at a time asks the model; the model sees the previous
        summary and the newly dropped turns only; the write is versioned, so a stale
        update stores nothing. Failures (store, model, budget) leave the previous
        summary in place, with a warning and `obs.SUMMARY_FAILURES`.
        """
        history, merged, options = self.history, self.merged, self.options
        model = options.summary_model
        if not self.summary_on or model is None or history is None or merged is None:
            return
        if not self.decision.write or self.redelivered:
            return
        upto = self._dropped_upto()
        deadline = time.monotonic() + options.summary_budget_seconds
        write_budget = options.toggles.current().write_timeout_seconds
        shadow = not self.decision.payload_from_store
        summary = self.summary
        if merged.dropped_by_reset and summary is not None and summary.text and not shadow:
            yield from self._clear_summary(summary, upto, min(write_budget, _left(deadline)))
            return
        covers = summary.covers_seq if summary else 0
        if shadow:
            covers = max(covers, _shadow_covers(self._conversation()))
        if upto - covers < options.summary_every:
            self.summary_outcome = "not_due" if upto > covers else ""
            return
        owner = None if shadow else uuid.uuid4().hex
        ok, claim = yield ClaimSummary(
            history,
            self.key,
            upto,
            options.summary_every,
            options.summary_max_turns,
            owner,
            options.summary_budget_seconds + write_budget,
            min(write_budget, _left(deadline)),
        )
        if not ok:
            self._summary_failed("claim_failed", claim)
            return
        claimed: SummaryClaim = claim
        if not claimed.granted:
            self.summary_outcome = claimed.reason if claimed.reason != "no_conversation" else ""
            return
        previous = claimed.previous
        request = self._summary_request(previous, claimed.turns)
        ok, text = yield Summarize(model, request, _left(deadline), self._summary_config())
        if not ok:
            self._summary_failed("model_failed", text)
            return
        if shadow:
            _shadow_covers(self._conversation(), claimed.upto)
            self.summary_outcome = "shadow"
            return
        ok, written = yield WriteSummary(
            history,
            self.key,
            text,
            claimed.upto,
            previous.version if previous else 0,
            owner,
            len(claimed.turns),
            claimed.skipped,
            min(write_budget, _left(deadline)),
        )
        if not ok:
            self._summary_failed("write_failed", written)
            return
        self._summary_written(written, claimed.upto)

    def _summary_request(self, previous: Summary | None, turns: list[Turn]) -> list[BaseMessage]:
        """The summary model's input: the previous summary and the turns to add. A reset
        command among them clears what came before it, the previous summary included."""
        assert self.history is not None
        messages = self.history.to_messages(turns, self.key)
        after_reset, cut = apply_reset(messages, self.options.reset_command)
        text = "" if cut or previous is None else previous.text
        return summary_request(text, after_reset, self.options.summary_prompt)

    def _clear_summary(
        self, summary: Summary, upto: int, budget: float
    ) -> Generator[Step, Any, None]:
        """A reset command is in the window: store an empty summary covering everything
        before the window, so what came before the reset is not shown again."""
        assert self.history is not None
        if upto <= summary.covers_seq:
            return
        step = WriteSummary(self.history, self.key, "", upto, summary.version, None, 0, 0, budget)
        ok, written = yield step
        if not ok:
            self._summary_failed("write_failed", written)
        elif written.written:
            self.summary_outcome = "cleared"
            self.summary_written_seq = upto
        else:
            self.summary_outcome = written.reason

    def _summary_written(self, written: SummaryWrite, upto: int) -> None:
        self.summary_outcome = written.reason
        if written.written:
            self.summary_written_seq = upto

    def _dropped_upto(self) -> int:
        """The newest stored turn that has fallen out of the window, as the conversation
        stands after this exchange: the next pass's window (this one's stored messages,
        what this pass appended, and one more user message) starts after it."""
        assert self.merged is not None
        options = self.options
        kept = [m for m in self.merged.messages if self._seq_for(m) is not None]
        seen = {id(m) for m in kept}
        added = [m for m in self._appended if id(m) not in seen]
        conversation = [*kept, *added, HumanMessage("")]
        counting = options.max_tokens is not None
        upcoming = window(
            conversation,
            options.max_messages,
            max_tokens=options.max_tokens,
            token_counter=options.counter if counting else None,
            reserved_tokens=self._reserved,
        )
        seqs = [seq for seq in map(self._seq_for, upcoming) if seq is not None]
        if seqs:
            return min(seqs) - 1
        known = [seq for seq in map(self._seq_for, conversation) if seq is not None]
        return max(known, default=self.last_seq)

    def _note_appended(self, pending: Sequence[BaseMessage], result: AppendResult) -> None:
        """Remember the seqs of what this pass appended (when the append stored all of it
        in order, so the seqs are certain)."""
        if result.first_seq is None or result.appended != len(pending):
            return
        for offset, message in enumerate(pending):
            seq = result.first_seq + offset
            self._seq_of[id(message)] = seq
            if message.id:
                self._seq_of_id[message.id] = seq
        self._appended = list(pending)

    def _seq_for(self, message: BaseMessage) -> int | None:
        seq = self._seq_of.get(id(message))
        if seq is None and message.id:
            seq = self._seq_of_id.get(message.id)
        return seq

    def _conversation(self) -> tuple[str, ...]:
        return (*self.options.namespace, self.key)

    def _summary_config(self) -> RunnableConfig:
        """The summary model's config: the run's (callbacks, tracing) with LangGraph's
        ``nostream`` tag, so ``stream_mode="messages"`` never streams a summary as if the
        node had answered with it."""
        own: RunnableConfig = {"tags": [TAG_NOSTREAM], "run_name": "agent_history_summary"}
        return merge_configs(self.config, own) if self.config else own

    def _summary_failed(self, reason: str, exc: Any) -> None:
        self.summary_outcome = "failed"
        timeout = isinstance(exc, TimeoutError)
        outcome = "timeout" if timeout else "error"
        obs.METRICS.inc(obs.SUMMARY_FAILURES, backend=self.backend, outcome=outcome)
        obs.log_event(
            "summary_failed",
            node=self.node,
            namespace="/".join(self.options.namespace),
            key=self.key or None,
            reason="timeout" if timeout else reason,
            error=obs.describe_error(exc) if isinstance(exc, BaseException) else None,
        )

    def report(self, payload: Sequence[BaseMessage], model_called: bool = True) -> HistoryReport:
        """Build the pass's `HistoryReport` and hand it to the listeners."""
        merged = self.payload
        resolution = self.resolution
        if self.appended is not None and self.appended.appended == 0 and self.appended.duplicates:
            self.redelivered = True
        report = HistoryReport(
            node=self.node,
            key=resolution.key if resolution else None,
            channel=resolution.channel if resolution else "other",
            mode=self.decision.mode.value,
            decision_reason=self.decision.reason,
            stored_read=len(self.stored),
            payload_messages=sum(1 for m in payload if role_of(m) != "system"),
            stored_in_payload=merged.stored_in_payload if merged else 0,
            max_messages=self.options.max_messages,
            truncated=merged.truncated if merged else 0,
            appended=self.appended.appended if self.appended else 0,
            duplicates=self.appended.duplicates if self.appended else 0,
            fallbacks=tuple(self.fallbacks),
            shadow_difference=self.shadow_difference,
            rejected=tuple(f"{r.reason}" for r in (resolution.rejected if resolution else ())),
            redelivered=self.redelivered,
            model_called=model_called,
            tokens_sent=self.tokens_sent,
            tokens_dropped=self.tokens_dropped,
            summary_seq=self.summary_in_payload.covers_seq if self.summary_in_payload else 0,
            summary_outcome=self.summary_outcome,
            summary_written_seq=self.summary_written_seq,
        )
        for listener in (self.options.on_report, *REPORT_LISTENERS):
            if listener is not None:
                listener(report)
        return report

    # --- helpers ------------------------------------------------------------------------

    def _to_append(
        self, produced: Sequence[BaseMessage]
    ) -> tuple[list[BaseMessage], str | None, str | None]:
        """What the pass appends (the exchange it ends, with any unstored thread messages
        before it), the exchange's anchor (the user message it answers) and the run's
        token (the first message the run produced after the anchor)."""
        assert self.merged is not None
        scope = self.options.scope
        pending = [m for m in [*self.merged.unstored, *produced] if in_scope(m, scope)]
        chat = [m for m in self.view.messages if role_of(m) != "system"]
        conversation = [*chat, *produced]
        anchor = newest_human(chat)
        anchor_id = chat[anchor].id if anchor is not None else None
        has_next = anchor is not None and anchor + 1 < len(conversation)
        anchor_next = conversation[anchor + 1].id if has_next and anchor is not None else None
        return pending, anchor_id, anchor_next

    def _by_content(self) -> bool:
        """Whether re-deliveries can only be recognised by content (no channel id)."""
        incoming = self.view.incoming
        return not (incoming and incoming.message_id)

    def _compare_shadow(self, in_memory: MergedPayload) -> None:
        assert self.merged is not None
        self.shadow_difference = _payload_key(in_memory.messages) != _payload_key(
            self.merged.messages
        )
        if self.shadow_difference:
            obs.METRICS.inc(obs.SHADOW_DIFFERENCES, backend=self.backend)
            obs.log_event(
                "shadow_payload_differs",
                level=logging.DEBUG,
                node=self.node,
                key=self.resolution.key if self.resolution else None,
                in_memory=len(in_memory.messages),
                with_history=len(self.merged.messages),
            )

    def _channel(self) -> str:
        return self.resolution.channel if self.resolution else "other"

    def _fallback(self, reason: str, error: str = "") -> None:
        self.fallbacks.append(reason)
        resolution = self.resolution
        obs.METRICS.inc(
            obs.FALLBACKS, backend=self.backend, channel=self._channel(), outcome="fallback"
        )
        obs.log_event(
            "history_fallback",
            node=self.node,
            namespace="/".join(self.options.namespace),
            key=resolution.key if resolution else None,
            reason=reason,
            error=error or None,
            rejected=",".join(f"{r.reason}" for r in (resolution.rejected if resolution else ()))
            or None,
        )

    def _record(self, metric: str, started: float, ok: bool) -> None:
        elapsed = (time.perf_counter() - started) * 1000
        outcome = "ok" if ok else "fallback"
        obs.METRICS.observe(
            metric, elapsed, backend=self.backend, channel=self._channel(), outcome=outcome
        )
        if self.breaker is not None:
            (self.breaker.record_success if ok else self.breaker.record_failure)()

    def _read_failed(self, exc: BaseException) -> None:
        obs.METRICS.inc(obs.STORE_READ_FAILURES, backend=self.backend, channel=self._channel())
        reason = "read_timeout" if isinstance(exc, TimeoutError) else "read_failed"
        self._fallback(reason, obs.describe_error(exc))

    def _write_failed(self, exc: BaseException) -> None:
        obs.METRICS.inc(obs.STORE_WRITE_FAILURES, backend=self.backend, channel=self._channel())
        if isinstance(exc, WriteConflict):
            obs.METRICS.inc(obs.WRITE_CONFLICTS, backend=self.backend, outcome="conflict")
        reason = "write_timeout" if isinstance(exc, TimeoutError) else "write_failed"
        self._fallback(reason, obs.describe_error(exc))

    def _wrote(self, result: AppendResult) -> None:
        self.appended = result
        if result.conflicts:
            obs.METRICS.inc(
                obs.WRITE_CONFLICTS, result.conflicts, backend=self.backend, outcome="conflict"
            )

    def _breaker_open(self) -> bool:
        return self.breaker is not None and not self.breaker.allow()

    def _backoff(self, attempt: int) -> float:
        base = self.options.write_backoff_seconds
        return float(base * (2**attempt) * (0.5 + random.random()))


def _left(deadline: float) -> float:
    """Seconds left before ``deadline`` (at least 0)."""
    return max(0.0, deadline - time.monotonic())


def _readable(turns: Sequence[Turn]) -> list[BaseMessage]:
    """The turns that read back as messages (for counting; `ChatHistory.to_messages`
    reports the others when the window is built)."""
    messages = []
    for turn in turns:
        try:
            messages.append(turn.to_message())
        except Exception:
            continue
    return messages


def _shave(
    before: list[BaseMessage], window: list[BaseMessage], budget: int, counter: TokenCounter
) -> list[BaseMessage]:
    """Drop whole units from the window, oldest first, while the payload is over
    ``budget`` (the window fits when the counter adds up per message; this guards
    counters that do not): the newest user message stays."""
    while window and counter([*before, *window]) > budget:
        units = tool_safe_units(window)
        newest = newest_human(window)
        keep = window[newest] if newest is not None else None
        doomed = next((u for u in units if not (len(u) == 1 and u[0] is keep)), None)
        if doomed is None:
            break
        gone = {id(m) for m in doomed}
        window = [m for m in window if id(m) not in gone]
    return window


_SHADOW_COVERS: OrderedDict[tuple[str, ...], int] = OrderedDict()
"""In shadow mode nothing is stored: the turn each conversation's last computed summary
covered, so a shadow pass still computes at most once per ``summary_every`` turns."""
_SHADOW_COVERS_MAX = 4096
_shadow_lock = threading.Lock()


def _shadow_covers(conversation: tuple[str, ...], upto: int | None = None) -> int:
    with _shadow_lock:
        if upto is not None:
            _SHADOW_COVERS[conversation] = upto
            _SHADOW_COVERS.move_to_end(conversation)
            while len(_SHADOW_COVERS) > _SHADOW_COVERS_MAX:
                _SHADOW_COVERS.popitem(last=False)
        return _SHADOW_COVERS.get(conversation, 0)


def _payload_key(messages: Sequence[BaseMessage]) -> list[tuple[str, str]]:
    return [(role_of(m), repr(m.content)) for m in messages]
