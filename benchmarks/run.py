"""Store-latency benchmark suite: ``python -m benchmarks.run [--quick | --smoke] [--out DIR]``.

Measures, per backend (memory, SQLite file, PostgreSQL started for the run), tail-read and
append latency against history length for our `ChatHistory`, the naive one-item history,
langchain-postgres and a raw-table floor; concurrent writers; and the history's share of
a full `AgentNode` turn. Writes ``results.json``, ``results.md`` and PNG plots to the
output directory and prints the Markdown summary.

Exit status: 0 when every requested backend was measured (a MISS never fails the run);
1 when one could not be measured or a measurement failed (nothing is written then);
2 for a bad option; 130 after Ctrl-C and 143 after SIGTERM (everything started is
stopped and removed first).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent_history.redaction import safe_error_text
from benchmarks.agent_turn import run_agent_overhead
from benchmarks.analysis import PERSISTENT, evaluate_targets, ratios
from benchmarks.backends import (
    BackendRun,
    BackendUnavailable,
    bench_namespace,
    check_postgres,
    open_backend,
    postgres_target,
)
from benchmarks.concurrency import run_concurrency
from benchmarks.context_tail import context_targets, render_context, run_context_tail
from benchmarks.facts import machine_facts
from benchmarks.latency import run_latency, run_store_primitives
from benchmarks.modes import MODES, BenchConfig
from benchmarks.options import add_target_options, target_problem
from benchmarks.output import RESULT_FILES, OutputError, check_out_dir, publish
from benchmarks.plots import plot_latency
from benchmarks.report import render_markdown
from benchmarks.signals import TERMINATED_EXIT, Terminated, sigterm_exits

__all__ = ["DEFAULT_OUT", "main"]

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
PROG = "python -m benchmarks.run"

_NOTES = (
    "Latency targets are judged on sqlite and postgres. The in-memory store hands out "
    "references, so there the naive list costs no serialisation and the floor is a bare "
    "Python list: those ratios are shown for information.",
    "Append cells rotate over conversations of the cell's length, built untimed, so none "
    "grows by more than 5% (a 10-turn conversation takes a single append: 10 -> 12).",
    "The floor numbers its rows from the indexed max(seq) in the INSERT itself; its tail "
    "is one indexed ORDER BY seq DESC LIMIT query. Every system's tail returns LangChain "
    "messages built with the same constructor as ours (langchain-postgres builds its own). "
    "Our tail is one query on SQLite and PostgreSQL (head and newest chunks); through "
    "plain BaseStore calls (ours-basestore) it is two store calls, head then chunks.",
    "Concurrent writers are separate processes (one store each), started once per backend; "
    "a run's wall time runs from a common start to the last writer's end.",
    "PostgreSQL runs ANALYZE on LangGraph's store table (untimed) once every conversation "
    "is loaded, the steady state autovacuum reaches on a live server. Without statistics the planner may serve LangGraph's "
    "store GET query by scanning every item of the conversation's namespace, so store "
    "reads grow with the conversation until autovacuum has analyzed the table.",
)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__)
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--quick", action="store_true", help="same lengths, fewer repetitions (< 2 min)"
    )
    size.add_argument(
        "--smoke", action="store_true", help="tiny run for tests: lengths 10 and 100, 3 reps"
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})"
    )
    add_target_options(parser)
    return parser.parse_args(argv)


def _option_problem(args: argparse.Namespace) -> str | None:
    """A bad option found before anything is measured, as one line; None when all fit."""
    problem = target_problem(args)
    if problem:
        return problem
    try:
        check_out_dir(args.out)
    except OutputError as exc:
        return str(exc)
    return None


def _measure_backend(run: BackendRun, cfg: BenchConfig, results: dict[str, Any]) -> None:
    results["store_primitives"] += run_store_primitives(run, cfg, _log)
    results["latency"] += run_latency(run, cfg, _log)
    results["context_tail"] += run_context_tail(run, cfg, _log)
    if run.name in PERSISTENT:
        results["concurrency"] += run_concurrency(run, cfg, _log)
    rows, note = run_agent_overhead(run, cfg, _log)
    results["agent_node"]["rows"] += rows
    if note and note not in results["agent_node"]["notes"]:
        _log(note)
        results["agent_node"]["notes"].append(note)


def _run_all(args: argparse.Namespace, cfg: BenchConfig, results: dict[str, Any]) -> None:
    meta = results["meta"]
    namespace = tuple(meta["namespace"])
    with tempfile.TemporaryDirectory(prefix="agent-history-bench-") as tmp:
        for name in args.backends:
            _log(f"== {name} ==")
            # One stack per backend: a throwaway PostgreSQL server is removed as soon as
            # its backend is done, even when a measurement fails.
            with ExitStack() as stack:
                dsn = None
                if name == "postgres":
                    target = stack.enter_context(postgres_target(args.postgres_dsn))
                    dsn = target.dsn
                    meta["postgres_version"] = target.version
                    meta["postgres_started_here"] = target.started_here
                run = stack.enter_context(
                    open_backend(name, Path(tmp), cfg, dsn, namespace=namespace, log=_log)
                )
                _measure_backend(run, cfg, results)


def _measure(args: argparse.Namespace, mode: str) -> dict[str, Any]:
    """Measure every requested backend and derive ratios and verdicts."""
    cfg = MODES[mode]
    started = time.perf_counter()
    results: dict[str, Any] = {
        "meta": {
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "mode": mode,
            "config": cfg.as_dict(),
            "backends": args.backends,
            "namespace": list(bench_namespace()),
            "postgres_version": None,
            "postgres_started_here": None,
            **machine_facts(),
        },
        "store_primitives": [],
        "latency": [],
        "concurrency": [],
        "context_tail": [],
        "agent_node": {"rows": [], "notes": []},
        "notes": list(_NOTES),
    }
    _log(f"agent-history store-latency benchmark, {mode} mode, backends {args.backends}")
    if "postgres" in args.backends:
        check_postgres(args.postgres_dsn)  # before anything is measured
    _run_all(args, cfg, results)

    results["ratios"] = ratios(results["latency"], cfg.tail_n)
    measured = list(dict.fromkeys(r["backend"] for r in results["latency"]))
    results["targets"] = evaluate_targets(
        results["latency"], results["concurrency"], measured
    ) + context_targets(results["context_tail"])
    results["meta"]["duration_s"] = time.perf_counter() - started
    return results


def _summary(results: dict[str, Any]) -> str:
    """results.md: the summary, then the context tail's section (its verdicts are in
    the Targets block with the others)."""
    context = render_context(results["context_tail"], with_verdicts=False)
    return render_markdown(results) + ("\n" + context if context else "")


def _write(out: Path, results: dict[str, Any]) -> str:
    """Write the plots, results.json and results.md into ``out`` all at once."""
    summary = ""

    def write(staging: Path) -> None:
        nonlocal summary
        results["plots"] = [p.name for p in plot_latency(results["latency"], staging)]
        summary = _summary(results)
        (staging / "results.json").write_text(json.dumps(results, indent=1) + "\n")
        (staging / "results.md").write_text(summary)

    publish(out, write)
    return summary


def _failed(exc: BaseException, dsn: str | None) -> None:
    """Report an unexpected error: where it happened, and what it was in words that
    carry no data and no secret (a driver's message can quote the DSN)."""
    _log("Traceback (most recent call last):")
    _log("".join(traceback.format_tb(exc.__traceback__)).rstrip())
    _log(f"benchmark failed: {safe_error_text(exc, dsn)}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the suite; return the process exit code (targets never fail the run)."""
    args = _parse(argv)
    problem = _option_problem(args)
    if problem:
        _log(f"{PROG}: error: {problem}")
        return 2
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    out: Path = args.out
    kept = f"nothing written to {out}"
    with sigterm_exits():
        try:
            results = _measure(args, mode)
            summary = _write(out, results)
        except BackendUnavailable as exc:
            _log(f"postgres not measured: {exc}; {kept}")
            return 1
        except KeyboardInterrupt:
            _log(f"interrupted; {kept}")
            return 130
        except Terminated:
            _log(f"terminated (SIGTERM); {kept}")
            return TERMINATED_EXIT
        except Exception as exc:
            _failed(exc, args.postgres_dsn)
            _log(kept)
            return 1
    print(summary)
    names = ", ".join(str(out / name) for name in RESULT_FILES)
    _log(f"wrote {names} and {len(results['plots'])} plots")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
