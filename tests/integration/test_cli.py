"""The agent-history command, driven in-process against a SQLite file and real PostgreSQL."""

from __future__ import annotations

import json
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
    kept = _invoke(["purge", "--older-than", "30d", "-n", ns], env)
    assert "deleted 0 conversations" in kept.output
    gone = _invoke(["purge", "--older-than", "0s", "-n", ns], env)
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
    first = _invoke(["import", str(dump), "-n", target], env)
    assert "imported 73 new turns" in first.output
    second = _invoke(["import", str(dump), "-n", target], env)
    assert "imported 0 new turns" in second.output
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
