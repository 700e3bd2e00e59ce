"""The Python examples of the README and the quickstart run as pasted, print what the
page shows, and can be run again: they clean up after themselves."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest
from langgraph.checkpoint.sqlite import SqliteSaver

from agent_history import ChatHistory, HistorySettings, create_graph_store_sync

ROOT = Path(__file__).parents[2]
PAGES = [ROOT / "README.md", ROOT / "docs" / "quickstart.md"]
_BLOCK = re.compile(r"```python\n(?P<code>.*?)```\n(?:\nOutput:\n\n```\n(?P<output>.*?)```)?", re.S)
NAMESPACES = ["readme_example", "quickstart", "quickstart_read"]


def _examples() -> list[tuple[str, str, str | None]]:
    found = []
    for page in PAGES:
        for number, match in enumerate(_BLOCK.finditer(page.read_text(encoding="utf-8"))):
            found.append((f"{page.name} #{number + 1}", match["code"], match["output"]))
    return found


def test_every_page_has_examples_with_their_output() -> None:
    names = [name for name, _, output in _examples() if output is not None]
    assert any(n.startswith("README.md") for n in names)
    assert sum(n.startswith("quickstart.md") for n in names) >= 2


@pytest.mark.parametrize(("name", "code", "output"), _examples(), ids=[e[0] for e in _examples()])
def test_example_runs_as_pasted_and_again(
    name: str, code: str, output: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The defaults, but in a directory of the test's own: SQLite files for both.
    for variable in ("ORCHEO_GRAPH_STORE_BACKEND", "ORCHEO_CHECKPOINT_BACKEND"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    monkeypatch.delenv("ORCHEO_GRAPH_STORE_SQLITE_PATH", raising=False)
    monkeypatch.delenv("ORCHEO_CHECKPOINT_SQLITE_PATH", raising=False)
    for _ in range(2):  # repeatable: the second run prints the same
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(compile(code, name, "exec"), {"__name__": "__main__"})
        if output is not None:
            assert printed.getvalue() == output
    settings = HistorySettings()
    assert str(settings.graph_store_sqlite_path).startswith(str(tmp_path))
    with create_graph_store_sync(settings) as store:
        for namespace in NAMESPACES:
            assert list(ChatHistory(store, namespace=[namespace]).keys()) == []
    if settings.checkpoint_sqlite_path.exists():
        with SqliteSaver.from_conn_string(str(settings.checkpoint_sqlite_path)) as saver:
            assert list(saver.list(None)) == []
