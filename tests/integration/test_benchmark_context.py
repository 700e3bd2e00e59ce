"""The context-tail benchmark (a pass's read and window under a token budget) runs on each
backend and reports every length; timings are not asserted (they belong to the machine)."""

from __future__ import annotations

import math
from pathlib import Path

from benchmarks.backends import open_backend
from benchmarks.context_tail import MAX_TOKENS, render_context, run_context_tail, verdicts
from benchmarks.modes import MODES


def test_context_tail_measures_every_length(tmp_path: Path) -> None:
    cfg = MODES["smoke"]
    with open_backend("sqlite", tmp_path, cfg) as run:
        rows = run_context_tail(run, cfg, lambda _message: None)
    assert [r["length"] for r in rows] == list(cfg.lengths)
    assert all(r["n"] >= cfg.min_reps and math.isfinite(r["p50_ms"]) for r in rows)
    assert all(r["max_tokens"] == MAX_TOKENS and r["window_turns"] >= 1 for r in rows)
    assert rows[0]["window_turns"] == 10  # a 10-turn conversation fits whole
    section = render_context(rows)
    assert section.startswith("## Tail under a token budget")
    assert [v["status"] for v in verdicts(rows)] == ["SKIP"]  # smoke lengths stop at 100
    fake = [
        {**rows[0], "length": 1_000, "p50_ms": 1.0},
        {**rows[0], "length": 100_000, "p50_ms": 1.1},
    ]
    assert verdicts(fake)[0]["status"] == "PASS"
