"""The agent-history command as an operator uses it: special output files, pipes as input,
conflicting imports, missing sources, odd characters in messages, strict flags files and
stdout closed early or in a non-UTF-8 locale."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage

from agent_history.history import ChatHistory
from agent_history.history.layout import chunk_key
from agent_history.stores import create_graph_store_sync
from tests.integration.test_cli import _invoke, _seed, scratch_env
from tests.integration.test_cli import _sqlite as _settings


@pytest.fixture
def ns() -> str:
    return "op" + uuid.uuid4().hex[:10]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return scratch_env(tmp_path)


def _keys_and_seqs(text: str) -> list[tuple[str, int]]:
    return [(json.loads(line)["key"], json.loads(line)["seq"]) for line in text.splitlines()]


# --- export -o: special files, symlinks, permissions ------------------------------------


def _reader(path: Path) -> tuple[threading.Thread, list[bytes]]:
    got: list[bytes] = []

    def read() -> None:
        with path.open("rb") as handle:
            got.append(handle.read())

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread, got


def test_export_into_a_fifo_writes_through_it_and_keeps_it(
    env: dict[str, str], tmp_path: Path, ns: str
) -> None:
    _seed(_settings(env), ns, {"telegram:1": 2, "telegram:2": 1})
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    thread, got = _reader(fifo)
    result = _invoke(["export", "-n", ns, "-o", str(fifo)], env)
    assert result.exit_code == 0, result.output
    assert f"exported 3 turns of 2 conversations to {fifo}" in result.output
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    thread.join(timeout=60)
    assert _keys_and_seqs(got[0].decode()) == [
        ("telegram:1", 1),
        ("telegram:1", 2),
        ("telegram:2", 1),
    ]
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")]


def test_export_through_a_symlink_replaces_the_file_it_points_to_keeping_its_mode(
    env: dict[str, str], tmp_path: Path, ns: str
) -> None:
    _seed(_settings(env), ns, {"telegram:1": 2})
    real = tmp_path / "exports" / "secret.jsonl"
    real.parent.mkdir()
    real.write_text("old\n")
    real.chmod(0o600)
    link = tmp_path / "latest.jsonl"
    link.symlink_to(real)
    result = _invoke(["export", "-n", ns, "-o", str(link)], env)
    assert result.exit_code == 0, result.output
    assert f"exported 2 turns of 1 conversation to {link}" in result.output
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert _keys_and_seqs(real.read_text()) == [("telegram:1", 1), ("telegram:1", 2)]
    assert stat.S_IMODE(real.stat().st_mode) == 0o600
    assert [p.name for p in real.parent.iterdir()] == ["secret.jsonl"]


def test_export_over_a_regular_file_keeps_its_permission_bits(
    env: dict[str, str], tmp_path: Path, ns: str
) -> None:
    _seed(_settings(env), ns, {"telegram:1": 1})
    out = tmp_path / "s.jsonl"
    out.write_text("")
    out.chmod(0o600)
    result = _invoke(["export", "-n", ns, "-o", str(out)], env)
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert _keys_and_seqs(out.read_text()) == [("telegram:1", 1)]


def test_export_to_dev_null_leaves_the_device_in_place(env: dict[str, str], ns: str) -> None:
    _seed(_settings(env), ns, {"telegram:1": 2})
    result = _invoke(["export", "-n", ns, "-o", os.devnull], env)
    assert result.exit_code == 0, result.output
    assert "exported 2 turns of 1 conversation to /dev/null" in result.output
    assert stat.S_ISCHR(os.lstat(os.devnull).st_mode)
    assert Path(os.devnull).read_bytes() == b""


# --- import from a pipe -----------------------------------------------------------------


def _export_text(env: dict[str, str], ns: str, tmp_path: Path) -> bytes:
    out = tmp_path / "export.jsonl"
    exported = _invoke(["export", "-n", ns, "-o", str(out)], env)
    assert exported.exit_code == 0, exported.output
    return out.read_bytes()


def _stored(env: dict[str, str], ns: str) -> dict[str, list[str | None]]:
    with create_graph_store_sync(_settings(env)) as store:
        history = ChatHistory(store, namespace=(ns,))
        keys = list(history.keys())
        return {key: [t.id for t in history.read(key)] for key in keys}


def test_import_from_a_fifo_reads_it_once_and_imports_everything(
    env: dict[str, str], tmp_path: Path, ns: str
) -> None:
    _seed(_settings(env), ns, {"telegram:1": 3, "telegram:2": 2})
    payload = _export_text(env, ns, tmp_path)
    fifo = tmp_path / "feed"
    os.mkfifo(fifo)
    done = threading.Event()

    def feed() -> None:
        # Opens the FIFO for every reader: the first gets the export, any later one
        # (a second read of the same input) only the end of the file.
        data = payload
        while not done.is_set():
            with fifo.open("wb") as handle:
                handle.write(data)
            data = b""

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    try:
        result = _invoke(["import", str(fifo), "--into", ns + "copy"], env)
    finally:
        done.set()
        os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))  # frees a writer still waiting
        writer.join(timeout=60)
    assert result.exit_code == 0, result.output
    assert "imported 5 new turns into 2 conversations (0 turns already present)" in result.output
    assert _stored(env, ns + "copy") == _stored(env, ns)
    assert _stored(env, ns + "copy")["telegram:1"] == [
        "telegram:1-0",
        "telegram:1-1",
        "telegram:1-2",
    ]
    assert stat.S_ISFIFO(fifo.lstat().st_mode)


def test_import_from_a_pipe_descriptor_imports_everything(
    env: dict[str, str], tmp_path: Path, ns: str
) -> None:
    _seed(_settings(env), ns, {"telegram:1": 2})
    payload = _export_text(env, ns, tmp_path)
    read_end, write_end = os.pipe()
    os.write(write_end, payload)
    os.close(write_end)
    try:
        result = _invoke(["import", f"/dev/fd/{read_end}", "--into", ns + "copy"], env)
    finally:
        os.close(read_end)
    assert result.exit_code == 0, result.output
    assert "imported 2 new turns into 1 conversation (0 turns already present)" in result.output
    assert _stored(env, ns + "copy") == {"telegram:1": ["telegram:1-0", "telegram:1-1"]}


# --- import / migrate into a conversation holding other turns ---------------------------


def _append(env: dict[str, str], ns: str, key: str, messages: list[dict[str, Any]]) -> None:
    with create_graph_store_sync(_settings(env)) as store:
        ChatHistory(store, namespace=(ns,)).append(key, messages)


def _agent_turns(prefix: str, count: int) -> list[dict[str, Any]]:
    return [
        {
            "role": "user" if i % 2 == 0 else "assistant",
            "content": f"{prefix} {i}",
            "id": f"{prefix}-{i}",
        }
        for i in range(count)
    ]


def test_import_refuses_a_conversation_holding_other_turns_at_its_seqs(
    env: dict[str, str], tmp_path: Path, ns: str
) -> None:
    _seed(_settings(env), ns, {"telegram:41": 2, "telegram:42": 6})
    out = tmp_path / "export.jsonl"
    assert _invoke(["export", "-n", ns, "-o", str(out)], env).exit_code == 0
    target = ns + "live"
    _append(env, target, "telegram:42", _agent_turns("new", 2))  # the agent wrote first
    result = _invoke(["import", str(out), "--into", target], env)
    assert result.exit_code == 1, result.output
    assert (
        f"{out}: line 3: conversation 'telegram:42' not imported: the conversation already "
        "holds another turn at seq 1"
    ) in result.output
    # (the refused conversation is not counted as imported)
    assert "imported 2 new turns into 1 of 2 conversations (0 turns already present)" in (
        result.output
    )
    assert "error: 1 conversation not imported" in result.output
    assert _stored(env, target) == {
        "telegram:41": ["telegram:41-0", "telegram:41-1"],
        "telegram:42": ["new-0", "new-1"],
    }


def test_import_refuses_a_stored_conversation_that_is_longer_or_diverges(
    env: dict[str, str], tmp_path: Path, ns: str
) -> None:
    _seed(_settings(env), ns, {"telegram:1": 3, "telegram:2": 2})
    out = tmp_path / "export.jsonl"
    assert _invoke(["export", "-n", ns, "-o", str(out)], env).exit_code == 0
    target = ns + "live"
    _seed(_settings(env), target, {"telegram:1": 2})  # the file's first 2 turns
    _append(env, target, "telegram:1", _agent_turns("other", 1))  # then another third
    _append(env, target, "telegram:2", _agent_turns("long", 4))  # longer than the file
    result = _invoke(["import", str(out), "--into", target, "--json"], env)
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert report == {
        "conversations": 2,
        "conversations_imported": 0,
        "turns_written": 0,
        "turns_present": 0,
        "summaries_written": 0,
        "rejected": [
            "line 3: conversation 'telegram:1' not imported: the conversation already holds "
            "another turn at seq 3",
            "line 4: conversation 'telegram:2' not imported: the conversation already holds "
            "another turn at seq 1",
        ],
    }
    assert _stored(env, target) == {
        "telegram:1": ["telegram:1-0", "telegram:1-1", "other-0"],
        "telegram:2": ["long-0", "long-1", "long-2", "long-3"],
    }


def test_import_without_ids_compares_role_and_content(
    env: dict[str, str], tmp_path: Path, ns: str
) -> None:
    def line(seq: int, content: str) -> str:
        role = "user" if seq % 2 else "assistant"
        return json.dumps(
            {
                "namespace": [ns],
                "key": "telegram:7",
                "seq": seq,
                "role": role,
                "content": content,
                "id": None,
            }
        )

    same = tmp_path / "same.jsonl"
    same.write_text(line(1, "hi") + "\n" + line(2, "hello") + "\n")
    first = _invoke(["import", str(same)], env)
    assert first.exit_code == 0, first.output
    again = _invoke(["import", str(same)], env)
    assert again.exit_code == 0, again.output
    assert "imported 0 new turns into 1 conversation (2 turns already present)" in again.output
    other = tmp_path / "other.jsonl"
    other.write_text(line(1, "hi") + "\n" + line(2, "bye") + "\n" + line(3, "more") + "\n")
    refused = _invoke(["import", str(other)], env)
    assert refused.exit_code == 1, refused.output
    assert (
        "line 2: conversation 'telegram:7' not imported: the conversation already holds another turn at seq 2"
        in refused.output
    )
    with create_graph_store_sync(_settings(env)) as store:
        stored = ChatHistory(store, namespace=(ns,)).read("telegram:7")
        assert [(t.seq, t.content) for t in stored] == [(1, "hi"), (2, "hello")]


def test_migrate_never_writes_into_a_conversation_holding_other_turns(
    env: dict[str, str], tmp_path: Path, ns: str
) -> None:
    _seed(_settings(env), ns, {"telegram:41": 2, "telegram:42": 6})
    target_env = {**env, "ORCHEO_GRAPH_STORE_SQLITE_PATH": str(tmp_path / "target.sqlite")}
    _append(target_env, ns, "telegram:42", _agent_turns("new", 2))
    args = [
        "migrate", "--from-backend", "sqlite", "--to-backend", "sqlite",
        "--to-sqlite-path", target_env["ORCHEO_GRAPH_STORE_SQLITE_PATH"], "-n", ns, "--json",
    ]  # fmt: skip
    result = _invoke(args, env)
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert report["turns_copied"] == 2 and report["mismatches"] == ["telegram:42"]
    assert report["problems"] == {
        "telegram:42": "the conversation already holds another turn at seq 1"
    }
    assert _stored(target_env, ns) == {
        "telegram:41": ["telegram:41-0", "telegram:41-1"],
        "telegram:42": ["new-0", "new-1"],
    }
    again = _invoke(args, env)
    assert again.exit_code == 1 and json.loads(again.stdout)["turns_copied"] == 0


def test_migrate_of_an_empty_namespace_does_not_report_a_match(
    env: dict[str, str], tmp_path: Path, ns: str
) -> None:
    """A mistyped namespace copies nothing: "all counts and checksums match" would read as
    a verified migration."""
    _seed(_settings(env), ns, {"telegram:1": 2})
    target = str(tmp_path / "target.sqlite")
    args = ["migrate", "--from-backend", "sqlite", "--to-backend", "sqlite",
            "--to-sqlite-path", target, "-n", ns + "typo"]  # fmt: skip
    result = _invoke(args, env)
    assert result.exit_code == 0, result.output
    assert "migrated 0 conversations, 0 turns copied; verification: nothing to compare: " in (
        result.output
    )
    assert "all counts and checksums match" not in result.output


# --- a missing SQLite source is never created -------------------------------------------


def test_migrate_from_a_missing_sqlite_file_fails_and_creates_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "typo" / "missing.sqlite"
    target = tmp_path / "target.sqlite"
    env = {"ORCHEO_GRAPH_STORE_SQLITE_PATH": str(tmp_path / "configured.sqlite")}
    args = ["migrate", "--from-backend", "sqlite", "--to-backend", "sqlite"]
    result = _invoke(
        [*args, "--from-sqlite-path", str(missing), "--to-sqlite-path", str(target)], env
    )
    assert result.exit_code == 2, result.output
    assert result.output == (
        f"error: --from-sqlite-path: {missing} does not exist (a store only read is never created)\n"
    )
    from_env = _invoke([*args, "--to-sqlite-path", str(target)], env)
    assert from_env.exit_code == 2, from_env.output
    assert from_env.output == (
        f"error: ORCHEO_GRAPH_STORE_SQLITE_PATH: {tmp_path / 'configured.sqlite'} does not exist "
        "(a store only read is never created)\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "args", [["stats"], ["show", "telegram:1"], ["export", "-o", "OUT"]], ids=lambda a: a[0]
)
def test_read_only_commands_on_a_missing_sqlite_file_fail_and_create_nothing(
    args: list[str], tmp_path: Path
) -> None:
    store = tmp_path / "data" / "store.sqlite"
    out = tmp_path / "out.jsonl"
    env = {"ORCHEO_GRAPH_STORE_SQLITE_PATH": str(store)}
    result = _invoke([str(out) if a == "OUT" else a for a in args], env)
    assert result.exit_code == 2, result.output
    assert result.output == (
        f"error: ORCHEO_GRAPH_STORE_SQLITE_PATH: {store} does not exist "
        "(a store only read is never created)\n"
    )
    assert list(tmp_path.iterdir()) == []


# --- messages are printed as they are, never read as markup -----------------------------


@pytest.mark.parametrize("key", ["telegram:a[/]b", "telegram:[red]x"])
def test_error_messages_print_keys_that_look_like_markup_as_they_are(
    key: str, env: dict[str, str], ns: str
) -> None:
    _seed(_settings(env), ns, {"telegram:1": 1})
    for args in (
        ["show", key, "-n", ns],
        ["delete", key, "-n", ns, "--yes"],
        ["export", "-n", ns, "-k", key],
    ):
        result = _invoke(args, env)
        assert (result.exit_code, result.output) == (
            1,
            f"error: no conversation {key!r} in namespace {ns!r}\n",
        ), args


def test_error_messages_print_paths_that_look_like_markup_as_they_are(
    env: dict[str, str], tmp_path: Path, ns: str
) -> None:
    relative = _invoke(["stats"], {**env, "ORCHEO_GRAPH_STORE_SQLITE_PATH": "data/[bold]x.db"})
    assert (relative.exit_code, relative.output) == (
        2,
        "error: ORCHEO_GRAPH_STORE_SQLITE_PATH: must be an absolute path (got 'data/[bold]x.db')\n",
    )
    _seed(_settings(env), ns, {"telegram:1": 1})
    out = tmp_path / "no[/]dir" / "x.jsonl"
    result = _invoke(["export", "-n", ns, "-o", str(out)], env)
    assert (result.exit_code, result.output) == (
        2,
        f"error: cannot write {out}: directory {out.parent} does not exist\n",
    )
    written = tmp_path / "[red]x.jsonl"
    done = _invoke(["export", "-n", ns, "-o", str(written)], env)
    assert done.exit_code == 0, done.output
    assert f"exported 1 turn of 1 conversation to {written}\n" in done.output


def test_doctor_prints_settings_that_look_like_markup_as_they_are(tmp_path: Path) -> None:
    store = tmp_path / "[red]x.sqlite"
    env = {
        "ORCHEO_GRAPH_STORE_SQLITE_PATH": str(store),
        "ORCHEO_CHECKPOINT_SQLITE_PATH": str(tmp_path / "[bold]ck.sqlite"),
    }
    result = _invoke(["doctor"], env)
    assert result.exit_code == 0, result.output
    assert f"'graph_store_sqlite_path': '{store}'" in result.output
    assert f"'checkpoint_sqlite_path': '{tmp_path / '[bold]ck.sqlite'}'" in result.output


# --- migrate path errors name the option ------------------------------------------------


@pytest.mark.parametrize("option", ["--from-sqlite-path", "--to-sqlite-path"])
@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("rel.sqlite", "must be an absolute path (got 'rel.sqlite')"),
        ("~/x.sqlite", "must be an absolute path; '~' is not expanded (got '~/x.sqlite')"),
    ],
)
def test_a_relative_migrate_path_is_reported_under_its_option(
    option: str, value: str, problem: str, tmp_path: Path
) -> None:
    env = {"ORCHEO_GRAPH_STORE_SQLITE_PATH": str(tmp_path / "store.sqlite")}
    args = ["migrate", "--from-backend", "sqlite", "--to-backend", "sqlite", option, value]
    result = _invoke(args, env)
    assert (result.exit_code, result.output) == (2, f"error: {option}: {problem}\n")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("side", ["--from-sqlite-path", "--to-sqlite-path"])
@pytest.mark.parametrize("kind", ["not a database", "another application's"])
def test_an_unusable_migrate_file_is_reported_under_its_option(
    side: str, kind: str, tmp_path: Path
) -> None:
    """The operator must tell whether the source or the target is wrong: both used to be
    reported under ORCHEO_GRAPH_STORE_SQLITE_PATH, even with that variable unset."""
    import sqlite3

    from langchain_core.messages import HumanMessage

    from agent_history.settings import HistorySettings

    bad = tmp_path / "bad.sqlite"
    if kind == "not a database":
        bad.write_text("hello\n")
    else:
        with sqlite3.connect(bad) as conn:
            conn.execute("CREATE TABLE users (x)")
    good = tmp_path / "good.sqlite"
    seeded = HistorySettings(graph_store_backend="sqlite", graph_store_sqlite_path=good)
    with create_graph_store_sync(seeded) as store:
        ChatHistory(store).append("k", [HumanMessage("hi")])
    paths = {"--from-sqlite-path": good, "--to-sqlite-path": good, side: bad}
    args = ["migrate", "--from-backend", "sqlite", "--to-backend", "sqlite"]
    for option, path in paths.items():
        args += [option, str(path)]
    result = _invoke(args, {})
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"error: {side}: ") and "ORCHEO_" not in result.output


# --- a flags file is strict JSON: no repeated key ---------------------------------------


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        (
            "flags.json",
            '{"mode": "off",\n "mode": "read_write"}',
            "not valid JSON: key 'mode' appears twice in an object",
        ),
        (
            "flags.json",
            '{"nodes": {"agent": {"mode": "off", "mode": "shadow"}}}',
            "not valid JSON: key 'mode' appears twice in an object",
        ),
        (
            "flags.json",
            '{"nodes": {"agent": {"mode": "off"}}, "node_modes": {"agent": "read_write"}}',
            "node 'agent' has two modes: node_modes (read_write) and nodes.mode (off)",
        ),
        ("flags.toml", 'mode = "off"\nmode = "read_write"\n', "not valid TOML"),
        (
            "flags.json",
            '{"nodes": {"agent": {"mode": "off"}, "agent ": {"mode": "read_write"}}}',
            "nodes: node 'agent' is named twice",
        ),
        (
            "flags.toml",
            'node_modes = {agent = "off", " agent" = "read_write"}\n',
            "node_modes: node 'agent' is named twice",
        ),
        (
            "flags.json",
            '{"disabled_nodes": "support_agent billing_agent"}',
            "'support_agent billing_agent' is not one node name",
        ),
    ],
    ids=[
        "top level",
        "nested",
        "two spellings",
        "toml",
        "a stray space",
        "toml space",
        "names without commas",
    ],
)
def test_doctor_refuses_a_flags_file_that_gives_a_switch_twice(
    name: str, content: str, problem: str, env: dict[str, str], tmp_path: Path
) -> None:
    flags = tmp_path / name
    flags.write_text(content)
    result = _invoke(["doctor"], {**env, "ORCHEO_GRAPH_CHAT_HISTORY_FLAGS_FILE": str(flags)})
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"error: ORCHEO_GRAPH_CHAT_HISTORY_FLAGS_FILE: {flags}: ")
    assert problem in result.output
    assert len(result.output.splitlines()) == 1


# --- stdout: a reader that goes away, a locale that is not UTF-8 ------------------------


def _cli(args: list[str], env: dict[str, str], **kwargs: Any) -> subprocess.Popen[bytes]:
    full = {**os.environ, **env}
    full.pop("AGENT_HISTORY_DEBUG", None)
    return subprocess.Popen([sys.executable, "-m", "agent_history.cli", *args], env=full, **kwargs)


def test_export_into_a_pipe_closed_early_exits_quietly_with_141(
    env: dict[str, str], ns: str
) -> None:
    big = "é✓ " * 300  # about 2 MB in all: far more than a pipe holds
    _append(env, ns, "telegram:1", [{"role": "user", "content": big}] * 2000)
    process = _cli(["export", "-n", ns], env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    first = json.loads(process.stdout.readline())
    process.stdout.close()  # `| head -1`
    errors = process.stderr.read().decode()
    assert process.wait(timeout=120) == 141
    assert (first["key"], first["seq"]) == ("telegram:1", 1)
    assert "error" not in errors and "Traceback" not in errors and "Exception" not in errors


@pytest.mark.parametrize("encoding", ["latin-1", "ascii"])
def test_export_and_show_write_utf8_whatever_the_locale(
    encoding: str, env: dict[str, str], tmp_path: Path, ns: str
) -> None:
    _append(env, ns, "telegram:1", [{"role": "user", "content": "snow ☃ café 😀 中文"}])
    expected = _export_text(env, ns, tmp_path)
    locale = {"PYTHONIOENCODING": encoding, "LC_ALL": "C", "LANG": "C"}
    exported = _cli(
        ["export", "-n", ns], {**env, **locale}, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = exported.communicate(timeout=120)
    assert exported.returncode == 0, err.decode(errors="replace")
    assert out == expected
    shown = _cli(
        ["show", "telegram:1", "-n", ns],
        {**env, **locale},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = shown.communicate(timeout=120)
    assert shown.returncode == 0, err.decode(errors="replace")
    assert out.decode("utf-8").splitlines()[-1].split() == [
        "1",
        "user",
        "snow",
        "☃",
        "café",
        "😀",
        "中文",
    ]


# --- replay: something that is not a graph, a file without callbacks -------------------

CALLBACKS = Path(__file__).resolve().parents[2] / "docs" / "examples" / "callbacks.jsonl"


def test_replay_with_a_graph_option_naming_no_graph_is_a_usage_error(env: dict[str, str]) -> None:
    result = _invoke(["replay", str(CALLBACKS), "--graph", "json:loads", "-n", "x"], env)
    assert (result.exit_code, result.output) == (
        2,
        "error: --graph json:loads: it is not a graph, and calling it with the store failed "
        "(TypeError)\n",
    )
    assert _stored(env, "x") == {}


_MY_GRAPH = """
from langgraph.graph import START, StateGraph
from agent_history import AgentNode, AgentState
from agent_history.testing import RecordingChatModel

def build(store):
    import mysteps  # a sibling module, imported only when the factory is called

    builder = StateGraph(AgentState)
    node = AgentNode(RecordingChatModel(), use_graph_chat_history=True, history_namespace=["mine"])
    builder.add_node("agent", node)
    builder.add_edge(START, "agent")
    return builder.compile(store=store)
"""


def test_replay_finds_a_graph_module_in_the_current_directory(
    env: dict[str, str], tmp_path: Path
) -> None:
    """As ``python -m`` does: the installed command's own path does not hold the directory
    it is run from, where an operator keeps the workflow being validated."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "mygraph.py").write_text(_MY_GRAPH)
    (project / "mysteps.py").write_text("")
    command = Path(sys.executable).parent / "agent-history"
    replay = [str(command), "replay", str(CALLBACKS), "--graph", "mygraph:build", "-n", "mine"]
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    ran = subprocess.run(
        replay, cwd=project, env={**clean, **env}, capture_output=True, text=True, timeout=120
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.startswith("replayed 7 callbacks from callbacks.jsonl")
    assert ran.stderr.endswith("history written to namespace mine\n")
    stored = _stored(env, "mine")
    assert sorted(stored) == ["telegram:4242", "wecom_cs:wkSupport:wmCustomer7"]
    assert len(stored["telegram:4242"]) == 6  # its three exchanges

    elsewhere = subprocess.run(
        replay, cwd=tmp_path, env={**clean, **env}, capture_output=True, text=True, timeout=120
    )
    assert elsewhere.returncode == 2
    assert elsewhere.stderr.startswith(
        "error: --graph mygraph:build: cannot import mygraph (No module named 'mygraph'); "
        "run from the directory that holds it, or add that directory to PYTHONPATH"
    ), elsewhere.stderr


def test_replay_with_a_graph_option_naming_no_attribute_names_the_option(
    env: dict[str, str],
) -> None:
    result = _invoke(["replay", str(CALLBACKS), "--graph", "json:nosuch", "-n", "x"], env)
    assert (result.exit_code, result.output) == (
        2,
        "error: --graph json:nosuch: json has no attribute nosuch\n",
    )


@pytest.mark.parametrize("content", ["", "\n  \n"], ids=["empty", "blank lines"])
def test_replay_of_a_file_without_callbacks_fails_its_check(
    content: str, env: dict[str, str], tmp_path: Path
) -> None:
    empty = tmp_path / "none.jsonl"
    empty.write_text(content)
    result = _invoke(["replay", str(empty), "--json"], env)
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert (report["runs"], report["ok"]) == (0, False)
    assert report["checks"][0] == {
        "name": "callbacks replayed",
        "ok": False,
        "detail": "the file holds none",
    }


# --- a setup lock that cannot be created is reported at once ----------------------------


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
def test_a_lock_file_that_cannot_be_created_is_reported_at_once_for_what_it_is(
    tmp_path: Path,
) -> None:
    env = {
        "ORCHEO_GRAPH_STORE_SQLITE_PATH": "/proc/agent-history-x.sqlite",  # ENOENT, not EACCES
        "ORCHEO_CHECKPOINT_SQLITE_PATH": str(tmp_path / "ck.sqlite"),
    }
    result = _invoke(["doctor"], env)
    assert (result.exit_code, result.output) == (
        2,
        "error: ORCHEO_GRAPH_STORE_SQLITE_PATH: cannot create lock file "
        "/proc/agent-history-x.sqlite.setup-lock: No such file or directory\n",
    )


# --- JSON is strict both ways: no NaN, no infinity ---------------------------------------


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("NaN", "NaN is not a JSON value"),
        ("-Infinity", "-Infinity is not a JSON value"),
        ("1e400", "the number 1e400 is out of range"),
    ],
)
def test_import_refuses_numbers_that_are_not_json(
    value: str, problem: str, env: dict[str, str], tmp_path: Path, ns: str
) -> None:
    good = {"namespace": [ns], "key": "telegram:1", "seq": 1, "role": "user", "content": "hi"}
    bad = (
        f'{{"namespace": ["{ns}"], "key": "telegram:1", "seq": 2, "role": "assistant", '
        f'"content": [{{"type": "text", "text": "x", "score": {value}}}]}}'
    )
    file = tmp_path / "in.jsonl"
    file.write_text(json.dumps(good) + "\n" + bad + "\n")
    result = _invoke(["import", str(file)], env)
    assert result.exit_code == 2, result.output
    assert f"{file}: line 2: invalid JSON ({problem})\n" in result.output
    assert f"error: {file} not imported: nothing was written\n" in result.output
    assert _stored(env, ns) == {}


def test_export_and_show_never_write_nan_or_infinity(
    env: dict[str, str], tmp_path: Path, ns: str
) -> None:
    content = [{"type": "text", "text": "x", "score": float("inf")}]
    _append(env, ns, "telegram:1", [{"role": "user", "content": "hi", "id": "u1"}])
    _append(env, ns, "telegram:1", [{"role": "assistant", "content": content, "id": "a1"}])
    out = tmp_path / "out.jsonl"
    result = _invoke(["export", "-n", ns, "-o", str(out)], env)
    assert result.exit_code == 1, result.output
    assert (
        "error: conversation 'telegram:1', seq 2 holds NaN or an infinity, which JSON cannot "
        "represent; export stopped\n"
    ) in result.output
    assert not [p for p in tmp_path.iterdir() if p.name.startswith((".out", "out"))]
    shown = _invoke(["show", "telegram:1", "-n", ns, "--json"], env)
    assert (shown.exit_code, shown.output) == (
        1,
        "error: 'telegram:1' holds NaN or an infinity, which JSON cannot represent\n",
    )


# --- the in-memory backend: nothing to read, nothing kept ---------------------------------


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["migrate", "--from-backend", "sqlite", "--to-backend", "memory"], "--to-backend"),
        (["migrate", "--from-backend", "memory", "--to-backend", "sqlite"], "--from-backend"),
        (["import", "{export}"], "ORCHEO_GRAPH_STORE_BACKEND"),
        (["export"], "ORCHEO_GRAPH_STORE_BACKEND"),
        (["stats"], "ORCHEO_GRAPH_STORE_BACKEND"),
        (["show", "telegram:1"], "ORCHEO_GRAPH_STORE_BACKEND"),
        (["purge", "--older-than", "1d", "--yes"], "ORCHEO_GRAPH_STORE_BACKEND"),
    ],
)
def test_a_command_on_the_in_memory_store_is_refused_before_it_reports_anything(
    env: dict[str, str], tmp_path: Path, ns: str, args: list[str], names: str
) -> None:
    """The in-memory store lives as long as one command: a migration into it was reported
    verified and an import into it reported its turns stored, and both were gone when the
    command ended; reading from it reported an empty store."""
    _seed(_settings(env), ns, {"telegram:1": 2})
    exported = _invoke(["export", "-n", ns, "-o", str(tmp_path / "all.jsonl")], env)
    assert exported.exit_code == 0, exported.output
    args = [a.replace("{export}", str(tmp_path / "all.jsonl")) for a in args]
    if "--from-backend" not in args:
        env = {**env, "ORCHEO_GRAPH_STORE_BACKEND": "memory"}
    result = _invoke([*args, "-n", ns], env)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert f"error: {names}: memory " in result.stderr
    assert "use sqlite or postgres" in result.stderr
    with create_graph_store_sync(_settings(env)) as store:  # the SQLite source is as it was
        assert [t.content for t in ChatHistory(store, namespace=(ns,)).read("telegram:1")] == [
            "telegram:1 #0 ✓",
            "telegram:1 #1 ✓",
        ]


def test_a_conversation_stored_with_empty_ids_exports_imports_and_migrates(
    env: dict[str, str], tmp_path: Path, ns: str
) -> None:
    """Records holding ``"id": ""`` (what earlier releases stored for a message with an
    empty id) read as messages without an id: `export` writes ``null``, and `import` and
    `migrate` copy the conversation (`import` used to refuse the file, `migrate` to skip
    the conversation). A file of an earlier export holding ``""`` imports too."""
    key = "telegram:5"
    with create_graph_store_sync(_settings(env)) as store:
        history = ChatHistory(store, namespace=(ns,))
        history.append(key, [HumanMessage("q0", id="x"), AIMessage("a0", id="y")])
        chunk = store.get((ns, key), chunk_key(0))
        assert chunk is not None
        records = [{**record, "id": ""} for record in chunk.value["turns"]]
        store.put((ns, key), chunk_key(0), {**chunk.value, "turns": records}, index=False)
        assert [(m.content, m.id) for m in history.tail(key, 5)] == [("q0", None), ("a0", None)]
    exported = _invoke(["export", "-n", ns], env)
    assert exported.exit_code == 0, exported.output
    lines = [json.loads(line) for line in exported.stdout.splitlines()]
    assert [(line["content"], line["id"]) for line in lines] == [("q0", None), ("a0", None)]
    old_file = tmp_path / "old.jsonl"
    old_file.write_text("".join(json.dumps({**line, "id": ""}) + "\n" for line in lines))
    target = {**env, "ORCHEO_GRAPH_STORE_SQLITE_PATH": str(tmp_path / "target.sqlite")}
    imported = _invoke(["import", str(old_file)], target)
    assert imported.exit_code == 0, imported.output
    assert "imported 2 new turns into 1 conversation" in imported.output
    again = _invoke(["import", str(old_file)], target)
    assert again.exit_code == 0 and "(2 turns already present)" in again.output, again.output
    migrated_path = str(tmp_path / "migrated.sqlite")
    args = ["migrate", "--from-backend", "sqlite", "--to-backend", "sqlite",
            "--to-sqlite-path", migrated_path, "-n", ns, "--json"]  # fmt: skip
    migrated = _invoke(args, env)
    assert migrated.exit_code == 0, migrated.output
    assert json.loads(migrated.stdout)["turns_copied"] == 2
    for where in (target, {**env, "ORCHEO_GRAPH_STORE_SQLITE_PATH": migrated_path}):
        with create_graph_store_sync(_settings(where)) as store:
            stored = ChatHistory(store, namespace=(ns,)).read(key)
            assert [(t.seq, t.content, t.id) for t in stored] == [(1, "q0", None), (2, "a0", None)]
