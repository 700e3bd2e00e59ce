"""The agent-history command as an operator uses it: special output files, pipes as input,
conflicting imports, missing sources, odd characters in messages, strict flags files and
stdout closed early or in a non-UTF-8 locale."""

from __future__ import annotations

import json
import os
import stat
import threading
import uuid
from pathlib import Path

import pytest

from agent_history.history import ChatHistory
from agent_history.settings import HistorySettings
from agent_history.stores import create_graph_store_sync
from tests.integration.test_cli import _invoke, _seed


@pytest.fixture
def ns() -> str:
    return "op" + uuid.uuid4().hex[:10]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {
        "ORCHEO_GRAPH_STORE_BACKEND": "sqlite",
        "ORCHEO_GRAPH_STORE_SQLITE_PATH": str(tmp_path / "store.sqlite"),
        "ORCHEO_CHECKPOINT_SQLITE_PATH": str(tmp_path / "checkpoints.sqlite"),
    }


def _settings(env: dict[str, str]) -> HistorySettings:
    return HistorySettings(graph_store_sqlite_path=env["ORCHEO_GRAPH_STORE_SQLITE_PATH"])


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
