"""The window under a token budget against history length: what one `AgentNode` pass with
``max_tokens`` and a running summary reads and cuts, at 10, 1k and 100k stored turns.

Part of ``python -m benchmarks.run``; alone: ``python -m benchmarks.context_tail [--quick]
[--backends memory,sqlite,postgres] [--postgres-dsn DSN]``, with the same checks of
its options as the main runner.

Each call reads the summary and the newest turns after it, chunk by chunk from the
newest until the token budget is full (`ChatHistory.tail_context` with a `WindowFill`),
then cuts the tool-call-safe window under the budget (`messages.window`). Its cost must
not grow with the conversation: the target is p50 at 100k within 1.2x of p50 at 1k.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from functools import partial
from pathlib import Path
from typing import Any

from langchain_core.messages import HumanMessage, SystemMessage
from langchain_core.messages.utils import count_tokens_approximately

from agent_history.context import WindowFill, summary_message
from agent_history.history import ChatHistory
from agent_history.messages import window
from benchmarks.backends import (
    BackendRun,
    BackendUnavailable,
    open_backend,
    postgres_target,
)
from benchmarks.formatting import ms, ratio, table
from benchmarks.measure import quiet_gc, summarize
from benchmarks.modes import MODES, BenchConfig
from benchmarks.options import add_target_options, target_problem
from benchmarks.signals import TERMINATED_EXIT, Terminated, sigterm_exits
from benchmarks.systems import OURS, OursSystem

__all__ = [
    "CONTEXT_LENGTHS",
    "MAX_TOKENS",
    "TARGET",
    "TARGET_RATIO",
    "context_targets",
    "render_context",
    "run_context_tail",
    "verdicts",
]

CONTEXT_LENGTHS = (10, 1_000, 100_000)
"""History lengths measured (the smoke run uses its own short lengths)."""
MAX_TOKENS = 600
"""The token budget of the payload: with 100-character turns, about 20 turns."""
TARGET_RATIO = 1.2
"""p50 at the longest length over p50 at 1k may be at most this."""
TARGET = "flat context tail"
"""The target's name in results.json and in the verdict lines."""
_SUMMARY_BEHIND = 40
"""The summary covers all but this many newest turns (a summary updated a while ago)."""

Log = Callable[[str], None]
Row = dict[str, Any]


def _lengths(cfg: BenchConfig) -> tuple[int, ...]:
    return cfg.lengths if cfg.mode == "smoke" else CONTEXT_LENGTHS


def _prepare(run: BackendRun, length: int) -> tuple[ChatHistory, str]:
    """A conversation of ``length`` turns whose summary covers all but the newest 40."""
    system = run.system(OURS)
    assert isinstance(system, OursSystem)
    history = system.history
    key = f"bench-context-{length}-{uuid.uuid4().hex[:8]}"
    system.load(key, length)
    if length > _SUMMARY_BEHIND:
        text = "The user asked about the weather in several cities. " * 8
        history.write_summary(key, text, length - _SUMMARY_BEHIND, base_version=0)
    return history, key


def _pass(history: ChatHistory, key: str, cfg: BenchConfig) -> int:
    """One pass's context work: read the summary and the window, cut it under the budget.
    Returns the turns the window keeps."""
    fill = WindowFill(MAX_TOKENS, count_tokens_approximately, history.to_messages)
    read = history.tail_context(key, cfg.tail_n, with_summary=True, enough=fill)
    before = [SystemMessage("You are a test.")]
    if read.summary is not None:
        before.append(summary_message(read.summary))
    reserved = count_tokens_approximately(before)
    messages = [*history.to_messages(read.turns, key), HumanMessage("and now?")]
    kept = window(
        messages,
        cfg.tail_n,
        max_tokens=MAX_TOKENS,
        token_counter=count_tokens_approximately,
        reserved_tokens=reserved,
    )
    assert count_tokens_approximately([*before, *kept]) <= MAX_TOKENS
    return len(kept) - 1


def _interleaved(calls: dict[int, Callable[[], object]], cfg: BenchConfig) -> dict[int, list[int]]:
    """Time every length's call in turn, repetition after repetition, so a change in the
    host's load during the run weighs on all lengths alike (a ratio between lengths is
    what is judged). Durations in nanoseconds per length."""
    for _ in range(cfg.warmup):
        for call in calls.values():
            call()
    samples: dict[int, list[int]] = {length: [] for length in calls}
    started = time.perf_counter()
    budget = cfg.cell_budget_s * len(calls)
    with quiet_gc():
        for rep in range(cfg.reps):
            if rep >= cfg.min_reps and time.perf_counter() - started > budget:
                break
            for length, call in calls.items():
                t0 = time.perf_counter_ns()
                call()
                samples[length].append(time.perf_counter_ns() - t0)
    return samples


def run_context_tail(run: BackendRun, cfg: BenchConfig, log: Log) -> list[Row]:
    """Time one pass's context read and cut at every length, conversations loaded first."""
    if run.system(OURS) is None:
        return []
    prepared = {length: _prepare(run, length) for length in _lengths(cfg)}
    run.settle()
    calls: dict[int, Callable[[], object]] = {
        length: partial(_pass, history, key, cfg) for length, (history, key) in prepared.items()
    }
    rows: list[Row] = []
    for length, samples in _interleaved(calls, cfg).items():
        stats = summarize(samples)
        history, key = prepared[length]
        kept = _pass(history, key, cfg)
        rows.append(
            {
                "backend": run.name,
                "length": length,
                "max_tokens": MAX_TOKENS,
                "window_turns": kept,
                **stats.as_dict(),
            }
        )
        log(
            f"[{run.name}] context tail len {length:>6}: p50 {stats.p50_ms:.3f} ms, "
            f"p95 {stats.p95_ms:.3f} ms, window {kept} turns (n={stats.n})"
        )
    return rows


def verdicts(rows: list[Row]) -> list[Row]:
    """Per backend: p50 at the longest length over p50 at 1k, against `TARGET_RATIO`."""
    found = []
    for backend in dict.fromkeys(r["backend"] for r in rows):
        by = {r["length"]: r for r in rows if r["backend"] == backend}
        longest = max(by)
        base = by.get(1_000)
        if base is None or longest <= 1_000:
            found.append({"backend": backend, "status": "SKIP", "ratio": None})
            continue
        value = by[longest]["p50_ms"] / base["p50_ms"]
        status = "PASS" if value <= TARGET_RATIO else "MISS"
        found.append({"backend": backend, "status": status, "ratio": value, "longest": longest})
    return found


def _detail(verdict: Row) -> str:
    if verdict["ratio"] is None:
        return "needs lengths 1,000 and more"
    return (
        f"p50 at {verdict['longest']:,} / p50 at 1,000 = {ratio(verdict['ratio'])} "
        f"(target <= {TARGET_RATIO}x)"
    )


def context_targets(rows: list[Row]) -> list[Row]:
    """The verdicts as target rows, shaped like `analysis.evaluate_targets`' (results.json
    ``targets``, the Targets block of results.md)."""
    return [
        {
            "target": TARGET,
            "backend": v["backend"],
            "value": v["ratio"],
            "threshold": TARGET_RATIO,
            "status": v["status"],
            "detail": _detail(v),
        }
        for v in verdicts(rows)
    ]


def render_context(rows: list[Row], *, with_verdicts: bool = True) -> str:
    """The Markdown section of the results summary; ``with_verdicts=False`` leaves out
    the verdict lines (a full run lists them with its other targets)."""
    if not rows:
        return ""
    lengths = sorted({r["length"] for r in rows})
    by = {(r["backend"], r["length"]): r for r in rows}
    body = []
    for backend in dict.fromkeys(r["backend"] for r in rows):
        cells = [
            f"{ms(by[backend, n]['p50_ms'])} / {ms(by[backend, n]['p95_ms'])}"
            if (backend, n) in by
            else "-"
            for n in lengths
        ]
        body.append([backend, *cells])
    lines = [
        "## Tail under a token budget (p50 / p95 ms)",
        "",
        f"One pass's context work with `max_tokens={MAX_TOKENS}` and a running summary: read "
        "the summary and the newest turns after it, chunk by chunk until the budget is "
        "full, and cut the tool-call-safe window (`benchmarks/context_tail.py`).",
        "",
        table(["backend", *(f"{n:,}" for n in lengths)], body),
        "",
    ]
    if with_verdicts:
        lines.append("```")
        for t in context_targets(rows):
            lines.append(f"{t['status']:<4}  {t['backend']:<8}  {TARGET}: {t['detail']}")
        lines += ["```", ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Measure the context tail alone and print its Markdown section (exit status as
    ``python -m benchmarks.run``'s)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.context_tail")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    add_target_options(parser)
    args = parser.parse_args(argv)
    cfg = MODES["quick" if args.quick else "full"]
    problem = target_problem(args)
    if problem:
        print(f"{parser.prog}: error: {problem}", file=sys.stderr)
        return 2
    dsn_option: str | None = args.postgres_dsn

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    rows: list[Row] = []
    with sigterm_exits():
        try:
            with tempfile.TemporaryDirectory(prefix="agent-history-context-") as tmp:
                for name in args.backends:
                    with ExitStack() as stack:
                        dsn = None
                        if name == "postgres":
                            dsn = stack.enter_context(postgres_target(dsn_option)).dsn
                        run = stack.enter_context(open_backend(name, Path(tmp), cfg, dsn, log=log))
                        rows += run_context_tail(run, cfg, log)
        except BackendUnavailable as exc:
            log(f"postgres not measured: {exc}")
            return 1
        except KeyboardInterrupt:
            return 130
        except Terminated:
            return TERMINATED_EXIT
    print(render_context(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
