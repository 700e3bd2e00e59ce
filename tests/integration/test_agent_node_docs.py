"""The examples in docs/agent-node.md run offline and print exactly the output shown."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

DOC = Path(__file__).parents[2] / "docs" / "agent-node.md"
_EXAMPLE = re.compile(
    r"```python\n(?P<code>(?:(?!```).)*)```\n\nOutput:\n\n```\n(?P<output>.*?)```", re.S
)


def _examples() -> list[tuple[str, str]]:
    return [(m["code"], m["output"]) for m in _EXAMPLE.finditer(DOC.read_text(encoding="utf-8"))]


def test_the_page_shows_its_examples_with_output() -> None:
    assert len(_examples()) >= 2


@pytest.mark.parametrize("number", range(len(_examples())))
def test_example_prints_what_the_page_shows(
    number: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))  # the default SQLite store goes here
    for name in ("ORCHEO_GRAPH_STORE_BACKEND", "ORCHEO_GRAPH_STORE_SQLITE_PATH"):
        monkeypatch.delenv(name, raising=False)
    code, output = _examples()[number]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, f"agent-node.md example {number}", "exec"), {"__name__": "__doc__"})
    assert printed.getvalue() == output
