"""Concurrent writers: throughput and lost turns, on one shared key and on distinct keys."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from benchmarks.backends import BackendRun
from benchmarks.modes import BenchConfig
from benchmarks.systems import NAIVE, OURS, HistorySystem
from benchmarks.workload import turn_pair

__all__ = ["CONCURRENCY_SYSTEMS", "run_concurrency"]

CONCURRENCY_SYSTEMS = (OURS, NAIVE)
KEY_MODES = ("one_key", "distinct_keys")

Log = Callable[[str], None]


def _writers_run(
    system: HistorySystem, writers: int, key_mode: str, cfg: BenchConfig
) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    if key_mode == "one_key":
        keys = [f"conc-{system.name}-{tag}"] * writers
    else:
        keys = [f"conc-{system.name}-{tag}-{w}" for w in range(writers)]
    # Everyone starts together: the main thread is the last party of the barrier.
    barrier = threading.Barrier(writers + 1)
    errors: list[str] = []
    errors_lock = threading.Lock()

    def writer(w: int) -> None:
        barrier.wait()
        for j in range(cfg.appends_per_writer):
            try:
                system.append(keys[w], turn_pair(f"{tag}-{w}-{j}", cfg.content_chars))
            except Exception as exc:  # a failed append is a finding, not a crash
                with errors_lock:
                    errors.append(f"{type(exc).__name__}: {exc}"[:200])

    threads = [threading.Thread(target=writer, args=(w,), daemon=True) for w in range(writers)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started, cpu_started = time.perf_counter(), time.process_time()
    for thread in threads:
        thread.join()
    wall_s = time.perf_counter() - started
    # CPU this process used (all threads) per second of wall time: near 1.0 means the
    # writers are bound by Python itself (one GIL), not by the database.
    client_cpu = (time.process_time() - cpu_started) / wall_s if wall_s > 0 else 0.0

    expected = 2 * writers * cfg.appends_per_writer
    stored = sum(system.count(key) for key in dict.fromkeys(keys))
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


def run_concurrency(run: BackendRun, cfg: BenchConfig, log: Log) -> list[dict[str, Any]]:
    """Every writer count x key mode for ours and naive on backend ``run``.

    Throughput counts the turns the writers attempted; what they lost is reported
    next to it, so a fast system that drops turns cannot look good.
    """
    rows: list[dict[str, Any]] = []
    for name in CONCURRENCY_SYSTEMS:
        system = run.system(name)
        if system is None:
            continue
        for key_mode in KEY_MODES:
            for writers in cfg.writers:
                row = _writers_run(system, writers, key_mode, cfg)
                rows.append(row)
                log(
                    f"[{run.name}] {name:<6} {writers:>2} writers {key_mode:<13}: "
                    f"{row['turns_per_s']:.0f} turns/s, client CPU {row['client_cpu_cores']:.2f} "
                    f"cores, lost {row['lost_turns']}, "
                    f"errors {row['errors']}"
                )
    return rows
