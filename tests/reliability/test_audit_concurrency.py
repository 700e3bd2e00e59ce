"""Several processes append to one audit file at once: every line whole, none lost."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

from tests.reliability.conftest import Record, trials

REPO = Path(__file__).resolve().parents[2]
PROCESSES = 4


def test_concurrent_processes_append_whole_lines(tmp_path: Path, record_figures: Record) -> None:
    audit = tmp_path / "audit.jsonl"
    lines_each = 10 * trials()
    writers = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.support.audit_writer", str(audit), str(lines_each)],
            cwd=REPO,
        )
        for _ in range(PROCESSES)
    ]
    assert [writer.wait(timeout=120) for writer in writers] == [0] * PROCESSES
    raw = audit.read_bytes().splitlines()
    entries = [json.loads(line) for line in raw]  # a torn or interleaved line fails here
    assert len(entries) == PROCESSES * lines_each
    assert min(len(line) for line in raw) > 4096  # larger than a pipe buffer
    per_process = Counter(entry["pid"] for entry in entries)
    assert sorted(per_process.values()) == [lines_each] * PROCESSES
    for pid in per_process:
        sequence = [e["sequence"] for e in entries if e["pid"] == pid]
        assert sequence == list(range(lines_each))  # each process's lines in its order
    record_figures(
        attack="audit file: concurrent appenders",
        processes=PROCESSES,
        lines=len(entries),
        torn_lines=0,
        lost_lines=0,
    )


# A worker whose audit write is cut short: a file-size limit makes the kernel write part
# of the line and return a short count, as a full disk does.
_CUT_SHORT = r"""
import os, resource, signal, sys
from agent_history.audit import record_change
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
path, limit = sys.argv[1], int(sys.argv[2])
size = os.path.getsize(path) if os.path.exists(path) else 0
resource.setrlimit(resource.RLIMIT_FSIZE, (size + limit, resource.RLIM_INFINITY))
ok = record_change("mode", source="env", before="read_write", after="off", audit_file=path)
"""


def _append(path: Path, sequence: int) -> None:
    subprocess.run(
        [sys.executable, "-m", "tests.support.audit_writer", str(path), "1"],
        cwd=REPO, check=True, timeout=120,
    )  # fmt: skip


def _whole_lines(path: Path) -> tuple[list[dict[str, object]], list[bytes]]:
    parsed, torn = [], []
    for line in path.read_bytes().splitlines():
        if not line:
            continue
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            torn.append(line)
    return parsed, torn


def test_a_line_cut_short_costs_no_other_line(tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    _append(audit, 0)
    # The disk fills up mid-line: only 60 bytes of the worker's line fit.
    cut = subprocess.run(
        [sys.executable, "-c", _CUT_SHORT, str(audit), "60"], cwd=REPO, timeout=120, check=True
    )
    assert cut.returncode == 0  # the run goes on (reported, never raised)
    _append(audit, 1)  # another worker, after space was freed
    parsed, torn = _whole_lines(audit)
    assert [entry["change"] for entry in parsed] == ["disabled_nodes", "disabled_nodes"]
    assert len(torn) == 1 and len(torn[0]) == 60  # the fragment alone on its line


def test_a_file_left_without_a_final_newline_costs_no_line(tmp_path: Path) -> None:
    """A crash or a ``copytruncate`` mid-line leaves a file without a final newline."""
    audit = tmp_path / "audit.jsonl"
    audit.write_bytes(b'{"time":"2026-01-01T00:00:00.000+00:00","change":"mode","sour')
    _append(audit, 0)
    _append(audit, 1)
    parsed, torn = _whole_lines(audit)
    assert len(parsed) == 2 and torn == [
        b'{"time":"2026-01-01T00:00:00.000+00:00","change":"mode","sour'
    ]


_HOLD_LOCK = r"""
import fcntl, sys
with open(sys.argv[1], "a") as handle:
    fcntl.flock(handle, fcntl.LOCK_EX)
    print("locked", flush=True)
    sys.stdin.readline()
"""


def test_a_writer_holding_the_lock_forever_stalls_no_one(tmp_path: Path) -> None:
    """A process stopped (SIGSTOP, a debugger) while it holds the audit file's lock: the
    others write their lines anyway (the lock is only for the newline repair), rather
    than block, in an async service the event loop with them."""
    audit = tmp_path / "audit.jsonl"
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(audit)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        _append(audit, 0)  # bounded by its own timeout: it would hang on a blocking lock
        parsed, torn = _whole_lines(audit)
        assert [entry["change"] for entry in parsed] == ["disabled_nodes"] and torn == []
    finally:
        holder.kill()
        holder.wait(60)
        for pipe in (holder.stdin, holder.stdout):
            if pipe is not None:
                pipe.close()
