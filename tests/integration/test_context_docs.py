"""docs/context.md: its example runs offline as pasted and prints exactly what the page shows."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

ROOT = Path(__file__).parents[2]
_BLOCK = re.compile(
    r"```python\n(?P<code>(?:(?!```).)*)```\n\nOutput:\n\n```\n(?P<output>.*?)```", re.S
)


def test_context_example_prints_what_the_page_shows() -> None:
    text = (ROOT / "docs" / "context.md").read_text(encoding="utf-8")
    examples = list(_BLOCK.finditer(text))
    assert len(examples) == 1
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(examples[0]["code"], "docs/context.md", "exec"), {"__name__": "__main__"})
    assert printed.getvalue() == examples[0]["output"]
