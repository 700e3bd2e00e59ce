"""Concurrent writers in separate processes: throughput and lost turns, on one shared key
and on distinct keys.

Each writer is a process of its own (one interpreter, one store opened from the run's
settings, as a worker of a service would), so writers are limited by the database and
the machine's cores, not by one interpreter lock. The processes are started once per
backend and reused by every run; a run tells its writers a common start time, and its
wall time runs from that start to the last writer's end. Whatever ends the measurement
(an error, Ctrl-C, SIGTERM), the writers are stopped and joined before it goes on, and a
writer whose parent has gone (killed outright) stops by itself.
"""

from __future__ import annotations

import multiprocessing
import queue
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from langgraph.store.base import BaseStore

from agent_history.history import ChatHistory
from agent_history.redaction import safe_error_text
from agent_history.settings import HistorySettings
from agent_history.stores import create_graph_store_sync
from benchmarks.backends import BackendRun
from benchmarks.modes import BenchConfig
from benchmarks.naive_history import NaiveHistory
from benchmarks.systems import NAIVE, OURS, HistorySystem
from benchmarks.workload import as_dict, turn_pair

__all__ = ["CONCURRENCY_SYSTEMS", "run_concurrency"]

CONCURRENCY_SYSTEMS = (OURS, NAIVE)
KEY_MODES = ("one_key", "distinct_keys")
_START_DELAY_S = 0.05
_RESULT_TIMEOUT_S = 600.0
_POLL_S = 0.5
"""How often a waiting writer checks its parent, and a waiting parent its writers."""
_STOP_TIMEOUT_S = 30.0

Log = Callable[[str], None]
Job = tuple[str, tuple[str, ...], str, int, int, float]


def _next_job(jobs: Any) -> Job | None:
    """The next job; None when told to stop or when the parent process has gone."""
    parent = multiprocessing.parent_process()
    while True:
        try:
            job: Job | None = jobs.get(timeout=_POLL_S)
        except queue.Empty:
            if parent is not None and not parent.is_alive():
                return None
            continue
        return job


def _writer_process(settings_values: dict[str, Any], jobs: Any, results: Any) -> None:
    """One writer: open the store, then run jobs until told to stop (None)."""
    settings = HistorySettings(**settings_values)
    dsn = settings.dsn if settings.postgres_dsn is not None else None
    stack = ExitStack()
    try:
        store = stack.enter_context(create_graph_store_sync(settings))
    except Exception as exc:
        results.put(("failed", safe_error_text(exc, dsn)))
        return
    with stack:
        results.put(("ready", None))
        while True:
            job = _next_job(jobs)
            if job is None:
                return
            system, namespace, key, appends, chars, start_at = job
            history = _history(store, system, namespace)
            errors: list[str] = []
            time.sleep(max(0.0, start_at - time.monotonic()))  # a common start
            started, cpu = time.monotonic(), time.process_time()
            for j in range(appends):
                try:
                    pair = turn_pair(f"{key}-{uuid.uuid4().hex[:6]}-{j}", chars)
                    history.append(key, pair if system == OURS else [as_dict(m) for m in pair])
                except Exception as exc:  # a failed append is a finding, not a crash
                    errors.append(safe_error_text(exc, dsn)[:200])
            results.put(("done", (started, time.monotonic(), time.process_time() - cpu, errors)))


class WriterPool:
    """``size`` writer processes on one backend (see the module)."""

    def __init__(self, settings: HistorySettings, size: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        values = settings.model_dump(mode="json")
        if settings.postgres_dsn is not None:
            values["postgres_dsn"] = settings.dsn
            # One writer per process: two pooled connections are plenty.
            values["postgres_pool_min_size"] = values["postgres_pool_max_size"] = 2
        self.results = ctx.Queue()
        self.jobs = [ctx.Queue() for _ in range(size)]
        self.procs = [
            ctx.Process(target=_writer_process, args=(values, q, self.results), daemon=True)
            for q in self.jobs
        ]
        try:
            for proc in self.procs:
                proc.start()
            for _ in self.procs:
                self._expect("ready")
        except BaseException:
            self.close(wait=False)
            raise

    def _expect(self, status: str) -> Any:
        """The next message from the writers, which must be ``status``. Waits while
        every writer is alive, up to `_RESULT_TIMEOUT_S`."""
        deadline = time.monotonic() + _RESULT_TIMEOUT_S
        while True:
            try:
                got, payload = self.results.get(timeout=_POLL_S)
            except queue.Empty:
                dead = [p.exitcode for p in self.procs if not p.is_alive()]
                if dead:
                    raise RuntimeError(f"a writer process ended (exit code {dead[0]})") from None
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"no writer answered within {_RESULT_TIMEOUT_S:g}s"
                    ) from None
                continue
            if got == "failed":
                raise RuntimeError(f"a writer process could not open its store: {payload}")
            if got != status:
                raise RuntimeError(f"a writer process answered {got!r} instead of {status!r}")
            return payload

    def run(self, system: str, namespace: tuple[str, ...], keys: list[str], appends: int,
            chars: int) -> list[tuple[float, float, float, list[str]]]:  # fmt: skip
        """Each of ``len(keys)`` writers appends ``appends`` turn pairs to its key."""
        start_at = time.monotonic() + _START_DELAY_S
        for jobs, key in zip(self.jobs, keys, strict=False):
            jobs.put((system, namespace, key, appends, chars, start_at))
        return [self._expect("done") for _ in keys]

    def close(self, *, wait: bool = True) -> None:
        """Stop every writer and join it: ``wait`` lets each finish its job first;
        otherwise (the run is failing or interrupted) they are terminated at once."""
        started = [p for p in self.procs if p.pid is not None]
        if wait:
            for jobs in self.jobs:
                jobs.put(None)
            deadline = time.monotonic() + _STOP_TIMEOUT_S
            for proc in started:
                proc.join(max(0.0, deadline - time.monotonic()))
        for proc in started:
            if proc.is_alive():
                proc.terminate()
        for proc in started:
            proc.join(_STOP_TIMEOUT_S)
            if proc.is_alive():
                proc.kill()
                proc.join()
        for q in (*self.jobs, self.results):
            q.close()
            q.cancel_join_thread()


@contextmanager
def writer_pool(settings: HistorySettings, size: int) -> Iterator[WriterPool]:
    pool = WriterPool(settings, size)
    try:
        yield pool
    except BaseException:
        pool.close(wait=False)
        raise
    pool.close()


def _history(store: BaseStore, system: str, namespace: tuple[str, ...]) -> Any:
    if system == OURS:
        return ChatHistory(store, namespace=namespace)
    return NaiveHistory(store, namespace=namespace)


def _count(store: BaseStore, system: str, namespace: tuple[str, ...], key: str) -> int:
    history = _history(store, system, namespace)
    return int(history.count(key)) if system == OURS else len(history.all(key))


def run_concurrency(run: BackendRun, cfg: BenchConfig, log: Log) -> list[dict[str, Any]]:
    """Every writer count x key mode for ours and naive on backend ``run``.

    Throughput counts the turns the writers attempted; what they lost is reported
    next to it, so a fast system that drops turns cannot look good.
    """
    if run.settings is None:
        return []
    rows: list[dict[str, Any]] = []
    with writer_pool(run.settings, max(cfg.writers)) as pool:
        for name in CONCURRENCY_SYSTEMS:
            system = run.system(name)
            if system is None:
                continue
            for key_mode in KEY_MODES:
                for writers in cfg.writers:
                    row = _writers_run(pool, run, system, writers, key_mode, cfg)
                    rows.append(row)
                    log(
                        f"[{run.name}] {name:<6} {writers:>2} writer processes "
                        f"{key_mode:<13}: {row['turns_per_s']:.0f} turns/s, client CPU "
                        f"{row['client_cpu_cores']:.2f} cores, lost {row['lost_turns']}, "
                        f"errors {row['errors']}"
                    )
    return rows


def _writers_run(
    pool: WriterPool,
    run: BackendRun,
    system: HistorySystem,
    writers: int,
    key_mode: str,
    cfg: BenchConfig,
) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    namespace = (*run.namespace, "concurrency", f"{system.name}_{tag}")
    keys = ["shared"] * writers if key_mode == "one_key" else [f"w{w}" for w in range(writers)]
    done = pool.run(system.name, namespace, keys, cfg.appends_per_writer, cfg.content_chars)
    wall_s = max(end for _, end, _, _ in done) - min(start for start, _, _, _ in done)
    errors = [e for *_, errs in done for e in errs]
    # CPU the writer processes used per second of wall time.
    client_cpu = sum(cpu for _, _, cpu, _ in done) / wall_s if wall_s > 0 else 0.0
    expected = 2 * writers * cfg.appends_per_writer
    stored = sum(_count(run.store, system.name, namespace, key) for key in dict.fromkeys(keys))
    return {
        "backend": system.backend,
        "system": system.name,
        "writers": writers,
        "keys": key_mode,
        "appends_per_writer": cfg.appends_per_writer,
        "expected_turns": expected,
        "stored_turns": stored,
        "lost_turns": expected - stored,
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "wall_s": wall_s,
        "client_cpu_cores": round(client_cpu, 2),
        "turns_per_s": expected / wall_s if wall_s > 0 else float("inf"),
    }
