"""The Markdown summary written to ``results.md`` and printed at the end of a run."""

from __future__ import annotations

from typing import Any

from benchmarks.analysis import SYSTEM_ORDER, Cells
from benchmarks.formatting import count, ms, ratio, table

__all__ = ["render_markdown"]


def _latency_tables(cells: Cells, op: str) -> list[str]:
    parts: list[str] = []
    for backend in cells.backends():
        systems = cells.systems(backend)
        rows = []
        for length in cells.lengths(backend):
            row = [f"{length:,}"]
            for system in systems:
                found = cells.rows.get((backend, system, op, length))
                row.append(f"{ms(found['p50_ms'])} / {ms(found['p95_ms'])}" if found else "-")
            rows.append(row)
        parts += [f"**{backend}**", "", table(["length", *systems], rows), ""]
    return parts


def render_markdown(results: dict[str, Any]) -> str:
    """The human summary written to ``results.md`` and printed at the end of a run."""
    meta = results["meta"]
    cfg = meta["config"]
    cells = Cells(results["latency"])
    lines = [
        f"# Store-latency benchmark ({cfg['mode']} run)",
        "",
        f"{meta['started_at']} · {meta['cpu_count']} CPUs · {meta['platform']} · "
        f"Python {meta['python']} · SQLite {meta['sqlite_version']} · "
        f"PostgreSQL {meta.get('postgres_version') or 'not run'} · "
        f"run took {meta['duration_s']:.0f} s",
        "",
        f"Tail = newest {cfg['tail_n']} turns; append = one user + one assistant turn "
        f"({cfg['content_chars']} characters each, with message ids). Latencies are "
        f"p50 / p95 in ms over up to {cfg['reps']} timed calls per cell (at least "
        f"{cfg['min_reps']}; slow cells stop at a {cfg['cell_budget_s']:g} s budget, "
        "see `n` in results.json).",
        "",
        "## Targets",
        "",
        "```",
    ]
    for t in results["targets"]:
        lines.append(f"{t['status']:<4}  {t['backend']:<8}  {t['target']}: {t['detail']}")
    lines += ["```", ""]
    lines += ["## Tail-read latency (p50 / p95 ms)", "", *_latency_tables(cells, "tail")]
    lines += ["## Append latency (p50 / p95 ms)", "", *_latency_tables(cells, "append")]

    primitives = results.get("store_primitives") or []
    if primitives:
        lines += [
            "## One LangGraph store call (p50 / p95 ms)",
            "",
            "`BaseStore.get` / `put` of one small item: the round trip every store-based "
            "design pays per call. On SQLite and PostgreSQL our tail is one query of our "
            "own (head and newest chunks) and our append one transaction; on other stores "
            "the tail is two store calls (head, then chunks).",
            "",
        ]
        by = {(r["backend"], r["op"]): r for r in primitives}
        rows = [
            [
                b,
                *(
                    f"{ms(by[b, op]['p50_ms'])} / {ms(by[b, op]['p95_ms'])}"
                    for op in ("get", "put")
                ),
            ]
            for b in dict.fromkeys(r["backend"] for r in primitives)
            if (b, "get") in by and (b, "put") in by
        ]
        lines += [table(["backend", "get", "put"], rows), ""]

    lines += [
        "## Ratios (p50)",
        "",
        "Below 1: ours is faster. `turn` = tail + append. `lc` = langchain-postgres. "
        "`base/ours` = the same layout through plain `BaseStore` calls over ours (the gain "
        "of the SQL fast path; the rest of ours/naive is the layout's).",
        "",
    ]
    header = [
        "backend",
        "length",
        "tail ours/floor",
        "append ours/floor",
        "turn ours/floor",
        "tail ours/naive",
        "turn ours/naive",
        "tail ours/lc",
        "append ours/lc",
        "tail base/ours",
        "append base/ours",
    ]
    keys = [
        "tail_ours_over_floor",
        "append_ours_over_floor",
        "turn_ours_over_floor",
        "tail_ours_over_naive",
        "turn_ours_over_naive",
        "tail_ours_over_langchain",
        "append_ours_over_langchain",
        "tail_basestore_over_ours",
        "append_basestore_over_ours",
    ]
    rows = [
        [r["backend"], f"{r['length']:,}", *(ratio(r[k]) for k in keys)]
        for r in results["ratios"]["per_length"]
    ]
    lines += [table(header, rows, text_columns=2), ""]

    flat = results["ratios"]["flatness"]
    if flat:
        first = flat[0]
        top, low, full = first["to_length"], first["from_length"], first["full_window_length"]
        lines += [
            f"## Flatness: tail p50 at {top:,} turns / at {low:,} (and / at {full:,})",
            "",
            f"At {low:,} turns a tail returns only {low} turns; from {full:,} on it returns "
            f"a full window of {results['meta']['config']['tail_n']}.",
            "",
        ]
        backends = list(dict.fromkeys(r["backend"] for r in flat))
        by = {(r["backend"], r["system"]): r for r in flat}
        rows = [
            [
                s,
                *(
                    f"{ratio(by[b, s]['tail_growth'])} ({ratio(by[b, s]['tail_growth_full_window'])})"
                    if (b, s) in by
                    else "-"
                    for b in backends
                ),
            ]
            for s in SYSTEM_ORDER
            if any((b, s) in by for b in backends)
        ]
        lines += [table(["system", *backends], rows), ""]

    conc = results["concurrency"]
    if conc:
        lines += [
            "## Concurrent writers",
            "",
            f"Each writer is a process of its own making {conc[0]['appends_per_writer']} "
            "appends of 2 turns; turns/s counts attempted turns, lost = expected - stored; "
            "client CPU = cores the writer processes kept busy.",
            "",
        ]
        rows = [
            [
                r["backend"],
                r["system"],
                r["keys"].replace("_", " "),
                str(r["writers"]),
                count(r["turns_per_s"]),
                f"{r.get('client_cpu_cores', 0):.2f}",
                str(r["lost_turns"]),
                str(r["errors"]),
            ]
            for r in conc
        ]
        lines += [
            table(
                ["backend", "system", "keys", "writers", "turns/s", "client CPU", "lost", "errors"],
                rows,
                text_columns=3,
            ),
            "",
        ]

    agent = results["agent_node"]
    lines += ["## AgentNode turn: history overhead", ""]
    if agent["rows"]:
        lines += [
            "Graph invoke with `use_graph_chat_history=True` minus the same with `False` "
            "(instant offline model; p50 ms).",
            "",
        ]
        rows = [
            [
                r["backend"],
                f"{r['length']:,}",
                ms(r["with_history"]["p50_ms"]),
                ms(r["without_history"]["p50_ms"]),
                ms(r["overhead_p50_ms"]),
                ms(r["overhead_mean_ms"]),
                str(r["stored_read"]),
            ]
            for r in agent["rows"]
        ]
        header = ["backend", "length", "with", "without", "overhead p50", "overhead mean", "read"]
        lines += [table(header, rows, text_columns=2), ""]
    for note in agent["notes"]:
        lines += [f"- {note}"]
    if results["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in results["notes"]]
    return "\n".join(lines).rstrip() + "\n"
