"""The rollback drill: a synthetic workload through a real `AgentNode` graph while every
rollback switch is flipped in turn, each effect checked from outside the library.

The workload runs Telegram-style callbacks (a fresh thread per callback) for a few
conversations, round-robin, in a worker thread, against the given store, in a scratch
namespace of its own (removed afterwards, also when the drill fails). The store is
wrapped in a `DrillStore` that counts each run's store calls and injects latency on
demand; the switches belong to a `HistoryToggles` made for the drill, with an
environment of its own (a dict), a flags file and an audit file in a temporary
directory, and a clock the drill moves forward to end cool-downs without waiting. The
process environment is neither read nor changed.

For each switch the drill flips it while runs go on, waits for runs under it, returns to
``read_write`` and waits for one run per conversation. Every run is judged by what the
wrapper saw and what the model received:

- ``read_write``: the run read and wrote the store, and the model saw every stored turn
  of its conversation and the new message (nothing lost, nothing twice);
- ``read_only``: reads, no writes, the stored turns in the payload;
- ``shadow``: reads and writes, the model saw only the new message, and the run reported
  a shadow difference when the conversation had stored turns;
- in memory (``off``, a disabled node, an open breaker, a fired trigger): no store call.

A run in flight while a switch flips may behave either way. At the end every
conversation is read back with the store's own driver and compared with the turns of the
runs that wrote: a turn missing is lost, a turn stored twice is a duplicate. Each flip and
return must also be in the audit file.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import orjson
from langchain_core.messages import BaseMessage
from langgraph.graph import START, StateGraph
from langgraph.store.base import BaseStore, Op, PutOp, Result

from agent_history import observability as obs
from agent_history.history import ChatHistory
from agent_history.messages import role_of, text_of
from agent_history.node import AgentNode, AgentState, HistoryReport
from agent_history.stores import backend_of
from agent_history.testing import RecordingChatModel
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
    "DrillClock",
    "DrillReport",
    "DrillStore",
    "StoreCalls",
    "SwitchResult",
    "run_drill",
    "scratch_namespace",
]

SCRATCH_PREFIX = "agent_history_drill"
"""First label of every drill namespace (never the production ``agent_chat_history``)."""
NODE_NAME = "drill_agent"
"""The drill graph's node: the name the disabled-node switch lists."""
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
_ANSWER_PREFIX = "echo: "
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


@dataclass(slots=True)
class StoreCalls:
    """Store calls (``batch`` calls) one run made."""

    reads: int = 0
    """Batches without a write."""
    writes: int = 0
    """Batches with at least one put or delete."""

    @property
    def total(self) -> int:
        """Every call."""
        return self.reads + self.writes


class DrillStore(BaseStore):
    """Delegates to the real store; counts the calls of the run in progress and, while
    ``delay`` is set, makes every call that many seconds slower.

    History on a wrapper takes the store-agnostic path (`history.drivers.generic`) and
    its metrics and triggers use the backend label ``other``.
    """

    def __init__(self, inner: BaseStore) -> None:
        self.inner = inner
        self.delay = 0.0
        self.stray = 0
        """Calls made while no run was in progress."""
        self._lock = threading.Lock()
        self._current: StoreCalls | None = None

    def attach(self, calls: StoreCalls | None) -> None:
        """Count the following calls in ``calls`` (None: between runs)."""
        with self._lock:
            self._current = calls

    def _note(self, ops: Sequence[Op]) -> None:
        writes = any(isinstance(op, PutOp) for op in ops)
        with self._lock:
            if self._current is None:
                self.stray += 1
            elif writes:
                self._current.writes += 1
            else:
                self._current.reads += 1
        if self.delay:
            time.sleep(self.delay)  # the injected latency the trigger measures

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        listed = list(ops)
        self._note(listed)
        return self.inner.batch(listed)

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        listed = list(ops)
        self._note(listed)  # a blocking delay, like a slow sync driver
        return await self.inner.abatch(listed)


class _Behaviour(StrEnum):
    READ_WRITE = "read_write"
    READ_ONLY = "read_only"
    SHADOW = "shadow"
    IN_MEMORY = "in_memory"


_WRITES = frozenset({_Behaviour.READ_WRITE, _Behaviour.SHADOW})


@dataclass(frozen=True, slots=True)
class SwitchResult:
    """One row of the drill's table."""

    switch: str
    effect_ms: float | None
    """From the flip to the start of the first run that showed its effect (None: none
    did; the baseline has no flip)."""
    runs: int
    """Runs started while the switch was flipped."""
    failed: int
    """Runs (during the flip or after the return) that raised or answered wrongly."""
    lost: int
    """Turns of this row's runs that should be stored and are not."""
    problems: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """True when nothing failed, nothing was lost and every effect showed."""
        return not self.problems and self.failed == 0 and self.lost == 0


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

    @property
    def ok(self) -> bool:
        """True when every row is ok, the drill ran to the end and cleaned up."""
        rows = {row.switch for row in self.switches}
        complete = all(name in rows for name in SWITCHES)
        return (
            complete
            and self.namespace_removed
            and not self.problems
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


# --- the record of a drill ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Stage:
    """A stretch of the drill with one expectation; a flip or return starts a new one."""

    switch: str
    part: str
    """``flip``, ``probe`` or ``return`` (``flip`` for the baseline)."""
    allowed: tuple[_Behaviour, ...]
    started: float
    audit_offset: int
    gradual: bool = False
    """The effect shows after some runs (a trigger), then holds."""


@dataclass(slots=True)
class _Run:
    index: int
    conversation: int
    text: str
    stage: int
    started: float
    calls: StoreCalls
    end_stage: int = -1
    ended: float = 0.0
    payloads: list[list[tuple[str, str]]] = field(default_factory=list)
    reports: list[HistoryReport] = field(default_factory=list)
    answered: bool = False
    error: str | None = None

    @property
    def failed(self) -> bool:
        return self.error is not None or not self.answered

    @property
    def user(self) -> tuple[str, str]:
        return ("user", self.text)

    @property
    def turns(self) -> list[tuple[str, str]]:
        return [self.user, ("assistant", _ANSWER_PREFIX + self.text)]


class _Stalled(Exception):
    """The workload made no progress within the stage timeout."""


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
        self.namespace = scratch_namespace()
        self.clock = DrillClock()
        self.env: dict[str, str] = {}
        self.flags_path = os.path.join(workdir, "flags.json")
        self.audit_path = os.path.join(workdir, "audit.jsonl")
        self._write_flags({})
        self.toggles = HistoryToggles(
            env=self.env, clock=self.clock, flags_file=self.flags_path, audit_file=self.audit_path
        )
        self.model = RecordingChatModel(prefix=_ANSWER_PREFIX)
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
        self.stages: list[_Stage] = []
        self.runs: list[_Run] = []
        self.stop = threading.Event()
        self.worker = threading.Thread(target=self._work, name="agent-history-drill", daemon=True)
        self.worker_error: str | None = None
        self.t0 = time.perf_counter()
        self.problems: list[str] = []

    # --- helpers ---------------------------------------------------------------------------

    def _now(self) -> float:
        return time.perf_counter() - self.t0

    def key(self, conversation: int) -> str:
        return f"telegram:{1001 + conversation}"

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
            run = _Run(index, conversation, text, len(self.stages) - 1, self._now(), StoreCalls())
        callback: AgentState = {
            "inputs": {"message": {"text": text, "message_id": index + 1}},
            "results": {"telegram_events_parser": {"chat_id": 1001 + conversation}},
        }
        calls, reports = len(self.model.calls), len(self.reports)
        self.store.attach(run.calls)
        try:
            out = self.graph.invoke(callback, {"configurable": {"thread_id": uuid.uuid4().hex}})
            run.answered = text_of(out["messages"][-1]) == _ANSWER_PREFIX + text
        except Exception as exc:
            run.error = type(exc).__name__
        finally:
            self.store.attach(None)
        run.payloads = [_pairs(p) for p in self.model.calls[calls:]]
        run.reports = self.reports[reports:]
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
        allowed: tuple[_Behaviour, ...],
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
            self.stages.append(_Stage(switch, part, allowed, began, offset, gradual))
            return len(self.stages) - 1

    def _wait(self, stage: int, enough: Callable[[list[_Run]], bool]) -> None:
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

    def _count(self, runs: list[_Run]) -> bool:
        return len(runs) >= self.per_stage

    def _env_switch(self, name: str, variable: str, value: str, effect: _Behaviour) -> None:
        def flip() -> None:
            self.env[variable] = value

        def back() -> None:
            self.env.pop(variable, None)

        self._flip_and_return(name, effect, flip, back)

    def _flip_and_return(
        self,
        name: str,
        effect: _Behaviour,
        flip: Callable[[], None],
        back: Callable[[], None],
    ) -> None:
        self._wait(self._begin(name, "flip", (effect,), flip), self._count)
        self._wait(self._begin(name, "return", (_Behaviour.READ_WRITE,), back), self._count)

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
            (_Behaviour.IN_MEMORY,),
            force_open,
            started=started,
            audit_offset=offset,
        )
        self._wait(flip, self._count)
        back = self._begin("breaker_open", "return", (_Behaviour.READ_WRITE,), cool_down)
        self._wait(back, self._count)
        if breaker.state is not BreakerState.CLOSED:
            self.problems.append(f"breaker_open: breaker still {breaker.state.value}")

    def _trigger(self) -> None:
        name = "latency_trigger"
        either = (_Behaviour.READ_WRITE, _Behaviour.IN_MEMORY)

        def inject() -> None:
            self.env.update(_TRIGGER_VARS)
            self.env[_TRIGGER_THRESHOLD_VAR] = f"{self.latency / 2:g}"
            self.store.delay = self.latency

        def fired(runs: list[_Run]) -> bool:
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

        self._wait(self._begin(name, "return", (_Behaviour.READ_WRITE,), disarm), self._count)

    def drive(self) -> None:
        """Run the baseline, then every switch; the workload runs throughout."""
        self._begin("baseline", "baseline", (_Behaviour.READ_WRITE,))
        self.worker.start()
        self._wait(0, self._count)
        self._env_switch("off", MODE_VAR, "off", _Behaviour.IN_MEMORY)
        self._env_switch("read_only", MODE_VAR, "read_only", _Behaviour.READ_ONLY)
        self._env_switch("shadow", MODE_VAR, "shadow", _Behaviour.SHADOW)
        self._env_switch("disabled_node", DISABLED_NODES_VAR, NODE_NAME, _Behaviour.IN_MEMORY)
        self._flip_and_return(
            "flags_file",
            _Behaviour.READ_ONLY,
            lambda: self._write_flags({"mode": "read_only"}),
            lambda: self._write_flags({}),
        )
        self._breaker()
        self._trigger()

    def halt(self) -> None:
        self.stop.set()
        if self.worker.is_alive():
            self.worker.join(self.stage_timeout)
            if self.worker.is_alive():
                self.problems.append("the workload did not stop")

    # --- judging ---------------------------------------------------------------------------

    def results(self) -> list[SwitchResult]:
        """One row per switch reached (the baseline first)."""
        rows: dict[str, _Row] = {}
        for stage in self.stages:
            rows.setdefault(stage.switch, _Row(stage.switch))
        written: dict[int, list[tuple[str, str]]] = {}
        expected: dict[int, list[tuple[tuple[str, str], _Row]]] = {}
        holding: set[int] = set()
        for run in self.runs:
            stage = self.stages[run.stage]
            row = rows[stage.switch]
            log = written.setdefault(run.conversation, [])
            allowed = self._allowed(run)
            gradual = stage.gradual and run.end_stage == run.stage
            if gradual and run.stage in holding:
                allowed = (_Behaviour.IN_MEMORY,)  # once the trigger acted, it holds
            own = _Behaviour.IN_MEMORY if gradual and run.stage in holding else stage.allowed[-1]
            matched, problem = _judge(run, allowed, log, own)
            if stage.part in ("baseline", "flip"):
                row.runs += 1
            if stage.part == "flip" and matched is not None and matched is stage.allowed[-1]:
                row.effect(run.started - stage.started)
                if gradual:
                    holding.add(run.stage)
            if problem is not None:
                row.problem(stage.part, problem)
            if run.failed:
                row.failed += 1
            wrote = run.calls.writes > 0 and run.error is None
            if wrote:
                log.extend(run.turns)
            if wrote or all(b in _WRITES for b in allowed):
                expected.setdefault(run.conversation, []).extend((t, row) for t in run.turns)
        self._check_stored(expected, rows)
        self._check_audit(rows)
        out = []
        for row in rows.values():
            if row.name != "baseline" and row.effect_ms is None:
                row.problems.insert(0, "no run showed the effect")
            out.append(row.result())
        return out

    def _allowed(self, run: _Run) -> tuple[_Behaviour, ...]:
        """What the stages the run overlapped allow (a run in flight during a flip may
        behave either way)."""
        allowed: list[_Behaviour] = []
        for stage in self.stages[run.stage : run.end_stage + 1]:
            allowed += [b for b in stage.allowed if b not in allowed]
        return tuple(allowed)

    def _check_stored(
        self,
        expected: dict[int, list[tuple[tuple[str, str], _Row]]],
        rows: dict[str, _Row],
    ) -> None:
        """Compare each conversation, read with the store's own driver, with the turns
        of the runs that wrote (or had to)."""
        history = ChatHistory(self.inner, namespace=self.namespace)
        owner = {t: rows[self.stages[r.stage].switch] for r in self.runs for t in r.turns}
        for conversation in range(self.conversations):
            stored = [(t.role, str(t.content)) for t in history.read(self.key(conversation))]
            counts = Counter(stored)
            wanted = expected.get(conversation, [])
            for turn, row in wanted:
                if counts[turn] == 0:
                    row.lost += 1
                elif counts[turn] > 1:
                    row.problem("store", f"{counts[turn] - 1} turn stored twice")
            known = {turn for turn, _ in wanted}
            for turn in stored:
                if turn not in known:
                    writer = owner.get(turn)
                    where = f"{writer.name}: " if writer is not None else ""
                    self.problems.append(f"{where}a turn stored that no run wrote")
            order = [t for t in dict.fromkeys(stored) if t in known]
            present = [t for t, _ in wanted if counts[t]]
            if order != present:
                self.problems.append(f"{self.key(conversation)}: turns stored out of order")

    def _check_audit(self, rows: dict[str, _Row]) -> None:
        """Each flip and each return is in the audit file: the flip's line after the
        flip began, the return's after the return (or the first probe) began."""
        try:
            with open(self.audit_path, "rb") as handle:
                data = handle.read()
        except OSError:
            data = b""
        for name, row in rows.items():
            stages = [s for s in self.stages if s.switch == name]
            later = [s for s in self.stages if s.switch != name and s.started > stages[0].started]
            end = later[0].audit_offset if later else len(data)
            flip = next((s for s in stages if s.part == "flip"), None)
            back = next((s for s in stages if s.part in ("probe", "return")), None)
            for part, stage in (("flip", flip), ("return", back)):
                wanted = _AUDITED.get((name, part))
                if wanted is None or stage is None:
                    continue
                lines = data[stage.audit_offset : end].splitlines()
                if not any(_audits(orjson.loads(line), *wanted) for line in lines):
                    row.problems.append(f"{part} not in the audit file")


def _audits(entry: Any, change: str, source: str, after: Any) -> bool:
    return (
        isinstance(entry, dict)
        and entry.get("change") == change
        and source in str(entry.get("source", "")).split("+")
        and entry.get("after") == after
    )


_AUDITED: dict[tuple[str, str], tuple[str, str, Any]] = {
    ("off", "flip"): ("mode", "env", "off"),
    ("off", "return"): ("mode", "env", "read_write"),
    ("read_only", "flip"): ("mode", "env", "read_only"),
    ("read_only", "return"): ("mode", "env", "read_write"),
    ("shadow", "flip"): ("mode", "env", "shadow"),
    ("shadow", "return"): ("mode", "env", "read_write"),
    ("disabled_node", "flip"): ("disabled_nodes", "env", [NODE_NAME]),
    ("disabled_node", "return"): ("disabled_nodes", "env", []),
    ("flags_file", "flip"): ("mode", "flags_file", "read_only"),
    ("flags_file", "return"): ("mode", "flags_file", "read_write"),
    ("breaker_open", "flip"): ("breaker_state", "breaker", "open"),
    ("breaker_open", "return"): ("breaker_state", "breaker", "closed"),
    ("latency_trigger", "flip"): ("trigger", "trigger", "off"),
    ("latency_trigger", "return"): ("trigger", "trigger", "read_write"),
}
"""(switch, part) -> the audit line it must produce: (change, a source, after)."""


@dataclass(slots=True)
class _Row:
    name: str
    effect_ms: float | None = None
    runs: int = 0
    failed: int = 0
    lost: int = 0
    problems: list[str] = field(default_factory=list)
    _counts: Counter[tuple[str, str]] = field(default_factory=Counter)

    def effect(self, seconds: float) -> None:
        if self.effect_ms is None:
            self.effect_ms = max(0.0, seconds * 1000)

    def problem(self, part: str, what: str) -> None:
        self._counts[(part, what)] += 1

    def result(self) -> SwitchResult:
        problems = list(self.problems)
        for (part, what), count in self._counts.items():
            when = {"flip": "", "probe": " after the cool-down", "return": " after the return"}
            runs = "1 run" if count == 1 else f"{count} runs"
            if part == "store":
                problems.append(what if count == 1 else f"{count}x {what}")
            else:
                problems.append(f"{runs} {what}{when.get(part, '')}")
        return SwitchResult(
            self.name, self.effect_ms, self.runs, self.failed, self.lost, tuple(problems)
        )


def _judge(
    run: _Run,
    allowed: tuple[_Behaviour, ...],
    log: list[tuple[str, str]],
    own: _Behaviour,
) -> tuple[_Behaviour | None, str | None]:
    """The first allowed behaviour the run shows, or why it does not show ``own`` (what
    the stage it started in expects)."""
    for behaviour in allowed:
        if _differs(run, behaviour, log) is None:
            return behaviour, None
    return None, _differs(run, own, log) or "behaved unexpectedly"


def _differs(run: _Run, behaviour: _Behaviour, log: list[tuple[str, str]]) -> str | None:
    """Why ``run`` does not show ``behaviour`` (None when it does)."""
    calls = run.calls
    if run.error is not None:
        return f"raised {run.error}"
    if len(run.payloads) != 1:
        return f"called the model {len(run.payloads)} times"
    payload = run.payloads[0]
    bare = [run.user]
    if behaviour is _Behaviour.IN_MEMORY:
        if calls.total:
            return "touched the store"
        return None if payload == bare else "sent stored turns to the model"
    if not calls.reads:
        return "did not read the store"
    if behaviour is _Behaviour.READ_ONLY and calls.writes:
        return "wrote the store"
    if behaviour in _WRITES and not calls.writes:
        return "did not write the store"
    if behaviour is _Behaviour.SHADOW:
        if payload != bare:
            return "sent stored turns to the model"
        differs = run.reports[-1].shadow_difference if run.reports else None
        return None if differs is bool(log) else "reported no shadow difference"
    if payload != [*log, run.user]:
        return "did not see every stored turn"
    return None


# --- clean-up and logs ------------------------------------------------------------------------


def _remove_namespace(store: BaseStore, namespace: tuple[str, ...], keys: Iterable[str]) -> bool:
    """Delete every conversation and any other item under ``namespace``; True when
    nothing is left."""
    history = ChatHistory(store, namespace=namespace)
    for key in {*keys, *history.keys()}:
        history.delete(key)
    for _ in range(1000):
        items = store.search(namespace, limit=100)
        if not items:
            break
        for item in items:
            store.delete(item.namespace, item.key)
    return not store.list_namespaces(prefix=namespace, limit=1)


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


# --- the entry point ------------------------------------------------------------------------


def run_drill(
    store: BaseStore,
    *,
    conversations: int = 3,
    runs_per_switch: int = 3,
    latency_seconds: float = 0.1,
    stage_timeout_seconds: float = 30.0,
) -> DrillReport:
    """Run the rollback drill against ``store`` in a scratch namespace (see the module).

    The namespace is removed afterwards, also when the drill fails or is interrupted.

    Args:
        store: A set-up sync graph store (the configured one, e.g. from
            `create_graph_store_sync`).
        conversations: Conversations in the workload, run round-robin.
        runs_per_switch: Runs waited for under each switch and after each return (at
            least one per conversation).
        latency_seconds: Latency injected into each store call to fire the read p95
            trigger (its threshold is half of it).
        stage_timeout_seconds: Longest wait for the workload to make progress.

    Returns:
        The `DrillReport`: one `SwitchResult` per switch, ``ok`` when all passed.
    """
    if conversations < 1 or runs_per_switch < 1:
        raise ValueError("conversations and runs_per_switch must be >= 1")
    if not latency_seconds > 0 or not stage_timeout_seconds > 0:
        raise ValueError("latency_seconds and stage_timeout_seconds must be > 0")
    workdir = tempfile.mkdtemp(prefix="agent-history-drill-")
    threads: set[int | None] = {threading.get_ident()}
    drill: _Drill | None = None
    removed = False
    problems: list[str] = []
    try:
        drill = _Drill(
            store,
            conversations=conversations,
            runs_per_switch=runs_per_switch,
            latency_seconds=latency_seconds,
            stage_timeout=stage_timeout_seconds,
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
    finally:
        try:
            keys = [drill.key(c) for c in range(conversations)] if drill else []
            namespace = drill.namespace if drill else ()
            removed = bool(namespace) and _remove_namespace(store, namespace, keys)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    assert drill is not None
    return DrillReport(
        backend=backend_of(store),
        namespace=drill.namespace,
        conversations=conversations,
        runs=len(drill.runs),
        seconds=drill._now(),
        switches=tuple(rows),
        namespace_removed=removed,
        problems=(*problems, *drill.problems),
    )
