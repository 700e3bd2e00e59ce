"""A conversation's running summary moves with it: `migrate` copies it and verifies it,
`export` writes it after the conversation's turns and `import` restores it, so the agent
on the new store still knows what fell out of its window, and a conversation reset
before the move stays reset."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import SystemMessage
from langgraph.store.base import BaseStore, GetOp, Op, Result
from langgraph.store.memory import InMemoryStore
from typer.testing import CliRunner

from agent_history import AgentNode
from agent_history.cli import app
from agent_history.context import Summary
from agent_history.history import ChatHistory
from agent_history.settings import HistorySettings
from agent_history.stores import create_graph_store_sync
from agent_history.testing import RecordingChatModel
from agent_history.toggles import HistoryToggles
from agent_history.transfer import export_jsonl, migrate_history
from tests.support.agent_graphs import build_graph, new_thread, telegram_callback
from tests.support.summarisers import AccumulatingSummariser

runner = CliRunner()
KEY = "telegram:7"
FACTS = ["my name is Ana", "I live in Porto", "my dog is Rex"]


def _sqlite(path: Path) -> HistorySettings:
    return HistorySettings(graph_store_backend="sqlite", graph_store_sqlite_path=path)


def _agent(store: BaseStore, model: RecordingChatModel, **kwargs: Any) -> Any:
    node = AgentNode(
        model,
        use_graph_chat_history=True,
        toggles=HistoryToggles(env={}),
        max_messages=4,
        summary_model=AccumulatingSummariser(),
        summary_every=2,
        **kwargs,
    )
    return build_graph(node, store)


def _chat(settings: HistorySettings, texts: list[str], **kwargs: Any) -> RecordingChatModel:
    model = RecordingChatModel()
    with create_graph_store_sync(settings) as store:
        graph = _agent(store, model, **kwargs)
        for text in texts:
            graph.invoke(telegram_callback(7, text, uuid.uuid4().hex), new_thread())
    return model


def _summary(settings: HistorySettings) -> Summary | None:
    with create_graph_store_sync(settings) as store:
        return ChatHistory(store).summary(KEY)


def _env(source: Path, target: HistorySettings) -> dict[str, str]:
    env = {"ORCHEO_GRAPH_STORE_SQLITE_PATH": str(source)}
    if target.postgres_dsn is not None:
        env["ORCHEO_POSTGRES_DSN"] = target.dsn
    return env


def _summary_text(payload: list[Any]) -> str:
    found = [m for m in payload if isinstance(m, SystemMessage)]
    assert len(found) == 1, payload
    return str(found[0].content)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> HistorySettings:
    if request.param == "sqlite":
        return _sqlite(tmp_path / "target.sqlite")
    dsn: str = request.getfixturevalue("fresh_pg_dsn")
    return HistorySettings(graph_store_backend="postgres", postgres_dsn=dsn)


def test_migrate_copies_the_running_summary_and_the_agent_keeps_what_it_held(
    tmp_path: Path, target: HistorySettings
) -> None:
    source = _sqlite(tmp_path / "source.sqlite")
    _chat(source, [*FACTS, *(f"chat {i}" for i in range(8))])
    before = _summary(source)
    assert before is not None and "my name is Ana" in before.text and before.covers_seq >= 6

    args = ["migrate", "--from-backend", "sqlite", "--to-backend", target.graph_store_backend]
    if target.graph_store_backend == "sqlite":
        args += ["--to-sqlite-path", str(target.graph_store_sqlite_path)]
    env = _env(tmp_path / "source.sqlite", target)
    first = runner.invoke(app, args, env=env, catch_exceptions=False)

    assert first.exit_code == 0, first.output
    assert first.stdout == (
        "migrated 1 conversation, 22 turns and 1 summary copied; "
        "verification: all counts and checksums match\n"
    )
    assert _summary(target) == before
    again = runner.invoke(app, [*args, "--json"], env=env, catch_exceptions=False)
    assert again.exit_code == 0, again.output
    report = json.loads(again.stdout)
    assert (report["turns_copied"], report["summaries_copied"], report["verified"]) == (0, 0, True)
    assert _summary(target) == before  # not written again

    model = _chat(target, ["what is my name?"])
    assert "my name is Ana" in _summary_text(model.calls[0])


def test_a_conversation_reset_before_a_migration_stays_reset(tmp_path: Path) -> None:
    source, target = _sqlite(tmp_path / "source.sqlite"), _sqlite(tmp_path / "target.sqlite")
    _chat(source, ["my card is 4111", "my pin is 1234", "/reset"], reset_command="/reset")
    env = _env(tmp_path / "source.sqlite", target)
    args = ["migrate", "--from-backend", "sqlite", "--to-backend", "sqlite"]
    moved = runner.invoke(
        app, [*args, "--to-sqlite-path", str(tmp_path / "target.sqlite")], env=env
    )
    assert moved.exit_code == 0, moved.output

    model = _chat(target, ["what do you know about me?"], reset_command="/reset")
    seen = " ".join(str(m.content) for m in model.calls[0])
    assert "4111" not in seen and "1234" not in seen
    assert [str(m.content) for m in model.calls[0]][-2:] == [
        "echo: /reset",
        "what do you know about me?",
    ]


def test_export_writes_the_summary_after_the_turns_and_import_restores_it(tmp_path: Path) -> None:
    source, target = _sqlite(tmp_path / "source.sqlite"), _sqlite(tmp_path / "target.sqlite")
    _chat(source, [*FACTS, *(f"chat {i}" for i in range(8))])
    before = _summary(source)
    assert before is not None
    out = tmp_path / "all.jsonl"
    exported = runner.invoke(
        app, ["export", "-o", str(out)], env=_env(tmp_path / "source.sqlite", source)
    )
    assert exported.exit_code == 0, exported.output
    assert "exported 22 turns and 1 summary of 1 conversation" in exported.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line.get("seq") for line in lines] == [*range(1, 23), None]
    assert lines[-1] == {
        "namespace": ["agent_chat_history"],
        "key": KEY,
        "summary": {
            "text": before.text,
            "covers_seq": before.covers_seq,
            "version": before.version,
            "turns": before.turns,
            "skipped": before.skipped,
            "updated_at": before.updated_at,
        },
    }

    env = _env(tmp_path / "target.sqlite", target)
    imported = runner.invoke(app, ["import", str(out)], env=env)
    assert imported.exit_code == 0, imported.output
    assert imported.stdout == (
        "imported 22 new turns into 1 conversation (0 turns already present; 1 summary written)\n"
    )
    assert _summary(target) == before
    again = runner.invoke(app, ["import", str(out), "--json"], env=env)
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["summaries_written"] == 0
    assert _summary(target) == before


def _turn(seq: int, key: str = KEY) -> str:
    role = "user" if seq % 2 else "assistant"
    return json.dumps({"key": key, "seq": seq, "role": role, "content": f"t{seq}"})


def _summary_line(covers: int, key: str = KEY, **extra: Any) -> str:
    summary = {"text": "they said hi", "covers_seq": covers, "version": 3, **extra}
    return json.dumps({"key": key, "summary": summary})


@pytest.mark.parametrize(
    ("lines", "problem"),
    [
        (
            [_summary_line(1), _turn(1), _turn(2)],
            "line 1: the summary of conversation 'telegram:7' must follow its turns",
        ),
        (
            [_turn(1), _turn(2), _summary_line(3)],
            "line 3: the summary covers seq 3, past the conversation's last turn (seq 2, line 2)",
        ),
        (
            [_turn(1), _turn(2), _summary_line(1), _summary_line(2)],
            "line 4: conversation 'telegram:7' has a summary at line 3",
        ),
        (
            [_turn(1), _turn(1, "telegram:8"), _summary_line(1)],
            "line 3: the summary of conversation 'telegram:7' must follow its turns",
        ),
        (
            [_turn(1), _summary_line(0)],
            "line 2: summary.covers_seq must be a whole number from 1 to 2147483648",
        ),
        (
            [_turn(1), _summary_line(1, version=10**20)],
            "line 2: summary.version must be a whole number from 1 to 2147483648",
        ),
        (
            [_turn(1), _summary_line(1, turns=10**20)],
            "line 2: summary.turns must be a whole number from 0 to 2147483648",
        ),
        (
            [_turn(1), _summary_line(1, updated_at="2025\u0000")],
            "line 2: summary.updated_at '2025\\x00' is not an ISO-8601 time with a UTC offset",
        ),
        (
            [_turn(1), _summary_line(1, updated_at="\ud800")],
            "line 2: summary.updated_at '\\ud800' is not an ISO-8601 time with a UTC offset",
        ),
        (
            [_turn(1), json.dumps({"key": KEY, "summary": {"text": "x", "covers_seq": 1}})],
            "line 2: summary.covers_seq and summary.version are required",
        ),
        (  # Python 3.11's parser stops at a NUL and accepts what came before it
            [_turn(1), _summary_line(1, updated_at="2025-01-02T03:04:05+00:00\u0000")],
            "line 2: summary.updated_at '2025-01-02T03:04:05+00:00\\x00' is not an ISO-8601",
        ),
        (
            [
                json.dumps(
                    {
                        "key": KEY,
                        "seq": 1,
                        "role": "user",
                        "content": "x",
                        "ts": "2025-01-02T03:04:05+00:00\u0000",
                    }
                )
            ],
            "line 1: ts '2025-01-02T03:04:05+00:00\\x00' is not an ISO-8601 time",
        ),
        (
            [_turn(1), _summary_line(1, mood="odd")],
            "line 2: unknown summary field 'mood'",
        ),
        (
            [_turn(1), json.dumps({"key": KEY, "summary": {"text": 5, "covers_seq": 1}})],
            "line 2: summary.text must be a string (got a number)",
        ),
        (
            [_turn(1), json.dumps({"key": KEY, "seq": 2, "summary": {}})],
            "line 2: unknown field 'seq' beside summary",
        ),
    ],
)
def test_a_misplaced_or_malformed_summary_line_refuses_the_file(
    lines: list[str], problem: str, tmp_path: Path
) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(lines) + "\n")
    env = {"ORCHEO_GRAPH_STORE_SQLITE_PATH": str(tmp_path / "store.sqlite")}

    result = runner.invoke(app, ["import", str(path)], env=env)

    assert result.exit_code == 2, result.output
    assert f"{path}: {problem}" in result.stderr
    assert "nothing was written" in result.stderr
    with create_graph_store_sync(_sqlite(tmp_path / "store.sqlite")) as store:
        assert ChatHistory(store).count(KEY) == 0


def test_a_target_that_summarised_further_keeps_its_own_summary(tmp_path: Path) -> None:
    source = _sqlite(tmp_path / "source.sqlite")
    with create_graph_store_sync(source) as store:
        history = ChatHistory(store)
        history.append(KEY, [{"role": "user", "content": f"m{i}", "id": f"m{i}"} for i in range(8)])
        history.write_summary(KEY, "old summary", 4, base_version=0)
        newer = ChatHistory(store, namespace=("copy",))
        newer.import_turns(KEY, list(history.read(KEY)))
        newer.write_summary(KEY, "newer summary", 6, base_version=0)
        older = history.summary(KEY)
        assert older is not None
        assert not newer.import_summary(KEY, older).written
        summary = newer.summary(KEY)
        assert summary is not None and (summary.text, summary.covers_seq) == ("newer summary", 6)
        # An empty conversation takes no summary: its turns come first.
        assert not ChatHistory(store, namespace=("empty",)).import_summary(KEY, older).written


async def test_the_async_import_writes_the_summary_once(tmp_path: Path) -> None:
    with create_graph_store_sync(_sqlite(tmp_path / "store.sqlite")) as store:
        history = ChatHistory(store)
        await history.aappend(KEY, [{"role": "user", "content": "hi", "id": "m1"}])
        summary = Summary(text="they said hi", covers_seq=1, version=4, turns=1)
        assert (await history.aimport_summary(KEY, summary)).written
        assert not (await history.aimport_summary(KEY, summary)).written
        stored = await history.asummary(KEY)
        assert stored is not None
        assert (stored.text, stored.covers_seq, stored.version) == ("they said hi", 1, 4)


def test_a_target_that_summarised_the_same_turns_itself_verifies(tmp_path: Path) -> None:
    """The target keeps its own summary of as many turns: not a mismatch on every rerun."""
    source, target = _sqlite(tmp_path / "source.sqlite"), _sqlite(tmp_path / "target.sqlite")
    turns = [{"role": "user", "content": f"m{i}", "id": f"m{i}"} for i in range(6)]
    for settings, text in ((source, "the source's words"), (target, "the target's words")):
        with create_graph_store_sync(settings) as store:
            history = ChatHistory(store)
            history.append(KEY, turns)
            history.write_summary(KEY, text, 4, base_version=0)
    args = ["migrate", "--from-backend", "sqlite", "--to-backend", "sqlite"]
    args += ["--to-sqlite-path", str(tmp_path / "target.sqlite")]
    result = runner.invoke(app, args, env=_env(tmp_path / "source.sqlite", target))
    assert result.exit_code == 0, result.output
    assert result.stdout.endswith("verification: all counts and checksums match\n")
    kept = _summary(target)
    assert kept is not None and kept.text == "the target's words"


class _WritesDuringExport(BaseStore):
    """A store of its own whose first read of a chunk lets the agent write meanwhile: two
    more turns and a summary (here a reset) covering them."""

    def __init__(self, inner: BaseStore) -> None:
        self.inner, self.fired = inner, False

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        listed = list(ops)
        if not self.fired and any(
            isinstance(op, GetOp) and op.key.startswith("chunk:") for op in listed
        ):
            self.fired = True
            history = ChatHistory(self.inner)
            history.append(KEY, [{"role": "user", "content": "/reset", "id": "r"}])
            history.append(KEY, [{"role": "assistant", "content": "done", "id": "d"}])
            current = history.summary(KEY)
            history.write_summary(KEY, "", 8, base_version=current.version if current else 0)
        return self.inner.batch(listed)

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        return self.batch(ops)


def test_an_export_taken_while_the_agent_writes_keeps_a_summary_of_its_turns() -> None:
    inner = InMemoryStore()
    history = ChatHistory(inner)
    history.append(KEY, [{"role": "user", "content": f"m{i}", "id": f"m{i}"} for i in range(6)])
    history.write_summary(KEY, "they said m0 to m3", 4, base_version=0)
    out = io.StringIO()

    counts = export_jsonl(ChatHistory(_WritesDuringExport(inner)), out)

    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    last_seq = max(line["seq"] for line in lines if "seq" in line)
    summaries = [line["summary"] for line in lines if "summary" in line]
    assert counts.summaries == 1 and len(summaries) == 1, "the summary was left out"
    assert summaries[0]["covers_seq"] <= last_seq


def test_a_migration_taken_while_the_agent_writes_copies_a_summary_of_its_turns() -> None:
    inner = InMemoryStore()
    history = ChatHistory(inner)
    history.append(KEY, [{"role": "user", "content": f"m{i}", "id": f"m{i}"} for i in range(6)])
    history.write_summary(KEY, "they said m0 to m3", 4, base_version=0)
    target = ChatHistory(InMemoryStore())

    report = migrate_history(ChatHistory(_WritesDuringExport(inner)), target)

    assert report.ok and report.summaries_copied == 1
    copied = target.summary(KEY)
    assert copied is not None and copied.covers_seq <= target.count(KEY)
