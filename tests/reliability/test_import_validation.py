"""`agent-history import` refuses what it should (naming the line), writes nothing for a
refused file, honours each line's namespace, and round-trips every message field."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage, message_to_dict
from langgraph.store.base import BaseStore
from typer.testing import CliRunner

from agent_history.cli import app
from agent_history.history import ChatHistory
from agent_history.settings import HistorySettings
from agent_history.stores import create_graph_store_sync
from agent_history.transfer import import_jsonl

runner = CliRunner()


def _env(settings: HistorySettings) -> dict[str, str]:
    env = {
        "ORCHEO_GRAPH_STORE_BACKEND": settings.graph_store_backend.value,
        "ORCHEO_GRAPH_STORE_SQLITE_PATH": str(settings.graph_store_sqlite_path),
        "ORCHEO_CHECKPOINT_SQLITE_PATH": str(settings.checkpoint_sqlite_path),
    }
    if settings.postgres_dsn is not None:
        env["ORCHEO_POSTGRES_DSN"] = settings.dsn
    return env


def _line(key: str, seq: int, ns: str, **fields: Any) -> dict[str, Any]:
    role = fields.pop("role", "user" if seq % 2 else "assistant")
    return {"namespace": [ns], "key": key, "seq": seq, "role": role,
            "content": fields.pop("content", f"{key} #{seq}"), "id": None, "ts": None,
            **fields}  # fmt: skip


def _file(tmp_path: Path, rows: list[Any]) -> Path:
    path = tmp_path / f"import-{uuid.uuid4().hex[:6]}.jsonl"
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows),
        encoding="utf-8",
    )
    return path


def _stored(settings: HistorySettings, *namespaces: str) -> dict[str, list[str]]:
    with create_graph_store_sync(settings) as store:
        return {ns: sorted(ChatHistory(store, namespace=(ns,)).keys()) for ns in namespaces}


@pytest.fixture
def sqlite_settings(tmp_path: Path) -> HistorySettings:
    return HistorySettings(
        graph_store_backend="sqlite",
        graph_store_sqlite_path=tmp_path / "store.sqlite",
        checkpoint_sqlite_path=tmp_path / "cp.sqlite",
    )


def _refused(ns: str) -> list[tuple[str, list[Any], str]]:
    a = [_line("telegram:1", s, ns) for s in (1, 2, 3)]
    b = [_line("telegram:2", s, ns) for s in (1, 2)]
    return [
        ("gap", [*a, _line("telegram:1", 5, ns)],
         "line 4: seq 5 leaves a gap after seq 3 (line 3)"),
        ("repeat", [*a, _line("telegram:1", 3, ns)],
         "line 4: seq 3 repeats or goes back (line 3 has seq 3)"),
        ("late start", [_line("telegram:1", 2, ns)],
         "line 1: conversation 'telegram:1' starts at seq 2, not 1"),
        ("concatenated twice", [*a, *b, *a, *b],
         "line 6: conversation 'telegram:1' already appeared at lines 1-3"),
        ("null line", [*a, "null"], "line 4: expected a JSON object, got null"),
        ("array line", ["[1, 2]", *a], "line 1: expected a JSON object, got an array"),
        ("malformed after others", [*a, *b, '{"key": "telegram:3", "seq": 1,'],
         "line 6: invalid JSON (Expecting property name enclosed in double quotes, column 32)"),
        ("template key", [_line("{{chat_id}}", 1, ns)],
         "line 1: key is not a valid conversation key (unresolved_template)"),
        ("control key", [*a, _line("telegram:\n9", 1, ns)],
         "line 4: key is not a valid conversation key (invalid_chars)"),
        ("long key", [_line("k" * 300, 1, ns)],
         "line 1: key is not a valid conversation key (too_long)"),
        ("no key", [{"seq": 1, "role": "user", "content": "x"}], "line 1: key is missing"),
        ("dict content", [*a, _line("telegram:2", 1, ns, content={"text": "hi"})],
         "line 4: content: content must be a string or a list of content blocks (got dict)"),
        ("deep content", [_line("telegram:2", 1, ns, content=[{"type": "x", "v": json.loads("[" * 80 + "]" * 80)}])],
         "line 1: content: nested deeper than 64 levels"),
        ("system role", [_line("telegram:2", 1, ns, role="system")],
         "line 1: role 'system' is not one of user, assistant, tool"),
        ("repeated id", [_line("telegram:2", 1, ns, id="m1"), _line("telegram:2", 2, ns),
                         _line("telegram:2", 3, ns, id="m1")],
         "line 3: id 'm1' repeats line 1"),
        ("type against role", [_line("telegram:2", 1, ns, type="ai")],
         "line 1: type 'ai' does not match role 'user'"),
        ("unknown field", [_line("telegram:2", 1, ns, text="x")], "line 1: unknown field 'text'"),
        ("bad ts", [_line("telegram:2", 1, ns, ts="yesterday")],
         "line 1: ts 'yesterday' is not an ISO-8601 time with a UTC offset"),
        ("bool seq", [_line("telegram:2", 1, ns) | {"seq": True}],
         "line 1: seq must be a whole number from 1 (got True)"),
        ("bad namespace", [_line("telegram:2", 1, ns) | {"namespace": ["a.b"]}],
         "line 1: namespace label 0 contains '.'"),
        ("tool without call id", [_line("telegram:2", 1, ns, role="tool", type="tool")],
         "line 1: a tool message needs fields.tool_call_id"),
    ]  # fmt: skip


@pytest.mark.parametrize("case", [c[0] for c in _refused("x")])
def test_import_refuses_a_bad_file_naming_the_line_and_writes_nothing(
    case: str, sqlite_settings: HistorySettings, tmp_path: Path
) -> None:
    ns = "imp" + uuid.uuid4().hex[:8]
    rows, message = next((r, m) for name, r, m in _refused(ns) if name == case)
    path = _file(tmp_path, rows)
    result = runner.invoke(app, ["import", str(path)], env=_env(sqlite_settings))
    assert result.exit_code == 2, result.output
    assert f"{path}: {message}" in result.output
    assert "nothing was written" in result.output
    assert "char " not in result.output  # line and column, never a byte offset
    assert "Traceback" not in result.output
    assert _stored(sqlite_settings, ns, "agent_chat_history") == {ns: [], "agent_chat_history": []}


def test_a_line_that_is_not_utf8_is_named(sqlite_settings: HistorySettings, tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    good = json.dumps(_line("telegram:1", 1, "latin")).encode()
    path.write_bytes(good + b"\n" + b'{"key": "caf\xe9"}\n')
    result = runner.invoke(app, ["import", str(path)], env=_env(sqlite_settings))
    assert result.exit_code == 2
    assert "line 2: not UTF-8 text" in result.output


def test_each_line_goes_to_its_own_namespace(
    sqlite_settings: HistorySettings, tmp_path: Path
) -> None:
    a, b = "tenant_a" + uuid.uuid4().hex[:6], "tenant_b" + uuid.uuid4().hex[:6]
    rows = [_line("telegram:1", 1, a), _line("telegram:1", 2, a), _line("telegram:9", 1, b)]
    path = _file(tmp_path, rows)
    env = _env(sqlite_settings)
    # --namespace is a promise about the file: another tenant's line refuses all of it.
    only_a = runner.invoke(app, ["import", str(path), "-n", a], env=env)
    assert only_a.exit_code == 2
    assert f"line 3: namespace '{b}' is not '{a}' (given with --namespace)" in only_a.output
    into = runner.invoke(app, ["import", str(path), "--into", "elsewhere"], env=env)
    assert into.exit_code == 2
    assert f"line 3: namespace '{b}' differs from '{a}' (line 1)" in into.output
    assert _stored(sqlite_settings, a, b, "agent_chat_history", "elsewhere") == {
        a: [],
        b: [],
        "agent_chat_history": [],
        "elsewhere": [],
    }
    done = runner.invoke(app, ["import", str(path)], env=env)
    assert done.exit_code == 0, done.output
    assert "imported 3 new turns into 2 conversations (0 turns already present)" in done.output
    assert _stored(sqlite_settings, a, b, "agent_chat_history") == {
        a: ["telegram:1"],
        b: ["telegram:9"],
        "agent_chat_history": [],
    }


def test_export_import_round_trip_is_exact_for_tool_calls(store: BaseStore, tmp_path: Path) -> None:
    ns = ("rt", uuid.uuid4().hex[:8])
    source = ChatHistory(store, namespace=ns, scope="full")
    call = {"name": "lookup", "args": {"q": "weather", "n": 10**30}, "id": "call-1"}
    messages = [
        HumanMessage("what's the weather?", id="u1", name="ana"),
        AIMessage("", id="a1", tool_calls=[call], usage_metadata={
            "input_tokens": 3, "output_tokens": 5, "total_tokens": 8}),
        ToolMessage("sunny \ud800", tool_call_id="call-1", id="t1", artifact={"raw": [1.5]}),
        AIMessage([{"type": "text", "text": "It is sunny."}], id="a2",
                  response_metadata={"model": "m"}),
    ]  # fmt: skip
    source.append("telegram:7", messages)
    from agent_history.transfer import export_jsonl

    path = tmp_path / "rt.jsonl"
    with path.open("w", encoding="utf-8") as out:
        assert export_jsonl(source, out) == (1, 4, 0)
    line = json.loads(path.read_text().splitlines()[1])
    assert line["type"] == "ai" and line["fields"]["tool_calls"][0]["id"] == "call-1"
    target_ns = ("rt", uuid.uuid4().hex[:8])
    plan, report = import_jsonl(store, lambda: path.open(encoding="utf-8"), into=target_ns)
    assert plan.ok and (report.written, report.present) == (4, 0)
    target = ChatHistory(store, namespace=target_ns)
    back = target.tail("telegram:7", 10)
    assert [message_to_dict(m) for m in back] == [message_to_dict(m) for m in messages]
    src_turns, dst_turns = list(source.read("telegram:7")), list(target.read("telegram:7"))
    assert [t.ts for t in dst_turns] == [t.ts for t in src_turns]
    assert target.info("telegram:7").updated_at == src_turns[-1].ts  # type: ignore[union-attr]
    _, again = import_jsonl(store, lambda: path.open(encoding="utf-8"), into=target_ns)
    assert (again.written, again.present) == (0, 4)
    assert len(list(target.read("telegram:7"))) == 4


def test_an_export_written_before_types_were_kept_still_imports(
    sqlite_settings: HistorySettings, tmp_path: Path
) -> None:
    ns = "old" + uuid.uuid4().hex[:6]
    rows = [
        {"namespace": [ns], "key": "wecom_dm:bob", "seq": 1, "role": "user",
         "content": "hello", "id": "w1", "ts": "2024-01-02T03:04:05.000006+00:00"},
        {"namespace": [ns], "key": "wecom_dm:bob", "seq": 2, "role": "assistant",
         "content": [{"type": "text", "text": "hi"}], "id": None, "ts": None},
        {"namespace": [ns], "key": "wecom_dm:bob", "seq": 3, "role": "tool",
         "content": "42", "id": "t9", "ts": None},
    ]  # fmt: skip
    path = _file(tmp_path, rows)
    result = runner.invoke(app, ["import", str(path)], env=_env(sqlite_settings))
    assert result.exit_code == 0, result.output
    assert "imported 3 new turns into 1 conversation (" in result.output
    with create_graph_store_sync(sqlite_settings) as store:
        history = ChatHistory(store, namespace=(ns,))
        messages = history.tail("wecom_dm:bob", 5)
        info = history.info("wecom_dm:bob")
    assert [type(m).__name__ for m in messages] == ["HumanMessage", "AIMessage", "ToolMessage"]
    assert [m.content for m in messages] == ["hello", [{"type": "text", "text": "hi"}], "42"]
    assert info is not None and info.created_at == "2024-01-02T03:04:05.000006+00:00"


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"id": "x1"}, "line 3: id 'x1' repeats line 1"),
        ({"role": "system"}, "line 3: role 'system' is not one of user, assistant, tool"),
    ],
)
def test_rerunning_an_import_with_a_repeated_id_or_a_skipped_role_adds_nothing(
    bad: dict[str, Any], message: str, sqlite_settings: HistorySettings, tmp_path: Path
) -> None:
    # Such files used to import short (the repeat or the system line dropped), and every
    # later run appended the tail again; now they are refused whole, every time.
    ns = "rerun" + uuid.uuid4().hex[:6]
    rows = [
        _line("telegram:5", 1, ns, id="x1"),
        _line("telegram:5", 2, ns),
        _line("telegram:5", 3, ns, **bad),
        _line("telegram:5", 4, ns),
    ]
    path = _file(tmp_path, rows)
    for _ in range(2):
        result = runner.invoke(app, ["import", str(path)], env=_env(sqlite_settings))
        assert result.exit_code == 2
        assert message in result.output
    assert _stored(sqlite_settings, ns) == {ns: []}


@pytest.mark.parametrize("content", [b"", b"\n\n"])
def test_an_empty_input_is_imported_with_a_warning(
    sqlite_settings: HistorySettings, tmp_path: Path, content: bytes
) -> None:
    """An empty store's export holds no turns (importing it is not an error), but so
    does what a command that failed upstream of a pipe leaves: the operator is told."""
    path = tmp_path / "empty.jsonl"
    path.write_bytes(content)
    result = runner.invoke(app, ["import", str(path)], env=_env(sqlite_settings))
    assert result.exit_code == 0, result.output
    assert f"warning: {path} holds no turns" in result.output.replace("\n", "")
    assert "imported 0 new turns into 0 conversations" in result.output
