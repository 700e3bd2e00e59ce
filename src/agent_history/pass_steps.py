"""The steps a history pass yields, and the two drivers that perform them.

A pass (`session.HistoryPass`) is a generator: it yields what it needs (read the window,
append, ask the model, back off, update the summary) and receives the outcome. Each store
step knows its sync and async call; `drive_sync` and `drive_async` run a pass with time
budgets, so the pass's decisions are written once for both.

A store step's answer is ``(True, value)`` or ``(False, exception)``: store failures are
outcomes for the pass to handle, never exceptions. The model's exceptions propagate.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from collections.abc import Awaitable, Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any

from langchain_core.messages import BaseMessage
from langchain_core.runnables import Runnable, RunnableConfig
from langgraph.store.base import BaseStore

from agent_history.budget import acall_with_budget, call_with_budget
from agent_history.history import ChatHistory
from agent_history.history.records import Turn
from agent_history.legacy import aread_legacy_turns, read_legacy_turns
from agent_history.messages import text_of

__all__ = [
    "Append",
    "ClaimSummary",
    "ImportTurns",
    "Model",
    "Read",
    "ReadContext",
    "ReadLegacy",
    "ReadTokens",
    "ReleaseSummary",
    "Sleep",
    "Step",
    "StoreStep",
    "Summarize",
    "WriteSummary",
    "drive_async",
    "drive_sync",
]


@dataclass(frozen=True, slots=True)
class Read:
    """Read the newest ``n`` stored turns, as messages, within ``budget`` seconds."""

    history: ChatHistory
    key: str
    n: int
    budget: float

    def call(self) -> Any:
        return self.history.tail(self.key, self.n)

    def acall(self) -> Awaitable[Any]:
        return self.history.atail(self.key, self.n)


@dataclass(frozen=True, slots=True)
class ReadTokens:
    """Read the run tokens of these stored user messages (`ChatHistory.anchor_tokens`)
    within ``budget`` seconds."""

    history: ChatHistory
    key: str
    ids: tuple[str, ...]
    budget: float

    def call(self) -> Any:
        return self.history.anchor_tokens(self.key, self.ids)

    def acall(self) -> Awaitable[Any]:
        return self.history.aanchor_tokens(self.key, self.ids)


@dataclass(frozen=True, slots=True)
class Append:
    """Append ``messages`` (see `ChatHistory.append`) within ``budget`` seconds."""

    history: ChatHistory
    key: str
    messages: list[BaseMessage]
    anchor_id: str | None
    anchor_next: str | None
    anchor_seen: tuple[str, ...]
    budget: float

    def call(self) -> Any:
        return self.history.append(
            self.key,
            self.messages,
            anchor_id=self.anchor_id,
            anchor_next=self.anchor_next,
            anchor_seen=self.anchor_seen,
        )

    def acall(self) -> Awaitable[Any]:
        return self.history.aappend(
            self.key,
            self.messages,
            anchor_id=self.anchor_id,
            anchor_next=self.anchor_next,
            anchor_seen=self.anchor_seen,
        )


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

    def call(self) -> Any:
        return self.history.tail_context(
            self.key, self.n, with_summary=self.with_summary, enough=self.enough
        )

    def acall(self) -> Awaitable[Any]:
        return self.history.atail_context(
            self.key, self.n, with_summary=self.with_summary, enough=self.enough
        )


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

    def _arguments(self) -> dict[str, Any]:
        return {
            "every": self.every,
            "max_turns": self.max_turns,
            "owner": self.owner,
            "lease_seconds": self.lease_seconds,
        }

    def call(self) -> Any:
        return self.history.claim_summary(self.key, self.upto, **self._arguments())

    def acall(self) -> Awaitable[Any]:
        return self.history.aclaim_summary(self.key, self.upto, **self._arguments())


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
    reset: bool = False

    def _arguments(self) -> dict[str, Any]:
        return {
            "base_version": self.base_version,
            "owner": self.owner,
            "turns": self.turns,
            "skipped": self.skipped,
            "reset": self.reset,
        }

    def call(self) -> Any:
        return self.history.write_summary(self.key, self.text, self.covers_seq, **self._arguments())

    def acall(self) -> Awaitable[Any]:
        return self.history.awrite_summary(
            self.key, self.text, self.covers_seq, **self._arguments()
        )


@dataclass(frozen=True, slots=True)
class ReleaseSummary:
    """End a lease on the summary (`ChatHistory.release_summary`) within ``budget``."""

    history: ChatHistory
    key: str
    owner: str
    budget: float

    def call(self) -> Any:
        return self.history.release_summary(self.key, self.owner)

    def acall(self) -> Awaitable[Any]:
        return self.history.arelease_summary(self.key, self.owner)


@dataclass(frozen=True, slots=True)
class ReadLegacy:
    """Read a conversation's single-item legacy history (`legacy.read_legacy_turns`)."""

    store: BaseStore
    namespace: tuple[str, ...]
    key: str
    budget: float

    def call(self) -> Any:
        return read_legacy_turns(self.store, self.namespace, self.key)

    def acall(self) -> Awaitable[Any]:
        return aread_legacy_turns(self.store, self.namespace, self.key)


@dataclass(frozen=True, slots=True)
class ImportTurns:
    """Write turns at the seqs they carry (`ChatHistory.import_turns`: idempotent)."""

    history: ChatHistory
    key: str
    turns: list[Turn]
    budget: float

    def call(self) -> Any:
        return self.history.import_turns(self.key, self.turns)

    def acall(self) -> Awaitable[Any]:
        return self.history.aimport_turns(self.key, self.turns)


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


StoreStep = (
    Read
    | ReadTokens
    | Append
    | ReadContext
    | ClaimSummary
    | WriteSummary
    | ReleaseSummary
    | ReadLegacy
    | ImportTurns
)
Step = StoreStep | Model | Sleep | Summarize


def _attempt_sync(step: StoreStep) -> tuple[bool, Any]:
    try:
        return True, call_with_budget(step.call, step.budget)
    except Exception as exc:
        return False, exc


async def _attempt_async(step: StoreStep) -> tuple[bool, Any]:
    # The deadline reaches the drivers (a sync store run in a worker thread stops there
    # too); the timeout also cancels a store that ignores deadlines (any other BaseStore).
    # asyncio.timeout, not wait_for: on Python 3.11, wait_for drops a cancellation of the
    # run that arrives as the store call ends, and the cancelled run went on to call the
    # model and store its exchange.
    try:
        async with asyncio.timeout(step.budget):
            return True, await acall_with_budget(step.acall, step.budget)
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
        async with asyncio.timeout(max(0.0, step.budget)):  # not wait_for (see above)
            output = await step.model.ainvoke(step.request, step.config)
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
