"""One pass over a conversation, shared by every way in (`AgentNode`, the ``create_agent``
middleware, the prebuilt agent hooks): resolve the key, decide what the pass may do, read
the newest stored window, merge it with the thread, (the caller runs the model), append
the exchange when it ends, report.

A pass is a generator of steps (`Read`, `Append`, `Model`, `Sleep`): the decisions live
here once, and `drive_sync` / `drive_async` perform the I/O for sync and async callers.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain_core.messages import BaseMessage, SystemMessage
from langchain_core.runnables import RunnableConfig
from langgraph.store.base import BaseStore

from agent_history import observability as obs
from agent_history.budget import call_with_budget
from agent_history.errors import WriteConflict
from agent_history.history import AppendResult, ChatHistory
from agent_history.history.chat_history import DEFAULT_CHUNK_SIZE
from agent_history.history.codec import HistoryScope, in_scope, is_final_answer
from agent_history.incoming import ThreadView
from agent_history.keys import (
    DEFAULT_HISTORY_KEY_CANDIDATES,
    DEFAULT_HISTORY_KEY_TEMPLATE,
    KeyResolution,
    resolve_history_key,
)
from agent_history.messages import (
    MergedPayload,
    exchange_overlap,
    merge_history,
    newest_human,
    role_of,
)
from agent_history.stores import backend_of
from agent_history.toggles import DEFAULT_TOGGLES, CircuitBreaker, HistoryDecision, HistoryToggles

__all__ = [
    "REPORT_LISTENERS",
    "Append",
    "HistoryOptions",
    "HistoryPass",
    "HistoryReport",
    "Model",
    "Read",
    "Sleep",
    "Step",
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

    def __post_init__(self) -> None:
        if self.max_messages < 1:
            raise ValueError("max_messages must be >= 1")
        if self.write_attempts < 1:
            raise ValueError("write_attempts must be >= 1")
        if self.scope not in ("turns", "full"):
            raise ValueError(f"history_scope must be 'turns' or 'full' (got {self.scope!r})")
        if not self.namespace or any(not label or "." in label for label in self.namespace):
            raise ValueError("history_namespace labels must be non-empty and contain no '.'")


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
class Model:
    """Run the model on ``payload``; the answer is the list of messages it produced."""

    payload: list[BaseMessage]


@dataclass(frozen=True, slots=True)
class Sleep:
    """Back off before a retry."""

    seconds: float


Step = Read | Append | Model | Sleep
StoreStep = Read | Append


def _store_call(step: StoreStep) -> Callable[[], Any]:
    if isinstance(step, Read):
        return lambda: step.history.tail_turns(step.key, step.n)
    return lambda: step.history.append(
        step.key, step.messages, anchor_id=step.anchor_id, anchor_next=step.anchor_next
    )


def _attempt_sync(step: StoreStep) -> tuple[bool, Any]:
    try:
        return True, call_with_budget(_store_call(step), step.budget)
    except Exception as exc:
        return False, exc


async def _attempt_async(step: StoreStep) -> tuple[bool, Any]:
    coro: Awaitable[Any]
    if isinstance(step, Read):
        coro = step.history.atail_turns(step.key, step.n)
    else:
        coro = step.history.aappend(
            step.key, step.messages, anchor_id=step.anchor_id, anchor_next=step.anchor_next
        )
    try:
        return True, await asyncio.wait_for(coro, step.budget)
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
        ok, value = yield Read(self.history, self.key, self.options.max_messages, budget)
        self._record(obs.STORE_READ_LATENCY, started, ok)
        if ok:
            self.stored = self.history.to_messages(value, self.key)
        else:
            self._read_failed(value)
            self.history = None

    def build_payload(self, system_prompt: str = "") -> list[BaseMessage]:
        """The model payload: the system prompt, the thread's system messages, the window."""
        thread = self.view.messages
        options = self.options
        self.merged = merge_history(
            self.stored,
            thread,
            max_messages=options.max_messages,
            reset_command=options.reset_command,
        )
        payload = self.merged
        # Merging against what is stored tells which thread messages are new (to append),
        # even when the payload ignores the store (shadow mode).
        if self.history is not None and not self.decision.payload_from_store:
            payload = merge_history(
                [], thread, max_messages=options.max_messages, reset_command=options.reset_command
            )
            self._compare_shadow(payload)
        self.payload = payload
        self.redelivered = self.merged.redelivered
        if payload.truncated:
            obs.METRICS.inc(obs.TRUNCATION_EVENTS, backend=self.backend)
        system = [SystemMessage(system_prompt, id=SYSTEM_PROMPT_ID)] if system_prompt else []
        return [*system, *payload.system, *payload.messages]

    def append(self, produced: Sequence[BaseMessage]) -> Generator[Step, Any, None]:
        """Append the exchange when this pass ends it (its last message is a final answer):
        the thread's unstored messages and what the model produced, once."""
        for message in produced:
            if not message.id:
                # The id it has in the graph state is the id it is stored under.
                message.id = str(uuid.uuid4())
        ends = bool(produced) and is_final_answer(produced[-1])
        if self.history is None or not self.decision.write or not ends:
            return
        pending, anchor_id, anchor_next = self._to_append(produced)
        budgets = self.options.toggles.current()
        if pending and self._by_content():
            # Without ids, a re-delivered exchange is recognised by content: it repeats
            # the end of what is stored (read more of it if the window read too little).
            stored = self.stored
            if len(stored) < len(pending) and len(stored) == self.options.max_messages:
                ok, value = yield Read(
                    self.history, self.key, len(pending), budgets.read_timeout_seconds
                )
                stored = self.history.to_messages(value, self.key) if ok else stored
            pending = pending[exchange_overlap(stored, pending) :]
        if not pending:
            return
        step = Append(
            self.history, self.key, pending, anchor_id, anchor_next, budgets.write_timeout_seconds
        )
        for attempt in range(self.options.write_attempts):
            started = time.perf_counter()
            ok, value = yield step
            self._record(obs.STORE_WRITE_LATENCY, started, ok)
            if ok:
                self._wrote(value)
                return
            if attempt + 1 == self.options.write_attempts or self._breaker_open():
                self._write_failed(value)
                return
            yield Sleep(self._backoff(attempt))

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


def _payload_key(messages: Sequence[BaseMessage]) -> list[tuple[str, str]]:
    return [(role_of(m), repr(m.content)) for m in messages]
