"""`agent-history show` prints what users wrote without letting it act on the operator's
terminal, and without failing on text no encoding writes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from agent_history.history import ChatHistory
from agent_history.settings import HistorySettings
from agent_history.stores import create_graph_store_sync

# What webhook users can send, all stored exactly: escape sequences (clear the screen,
# retitle the window, colours), a carriage return, a bell, a right-to-left override, a C1
# control, a line separator, a lone surrogate (a truncated emoji, which JSON carries as
# "\ud83d"), and text that must be shown as it is.
HOSTILE = "hi\x1b]0;pwned\x07\x1b[2J\x1b[31mred\x1b[0m\rOVERWRITE \u202eevil\x9b \u2028 \ud83d"
RTL = "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645\u200f \u0628\u0631\u0648\u0645"  # Persian, with its zero-width non-joiner and right-to-left mark
PLAIN = "你好 😀 tab\there\nsecond line " + RTL


def _show(path: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    env = {
        "ORCHEO_GRAPH_STORE_BACKEND": "sqlite",
        "ORCHEO_GRAPH_STORE_SQLITE_PATH": str(path),
        "PYTHONIOENCODING": "utf-8",
    }
    return subprocess.run(
        [sys.executable, "-m", "agent_history.cli", "show", "telegram:1", *args],
        capture_output=True,
        env=env,
        timeout=120,
        check=False,
    )


def test_show_escapes_what_a_terminal_would_act_on_and_reads_back_exactly(
    tmp_path: Path,
) -> None:
    path = tmp_path / "store.sqlite"
    settings = HistorySettings(graph_store_backend="sqlite", graph_store_sqlite_path=path)
    with create_graph_store_sync(settings) as store:
        ChatHistory(store).append(
            "telegram:1",
            [
                {"role": "user", "content": HOSTILE, "id": "1"},
                {"role": "assistant", "content": PLAIN, "id": "a1"},
            ],
        )

    plain = _show(path)
    assert plain.returncode == 0, plain.stderr
    text = plain.stdout.decode("utf-8")  # strict: a lone surrogate could not be in it
    for raw in ("\x1b", "\x07", "\r", "\u202e", "\x9b", "\u2028"):
        assert raw not in text
    user_line = text.splitlines()[1]
    assert user_line.split(None, 2)[2] == (
        "hi\\u001b]0;pwned\\u0007\\u001b[2J\\u001b[31mred\\u001b[0m\\u000dOVERWRITE "
        "\\u202eevil\\u009b \\u2028 \\ud83d"
    )
    assert "2 assistant 你好 😀 tab" in text  # shown as written
    assert f"\nsecond line {RTL}\n" in text

    as_json = _show(path, "--json")
    assert as_json.returncode == 0, as_json.stderr
    out = as_json.stdout.decode("utf-8")
    for raw in ("\x1b", "\u202e", "\x9b", "\u2028"):
        assert raw not in out
    assert "你好 😀" in out  # not escaped: only what a terminal would act on is
    rows = json.loads(out)
    assert [(r["seq"], r["role"], r["content"], r["id"]) for r in rows] == [
        (1, "user", HOSTILE, "1"),
        (2, "assistant", PLAIN, "a1"),
    ]
