"""The checks of the rollback drill (`agent_history.drill`), without I/O: what each run
must show under each switch, and what the store and the audit file must hold at the end.

A run is judged by what it did, seen from outside the library: its store calls (counted
by the drill's store wrapper) and the payload the model received.

- ``read_write``: it read and wrote, and the model saw every turn stored so far in its
  conversation, then the new message (continuity: nothing lost, nothing twice);
- ``read_only``: it read and did not write; the model saw the stored turns;
- ``shadow``: it read and wrote; the model saw only the new message; the run reported a
  shadow difference when its conversation had stored turns;
- ``in_memory`` (``off``, a disabled node, an open breaker, a fired trigger): no store
  call; the model saw only the new message.

A run in flight while a switch flips may show what either stage allows. At the end, every
turn of a run that wrote, or had to, must be stored exactly once, in order; each flip and
each return must be in the audit file.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import orjson

__all__ = [
    "ANSWER_PREFIX",
    "AUDITED",
    "NODE_NAME",
    "Behaviour",
    "Run",
    "Stage",
    "StoreCalls",
    "SwitchResult",
    "judge",
]

ANSWER_PREFIX = "echo: "
"""What the drill's model puts before the user's text in its answer."""
NODE_NAME = "drill_agent"
"""The drill graph's node: the name the disabled-node switch lists."""


class Behaviour(StrEnum):
    """What a run did with the store and the payload."""

    READ_WRITE = "read_write"
    READ_ONLY = "read_only"
    SHADOW = "shadow"
    IN_MEMORY = "in_memory"


_WRITING = frozenset({Behaviour.READ_WRITE, Behaviour.SHADOW})


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


@dataclass(frozen=True, slots=True)
class Stage:
    """A stretch of the drill with one expectation; each flip or return starts one."""

    switch: str
    """The row it belongs to: ``baseline`` or a switch name."""
    part: str
    """``baseline``, ``flip``, ``probe`` (a cool-down ended) or ``return``."""
    allowed: tuple[Behaviour, ...]
    """What a run that starts and ends in it may show; the last is the switch's effect."""
    started: float
    """Seconds since the drill began (for a flip: when flipping began)."""
    audit_offset: int
    """Size of the audit file when it began."""
    gradual: bool = False
    """The effect shows after some runs (a trigger), then holds."""


@dataclass(slots=True)
class Run:
    """One callback the workload ran, and what it did."""

    index: int
    conversation: int
    text: str
    """The user's message (unique in the drill)."""
    stage: int
    """The stage it started in."""
    started: float
    calls: StoreCalls
    end_stage: int = -1
    """The stage it ended in."""
    ended: float = 0.0
    payloads: list[list[tuple[str, str]]] = field(default_factory=list)
    """What the model received, as (role, text), once per model call."""
    shadow_difference: bool | None = None
    """From the run's `HistoryReport`."""
    answered: bool = False
    """The run returned the model's answer."""
    error: str | None = None
    """The class of the exception the run raised."""

    @property
    def failed(self) -> bool:
        """It raised or did not answer."""
        return self.error is not None or not self.answered

    @property
    def user(self) -> tuple[str, str]:
        """The user's message as (role, text)."""
        return ("user", self.text)

    @property
    def turns(self) -> list[tuple[str, str]]:
        """The turns it stores when it writes."""
        return [self.user, ("assistant", ANSWER_PREFIX + self.text)]


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


AUDITED: dict[tuple[str, str], tuple[str, str, Any]] = {
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
"""(switch, part) -> the audit line it must produce: (change, one of its sources, after)."""

_WHEN = {"probe": " after the cool-down", "return": " after the return"}


@dataclass(slots=True)
class _Row:
    name: str
    effect_ms: float | None = None
    runs: int = 0
    failed: int = 0
    lost: int = 0
    problems: list[str] = field(default_factory=list)
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(stage part, problem) -> runs."""

    def effect(self, seconds: float) -> None:
        if self.effect_ms is None:
            self.effect_ms = max(0.0, seconds * 1000)

    def result(self) -> SwitchResult:
        problems = list(self.problems)
        for (part, what), count in self.counts.items():
            runs = "1 run" if count == 1 else f"{count} runs"
            problems.append(f"{runs} {what}{_WHEN.get(part, '')}")
        return SwitchResult(
            self.name, self.effect_ms, self.runs, self.failed, self.lost, tuple(problems)
        )


def judge(
    stages: Sequence[Stage],
    runs: Sequence[Run],
    stored: Mapping[int, Sequence[tuple[str, str]]],
    audit: bytes,
) -> tuple[list[SwitchResult], list[str]]:
    """Judge a drill.

    Args:
        stages: Every stage, in order.
        runs: Every run, in the order the workload ran them.
        stored: Per conversation, its stored turns as (role, text), read at the end.
        audit: The audit file's content.

    Returns:
        One row per switch reached (the baseline first), and the problems that belong to
        no row.
    """
    rows: dict[str, _Row] = {}
    for stage in stages:
        rows.setdefault(stage.switch, _Row(stage.switch))
    written: dict[int, list[tuple[str, str]]] = {}
    expected: dict[int, list[tuple[tuple[str, str], _Row]]] = {}
    holding: set[int] = set()
    for run in runs:
        stage = stages[run.stage]
        row = rows[stage.switch]
        log = written.setdefault(run.conversation, [])
        allowed = _allowed(stages, run)
        own = stage.allowed[-1]
        gradual = stage.gradual and run.end_stage == run.stage
        if gradual and run.stage in holding:
            own = Behaviour.IN_MEMORY  # once the trigger acted, it holds
            allowed = (own,)
        shown, problem = _judge_run(run, allowed, log, own)
        if stage.part in ("baseline", "flip"):
            row.runs += 1
        if stage.part == "flip" and shown is not None and shown is stage.allowed[-1]:
            row.effect(run.started - stage.started)
            if gradual:
                holding.add(run.stage)
        if problem is not None:
            row.counts[(stage.part, problem)] += 1
        if run.failed:
            row.failed += 1
        wrote = run.calls.writes > 0 and run.error is None
        if wrote:
            log.extend(run.turns)
        if wrote or all(b in _WRITING for b in allowed):
            expected.setdefault(run.conversation, []).extend((t, row) for t in run.turns)
    problems = _check_stored(runs, stages, rows, expected, stored)
    _check_audit(stages, rows, audit)
    results = []
    for row in rows.values():
        if row.name != "baseline" and row.effect_ms is None:
            row.problems.insert(0, "no run showed the effect")
        results.append(row.result())
    return results, problems


def _allowed(stages: Sequence[Stage], run: Run) -> tuple[Behaviour, ...]:
    """What the stages the run overlapped allow, the stage it started in first."""
    allowed: list[Behaviour] = []
    for stage in stages[run.stage : run.end_stage + 1]:
        allowed += [b for b in stage.allowed if b not in allowed]
    return tuple(allowed)


def _judge_run(
    run: Run, allowed: tuple[Behaviour, ...], log: list[tuple[str, str]], own: Behaviour
) -> tuple[Behaviour | None, str | None]:
    """The first allowed behaviour the run shows, or why it does not show ``own`` (what
    the stage it started in expects)."""
    for behaviour in allowed:
        if _differs(run, behaviour, log) is None:
            return behaviour, None
    return None, _differs(run, own, log) or "behaved unexpectedly"


def _differs(run: Run, behaviour: Behaviour, log: list[tuple[str, str]]) -> str | None:
    """Why ``run`` does not show ``behaviour`` (None when it does); ``log`` holds the
    turns stored in its conversation before it."""
    calls = run.calls
    if run.error is not None:
        return f"raised {run.error}"
    if len(run.payloads) != 1:
        return f"called the model {len(run.payloads)} times"
    payload = run.payloads[0]
    bare = [run.user]
    if behaviour is Behaviour.IN_MEMORY:
        if calls.total:
            return "touched the store"
        return None if payload == bare else "sent stored turns to the model"
    if not calls.reads:
        return "did not read the store"
    if behaviour is Behaviour.READ_ONLY and calls.writes:
        return "wrote the store"
    if behaviour in _WRITING and not calls.writes:
        return "did not write the store"
    if behaviour is Behaviour.SHADOW:
        if payload != bare:
            return "sent stored turns to the model"
        return None if run.shadow_difference is bool(log) else "reported no shadow difference"
    if payload != [*log, run.user]:
        return "did not see every stored turn"
    return None


def _check_stored(
    runs: Sequence[Run],
    stages: Sequence[Stage],
    rows: dict[str, _Row],
    expected: dict[int, list[tuple[tuple[str, str], _Row]]],
    stored: Mapping[int, Sequence[tuple[str, str]]],
) -> list[str]:
    """Every turn a run wrote, or had to, is stored once and in order: a missing one is
    lost (counted on the row of the run), one stored twice is a problem."""
    problems: list[str] = []
    owner = {t: rows[stages[r.stage].switch] for r in runs for t in r.turns}
    for conversation, turns in stored.items():
        counts = Counter(turns)
        wanted = expected.get(conversation, [])
        for turn, row in wanted:
            if counts[turn] == 0:
                row.lost += 1
            elif counts[turn] > 1:
                row.problems.append(f"a turn stored {counts[turn]} times")
        known = {turn for turn, _ in wanted}
        for turn in turns:
            if turn not in known:
                writer = owner.get(turn)
                where = f"{writer.name}: " if writer is not None else ""
                problems.append(f"{where}a turn stored that no run wrote")
        order = [t for t in dict.fromkeys(turns) if t in known]
        if order != [t for t, _ in wanted if counts[t]]:
            problems.append(f"conversation {conversation + 1}: turns stored out of order")
    return problems


def _check_audit(stages: Sequence[Stage], rows: dict[str, _Row], audit: bytes) -> None:
    """Each flip and each return is in the audit file: the flip's line after the flip
    began, the return's after the return (or the first probe) began."""
    for name, row in rows.items():
        own = [s for s in stages if s.switch == name]
        later = [s for s in stages if s.switch != name and s.started > own[0].started]
        end = later[0].audit_offset if later else len(audit)
        flip = next((s for s in own if s.part == "flip"), None)
        back = next((s for s in own if s.part in ("probe", "return")), None)
        for part, stage in (("flip", flip), ("return", back)):
            wanted = AUDITED.get((name, part))
            if wanted is None or stage is None:
                continue
            lines = audit[stage.audit_offset : end].splitlines()
            if not any(_audits(orjson.loads(line), *wanted) for line in lines):
                row.problems.append(f"{part} not in the audit file")


def _audits(entry: Any, change: str, source: str, after: Any) -> bool:
    return (
        isinstance(entry, dict)
        and entry.get("change") == change
        and source in str(entry.get("source", "")).split("+")
        and entry.get("after") == after
    )
