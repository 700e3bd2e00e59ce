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
