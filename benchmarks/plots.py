"""Latency against history length, log-log, one figure per (backend, operation)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from benchmarks.analysis import SYSTEM_ORDER

__all__ = ["plot_latency"]

# (colour, marker) per system.
_STYLE = {
    "ours": ("tab:blue", "o"),
    "ours-basestore": ("tab:cyan", "D"),
    "naive": ("tab:red", "s"),
    "langchain-postgres": ("tab:orange", "^"),
    "floor": ("tab:gray", "v"),
}
_TITLES = {"tail": "tail read (newest 30 turns)", "append": "append (user + assistant turn)"}


def plot_latency(latency: Sequence[dict[str, Any]], out_dir: Path) -> list[Path]:
    """Write ``latency_<backend>_<op>.png`` files; return their paths.

    Each line is a system's p50; the shaded band reaches up to its p95.
    """
    written: list[Path] = []
    backends = list(dict.fromkeys(r["backend"] for r in latency))
    for backend in backends:
        for op in ("tail", "append"):
            rows = [r for r in latency if r["backend"] == backend and r["op"] == op]
            if not rows:
                continue
            # A Figure on an Agg canvas, without pyplot: no global state, no display.
            fig = Figure(figsize=(6.4, 4.2), dpi=100)
            FigureCanvasAgg(fig)
            ax = fig.subplots()
            for system in SYSTEM_ORDER:
                mine = sorted((r for r in rows if r["system"] == system), key=lambda r: r["length"])
                if not mine:
                    continue
                xs = [r["length"] for r in mine]
                p50 = [r["p50_ms"] for r in mine]
                p95 = [r["p95_ms"] for r in mine]
                color, marker = _STYLE.get(system, ("black", "."))
                ax.plot(
                    xs, p50, label=system, color=color, marker=marker, linewidth=1.8, markersize=5
                )
                ax.fill_between(xs, p50, p95, color=color, alpha=0.15, linewidth=0)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("history length (stored turns)")
            ax.set_ylabel("latency, ms (p50; band to p95)")
            ax.set_title(f"{backend}: {_TITLES[op]}")
            ax.grid(True, which="major", alpha=0.3)
            ax.legend(loc="upper left", fontsize=8)
            fig.tight_layout()
            path = out_dir / f"latency_{backend}_{op}.png"
            fig.savefig(path)
            written.append(path)
    return written
