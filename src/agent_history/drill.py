"""The rollback drill: a synthetic workload through a real `AgentNode` graph while every
rollback switch is flipped in turn, each effect checked from outside the library.

The workload runs Telegram-style callbacks (a fresh thread per callback) for a few
conversations, round-robin, in a worker thread, against the given store, in a scratch
namespace of its own, removed afterwards whatever ends the drill (see `run_drill`). The
store is wrapped in a `DrillStore` that counts each run's store calls and injects latency
on demand; history on it keeps the real store's driver, so the drill runs the SQL paths
production runs. The switches belong to a `HistoryToggles` made for the drill, with an
environment of its own (a dict), a flags file and an audit file in a temporary
directory, and a clock the drill moves forward to end cool-downs without waiting. The
process environment is neither read nor changed.

For each switch the drill flips it while runs go on, waits for runs under it, returns to
``read_write`` and waits for runs again (at least one per conversation). Each run, the
stored turns and the audit file are then judged by `agent_history.drill_checks`.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType, TracebackType
from typing import Any, TypeVar, cast

import orjson
from langchain_core.messages import BaseMessage
from langgraph.graph import START, StateGraph
from langgraph.store.base import BaseStore, Op, PutOp, Result

from agent_history import observability as obs
from agent_history.drill_checks import (
    ANSWER_PREFIX,
    NODE_NAME,
    Behaviour,
    Run,
    Stage,
    StoreCalls,
    SwitchResult,
    judge,
)
from agent_history.history import ChatHistory
from agent_history.history.drivers import (
    AppendRequest,
    AsyncPerform,
    HistoryDriver,
    SyncPerform,
    driver_for,
    use_driver,
)
from agent_history.history.records import AppendResult
from agent_history.history.steps import Request, Steps
from agent_history.messages import role_of, text_of
from agent_history.node import AgentNode, AgentState, HistoryReport
from agent_history.offline_model import RecordingChatModel
from agent_history.redaction import safe_error_text
from agent_history.stores import backend_of
from agent_history.toggles import (
    DISABLED_NODES_VAR,
    MODE_VAR,
    BreakerState,
    HistoryToggles,
    TriggerState,
)

__all__ = [
    "NODE_NAME",
    "SCRATCH_PREFIX",
    "SWITCHES",
    "DrillCleanup",
    "DrillClock",
    "DrillReport",
    "DrillStore",
    "DrillTerminated",
    "StoreCalls",
    "SwitchResult",
    "run_drill",
    "scratch_namespace",
]

T = TypeVar("T")

SCRATCH_PREFIX = "agent_history_drill"
"""First label of every drill namespace (never the production ``agent_chat_history``)."""
SWITCHES = (
    "off",
    "read_only",
    "shadow",
    "disabled_node",
    "flags_file",
    "breaker_open",
    "latency_trigger",
)
"""The switches, in the order the drill flips them (after a ``baseline`` of read_write)."""

_MAX_MESSAGES = 1000  # the whole conversation fits the window: continuity is exact
_TRIGGER_VARS = {
    "ORCHEO_GRAPH_CHAT_HISTORY_TRIGGER_MIN_CALLS": "1",
    "ORCHEO_GRAPH_CHAT_HISTORY_TRIGGER_ACTION": "off",
}
_TRIGGER_THRESHOLD_VAR = "ORCHEO_GRAPH_CHAT_HISTORY_TRIGGER_READ_P95_SECONDS"
_EXTRA_RUNS_TO_FIRE = 5  # runs the latency trigger may take to fire before it counts as none
_PROBE_ATTEMPTS = 3  # cool-downs ended before a trigger that keeps firing is a failure
_QUIET_EVENTS = frozenset(
    {
        "breaker_open",
        "breaker_half_open",
        "breaker_closed",
        "rollback_trigger_fired",
        "rollback_trigger_probing",
        "rollback_trigger_returned",
        "switch_changed",
        "flags_file_loaded",
        "history_skipped",
    }
)


def scratch_namespace() -> tuple[str, ...]:
    """A fresh namespace for one drill."""
    return (SCRATCH_PREFIX, "d" + uuid.uuid4().hex[:12])


class DrillClock:
    """Monotonic time that the drill moves forward to end cool-downs without waiting."""

    def __init__(self) -> None:
        self._offset = 0.0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return time.monotonic() + self._offset

    def advance(self, seconds: float) -> None:
        """Move the clock ``seconds`` forward."""
        with self._lock:
            self._offset += seconds


class DrillStore(BaseStore):
    """Delegates to the real store; counts the calls of the run in progress and, while
    ``delay`` is set, makes every call that many seconds slower.

    History on it keeps the real store's own driver (`use_driver`), wrapped to count and
    slow its calls the same way, so the drill runs the path production runs: the SQL of
    the SQLite and PostgreSQL drivers, with their backend label in metrics and triggers.
    """

    def __init__(self, inner: BaseStore) -> None:
        self.inner = inner
        self.delay = 0.0
        self._lock = threading.Lock()
        self._current: StoreCalls | None = None
        self._noted = threading.local()
        self.failures: Counter[str] = Counter()
        """The real store's errors while no latency was injected, by class (and SQLite's
        error name): the store failed, and the switches' rows are no verdict on them."""
        use_driver(self, _CountingDriver(self, driver_for(inner)))

    def failed(self, exc: BaseException) -> None:
        """Record ``exc``, raised by the real store."""
        if not isinstance(exc, Exception):
            return
        name = type(exc).__name__
        code = getattr(exc, "sqlite_errorname", None)
        with self._lock:
            self.failures[f"{name} [{code}]" if code else name] += 1

    def attach(self, calls: StoreCalls | None) -> None:
        """Count the following calls in ``calls`` (None: between runs, not counted)."""
        with self._lock:
            self._current = calls

    def note(self, writes: bool) -> None:
        """Count one call of the run in progress, and make it slower while ``delay`` is set."""
        with self._lock:
            if self._current is not None and writes:
                self._current.writes += 1
            elif self._current is not None:
                self._current.reads += 1
        self._noted.delay = self.delay  # (what `watched` sees for the call that follows)
        if self.delay:
            time.sleep(self.delay)  # the injected latency the trigger measures

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        listed = list(ops)
        self.note(any(isinstance(op, PutOp) for op in listed))
        with self.watched():
            return self.inner.batch(listed)

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        listed = list(ops)
        self.note(any(isinstance(op, PutOp) for op in listed))  # blocks, like a slow driver
        with self.watched():
            return await self.inner.abatch(listed)

    @contextmanager
    def watched(self) -> Iterator[None]:
        """Record what the real store raises in the block (`failed`), and raise it;
        unless the call began with the drill's latency injected (`note`: a time budget
        then stops it on purpose)."""
        injected = getattr(self._noted, "delay", 0.0)
        try:
            yield
        except BaseException as exc:
            if not injected:
                self.failed(exc)
            raise


class _CountingDriver(HistoryDriver):
    """The wrapped store's own history driver, each call counted by the `DrillStore`
    (appends and atomic procedures as writes, the rest as reads) and slowed like its
    store calls."""

    def __init__(self, wrapper: DrillStore, inner: HistoryDriver) -> None:
        super().__init__(wrapper)  # weakly, like every driver: it must not keep it alive
        self.inner = inner
        self.backend = inner.backend

    @property
    def _wrapper(self) -> DrillStore:
        return cast(DrillStore, self.store)

    @classmethod
    def accepts(cls, store: BaseStore) -> bool:
        return False  # only ever given to a DrillStore by `use_driver`

    def run(self, namespace: tuple[str, ...], steps: Steps[T]) -> T:
        self._wrapper.note(True)
        with self._wrapper.watched():
            return self.inner.run(namespace, steps)

    def reader(self, namespace: tuple[str, ...]) -> SyncPerform:
        perform = self.inner.reader(namespace)

        def counted(request: Request) -> Any:
            self._wrapper.note(False)
            with self._wrapper.watched():
                return perform(request)

        return counted

    def read(self, namespace: tuple[str, ...], steps: Steps[T]) -> T:
        self._wrapper.note(False)
        with self._wrapper.watched():
            return self.inner.read(namespace, steps)

    def append(self, namespace: tuple[str, ...], request: AppendRequest) -> AppendResult:
        self._wrapper.note(True)
        with self._wrapper.watched():
            return self.inner.append(namespace, request)

    async def on_own_loop(self, call: Awaitable[T]) -> T:
        return await self.inner.on_own_loop(call)

    async def arun(self, namespace: tuple[str, ...], steps: Steps[T]) -> T:
        self._wrapper.note(True)
        with self._wrapper.watched():
            return await self.inner.arun(namespace, steps)

    def areader(self, namespace: tuple[str, ...]) -> AsyncPerform:
        aperform = self.inner.areader(namespace)

        async def counted(request: Request) -> Any:
            self._wrapper.note(False)
            with self._wrapper.watched():
                return await aperform(request)

        return counted

    async def aread(self, namespace: tuple[str, ...], steps: Steps[T]) -> T:
        self._wrapper.note(False)
        with self._wrapper.watched():
            return await self.inner.aread(namespace, steps)

    async def aappend(self, namespace: tuple[str, ...], request: AppendRequest) -> AppendResult:
        self._wrapper.note(True)
        with self._wrapper.watched():
            return await self.inner.aappend(namespace, request)

    def describe(self) -> dict[str, Any]:
        return self.inner.describe()


@dataclass(frozen=True, slots=True)
class DrillReport:
    """What `run_drill` found."""

    backend: str
    """The store's backend (``sqlite``, ``postgres``, ``memory``, ``other``)."""
    namespace: tuple[str, ...]
    conversations: int
    runs: int
    seconds: float
    switches: tuple[SwitchResult, ...]
    namespace_removed: bool
    problems: tuple[str, ...] = ()
    """Problems of the drill itself (a stalled workload, a failed clean-up)."""
    store_failures: tuple[str, ...] = ()
    """The store's own errors during the drill, not made by a switch (``SQLITE_BUSY``:
    another process held the lock past the busy timeout), ``"<error> x N"``: the store
    failed, so the rows say nothing about the switches (the CLI exits 3)."""

    @property
    def ok(self) -> bool:
        """True when every row is ok, the drill ran to the end and cleaned up."""
        rows = {row.switch for row in self.switches}
        complete = all(name in rows for name in SWITCHES)
        return (
            complete
            and self.namespace_removed
            and not self.problems
            and not self.store_failures
            and all(row.ok for row in self.switches)
        )

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data."""
        return {
            "ok": self.ok,
            "backend": self.backend,
            "namespace": ".".join(self.namespace),
            "namespace_removed": self.namespace_removed,
            "conversations": self.conversations,
            "runs": self.runs,
            "seconds": round(self.seconds, 3),
            "problems": list(self.problems),
            "store_failures": list(self.store_failures),
            "switches": [
                {
                    "switch": row.switch,
                    "ok": row.ok,
                    "effect_ms": None if row.effect_ms is None else round(row.effect_ms, 1),
                    "runs": row.runs,
                    "failed": row.failed,
                    "lost": row.lost,
                    "problems": list(row.problems),
                }
                for row in self.switches
            ],
        }


@dataclass(frozen=True, slots=True)
class DrillCleanup:
    """What became of a drill's scratch namespace, whatever ended the drill (given to
    `run_drill`'s ``on_cleanup`` before it returns or raises)."""

    namespace: tuple[str, ...]
    removed: bool
    """True when no item is left under the namespace."""
    error: str | None = None
    """Why the removal stopped, when it raised (the error's class and safe text)."""


class DrillTerminated(SystemExit):
    """SIGTERM ended the drill; raised once its clean-up is done. Left uncaught, the
    process exits with status 143 (128 + SIGTERM), as if the signal had ended it."""

    def __init__(self) -> None:
        super().__init__(128 + signal.SIGTERM)


class _Stalled(Exception):
    """The workload made no progress within the stage timeout."""


def _conversation_key(conversation: int) -> str:
    return f"telegram:{1001 + conversation}"


def _pairs(messages: Sequence[BaseMessage]) -> list[tuple[str, str]]:
    return [(role_of(m), text_of(m)) for m in messages]


# --- the drill ------------------------------------------------------------------------------


class _Drill:
    def __init__(
        self,
        store: BaseStore,
        *,
        conversations: int,
        runs_per_switch: int,
        latency_seconds: float,
        stage_timeout: float,
        namespace: tuple[str, ...],
        workdir: str,
        threads: set[int | None],
    ) -> None:
        self.threads = threads
        """The drill's threads (whose expected log events are kept quiet)."""
        self.inner = store
        self.store = DrillStore(store)
        self.backend = backend_of(self.store)
        self.conversations = conversations
        self.per_stage = max(runs_per_switch, conversations)
        self.latency = latency_seconds
        self.stage_timeout = stage_timeout
        self.namespace = namespace
        self.clock = DrillClock()
        self.env: dict[str, str] = {}
        self.flags_path = os.path.join(workdir, "flags.json")
        self.audit_path = os.path.join(workdir, "audit.jsonl")
        self._write_flags({})
        self.toggles = HistoryToggles(
            env=self.env, clock=self.clock, flags_file=self.flags_path, audit_file=self.audit_path
        )
        self.model = RecordingChatModel(prefix=ANSWER_PREFIX)
        self.reports: list[HistoryReport] = []
        node = AgentNode(
            self.model,
            name=NODE_NAME,
            use_graph_chat_history=True,
            max_messages=_MAX_MESSAGES,
            history_namespace=self.namespace,
            toggles=self.toggles,
            on_report=self.reports.append,
        )
        builder = StateGraph(AgentState)
        builder.add_node(NODE_NAME, node)
        builder.add_edge(START, NODE_NAME)
        self.graph = builder.compile(store=self.store)
        self.cond = threading.Condition()
        self.stages: list[Stage] = []
        self.runs: list[Run] = []
        self.stop = threading.Event()
        self.worker = threading.Thread(target=self._work, name="agent-history-drill", daemon=True)
        self.worker_error: str | None = None
        self.t0 = time.perf_counter()
        self.problems: list[str] = []

    # --- helpers ---------------------------------------------------------------------------

    def _now(self) -> float:
        return time.perf_counter() - self.t0

    def key(self, conversation: int) -> str:
        return _conversation_key(conversation)

    def _write_flags(self, flags: dict[str, Any]) -> None:
        # A new file moved into place: a reader sees the old or the new one, never half.
        part = self.flags_path + ".part"
        with open(part, "wb") as handle:
            handle.write(orjson.dumps(flags))
        os.replace(part, self.flags_path)

    def _audit_size(self) -> int:
        try:
            return os.path.getsize(self.audit_path)
        except OSError:
            return 0

    # --- the workload ----------------------------------------------------------------------

    def _work(self) -> None:
        self.threads.add(threading.get_ident())
        try:
            index = 0
            while not self.stop.is_set():
                self._one_run(index)
                index += 1
        except BaseException as exc:  # a bug in the drill: the controller reports it
            self.worker_error = type(exc).__name__
            with self.cond:
                self.cond.notify_all()

    def _one_run(self, index: int) -> None:
        conversation = index % self.conversations
        text = f"drill turn {index + 1}"
        with self.cond:
            run = Run(index, conversation, text, len(self.stages) - 1, self._now(), StoreCalls())
        callback: AgentState = {
            "inputs": {"message": {"text": text, "message_id": index + 1}},
            "results": {"telegram_events_parser": {"chat_id": 1001 + conversation}},
        }
        calls, reports = len(self.model.calls), len(self.reports)
        self.store.attach(run.calls)
        try:
            out = self.graph.invoke(callback, {"configurable": {"thread_id": uuid.uuid4().hex}})
            run.answered = text_of(out["messages"][-1]) == ANSWER_PREFIX + text
        except Exception as exc:
            run.error = type(exc).__name__
        finally:
            self.store.attach(None)
        run.payloads = [_pairs(p) for p in self.model.calls[calls:]]
        passes = self.reports[reports:]
        run.shadow_difference = passes[-1].shadow_difference if passes else None
        with self.cond:
            run.end_stage = len(self.stages) - 1
            run.ended = self._now()
            self.runs.append(run)
            self.cond.notify_all()

    # --- the controller --------------------------------------------------------------------

    def _begin(
        self,
        switch: str,
        part: str,
        allowed: tuple[Behaviour, ...],
        apply: Callable[[], None] | None = None,
        *,
        gradual: bool = False,
        started: float | None = None,
        audit_offset: int | None = None,
    ) -> int:
        """Apply a change and start a stage at once: a run starts before or after both."""
        with self.cond:
            offset = self._audit_size() if audit_offset is None else audit_offset
            began = self._now() if started is None else started
            if apply is not None:
                apply()
            self.stages.append(Stage(switch, part, allowed, began, offset, gradual))
            return len(self.stages) - 1

    def _wait(self, stage: int, enough: Callable[[list[Run]], bool]) -> None:
        """Wait until the runs that started and ended in ``stage`` are ``enough``."""

        def ready() -> bool:
            if self.worker_error is not None or not self.worker.is_alive():
                return True
            done = [r for r in self.runs if r.stage == stage and r.end_stage == stage]
            return enough(done)

        with self.cond:
            progressed = self.cond.wait_for(ready, timeout=self.stage_timeout)
        if self.worker_error is not None or not self.worker.is_alive():
            raise _Stalled(f"the workload stopped ({self.worker_error or 'no error'})")
        if not progressed:
            name = self.stages[stage].switch
            raise _Stalled(f"{name}: no progress within {self.stage_timeout:g}s")

    def _count(self, runs: list[Run]) -> bool:
        return len(runs) >= self.per_stage

    def _env_switch(self, name: str, variable: str, value: str, effect: Behaviour) -> None:
        def flip() -> None:
            self.env[variable] = value

        def back() -> None:
            self.env.pop(variable, None)

        self._flip_and_return(name, effect, flip, back)

    def _flip_and_return(
        self,
        name: str,
        effect: Behaviour,
        flip: Callable[[], None],
        back: Callable[[], None],
    ) -> None:
        self._wait(self._begin(name, "flip", (effect,), flip), self._count)
        self._wait(self._begin(name, "return", (Behaviour.READ_WRITE,), back), self._count)

    def _breaker(self) -> None:
        breaker = self.toggles.breaker_for(self.store, self.backend)
        started, offset = self._now(), self._audit_size()

        def force_open() -> None:
            # Failures recorded on the store's breaker until it opens (the workload's
            # successes in its window need outweighing first).
            for _ in range(100_000):
                if breaker.state is BreakerState.OPEN:
                    return
                breaker.record_failure()

        def cool_down() -> None:
            self.clock.advance(breaker.cooldown_seconds + 1)

        flip = self._begin(
            "breaker_open",
            "flip",
            (Behaviour.IN_MEMORY,),
            force_open,
            started=started,
            audit_offset=offset,
        )
        self._wait(flip, self._count)
        back = self._begin("breaker_open", "return", (Behaviour.READ_WRITE,), cool_down)
        self._wait(back, self._count)
        if breaker.state is not BreakerState.CLOSED:
            self.problems.append(f"breaker_open: breaker still {breaker.state.value}")

    def _trigger(self) -> None:
        name = "latency_trigger"
        either = (Behaviour.READ_WRITE, Behaviour.IN_MEMORY)

        def inject() -> None:
            self.env.update(_TRIGGER_VARS)
            self.env[_TRIGGER_THRESHOLD_VAR] = f"{self.latency / 2:g}"
            self.store.delay = self.latency

        def fired(runs: list[Run]) -> bool:
            in_memory = sum(1 for r in runs if r.calls.total == 0)
            return in_memory >= self.per_stage or len(runs) >= self.per_stage + _EXTRA_RUNS_TO_FIRE

        self._wait(self._begin(name, "flip", either, inject, gradual=True), fired)
        settings = self.toggles.current().triggers

        def cool_down() -> None:
            self.store.delay = 0.0
            self.clock.advance(settings.cooldown_seconds + 1)

        for _ in range(_PROBE_ATTEMPTS):
            # The probe run decides; a probe slowed by a busy machine fires it again.
            self._wait(self._begin(name, "probe", either, cool_down), lambda runs: bool(runs))
            state = self.toggles.trigger_state(self.backend)
            if state is TriggerState.WATCHING:
                break
        else:
            self.problems.append(f"{name}: trigger still {state.value} after the cool-down")

        def disarm() -> None:
            for variable in (*_TRIGGER_VARS, _TRIGGER_THRESHOLD_VAR):
                self.env.pop(variable, None)

        self._wait(self._begin(name, "return", (Behaviour.READ_WRITE,), disarm), self._count)

    def drive(self) -> None:
        """Run the baseline, then every switch; the workload runs throughout."""
        self._begin("baseline", "baseline", (Behaviour.READ_WRITE,))
        self.worker.start()
        self._wait(0, self._count)
        self._env_switch("off", MODE_VAR, "off", Behaviour.IN_MEMORY)
        self._env_switch("read_only", MODE_VAR, "read_only", Behaviour.READ_ONLY)
        self._env_switch("shadow", MODE_VAR, "shadow", Behaviour.SHADOW)
        self._env_switch("disabled_node", DISABLED_NODES_VAR, NODE_NAME, Behaviour.IN_MEMORY)
        self._flip_and_return(
            "flags_file",
            Behaviour.READ_ONLY,
            lambda: self._write_flags({"mode": "read_only"}),
            lambda: self._write_flags({}),
        )
        self._breaker()
        self._trigger()

    def halt(self) -> None:
        """Stop the workload and wait for its run in flight (again after an interrupt cut
        the first wait short)."""
        self.stop.set()
        if self.worker.is_alive():
            self.worker.join(self.stage_timeout)
            if self.worker.is_alive() and "the workload did not stop" not in self.problems:
                self.problems.append("the workload did not stop")

    # --- judging ---------------------------------------------------------------------------

    def results(self) -> list[SwitchResult]:
        """One row per switch reached (the baseline first); other problems are added to
        `problems`."""
        history = ChatHistory(self.inner, namespace=self.namespace)
        stored = {
            conversation: [(t.role, str(t.content)) for t in history.read(self.key(conversation))]
            for conversation in range(self.conversations)
        }
        try:
            with open(self.audit_path, "rb") as handle:
                audit = handle.read()
        except OSError:
            audit = b""
        rows, problems = judge(self.stages, self.runs, stored, audit)
        self.problems += problems
        return rows


# --- clean-up and logs ------------------------------------------------------------------------


_CLEANUP_BUDGET_SECONDS = 10.0
"""Longest a clean-up's delete of one conversation may wait for the store (a table
locked by an operator): past it the clean-up stops and names the namespace."""


def _remove_namespace(store: BaseStore, namespace: tuple[str, ...], keys: Iterable[str]) -> bool:
    """Delete every conversation and any other item under ``namespace``; True when
    nothing is left. The drill's own conversations go first, each within a budget, so a
    store that hangs ends the clean-up (reported) instead of holding the process."""
    history = ChatHistory(store, namespace=namespace)
    known = set(keys)
    for key in sorted(known):
        history.delete(key, budget=_CLEANUP_BUDGET_SECONDS)
    for key in set(history.keys()) - known:
        history.delete(key, budget=_CLEANUP_BUDGET_SECONDS)
    for _ in range(1000):
        items = store.search(namespace, limit=100)
        if not items:
            break
        for item in items:
            store.delete(item.namespace, item.key)
    # Items, not namespaces: the in-memory store keeps a namespace's empty entry.
    return not store.search(namespace, limit=1)


class _QuietDrillEvents(logging.Filter):
    """Drops the events a drill causes on purpose (an open breaker, a fired trigger,
    runs in memory because of it), from the drill's own threads only."""

    def __init__(self, threads: set[int | None]) -> None:
        super().__init__()
        self.threads = threads

    def filter(self, record: logging.LogRecord) -> bool:
        if record.thread not in self.threads:
            return True
        event = getattr(record, "event", None)
        fields = getattr(record, "fields", {})
        if event == "history_fallback":
            return not (isinstance(fields, dict) and fields.get("reason") == "breaker_open")
        return event not in _QUIET_EVENTS


@contextmanager
def _quiet(threads: set[int | None]) -> Iterator[None]:
    quiet = _QuietDrillEvents(threads)
    obs.logger.addFilter(quiet)
    try:
        yield
    finally:
        obs.logger.removeFilter(quiet)


# --- signals ----------------------------------------------------------------------------------


class _Termination:
    """SIGTERM while the drill runs: its default action ends the process at once, skipping
    every clean-up. While the drill runs in the main thread and that default is in place,
    SIGTERM raises `DrillTerminated` there instead; once the clean-up has begun it is
    only noted (``received``), so that a second signal cannot cut the clean-up short.
    A handler of the application's own is left alone."""

    def __init__(self) -> None:
        self.received = False
        self.cleaning = False
        self._previous: Any = None
        self._installed = False

    def __enter__(self) -> _Termination:
        in_main = threading.current_thread() is threading.main_thread()
        if in_main and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
            self._installed = True
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        first = not self.received
        self.received = True
        if first and not self.cleaning:
            raise DrillTerminated()


def _clean_up(
    store: BaseStore,
    namespace: tuple[str, ...],
    drill: _Drill | None,
    keys: Iterable[str],
    workdir: str,
) -> tuple[DrillCleanup, BaseException | None]:
    """Stop the workload, remove the scratch namespace and the temporary directory.
    Never raises: the error that stopped the removal is returned with the outcome."""
    try:
        if drill is not None:
            drill.halt()  # a run still writing would leave a turn behind
        return DrillCleanup(namespace, _remove_namespace(store, namespace, keys)), None
    except BaseException as exc:  # a failing store, a second Ctrl-C: reported, raised later
        return DrillCleanup(namespace, False, safe_error_text(exc)), exc
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _to_raise(
    failure: BaseException | None, cleanup_failure: BaseException | None
) -> BaseException | None:
    """The one exception `run_drill` ends with: an interrupt first (Ctrl-C, SIGTERM),
    then the drill's own error, then the clean-up's."""
    for candidate in (failure, cleanup_failure):
        if candidate is not None and not isinstance(candidate, Exception):
            return candidate
    return failure or cleanup_failure


# --- the entry point ------------------------------------------------------------------------


def run_drill(
    store: BaseStore,
    *,
    conversations: int = 3,
    runs_per_switch: int = 3,
    latency_seconds: float = 0.1,
    stage_timeout_seconds: float = 30.0,
    on_cleanup: Callable[[DrillCleanup], None] | None = None,
) -> DrillReport:
    """Run the rollback drill against ``store`` in a scratch namespace (see the module).

    Whatever ends the drill (its end, a failed check, an error of the store, Ctrl-C,
    SIGTERM), the workload is stopped and the scratch namespace and the temporary
    directory are removed before `run_drill` returns or raises; ``on_cleanup`` is told
    what became of the namespace. SIGTERM, whose default action would end the process
    at once, raises `DrillTerminated` after the clean-up instead (when the drill runs in
    the main thread and no handler of the application's own is set).

    Args:
        store: A set-up sync graph store (the configured one, e.g. from
            `create_graph_store_sync`).
        conversations: Conversations in the workload, run round-robin.
        runs_per_switch: Runs waited for under each switch and after each return (at
            least one per conversation).
        latency_seconds: Latency injected into each store call to fire the read p95
            trigger (its threshold is half of it).
        stage_timeout_seconds: Longest wait for the workload to make progress.
        on_cleanup: Called once with the `DrillCleanup`, also when the drill raises.

    Returns:
        The `DrillReport`: one `SwitchResult` per switch, ``ok`` when all passed.

    Raises:
        DrillTerminated: SIGTERM arrived (after the clean-up).
        KeyboardInterrupt: Ctrl-C (after the clean-up).
        Exception: the store's own error (a driver's ``sqlite3`` or ``psycopg`` error,
            `StoreUnavailable`, `StoreTimeout`) when it failed during the drill or its
            clean-up; the namespace is then named by ``on_cleanup`` when it could not be
            removed. (The CLI's ``drill`` makes any of them exit 3.)
    """
    if conversations < 1 or runs_per_switch < 1:
        raise ValueError("conversations and runs_per_switch must be >= 1")
    if not latency_seconds > 0 or not stage_timeout_seconds > 0:
        raise ValueError("latency_seconds and stage_timeout_seconds must be > 0")
    namespace = scratch_namespace()
    keys = [_conversation_key(c) for c in range(conversations)]
    threads: set[int | None] = {threading.get_ident()}
    drill: _Drill | None = None
    rows: list[SwitchResult] = []
    problems: list[str] = []
    failure: BaseException | None = None
    workdir = tempfile.mkdtemp(prefix="agent-history-drill-")
    with _Termination() as termination:
        try:
            drill = _Drill(
                store,
                conversations=conversations,
                runs_per_switch=runs_per_switch,
                latency_seconds=latency_seconds,
                stage_timeout=stage_timeout_seconds,
                namespace=namespace,
                workdir=workdir,
                threads=threads,
            )
            with _quiet(threads):
                try:
                    drill.drive()
                except _Stalled as exc:
                    problems.append(str(exc))
                finally:
                    drill.halt()
                rows = drill.results()
        except BaseException as exc:  # raised again below, after the clean-up
            failure = exc
        termination.cleaning = True
        cleanup, cleanup_failure = _clean_up(store, namespace, drill, keys, workdir)
        if on_cleanup is not None:
            on_cleanup(cleanup)
        if termination.received and not isinstance(failure, DrillTerminated):
            failure = DrillTerminated()
    error = _to_raise(failure, cleanup_failure)
    if error is not None:
        raise error
    assert drill is not None
    return DrillReport(
        backend=backend_of(store),
        namespace=namespace,
        conversations=conversations,
        runs=len(drill.runs),
        seconds=drill._now(),
        switches=tuple(rows),
        namespace_removed=cleanup.removed,
        problems=(*problems, *drill.problems),
        store_failures=tuple(f"{name} x {n}" for name, n in drill.store.failures.most_common()),
    )
