"""The integration pages (middleware, prebuilt hooks, `BaseChatMessageHistory`, the table
that picks one) run offline as pasted and print exactly the output they show."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
PAGES = ("middleware.md", "prebuilt.md", "message-history.md", "integrations.md")
_BLOCK = re.compile(
    r"```python\n(?P<code>(?:(?!```).)*)```\n(?:\nOutput:\n\n```\n(?P<output>.*?)```)?", re.S
)


def _examples() -> list[tuple[str, str, str | None]]:
    found = []
    for page in PAGES:
        text = (ROOT / "docs" / page).read_text(encoding="utf-8")
        for number, match in enumerate(_BLOCK.finditer(text)):
            found.append((f"{page} #{number + 1}", match["code"], match["output"]))
    return found


def test_every_integration_page_shows_an_example_with_its_output() -> None:
    with_output = {name.split(" #")[0] for name, _, output in _examples() if output}
    assert with_output == {"middleware.md", "prebuilt.md", "message-history.md"}


def test_the_table_links_every_integration_and_the_readme_links_the_pages() -> None:
    table = (ROOT / "docs" / "integrations.md").read_text(encoding="utf-8")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for page in ("agent-node.md", "middleware.md", "prebuilt.md", "message-history.md"):
        assert f"]({page})" in table
    for page in PAGES:
        assert f"](docs/{page})" in readme


@pytest.mark.parametrize(("name", "code", "output"), _examples(), ids=[e[0] for e in _examples()])
def test_example_prints_what_the_page_shows(name: str, code: str, output: str | None) -> None:
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, name, "exec"), {"__name__": "__main__"})
    if output is not None:
        assert printed.getvalue() == output
