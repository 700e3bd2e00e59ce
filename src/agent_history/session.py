"""One pass over a conversation, shared by every way in (`AgentNode`, the ``create_agent``
middleware, the prebuilt agent hooks): resolve the key, decide what the pass may do, read
the newest stored window, merge it with the thread, (the caller runs the model), append
the exchange when it ends, report.

A pass is a generator of steps (`pass_steps`: `Read`, `Append`, `Model`, `Sleep`, and for
context budgets and running summaries `ReadContext`, `ClaimSummary`, `Summarize`,
`WriteSummary`): the decisions live here once (the summary's in
`context.summary_updates`), and `drive_sync` / `drive_async` perform the I/O for sync and
async callers.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
import uuid
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain_core.messages import BaseMessage, SystemMessage, ToolMessage
from langchain_core.runnables import Runnable, RunnableConfig
from langgraph.store.base import BaseStore

from agent_history import observability as obs
from agent_history.context.budget import TokenCounterLike, WindowFill, token_counter_for
from agent_history.context.summary import DEFAULT_SUMMARY_PROMPT, Summary, summary_message
from agent_history.context.summary_updates import SummaryUpdates
from agent_history.context.window import ContextRead
from agent_history.errors import InvalidArgument, InvalidMessage, WriteConflict
from agent_history.history import AppendResult, ChatHistory
from agent_history.history.arguments import (
    count_arg,
    flag_arg,
    key_candidates_arg,
    key_template_arg,
    namespace_arg,
    seconds_arg,
    text_arg,
    texts_arg,
    value_field_arg,
)
from agent_history.history.chat_history import DEFAULT_CHUNK_SIZE, to_pending
from agent_history.history.codec import HistoryScope, in_scope, is_final_answer
from agent_history.history.records import RunToken, Turn
from agent_history.incoming import (
    KeySpan,
    ThreadView,
    history_key_update,
    key_span,
    owed_positions,
    span_start,
)
from agent_history.keys import (
    DEFAULT_HISTORY_KEY_CANDIDATES,
    DEFAULT_HISTORY_KEY_TEMPLATE,
    KeyResolution,
    resolve_history_key,
)
from agent_history.legacy import LEGACY_NAMESPACE
from agent_history.messages import (
    USER,
    MergedPayload,
    TokenCounter,
    anchors_to_check,
    comparable,
    exchange_overlap,
    is_context_summary,
    merge_history,
    newest_human,
    role_of,
    tool_call_before,
    tool_safe_units,
)
from agent_history.pass_steps import (
    Append,
    ImportTurns,
    Read,
    ReadContext,
    ReadLegacy,
    ReadTokens,
    Sleep,
    Step,
)
from agent_history.stores import backend_of
from agent_history.toggles import DEFAULT_TOGGLES, CircuitBreaker, HistoryDecision, HistoryToggles

__all__ = [
    "REPORT_LISTENERS",
    "SYSTEM_PROMPT_ID",
    "HistoryOptions",
    "HistoryPass",
    "HistoryReport",
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
    read_legacy: bool = False
    """When a conversation has no log yet, read its single-item legacy history
    (``legacy_namespace``, key = conversation key) as the stored window, and write it
    into the log before the first exchange is appended (`legacy`)."""
    legacy_namespace: tuple[str, ...] = LEGACY_NAMESPACE
    """Namespace of the legacy items."""
    _counter: TokenCounter = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Each setting is checked by type too, naming the parameter: a value that is
        # accepted here but unusable in a pass (``max_messages=30.0`` from a config file,
        # a chunk size of 0) would otherwise cost every run its history, or fail it.
        flag_arg("use_graph_chat_history", self.enabled)
        flag_arg("history_read_legacy", self.read_legacy)
        flag_arg("summarize", self.summarize)
        if self.enabled is True:  # (a node with history off never resolves a key)
            key_template_arg("history_key_template", self.key_template)
            key_candidates_arg("history_key_candidates", self.key_candidates)
        else:
            text_arg("history_key_template", self.key_template)
            texts_arg("history_key_candidates", self.key_candidates)
        value_field_arg("history_value_field", self.value_field)
        count_arg("history_chunk_size", self.chunk_size, minimum=1, clamp=False)
        count_arg("max_messages", self.max_messages, minimum=1)
        if self.max_tokens is not None:
            count_arg("max_tokens", self.max_tokens, minimum=1)
        # The counter passes use, made once per options; an unusable one raises.
        object.__setattr__(self, "_counter", token_counter_for(self.token_counter))
        # None (read from a config that has none) means the default, as for the prompt.
        if self.reset_command is None:
            object.__setattr__(self, "reset_command", "")
        text_arg("reset_command", self.reset_command)
        count_arg("write_attempts", self.write_attempts, minimum=1)
        seconds_arg("write_backoff_seconds", self.write_backoff_seconds, zero=True)
        if self.on_report is not None and not callable(self.on_report):
            raise InvalidArgument("on_report must be a function (report) -> None, or None")
        count_arg("summary_every", self.summary_every, minimum=1)
        if count_arg("summary_max_turns", self.summary_max_turns, minimum=1) < self.summary_every:
            raise InvalidArgument("summary_max_turns must be >= summary_every")
        seconds_arg("summary_budget_seconds", self.summary_budget_seconds)
        if self.summary_prompt is None:
            object.__setattr__(self, "summary_prompt", DEFAULT_SUMMARY_PROMPT)
        text_arg("summary_prompt", self.summary_prompt)
        if self.summarize and self.summary_model is None:
            raise ValueError("summarize needs a summary_model (a chat model)")
        if self.scope not in ("turns", "full"):
            raise ValueError(f"history_scope must be 'turns' or 'full' (got {self.scope!r})")
        namespace_arg(self.namespace)
        # Channels named by the candidates' literal prefixes become metric label values.
        obs.register_channels_from_candidates(self.key_candidates)

    @property
    def counts_tokens(self) -> bool:
        """Whether passes count tokens (a budget is set, or a counter is given)."""
        return self.max_tokens is not None or self.token_counter is not None

    @property
    def counter(self) -> TokenCounter:
        """The token counter passes use."""
        return self._counter


# --- one pass ----------------------------------------------------------------------------


@dataclass(slots=True)
class HistoryPass(SummaryUpdates):
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
    span: KeySpan | None = None
    """This node's key span on the thread (`incoming.key_span`)."""
    fallbacks: list[str] = field(default_factory=list)
    stored: list[BaseMessage] = field(default_factory=list)
    anchor_tokens: dict[str, RunToken] | None = None
    """Run tokens of the exchanges the thread continues after a stored answer, read when
    the log went on differently there (`messages.anchors_to_check`)."""
    merged: MergedPayload | None = None
    payload: MergedPayload | None = None
    shadow_difference: bool | None = None
    appended: AppendResult | None = None
    redelivered: bool = False
    exchange_stored: bool = False
    """The exchange this pass ended is in the log (written now, or found there already),
    or nothing of it can be (`unstorable`): no later run is to catch it up."""
    unstorable: bool = False
    """The codec refused the exchange's messages (and no part of them could be stored)."""
    config: RunnableConfig | None = None
    key_state: Any = None
    """The state keys are resolved from (for `key_update` on a pass run in memory)."""
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
    _legacy: list[Turn] = field(default_factory=list)
    """Legacy turns read for a conversation without a log, to seed it before appending."""
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
        run.key_state = state
        run.span = key_span(state, node)
        if not decision.enabled:
            if options.enabled and decision.reason == "breaker_open":
                # The key says whose run went on in memory (logs, reports, the span).
                run.resolution = resolve_history_key(
                    state, config, candidates=options.key_candidates,
                    key_template=options.key_template,
                )  # fmt: skip
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
            # The pass itself chooses what its scope keeps (`_to_append`): the log stores
            # what it is given.
            scope="full",
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
            self.stored = value
        if ok and self.options.read_legacy and not self.stored and self.last_seq == 0:
            yield from self._read_legacy(budget)
        elif ok and self.stored:
            yield from self._read_anchor_tokens(budget)

    def _read_anchor_tokens(self, budget: float) -> Generator[Step, Any, None]:
        """The run tokens `merge_history` needs to tell a branch of an answered exchange
        from a thread whose conversation moved on elsewhere (rarely any). Without them
        (a failed read), the merge decides on the messages alone."""
        assert self.history is not None
        anchors = anchors_to_check(self.stored, self.view.messages)
        if not anchors:
            return
        started = time.perf_counter()
        ok, value = yield ReadTokens(self.history, self.key, tuple(anchors), budget)
        self._record(obs.STORE_READ_LATENCY, started, ok)
        if ok:
            self.anchor_tokens = value
        else:
            self._fallback("anchor_read_failed", obs.describe_error(value))

    def _read_legacy(self, budget: float) -> Generator[Step, Any, None]:
        """A conversation without a log: its legacy item, if it has one, is the window."""
        assert self.history is not None
        step = ReadLegacy(self.history.store, self.options.legacy_namespace, self.key, budget)
        ok, value = yield step
        if not ok:
            self._fallback("legacy_read_failed", obs.describe_error(value))
            # In memory, as after a failed read of the log: an exchange appended now
            # would become the log's first turns, and the legacy item would never be
            # taken over.
            self.history = None
            return
        self._legacy = list(value)
        # The legacy turns keep their seqs when they seed the log (`_seed_from_legacy`).
        self._took_turns(self._legacy[-self.options.max_messages :])

    def _seed_from_legacy(self, budget: float) -> Generator[Step, Any, bool]:
        """Write the legacy turns into the log before the first exchange (idempotent by
        seq), so the log continues the legacy history and it is never read again."""
        assert self.history is not None
        started = time.perf_counter()
        ok, value = yield ImportTurns(self.history, self.key, self._legacy, budget)
        self._record(obs.STORE_WRITE_LATENCY, started, ok)
        if not ok:
            self._write_failed(value)
            return False
        self._legacy = []
        return True

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
        self._took_turns(read.turns)

    def _took_turns(self, turns: Sequence[Turn]) -> None:
        """Add stored turns to the window read, each message with its seq."""
        assert self.history is not None
        for turn in turns:
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
        system: list[BaseMessage] = (
            [SystemMessage(system_prompt, id=SYSTEM_PROMPT_ID)] if system_prompt else []
        )
        system += [m for m in thread if role_of(m) == "system" and not is_context_summary(m)]
        # A summary a middleware put in the thread is a user message that says it is
        # context: after every system message (the running summary too), as providers
        # that want system messages first require.
        summaries = [m for m in thread if is_context_summary(m)]
        prefix = [*system, *summaries]
        from_store = self.history is not None and self.decision.payload_from_store
        summary = self._fitting_summary(prefix, thread) if from_store else None
        self.merged = self._merge(self.stored, prefix, summary)
        if (
            summary is not None
            and self.merged.dropped_by_reset
            and not self.summary_after_reset(summary)
        ):
            # A reset command cleared what came before it, the summary of it included
            # (a summary of the turns after it is shown).
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
        before = prefix
        if summary is not None:
            before = [*system, summary_message(summary), *summaries]
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
            tokens=self.anchor_tokens,
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

    def append(
        self, produced: Sequence[BaseMessage], *, ends: bool | None = None
    ) -> Generator[Step, Any, None]:
        """Append the exchange when this pass ends it (its last message is a final answer):
        the thread's unstored messages and what the model produced, once. Then, with
        summaries on, update the summary of what fell out of the window (`summarize`).

        ``ends=True`` says the exchange ends although the last message calls a tool: a
        structured answer given as a tool call (the answer and its result are kept in
        the ``turns`` scope too).
        """
        written = yield from self._append_exchange(produced, ends)
        self.exchange_stored = written or self.redelivered or self.unstorable
        if written:
            yield from self.summarize()

    def _append_exchange(
        self, produced: Sequence[BaseMessage], ends: bool | None
    ) -> Generator[Step, Any, bool]:
        """`append` without the summary; True when the exchange was written."""
        for message in produced:
            if not message.id:
                # The id it has in the graph state is the id it is stored under.
                message.id = str(uuid.uuid4())
        final = bool(produced) and is_final_answer(produced[-1])
        if self.history is None or not self.decision.write or not (final or ends):
            return False
        if self.merged is not None and self.merged.behind:
            # The log answered this exchange on another branch: the log keeps the first
            # answer (a branch of an exchange stored by a release that recorded a token
            # every branch shares would pass the anchor rule).
            self.redelivered = True
            return False
        pending, anchor_id, anchor_next, seen = self._to_append(produced, keep_answer=not final)
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
                stored = value if ok else stored
            pending = pending[exchange_overlap(stored, pending) :]
            if not pending:
                # All of it is stored already: a re-delivery, which stores nothing (nor
                # a summary: its window is not the conversation's).
                self.redelivered = True
                return False
        if not pending:
            return True
        if self._legacy and not (yield from self._seed_from_legacy(budgets.write_timeout_seconds)):
            return False
        step = Append(
            self.history,
            self.key,
            pending,
            anchor_id,
            anchor_next,
            seen,
            budgets.write_timeout_seconds,
        )
        for attempt in range(self.options.write_attempts):
            started = time.perf_counter()
            ok, value = yield step
            if not ok and isinstance(value, InvalidMessage):
                # A message the codec refuses: the store is fine, so no retry, and nothing
                # for the breaker to count. Its exchange is not stored; a later exchange
                # that a run catches up with it (a stable thread) is, once: a refused
                # message must not keep the conversation's later exchanges from the log.
                self._fallback("invalid_message", obs.describe_error(value))
                kept = _without_refused_exchanges(pending)
                if not kept:
                    self.unstorable = True
                    return False
                pending = kept
                step = dataclasses.replace(step, messages=kept)
                ok, value = yield step
                if not ok and isinstance(value, InvalidMessage):
                    self.unstorable = True
                    return False
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

    def key_update(self) -> dict[str, Any]:
        """The state update recording this pass's key span (`incoming.history_key_update`).

        A pass run in memory by a switch (mode off, an open breaker, no store) still
        belongs to its key's conversation: its exchange opens or continues that key's
        span, to be stored by the key's next run, never by another key's."""
        key = self.key or None
        if key is None and self.options.enabled:
            options = self.options
            resolution = self.resolution or resolve_history_key(
                self.key_state,
                self.config,
                candidates=options.key_candidates,
                key_template=options.key_template,
            )
            key = resolution.key
        return history_key_update(
            self.node, key, self.span, self.view.messages, stored=self.exchange_stored
        )

    def report(self, payload: Sequence[BaseMessage], model_called: bool = True) -> HistoryReport:
        """Build the pass's `HistoryReport` and hand it to the listeners."""
        merged = self.payload
        resolution = self.resolution
        if self.appended is not None and self.appended.appended == 0 and self.appended.duplicates:
            self.redelivered = True
        if self.redelivered and self.view.other_text:
            obs.log_event(
                "delivered_id_answered_with_other_text",
                node=self.node,
                key=resolution.key if resolution else None,
                hint="the thread holds this id with other text: an edit (not answered), "
                "a middleware's rewrite of it, or an id another chat uses on this thread",
            )
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
        self, produced: Sequence[BaseMessage], keep_answer: bool = False
    ) -> tuple[list[BaseMessage], str | None, str | None, tuple[str, ...]]:
        """What the pass appends (the exchange it ends, with any unstored thread messages
        before it), the exchange's anchor (the user message it answers), the run's token
        (this pass's answer) and the ids of what follows the anchor in its conversation
        (see `layout.plan_append`). ``keep_answer``: the produced tool-call answer and
        its results are kept whatever the scope.

        The answer is the token because no other run has it: the branches of a tool loop
        forked after its tool call (an approval resumed twice, a replay from the
        checkpoint after the tool result, a resume after a crash) share the question,
        the tool steps and any message another node added before the answer. A later
        pass of the same run (an agent a supervisor sends back to revise its answer)
        finds the token it stored among what follows the anchor in its thread."""
        assert self.merged is not None
        scope = self.options.scope
        answer = _answer_unit(produced) if keep_answer else set()
        chat = [m for m in self.view.messages if role_of(m) != "system"]
        anchor = newest_human(chat)
        unstored = self.merged.unstored
        start = span_start(chat, self.span, self.key)
        if start is not None:
            # The thread's messages before this key's span are another conversation's (a
            # group chat's thread with a key per member): never this key's to store, but
            # for what this key's earlier spans left unstored.
            ours = {id(m) for m in chat[start:]}
            for part in owed_positions(chat, self.span, self.key):
                ours.update(id(chat[index]) for index in part)
            unstored = [m for m in unstored if id(m) in ours]
        answer |= _tool_endings(chat)
        pending = [m for m in [*unstored, *produced] if in_scope(m, scope) or id(m) in answer]
        if anchor is None:
            return pending, None, None, ()
        seen = tuple(m.id for m in [*chat[anchor + 1 :], *produced] if m.id)
        return pending, chat[anchor].id, produced[-1].id, (*seen, *self.merged.goes_on_from)

    def _by_content(self) -> bool:
        """Whether re-deliveries can only be recognised by content: a callback without a
        channel id, or a thread that shares no id with the log (a fresh thread per run).
        A thread that does (a stable thread, driven with plain ``messages``) tells a
        repeated text from a re-run by its own ids."""
        incoming = self.view.incoming
        if incoming is not None:
            return incoming.message_id is None
        stored = {m.id for m in self.stored if m.id}
        return not any(m.id in stored for m in self.view.messages)

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
        obs.METRICS.inc(obs.FALLBACKS, backend=self.backend, channel=self._channel(), reason=reason)
        obs.log_event(
            "history_fallback",
            node=self.node,
            namespace="/".join(self.options.namespace),
            key=resolution.key if resolution else None,
            reason=reason,
            error=error or None,
            # Why no candidate gave a key; beside a key, earlier candidates that did not
            # apply (the default list's other channels) are noise.
            rejected=(
                ",".join(f"{r.reason}" for r in resolution.rejected) or None
                if resolution is not None and resolution.key is None
                else None
            ),
        )

    def _record(self, metric: str, started: float, ok: bool) -> None:
        elapsed = time.perf_counter() - started
        outcome = "ok" if ok else "fallback"
        obs.METRICS.observe_seconds(
            metric, elapsed, backend=self.backend, channel=self._channel(), outcome=outcome
        )
        if self.breaker is not None:
            operation = obs.STORE_CALL_OPERATIONS[metric]
            record = self.breaker.record_success if ok else self.breaker.record_failure
            record(elapsed, operation=operation)

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


def _answer_unit(produced: Sequence[BaseMessage]) -> set[int]:
    """The produced messages from the last tool-calling assistant message on (a
    structured answer and its results), by object id."""
    start = max((i for i, m in enumerate(produced) if getattr(m, "tool_calls", None)), default=0)
    return {id(m) for m in produced[start:]}


def _tool_endings(chat: Sequence[BaseMessage]) -> set[int]:
    """The tool calls and results that ended an exchange of the thread before its next user
    message, by object id: no model answered it (a ``return_direct`` tool's result is the
    answer). Kept whatever the scope, as a pass that ends on them keeps them (an exchange
    caught up after its own write failed). A call without all its results is not kept."""
    kept: set[int] = set()
    for index in range(1, len(chat)):
        if role_of(chat[index]) != USER or not isinstance(chat[index - 1], ToolMessage):
            continue
        start = tool_call_before(chat, index)
        if start is None:
            continue
        answered = {getattr(m, "tool_call_id", None) for m in chat[start + 1 : index]}
        if {call.get("id") for call in getattr(chat[start], "tool_calls", [])} <= answered:
            kept.update(id(m) for m in chat[start:index])
    return kept


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


def _payload_key(messages: Sequence[BaseMessage]) -> list[tuple[str, Any]]:
    return [(role_of(m), comparable(m.content)) for m in messages]


def _without_refused_exchanges(pending: Sequence[BaseMessage]) -> list[BaseMessage]:
    """``pending`` without the exchanges (a user message and what follows it up to the
    next one) that hold a message the codec refuses (the checks `ChatHistory.append`
    makes); empty when none can be told apart."""
    exchange, exchanges = -1, []  # before the first user message: the exchange -1
    for message in pending:
        exchange += role_of(message) == USER
        exchanges.append(exchange)
    refused = {exchanges[i] for i, message in enumerate(pending) if not _storable(message)}
    if not refused:
        return []  # refused as a whole: nothing to tell apart
    return [m for m, number in zip(pending, exchanges, strict=True) if number not in refused]


def _storable(message: BaseMessage) -> bool:
    try:
        to_pending([message], None, "full")
    except (InvalidMessage, InvalidArgument):
        return False
    return True
