"""The agent-history command, driven in-process against a SQLite file and real PostgreSQL."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from agent_history.cli import app
from agent_history.history import ChatHistory
from agent_history.settings import HistorySettings
from agent_history.stores import create_graph_store_sync
from agent_history.transfer import conversation_checksum, migrate_history
from tests.reliability.test_close_during_call import _lock_holder

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


def _invoke(args: list[str], env: dict[str, str]) -> Any:
    return runner.invoke(app, args, env=env, catch_exceptions=False)


def _seed(settings: HistorySettings, namespace: str, conversations: dict[str, int]) -> None:
    with create_graph_store_sync(settings) as store:
        history = ChatHistory(store, namespace=(namespace,))
        for key, turns in conversations.items():
            history.append(
                key,
                [
                    {
                        "role": "user" if i % 2 == 0 else "assistant",
                        "content": f"{key} #{i} ✓",
                        "id": f"{key}-{i}",
                    }
                    for i in range(turns)
                ],
            )


@pytest.fixture
def ns() -> str:
    return "cli" + uuid.uuid4().hex[:10]


def test_demo_runs_offline_and_says_where_data_lives(persistent_settings: HistorySettings) -> None:
    result = _invoke(["demo"], _env(persistent_settings))
    assert result.exit_code == 0, result.output
    assert "telegram:424242" in result.output and "wecom_cs:wkDemoKf:wmDemoUser" in result.output
    assert "read_only" in result.output and "shadow" in result.output
    assert "data lives in the" in result.output
    if persistent_settings.graph_store_backend.value == "sqlite":
        assert str(persistent_settings.graph_store_sqlite_path) in result.output.replace("\n", "")
    again = _invoke(["demo"], _env(persistent_settings))
    assert again.exit_code == 0


def test_doctor_healthy(persistent_settings: HistorySettings) -> None:
    result = _invoke(["doctor", "--json"], _env(persistent_settings))
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (
        report["probe"] == "ok"
        and report["backend"] == persistent_settings.graph_store_backend.value
    )


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"ORCHEO_GRAPH_STORE_BACKEND": "postgres"}, "ORCHEO_POSTGRES_DSN"),
        ({"ORCHEO_GRAPH_STORE_SQLITE_PATH": "relative/store.db"}, "ORCHEO_GRAPH_STORE_SQLITE_PATH"),
        (
            {"ORCHEO_GRAPH_STORE_SQLITE_PATH": "/etc/hostname/store.db"},
            "ORCHEO_GRAPH_STORE_SQLITE_PATH",
        ),
        (
            {
                "ORCHEO_GRAPH_STORE_BACKEND": "postgres",
                "ORCHEO_POSTGRES_DSN": "postgresql://u:pw@127.0.0.1:1/x",
                "ORCHEO_POSTGRES_CONNECT_TIMEOUT": "2",
            },
            "ORCHEO_POSTGRES_DSN",
        ),
        ({"ORCHEO_GRAPH_CHAT_HISTORY_MODE": "sideways"}, "ORCHEO_GRAPH_CHAT_HISTORY_MODE"),
        (
            {"ORCHEO_GRAPH_CHAT_HISTORY_FLAGS_FILE": "/nonexistent/flags.json"},
            "ORCHEO_GRAPH_CHAT_HISTORY_FLAGS_FILE",
        ),
    ],
)
def test_doctor_broken_configurations_exit_nonzero_naming_the_variable(
    env: dict[str, str], variable: str, tmp_path: Path
) -> None:
    base = {
        "ORCHEO_GRAPH_STORE_SQLITE_PATH": str(tmp_path / "s.db"),
        "ORCHEO_CHECKPOINT_SQLITE_PATH": str(tmp_path / "c.db"),
    }
    result = _invoke(["doctor"], {**base, **env})
    assert result.exit_code != 0
    assert variable in result.output
    assert "pw@" not in result.output


@pytest.mark.parametrize("query", ["sslmode=bogus", "target_session_attrs=master"])
def test_a_dsn_value_libpq_would_refuse_is_a_configuration_error(
    query: str, tmp_path: Path
) -> None:
    env = {
        "ORCHEO_GRAPH_STORE_BACKEND": "postgres",
        "ORCHEO_POSTGRES_DSN": f"postgresql://u:pw@127.0.0.1:1/x?{query}",
        "ORCHEO_CHECKPOINT_SQLITE_PATH": str(tmp_path / "c.db"),
    }
    result = _invoke(["stats"], env)
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ORCHEO_POSTGRES_DSN: ")
    assert "pw@" not in result.output and query.split("=")[1] not in result.output


def test_stats_show_delete_and_purge(persistent_settings: HistorySettings, ns: str) -> None:
    _seed(persistent_settings, ns, {"telegram:1": 4, "telegram:2": 6, "wecom_dm:alice": 2})
    env = _env(persistent_settings)
    stats = json.loads(_invoke(["stats", "-n", ns, "--json"], env).stdout)
    assert stats["conversations"] == 3 and stats["turns"] == 12
    assert stats["largest"] == {"key": "telegram:2", "turns": 6}
    assert stats["channels"]["telegram"] == {"conversations": 2, "turns": 10}
    shown = _invoke(["show", "telegram:2", "-n", ns, "--last", "2"], env)
    assert "telegram:2 #5 ✓" in shown.output and "telegram:2 #3" not in shown.output
    assert _invoke(["delete", "wecom_dm:alice", "-n", ns, "--yes"], env).exit_code == 0
    dry = json.loads(
        _invoke(["purge", "--older-than", "0s", "-n", ns, "--dry-run", "--json"], env).output
    )
    assert sorted(c["key"] for c in dry["conversations"]) == ["telegram:1", "telegram:2"]
    assert json.loads(_invoke(["stats", "-n", ns, "--json"], env).stdout)["conversations"] == 2
    kept = _invoke(["purge", "--older-than", "30d", "-n", ns, "--yes"], env)
    assert "deleted 0 conversations" in kept.output
    gone = _invoke(["purge", "--older-than", "0s", "-n", ns, "--yes"], env)
    assert "deleted 2 conversations" in gone.output
    assert json.loads(_invoke(["stats", "-n", ns, "--json"], env).stdout)["conversations"] == 0
    assert _invoke(["purge", "--older-than", "soon", "-n", ns], env).exit_code == 2


def test_export_then_import_is_exact_and_idempotent(
    persistent_settings: HistorySettings, ns: str, tmp_path: Path
) -> None:
    _seed(persistent_settings, ns, {"telegram:9": 70, "wecom_cs:kf:u": 3})
    env = _env(persistent_settings)
    dump = tmp_path / "dump.jsonl"
    assert _invoke(["export", "-n", ns, "-o", str(dump)], env).exit_code == 0
    lines = [json.loads(line) for line in dump.read_text().splitlines()]
    assert len(lines) == 73 and lines[0]["key"] in ("telegram:9", "wecom_cs:kf:u")
    only = _invoke(["export", "-n", ns, "-k", "wecom_cs:kf:u"], env)
    assert len(only.stdout.strip().splitlines()) == 3
    target = ns + "copy"
    first = _invoke(["import", str(dump), "--into", target], env)
    assert "imported 73 new turns into 2 conversations (0 turns already present)" in first.output
    second = _invoke(["import", str(dump), "--into", target], env)
    assert "imported 0 new turns into 2 conversations (73 turns already present)" in second.output
    with create_graph_store_sync(persistent_settings) as store:
        for key in ("telegram:9", "wecom_cs:kf:u"):
            src = conversation_checksum(ChatHistory(store, namespace=(ns,)).read(key))
            dst = conversation_checksum(ChatHistory(store, namespace=(target,)).read(key))
            assert src == dst


def test_replay_reports_checks_and_survives_a_broken_identity(
    persistent_settings: HistorySettings, tmp_path: Path, ns: str
) -> None:
    records = []
    for i in range(4):
        records.append(
            {
                "inputs": {"message": {"text": f"tg {i}"}},
                "results": {"telegram_events_parser": {"chat_id": 555}},
            }
        )
        records.append(
            {
                "inputs": {"message": f"cs {i}"},
                "results": {"wecom_cs_sync": {"open_kf_id": "kf1", "external_userid": "u1"}},
            }
        )
    records.append(
        {
            "inputs": {"message": "who am I?"},
            "results": {"telegram_events_parser": {"chat_id": None}},
        }
    )
    fixture = tmp_path / "callbacks.jsonl"
    fixture.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    result = _invoke(
        ["replay", str(fixture), "-n", ns, "--max-messages", "4", "--json"],
        _env(persistent_settings),
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["runs"] == 9 and report["ok"] is True
    assert report["identities"] == {"telegram:555": 4, "wecom_cs:kf1:u1": 4}
    assert report["keyless_runs"] == 1
    assert all(check["ok"] for check in report["checks"])
    with create_graph_store_sync(persistent_settings) as store:
        assert ChatHistory(store, namespace=(ns,)).count("telegram:555") == 8


def test_replay_rejects_a_malformed_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"inputs": {}}\nnot json\n')
    result = _invoke(["replay", str(bad)], {"ORCHEO_GRAPH_STORE_BACKEND": "memory"})
    assert result.exit_code == 2 and "line 2" in result.output


@pytest.mark.postgres
def test_migrate_sqlite_to_postgres_round_trip_and_resume(
    tmp_path: Path, fresh_pg_dsn: str, ns: str
) -> None:
    sqlite = HistorySettings(
        graph_store_backend="sqlite", graph_store_sqlite_path=tmp_path / "src.sqlite"
    )
    conversations = {f"telegram:{i}": 10 + i * 37 for i in range(6)}
    _seed(sqlite, ns, conversations)
    postgres = HistorySettings(graph_store_backend="postgres", postgres_dsn=fresh_pg_dsn)
    # Simulate a migration killed half-way: two conversations copied, one partly copied.
    with (
        create_graph_store_sync(sqlite) as src_store,
        create_graph_store_sync(postgres) as dst_store,
    ):
        source, target = (
            ChatHistory(src_store, namespace=(ns,)),
            ChatHistory(dst_store, namespace=(ns,)),
        )
        migrate_history(source, target, keys=["telegram:0", "telegram:1"])
        target.append("telegram:2", list(source.read("telegram:2"))[:50])
    env = {
        "ORCHEO_POSTGRES_DSN": fresh_pg_dsn,
        "ORCHEO_GRAPH_STORE_SQLITE_PATH": str(tmp_path / "src.sqlite"),
    }
    result = _invoke(
        ["migrate", "--from-backend", "sqlite", "--to-backend", "postgres", "-n", ns, "--json"], env
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["verified"] is True and summary["conversations"] == 6
    assert summary["turns_copied"] == sum(conversations.values()) - 10 - 47 - 50
    again = json.loads(
        _invoke(
            ["migrate", "--from-backend", "sqlite", "--to-backend", "postgres", "-n", ns, "--json"],
            env,
        ).output
    )
    assert again["turns_copied"] == 0 and again["verified"] is True
    with (
        create_graph_store_sync(sqlite) as src_store,
        create_graph_store_sync(postgres) as dst_store,
    ):
        for key in conversations:
            src = list(ChatHistory(src_store, namespace=(ns,)).read(key))
            dst = list(ChatHistory(dst_store, namespace=(ns,)).read(key))
            assert [(t.seq, t.role, t.content, t.id) for t in src] == [
                (t.seq, t.role, t.content, t.id) for t in dst
            ]


def test_migrate_refuses_the_same_store(tmp_path: Path) -> None:
    env = {"ORCHEO_GRAPH_STORE_SQLITE_PATH": str(tmp_path / "x.sqlite")}
    result = _invoke(["migrate", "--from-backend", "sqlite", "--to-backend", "sqlite"], env)
    assert result.exit_code == 2 and "same store" in result.output


@pytest.mark.parametrize("spelling", ["symlink", "dot-dot", "hard link"])
def test_migrate_refuses_the_same_file_spelled_another_way(tmp_path: Path, spelling: str) -> None:
    """The source file through a symlink, ``..`` or a hard link: migrate copied nothing
    and said "verification: all counts and checksums match" (exit 0)."""
    source = tmp_path / "x.sqlite"
    settings = HistorySettings(graph_store_sqlite_path=source)
    _seed(settings, "ns", {"telegram:1": 2})
    (tmp_path / "sub").mkdir()
    target = {"symlink": tmp_path / "link.sqlite", "dot-dot": tmp_path / "sub" / ".." / "x.sqlite",
              "hard link": tmp_path / "hard.sqlite"}[spelling]  # fmt: skip
    if spelling == "symlink":
        target.symlink_to(source)
    elif spelling == "hard link":
        os.link(source, target)
    args = ["migrate", "--from-backend", "sqlite", "--to-backend", "sqlite", "-n", "ns"]
    result = _invoke([*args, "--to-sqlite-path", str(target)], _env(settings))
    assert result.exit_code == 2, result.output
    assert result.output == "error: source and target are the same store\n"


def test_migrate_reads_a_target_path_as_the_variable_reads_it(tmp_path: Path) -> None:
    """A target path with a trailing space made a file whose name ends in a space, which
    workers given the same text in ORCHEO_GRAPH_STORE_SQLITE_PATH (trimmed) never open."""
    settings = HistorySettings(graph_store_sqlite_path=tmp_path / "x.sqlite")
    _seed(settings, "ns", {"telegram:1": 2})
    args = ["migrate", "--from-backend", "sqlite", "--to-backend", "sqlite", "-n", "ns"]
    result = _invoke([*args, "--to-sqlite-path", f"{tmp_path / 'y.sqlite'} "], _env(settings))
    assert result.exit_code == 0, result.output
    assert not any(p.name.endswith(" ") for p in tmp_path.iterdir())
    target = HistorySettings(graph_store_sqlite_path=f"{tmp_path / 'y.sqlite'} ")
    with create_graph_store_sync(target) as store:
        assert ChatHistory(store, namespace=("ns",)).count("telegram:1") == 2


# --- a CLI that never throws a traceback ------------------------------------------------

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"


def scratch_env(tmp_path: Path) -> dict[str, str]:
    """The CLI's environment: SQLite store and checkpoints in ``tmp_path``."""
    return {
        "ORCHEO_GRAPH_STORE_BACKEND": "sqlite",
        "ORCHEO_GRAPH_STORE_SQLITE_PATH": str(tmp_path / "store.sqlite"),
        "ORCHEO_CHECKPOINT_SQLITE_PATH": str(tmp_path / "checkpoints.sqlite"),
    }


@pytest.fixture
def sqlite_env(tmp_path: Path) -> dict[str, str]:
    return scratch_env(tmp_path)


def _sqlite(env: dict[str, str]) -> HistorySettings:
    return HistorySettings(graph_store_sqlite_path=env["ORCHEO_GRAPH_STORE_SQLITE_PATH"])


def test_version(sqlite_env: dict[str, str]) -> None:
    from importlib.metadata import version

    result = _invoke(["--version"], sqlite_env)
    assert result.exit_code == 0
    assert result.stdout == f"agent-history {version('agent-history')}\n"


@pytest.mark.parametrize("where", ["missing directory", "a directory"])
def test_export_to_an_unwritable_place_is_a_clear_error(
    where: str, sqlite_env: dict[str, str], tmp_path: Path, ns: str
) -> None:
    _seed(_sqlite(sqlite_env), ns, {"telegram:1": 2})
    out = tmp_path / "nope" / "x.jsonl" if where == "missing directory" else tmp_path
    result = _invoke(["export", "-n", ns, "-o", str(out)], sqlite_env)
    assert result.exit_code == 2
    reason = (
        f"directory {tmp_path / 'nope'} does not exist"
        if where != "a directory"
        else ("it is a directory")
    )
    assert result.output == f"error: cannot write {out}: {reason}\n"
    assert not (tmp_path / "nope").exists()


def test_export_and_import_show_progress_and_count_in_the_singular(
    sqlite_env: dict[str, str], tmp_path: Path, ns: str
) -> None:
    _seed(_sqlite(sqlite_env), ns, {"telegram:1": 1})
    out = tmp_path / "one.jsonl"
    exported = _invoke(["export", "-n", ns, "-o", str(out)], sqlite_env)
    assert exported.exit_code == 0
    assert "exporting" in exported.output and "1/1" in exported.output
    assert f"exported 1 turn of 1 conversation to {out}" in exported.output
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")] == []
    imported = _invoke(["import", str(out), "--into", ns + "copy"], sqlite_env)
    assert imported.exit_code == 0, imported.output
    assert "checking" in imported.output and "importing" in imported.output
    assert "imported 1 new turn into 1 conversation (0 turns already present)" in imported.output
    stats = _invoke(["stats", "-n", ns + "copy"], sqlite_env)
    assert "largest: telegram:1 (1 turn)" in stats.output


def test_show_export_and_delete_of_an_unknown_key_fail(
    sqlite_env: dict[str, str], ns: str, tmp_path: Path
) -> None:
    _seed(_sqlite(sqlite_env), ns, {"telegram:1": 1})
    message = f"error: no conversation 'telegram:404' in namespace '{ns}'\n"
    for args in (
        ["show", "telegram:404", "-n", ns],
        ["show", "telegram:404", "-n", ns, "--json"],
        ["export", "-n", ns, "-k", "telegram:1", "-k", "telegram:404", "-o", str(tmp_path / "x")],
        ["delete", "telegram:404", "-n", ns, "--yes"],
    ):
        result = _invoke(args, sqlite_env)
        assert (result.exit_code, result.output) == (1, message), args
    assert not (tmp_path / "x").exists()
    bad = _invoke(["show", "{{chat_id}}", "-n", ns], sqlite_env)
    assert bad.exit_code == 2 and "invalid conversation key" in bad.output


def test_purge_lists_first_and_asks_before_deleting(sqlite_env: dict[str, str], ns: str) -> None:
    settings = _sqlite(sqlite_env)
    _seed(settings, ns, {"telegram:1": 1, "telegram:2": 3})
    args = ["purge", "--older-than", "0s", "-n", ns]
    declined = runner.invoke(app, args, env=sqlite_env, input="n\n")
    assert declined.exit_code == 1
    listing = "2 conversations idle since before"
    assert listing in declined.output
    assert "  telegram:1 (1 turn, last write " in declined.output
    assert "  telegram:2 (3 turns, last write " in declined.output
    assert "delete 2 conversations (4 turns) idle since before" in declined.output
    assert declined.output.index(listing) < declined.output.index("delete 2 conversations")
    assert "not confirmed; nothing deleted (--yes skips the question)" in declined.output
    no_terminal = runner.invoke(app, args, env=sqlite_env, input="")
    assert no_terminal.exit_code == 1 and "nothing deleted" in no_terminal.output
    dry = _invoke([*args, "--dry-run"], sqlite_env)
    assert dry.exit_code == 0 and "would delete 2 conversations idle" in dry.output
    with create_graph_store_sync(settings) as store:
        assert sorted(ChatHistory(store, namespace=(ns,)).keys()) == ["telegram:1", "telegram:2"]
    agreed = runner.invoke(app, args, env=sqlite_env, input="y\n")
    assert agreed.exit_code == 0 and "deleted 2 conversations idle" in agreed.output
    _seed(settings, ns, {"telegram:3": 1})
    quiet = _invoke([*args, "--yes"], sqlite_env)
    assert quiet.exit_code == 0
    assert "1 conversation idle since before" in quiet.output and "Delete" not in quiet.output
    assert "deleted 1 conversation idle since before" in quiet.output


def test_delete_asks_naming_the_size(sqlite_env: dict[str, str], ns: str) -> None:
    _seed(_sqlite(sqlite_env), ns, {"telegram:1": 3})
    declined = runner.invoke(app, ["delete", "telegram:1", "-n", ns], env=sqlite_env, input="n\n")
    assert declined.exit_code == 1
    assert "delete conversation telegram:1 (3 turns)?" in declined.output
    agreed = runner.invoke(app, ["delete", "telegram:1", "-n", ns], env=sqlite_env, input="y\n")
    assert agreed.exit_code == 0 and "deleted 3 turns of telegram:1" in agreed.output


def test_delete_removes_a_conversation_never_migrated_from_the_single_item_layout(
    sqlite_env: dict[str, str], ns: str
) -> None:
    """A deletion request for a conversation that only the single-item layout holds:
    its item is deleted (not "no conversation" with the item left in place)."""
    with create_graph_store_sync(_sqlite(sqlite_env)) as store:
        store.put(
            (ns,), "telegram:8", {"version": 1, "messages": [{"role": "user", "content": "x"}]}
        )
        store.put((ns,), "telegram:9", {"note": "not a history item"})
    declined = runner.invoke(app, ["delete", "telegram:8", "-n", ns], env=sqlite_env, input="n\n")
    assert declined.exit_code == 1
    assert "delete the single-item layout's item of telegram:8 (1 message)?" in declined.output
    agreed = runner.invoke(app, ["delete", "telegram:8", "-n", ns, "--yes"], env=sqlite_env)
    assert agreed.exit_code == 0, agreed.output
    assert "deleted the single-item layout's item of telegram:8 (1 message)" in agreed.output
    other = runner.invoke(app, ["delete", "telegram:9", "-n", ns, "--yes"], env=sqlite_env)
    assert other.exit_code == 1 and "no conversation 'telegram:9'" in other.output
    with create_graph_store_sync(_sqlite(sqlite_env)) as store:
        assert store.get((ns,), "telegram:8") is None
        assert store.get((ns,), "telegram:9") is not None


def test_replay_of_the_sample_file_uses_a_scratch_namespace(sqlite_env: dict[str, str]) -> None:
    sample = EXAMPLES / "callbacks.jsonl"
    namespaces = set()
    for _ in range(3):
        result = _invoke(["replay", str(sample), "--json"], sqlite_env)
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        assert report["ok"] is True and report["runs"] == 7 and report["kept"] is False
        assert report["identities"] == {"telegram:4242": 3, "wecom_cs:wkSupport:wmCustomer7": 3}
        namespaces.add(report["namespace"])
    assert len(namespaces) == 3
    assert all(n.startswith("agent_history_replay.r") for n in namespaces)
    with create_graph_store_sync(_sqlite(sqlite_env)) as store:
        assert list(ChatHistory(store).keys()) == []  # production history untouched
        for namespace in namespaces:
            assert list(ChatHistory(store, namespace=namespace.split(".")).keys()) == []
    kept = _invoke(["replay", str(sample)], sqlite_env)
    assert kept.exit_code == 0 and "PASS" in kept.output
    assert "history written to scratch namespace agent_history_replay.r" in kept.output
    assert "removed (--keep keeps it)" in kept.output
    keep = json.loads(_invoke(["replay", str(sample), "--keep", "--json"], sqlite_env).stdout)
    with create_graph_store_sync(_sqlite(sqlite_env)) as store:
        history = ChatHistory(store, namespace=keep["namespace"].split("."))
        assert history.count("telegram:4242") == 6
    no_ns = _invoke(["replay", str(sample), "--graph", "x:y"], sqlite_env)
    assert no_ns.exit_code == 2 and "--graph needs --namespace" in no_ns.output


def test_demo_tables_fit_80_columns(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    env = {
        **os.environ,
        "ORCHEO_GRAPH_STORE_SQLITE_PATH": str(tmp_path / "g.sqlite"),
        "ORCHEO_CHECKPOINT_SQLITE_PATH": str(tmp_path / "c.sqlite"),
        "COLUMNS": "200",  # tables take their natural width: none may need more than 80
    }
    done = subprocess.run(
        [sys.executable, "-m", "agent_history.cli", "demo"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    table_lines = [line for line in done.stdout.splitlines() if line[:1] in "┏┃┡│└╭╰"]
    assert len(table_lines) > 15
    assert max(len(line) for line in table_lines) <= 80, max(table_lines, key=len)


def test_unexpected_errors_are_one_line_without_a_traceback(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    broken = tmp_path / "store.sqlite"
    broken.write_bytes(b"this is not a database" * 100)
    env = {**os.environ, "ORCHEO_GRAPH_STORE_SQLITE_PATH": str(broken)}
    env.pop("AGENT_HISTORY_DEBUG", None)
    done = subprocess.run(
        [sys.executable, "-m", "agent_history.cli", "stats"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode in (2, 3), done.stderr
    assert "Traceback" not in done.stderr and done.stderr.startswith("error: ")
    assert len(done.stderr.strip().splitlines()) == 1


def test_doctor_on_a_store_that_cannot_take_the_probe_exits_3(tmp_path: Path) -> None:
    """A store that is reachable but cannot write (here: another process holds SQLite's
    write lock past the busy timeout) failed (exit 3), like an unreachable one; it is not
    a failed check (exit 1)."""
    settings = HistorySettings(
        graph_store_sqlite_path=tmp_path / "store.sqlite",
        checkpoint_sqlite_path=tmp_path / "checkpoints.sqlite",
    )
    env = {**_env(settings), "ORCHEO_GRAPH_STORE_SQLITE_BUSY_TIMEOUT": "0.2"}
    assert _invoke(["doctor"], env).exit_code == 0  # set up while free
    with _lock_holder(tmp_path / "store.sqlite"):
        result = _invoke(["doctor"], env)
    assert result.exit_code == 3, result.output
    assert "probe round-trip failed: StoreUnavailable" in " ".join(result.output.split())
    assert "database is locked" in result.output and "Traceback" not in result.output


def test_a_damaged_store_file_is_a_failed_store_not_a_setting(tmp_path: Path) -> None:
    """A truncated copy of a store (a live file copied, a full disk) exited 2, "invalid
    configuration", while the same damage met by a read exits 3: it is the store that
    failed, and the message now says how to check the file and to restore it."""
    import sqlite3

    settings = HistorySettings(graph_store_sqlite_path=tmp_path / "live.sqlite")
    _seed(settings, "ns", {f"telegram:{i}": 40 for i in range(20)})
    with sqlite3.connect(settings.graph_store_sqlite_path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    damaged = tmp_path / "copy.sqlite"
    damaged.write_bytes(settings.graph_store_sqlite_path.read_bytes()[:8192])
    for command in (["doctor"], ["stats", "-n", "ns"], ["export", "-n", "ns"]):
        result = _invoke(command, {"ORCHEO_GRAPH_STORE_SQLITE_PATH": str(damaged)})
        assert result.exit_code == 3, (command, result.output)
        assert "database disk image is malformed" in result.output
        assert "restore it from a backup" in result.output


def test_a_directory_as_the_store_path_is_named_as_one(tmp_path: Path) -> None:
    """It said "unable to open database file", which sends an operator to permissions."""
    result = _invoke(["stats"], {"ORCHEO_GRAPH_STORE_SQLITE_PATH": str(tmp_path)})
    assert result.exit_code == 2
    assert result.output == (
        f"error: ORCHEO_GRAPH_STORE_SQLITE_PATH: {tmp_path} is a directory: "
        "give the file's path in it\n"
    )
