"""`AgentNode`: a LangGraph node that runs a chat model or agent with durable chat history.

The node only wires the pieces together: `incoming` places the delivered message in the
thread, `keys` resolves the conversation key, `toggles` decides what the run may do,
`history.ChatHistory` reads and appends, `messages` merges and cuts the window,
`runner` calls the model, `observability` counts and logs. One generator (`_steps`)
drives both `invoke` and `ainvoke`; only the I/O differs.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, TypedDict

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AnyMessage, BaseMessage, SystemMessage
from langchain_core.runnables import Runnable, RunnableConfig
from langgraph.config import get_store
from langgraph.graph.message import add_messages
from langgraph.store.base import BaseStore

from agent_history import observability as obs
from agent_history.budget import call_with_budget
from agent_history.errors import WriteConflict
from agent_history.history import AppendResult, ChatHistory
from agent_history.history.chat_history import DEFAULT_CHUNK_SIZE
from agent_history.history.codec import HistoryScope, in_scope, is_final_answer
from agent_history.incoming import ThreadView, current_thread
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
from agent_history.runner import aproduce, build_runnable, produce
from agent_history.stores import backend_of
from agent_history.toggles import DEFAULT_TOGGLES, CircuitBreaker, HistoryDecision, HistoryToggles

__all__ = ["REPORT_LISTENERS", "AgentNode", "AgentState", "HistoryReport", "merge_results"]

_SYSTEM_PROMPT_ID = "agent-history:system-prompt"


def merge_results(left: dict[str, Any] | None, right: dict[str, Any] | None) -> dict[str, Any]:
    """Reducer for ``results``: each node's entry replaces only its own key."""
    return {**(left or {}), **(right or {})}


class AgentState(TypedDict, total=False):
    """A ready-made workflow state for graphs built around `AgentNode`."""

    messages: Annotated[list[AnyMessage], add_messages]
    inputs: dict[str, Any]
    results: Annotated[dict[str, Any], merge_results]


@dataclass(frozen=True, slots=True)
class HistoryReport:
    """What one run did with the history (no message bodies), passed to ``on_report``."""

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
    """The delivered message was already answered (stored, or answered in this thread):
    the run stored nothing; with the answer already in the thread the model was not
    called."""
    model_called: bool = True
    """False when the run had nothing to answer (a re-delivery this thread answered)."""


REPORT_LISTENERS: list[Callable[[HistoryReport], None]] = []
"""Process-wide subscribers to every node's `HistoryReport` (the CLI's replay uses it)."""


@dataclass(slots=True)
class _Run:
    """Per-run state shared by the sync and async paths."""

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


class AgentNode(Runnable[Any, dict[str, Any]]):
    """Runs a chat model or agent on the conversation, with opt-in durable history.

    Add it to a `StateGraph` and compile with ``store=`` (and usually ``checkpointer=``).
    With ``use_graph_chat_history=True`` each pass resolves the conversation key, reads the
    newest stored messages, merges them with the thread, runs the model and appends what
    the pass added (the delivered message, the model's messages, tool results of this
    run). Any store problem degrades to in-memory messages with a warning; the run
    always returns the model's answer. It works in every usual graph shape: a fresh
    thread per callback, a stable thread with a checkpointer, an ``agent <-> tools``
    loop through `ToolNode`, tools inside the node, and prebuilt agents.

    Args:
        model: A chat model (also after ``bind_tools``/``with_config``/``with_retry``), a
            ``"provider:model"`` string (needs the ``langchain`` package), or any runnable
            taking ``{"messages": [...]}`` (a compiled graph, a prebuilt agent).
        name: Node name used in logs, metrics and toggles (LangGraph's node name wins).
        tools: Tools for a tool-calling agent built around ``model``.
        system_prompt: System message put before the payload; not counted in the window.
        max_messages: Most chat messages the model receives (the current exchange is
            always sent whole, see `messages.window`).
        reset_command: User text that clears earlier history ("" disables).
        use_graph_chat_history: Opt in to durable history (default off).
        history_namespace: Store namespace prefix of the history.
        history_key_template: Template applied to the resolved ``conversation_key``.
        history_key_candidates: Ordered key candidates (literals or templates).
        history_value_field: Record field holding a turn's content.
        history_chunk_size: Turns per chunk item for new conversations.
        history_scope: ``"turns"`` stores user messages and final answers; ``"full"``
            stores every message of the run (tool calls and results included).
        toggles: Rollout switches; the process-wide default reads ``ORCHEO_*`` variables.
        write_attempts: Attempts for an append before giving up with a warning.
        write_backoff_seconds: First backoff between attempts (doubles, with jitter).
        on_report: Called with a `HistoryReport` after every run.
    """

    def __init__(
        self,
        model: BaseChatModel | Runnable[Any, Any] | str,
        *,
        name: str = "agent",
        tools: Sequence[Any] = (),
        system_prompt: str = "",
        max_messages: int = 30,
        reset_command: str = "",
        use_graph_chat_history: bool = False,
        history_namespace: Sequence[str] = ("agent_chat_history",),
        history_key_template: str = DEFAULT_HISTORY_KEY_TEMPLATE,
        history_key_candidates: Sequence[str] = DEFAULT_HISTORY_KEY_CANDIDATES,
        history_value_field: str = "content",
        history_chunk_size: int = DEFAULT_CHUNK_SIZE,
        history_scope: HistoryScope = "turns",
        toggles: HistoryToggles | None = None,
        write_attempts: int = 3,
        write_backoff_seconds: float = 0.05,
        on_report: Callable[[HistoryReport], None] | None = None,
    ) -> None:
        if max_messages < 1:
            raise ValueError("max_messages must be >= 1")
        if write_attempts < 1:
            raise ValueError("write_attempts must be >= 1")
        if history_scope not in ("turns", "full"):
            raise ValueError(f"history_scope must be 'turns' or 'full' (got {history_scope!r})")
        namespace = tuple(history_namespace)
        if not namespace or any(not label or "." in label for label in namespace):
            raise ValueError("history_namespace labels must be non-empty and contain no '.'")
        self.name = name
        self.model = model
        self.tools = list(tools)
        self.system_prompt = system_prompt
        self.max_messages = max_messages
        self.reset_command = reset_command
        self.use_graph_chat_history = use_graph_chat_history
        self.history_namespace = list(namespace)
        self.history_key_template = history_key_template
        self.history_key_candidates = list(history_key_candidates)
        self.history_value_field = history_value_field
        self.history_chunk_size = history_chunk_size
        self.history_scope: HistoryScope = history_scope
        self.toggles = toggles or DEFAULT_TOGGLES
        self.write_attempts = write_attempts
        self.write_backoff_seconds = write_backoff_seconds
        self.on_report = on_report
        self._runnable = build_runnable(model, self.tools)

    # --- shared, I/O-free ------------------------------------------------------------------

    def _node_name(self, config: RunnableConfig | None) -> str:
        metadata = (config or {}).get("metadata") or {}
        node = metadata.get("langgraph_node")
        return str(node) if node else (self.name or "agent")

    def _prepare(self, state: Any, config: RunnableConfig | None) -> _Run:
        node = self._node_name(config)
        view = current_thread(state)
        store = _current_store() if self.use_graph_chat_history else None
        backend = backend_of(store) if store is not None else "other"
        breaker = self.toggles.breaker_for(store, backend) if store is not None else None
        decision = self.toggles.decide(
            node, node_enabled=self.use_graph_chat_history, breaker=breaker
        )
        run = _Run(node, view, decision, backend, breaker)
        if not decision.enabled:
            if self.use_graph_chat_history and decision.reason == "breaker_open":
                self._fallback(run, "breaker_open")
            return run
        if store is None:
            self._fallback(run, "no_store")
            return run
        run.resolution = resolve_history_key(
            state,
            config,
            candidates=self.history_key_candidates,
            key_template=self.history_key_template,
        )
        if run.resolution.key is None:
            obs.METRICS.inc(obs.KEY_RESOLUTION_FAILURES, backend=backend, outcome="fallback")
            self._fallback(run, "no_valid_key")
            return run
        run.key = run.resolution.key
        run.history = ChatHistory(
            store,
            namespace=self.history_namespace,
            chunk_size=self.history_chunk_size,
            value_field=self.history_value_field,
            scope=self.history_scope,
        )
        return run

    def _fallback(self, run: _Run, reason: str, error: str = "") -> None:
        run.fallbacks.append(reason)
        channel = run.resolution.channel if run.resolution else "other"
        obs.METRICS.inc(obs.FALLBACKS, backend=run.backend, channel=channel, outcome="fallback")
        obs.log_event(
            "history_fallback",
            node=run.node,
            namespace="/".join(self.history_namespace),
            key=run.resolution.key if run.resolution else None,
            reason=reason,
            error=error or None,
            rejected=",".join(
                f"{r.reason}" for r in (run.resolution.rejected if run.resolution else ())
            )
            or None,
        )

    def _merge(self, run: _Run) -> list[BaseMessage]:
        """Build the model payload (system messages first) from stored and thread messages."""
        # Merging against what is stored tells which thread messages are new (to append),
        # even when the payload ignores the store (shadow mode).
        thread = run.view.messages
        run.merged = merge_history(
            run.stored, thread, max_messages=self.max_messages, reset_command=self.reset_command
        )
        payload = run.merged
        if run.history is not None and not run.decision.payload_from_store:
            payload = merge_history(
                [], thread, max_messages=self.max_messages, reset_command=self.reset_command
            )
            run.shadow_difference = _payload_key(payload.messages) != _payload_key(
                run.merged.messages
            )
            if run.shadow_difference:
                obs.METRICS.inc(obs.SHADOW_DIFFERENCES, backend=run.backend)
                obs.log_event(
                    "shadow_payload_differs",
                    level=logging.DEBUG,
                    node=run.node,
                    key=run.resolution.key if run.resolution else None,
                    in_memory=len(payload.messages),
                    with_history=len(run.merged.messages),
                )
        run.payload = payload
        if payload.truncated:
            obs.METRICS.inc(obs.TRUNCATION_EVENTS, backend=run.backend)
        system = (
            [SystemMessage(self.system_prompt, id=_SYSTEM_PROMPT_ID)] if self.system_prompt else []
        )
        return [*system, *payload.system, *payload.messages]

    def _to_append(
        self, run: _Run, produced: Sequence[BaseMessage]
    ) -> tuple[list[BaseMessage], str | None, str | None]:
        """What this pass appends (the exchange it ends, with any unstored thread messages
        before it), and the exchange's anchor (the user message it answers) with the
        run's token (the first message the run produced after it)."""
        assert run.merged is not None
        pending = [
            m for m in [*run.merged.unstored, *produced] if in_scope(m, self.history_scope)
        ]
        chat = [m for m in run.view.messages if role_of(m) != "system"]
        conversation = [*chat, *produced]
        anchor = newest_human(chat)
        anchor_id = chat[anchor].id if anchor is not None else None
        anchor_next = (
            conversation[anchor + 1].id
            if anchor is not None and anchor + 1 < len(conversation)
            else None
        )
        return pending, anchor_id, anchor_next

    def _by_content(self, run: _Run) -> bool:
        """Whether re-deliveries can only be recognised by content (no channel id)."""
        incoming = run.view.incoming
        return not (incoming and incoming.message_id)

    def _report(self, run: _Run, payload: Sequence[BaseMessage], model_called: bool) -> None:
        merged = run.payload
        report = HistoryReport(
            node=run.node,
            key=run.resolution.key if run.resolution else None,
            channel=run.resolution.channel if run.resolution else "other",
            mode=run.decision.mode.value,
            decision_reason=run.decision.reason,
            stored_read=len(run.stored),
            payload_messages=sum(1 for m in payload if role_of(m) != "system"),
            stored_in_payload=merged.stored_in_payload if merged else 0,
            max_messages=self.max_messages,
            truncated=merged.truncated if merged else 0,
            appended=run.appended.appended if run.appended else 0,
            duplicates=run.appended.duplicates if run.appended else 0,
            fallbacks=tuple(run.fallbacks),
            shadow_difference=run.shadow_difference,
            rejected=tuple(
                f"{r.reason}" for r in (run.resolution.rejected if run.resolution else ())
            ),
            redelivered=run.redelivered,
            model_called=model_called,
        )
        for listener in (self.on_report, *REPORT_LISTENERS):
            if listener is not None:
                listener(report)

    def _record(self, run: _Run, metric: str, started: float, ok: bool) -> None:
        channel = run.resolution.channel if run.resolution else "other"
        elapsed = (time.perf_counter() - started) * 1000
        outcome = "ok" if ok else "fallback"
        obs.METRICS.observe(metric, elapsed, backend=run.backend, channel=channel, outcome=outcome)
        if run.breaker is not None:
            (run.breaker.record_success if ok else run.breaker.record_failure)()

    def _read_failed(self, run: _Run, exc: BaseException) -> None:
        channel = run.resolution.channel if run.resolution else "other"
        obs.METRICS.inc(obs.STORE_READ_FAILURES, backend=run.backend, channel=channel)
        reason = "read_timeout" if isinstance(exc, TimeoutError) else "read_failed"
        self._fallback(run, reason, obs.describe_error(exc))

    def _write_failed(self, run: _Run, exc: BaseException) -> None:
        channel = run.resolution.channel if run.resolution else "other"
        obs.METRICS.inc(obs.STORE_WRITE_FAILURES, backend=run.backend, channel=channel)
        if isinstance(exc, WriteConflict):
            obs.METRICS.inc(obs.WRITE_CONFLICTS, backend=run.backend, outcome="conflict")
        reason = "write_timeout" if isinstance(exc, TimeoutError) else "write_failed"
        self._fallback(run, reason, obs.describe_error(exc))

    def _wrote(self, run: _Run, result: AppendResult) -> None:
        run.appended = result
        if result.conflicts:
            obs.METRICS.inc(
                obs.WRITE_CONFLICTS, result.conflicts, backend=run.backend, outcome="conflict"
            )

    def _backoff(self, attempt: int) -> float:
        return float(self.write_backoff_seconds * (2**attempt) * (0.5 + random.random()))

    # --- one pass, as steps shared by the sync and async paths -----------------------------

    def _steps(self, run: _Run) -> Generator[_Step, Any, dict[str, Any]]:
        """The pass's control flow; it yields the I/O it needs and receives the outcome.

        A store step's answer is ``(True, value)`` or ``(False, exception)``.
        """
        if run.view.answered:
            # A re-delivered callback this thread already answered: nothing to do.
            run.redelivered = True
            self._report(run, [], model_called=False)
            return {"messages": []}
        budgets = self.toggles.current()
        if run.history is not None and run.decision.read:
            started = time.perf_counter()
            ok, value = yield _Read(
                run.history, run.key, self.max_messages, budgets.read_timeout_seconds
            )
            self._record(run, obs.STORE_READ_LATENCY, started, ok)
            if ok:
                run.stored = run.history.to_messages(value, run.key)
            else:
                self._read_failed(run, value)
                run.history = None
        payload = self._merge(run)
        produced: list[BaseMessage] = yield _Model(payload)
        for message in produced:
            if not message.id:
                # The id it has in the graph state is the id it is stored under.
                message.id = str(uuid.uuid4())
        assert run.merged is not None
        run.redelivered = run.merged.redelivered
        if run.history is not None and run.decision.write and _ends_exchange(produced):
            pending, anchor_id, anchor_next = self._to_append(run, produced)
            if pending and self._by_content(run):
                # Without ids, a re-delivered exchange is recognised by content: it repeats
                # the end of what is stored (read more of it if the window read too little).
                stored = run.stored
                if len(stored) < len(pending) and len(stored) == self.max_messages:
                    ok, value = yield _Read(
                        run.history, run.key, len(pending), budgets.read_timeout_seconds
                    )
                    stored = run.history.to_messages(value, run.key) if ok else stored
                pending = pending[exchange_overlap(stored, pending) :]
            if pending:
                yield from self._append(
                    run, budgets.write_timeout_seconds, pending, anchor_id, anchor_next
                )
        if run.appended is not None and run.appended.appended == 0 and run.appended.duplicates:
            run.redelivered = True
        self._report(run, payload, model_called=True)
        added = [run.view.added] if run.view.added is not None else []
        return {"messages": [*added, *produced]}

    def _append(
        self,
        run: _Run,
        budget: float,
        pending: list[BaseMessage],
        anchor_id: str | None,
        anchor_next: str | None,
    ) -> Generator[_Step, Any, None]:
        assert run.history is not None
        step = _Append(run.history, run.key, pending, anchor_id, anchor_next, budget)
        for attempt in range(self.write_attempts):
            started = time.perf_counter()
            ok, value = yield step
            self._record(run, obs.STORE_WRITE_LATENCY, started, ok)
            if ok:
                self._wrote(run, value)
                return
            if attempt + 1 == self.write_attempts or _breaker_open(run):
                self._write_failed(run, value)
                return
            yield _Sleep(self._backoff(attempt))

    def invoke(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        """Run the node synchronously (LangGraph calls this in sync graphs)."""
        run = self._prepare(input, config)
        steps = self._steps(run)
        answer: Any = None
        while True:
            try:
                step = steps.send(answer)
            except StopIteration as done:
                _not_streamed_as_output(config, run.view.added)
                return done.value  # type: ignore[no-any-return]
            # The model's own exceptions (StopIteration included) propagate unchanged.
            if isinstance(step, _Model):
                answer = produce(self._runnable, step.payload, config)
            elif isinstance(step, _Sleep):
                time.sleep(step.seconds)
                answer = None
            else:
                answer = _attempt_sync(step)

    async def ainvoke(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        """Run the node asynchronously (LangGraph calls this in async graphs)."""
        run = self._prepare(input, config)
        steps = self._steps(run)
        answer: Any = None
        while True:
            try:
                step = steps.send(answer)
            except StopIteration as done:
                _not_streamed_as_output(config, run.view.added)
                return done.value  # type: ignore[no-any-return]
            if isinstance(step, _Model):
                answer = await aproduce(self._runnable, step.payload, config)
            elif isinstance(step, _Sleep):
                await asyncio.sleep(step.seconds)
                answer = None
            else:
                answer = await _attempt_async(step)


@dataclass(frozen=True, slots=True)
class _Read:
    history: ChatHistory
    key: str
    n: int
    budget: float


@dataclass(frozen=True, slots=True)
class _Append:
    history: ChatHistory
    key: str
    messages: list[BaseMessage]
    anchor_id: str | None
    anchor_next: str | None
    budget: float


@dataclass(frozen=True, slots=True)
class _Model:
    payload: list[BaseMessage]


@dataclass(frozen=True, slots=True)
class _Sleep:
    seconds: float


_Step = _Read | _Append | _Model | _Sleep


def _attempt_sync(step: _Read | _Append) -> tuple[bool, Any]:
    history, key = step.history, step.key
    call: Callable[[], Any]
    if isinstance(step, _Read):
        n = step.n
        call = lambda: history.tail_turns(key, n)  # noqa: E731
    else:
        append = step
        call = lambda: history.append(  # noqa: E731
            key, append.messages, anchor_id=append.anchor_id, anchor_next=append.anchor_next
        )
    try:
        return True, call_with_budget(call, step.budget)
    except Exception as exc:
        return False, exc


async def _attempt_async(step: _Read | _Append) -> tuple[bool, Any]:
    try:
        if isinstance(step, _Read):
            coro = step.history.atail_turns(step.key, step.n)
            return True, await asyncio.wait_for(coro, step.budget)
        appended = step.history.aappend(
            step.key, step.messages, anchor_id=step.anchor_id, anchor_next=step.anchor_next
        )
        return True, await asyncio.wait_for(appended, step.budget)
    except Exception as exc:
        return False, exc


def _not_streamed_as_output(config: RunnableConfig | None, added: BaseMessage | None) -> None:
    """Keep ``stream_mode="messages"`` from emitting the delivered user message as if this
    node had produced it: LangGraph's message stream skips ids it has seen."""
    if added is None or not added.id:
        return
    callbacks = (config or {}).get("callbacks")
    handlers = callbacks if isinstance(callbacks, list) else getattr(callbacks, "handlers", [])
    for handler in handlers or ():
        seen = getattr(handler, "seen", None)
        if isinstance(seen, set) and type(handler).__name__.startswith("StreamMessagesHandler"):
            seen.add(added.id)


def _ends_exchange(produced: Sequence[BaseMessage]) -> bool:
    """Whether this pass ends the exchange: its last message is a final answer. An exchange
    is appended whole when it ends, so a pass that asks for tools appends nothing yet."""
    return bool(produced) and is_final_answer(produced[-1])


def _breaker_open(run: _Run) -> bool:
    return run.breaker is not None and not run.breaker.allow()


def _current_store() -> BaseStore | None:
    try:
        return get_store()
    except RuntimeError:  # called outside a LangGraph run
        return None


def _payload_key(messages: Sequence[BaseMessage]) -> list[tuple[str, str]]:
    return [(role_of(m), repr(m.content)) for m in messages]
