"""Number and table formatting shared by the target verdicts and the Markdown report."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

__all__ = ["count", "ms", "ratio", "table"]


def ms(value: float | None) -> str:
    """Milliseconds with about three significant digits (``-`` when missing)."""
    if value is None or math.isnan(value):
        return "-"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    if value >= 0.01:
        return f"{value:.3f}"
    return f"{value:.4f}"


def ratio(value: float | None) -> str:
    """A ratio such as ``9.41x`` or ``0.0019x`` (``-`` when missing)."""
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:.0f}x"
    if value >= 10:
        return f"{value:.1f}x"
    if value >= 0.1:
        return f"{value:.2f}x"
    return f"{value:.2g}x"


def count(value: float | None) -> str:
    """A whole number with thousands separators (``-`` when missing)."""
    return "-" if value is None else f"{value:,.0f}"


def table(header: Sequence[str], rows: Iterable[Sequence[str]], text_columns: int = 1) -> str:
    """A Markdown table: the first ``text_columns`` left-aligned, numbers right-aligned."""
    marks = ["---"] * text_columns + ["---:"] * (len(header) - text_columns)
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(marks) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
