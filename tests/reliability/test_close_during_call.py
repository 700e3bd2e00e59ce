"""Closing a SQLite store right after a call overran its budget must not crash the host.

A call that overran its budget used to go on in an abandoned thread; leaving the
factory's ``with`` block closed the connection while that thread was inside SQLite and
the process died (exit 139). Budgets are now enforced by SQLite itself in the caller's
thread, and closing waits for any call still using the connection.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from langchain_core.messages import HumanMessage

from agent_history.budget import acall_with_budget
from agent_history.errors import StoreTimeout
from agent_history.history import ChatHistory
from agent_history.settings import HistorySettings
from agent_history.stores import create_graph_store, create_graph_store_sync
from tests.reliability.conftest import Record, trials
from tests.reliability.test_sqlite_lock import REPO, _commit, _read_line

CHILD_TIMEOUT = 60.0


@contextmanager
def _lock_holder(path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process inside ``BEGIN IMMEDIATE`` (with an uncommitted insert)."""
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "tests.support.sqlite_lock_holder",
            str(path), "holder", uuid.uuid4().hex, json.dumps({"v": 1}),
        ],
        cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert _read_line(proc) == "locked"
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(CHILD_TIMEOUT)
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()


@pytest.mark.parametrize("mode", ["close", "keep"])
def test_a_timed_out_append_is_stopped_not_abandoned(
    mode: str, tmp_path: Path, record_figures: Record
) -> None:
    """The run reports the append as timed out; the append must then be over: closing
    the store does not crash the host, and nothing is written after the fact."""
    path = tmp_path / "store.sqlite"
    settings = HistorySettings(graph_store_backend="sqlite", graph_store_sqlite_path=path)
    with create_graph_store_sync(settings):
        pass  # the file and its tables exist before the lock is taken
    runs = max(2, trials() // 10)
    worst = 0.0
    for trial in range(runs):
        with _lock_holder(path) as holder:
            child = subprocess.Popen(
                [sys.executable, "-m", "tests.support.close_during_call", str(path), f"t{trial}", mode],
                cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            try:
                first = json.loads(_read_line(child))
                _commit(holder)  # an abandoned call would still be waiting for the lock
                assert child.stdin is not None
                child.stdin.write("go on\n")
                child.stdin.flush()
                _, stderr = child.communicate(timeout=CHILD_TIMEOUT)
            finally:
                if child.poll() is None:
                    child.kill()
                    child.communicate()
        assert child.returncode == 0, (trial, child.returncode, stderr[-2000:])
        assert first["answer"] == f"echo: while locked t{trial}"
        assert first["fallbacks"] == ["write_timeout"] and first["appended"] == 0
        worst = max(worst, first["run_seconds"])
    with create_graph_store_sync(settings) as store:
        # The timed-out appends left no trace (no late write); the later turns are there.
        turns = list(ChatHistory(store).read("telegram:7"))
    assert [t.content for t in turns if t.role == "user"] == [
        f"later t{trial}-{i}" for trial in range(runs) for i in range(3)
    ]
    record_figures(
        scenario=f"timed_out_append_then_{mode}",
        backend="sqlite",
        trials=runs,
        host_crashes=0,
        worst_run_seconds=worst,
        write_budget_seconds=1.0,
    )


def _settings(tmp_path: Path) -> HistorySettings:
    settings = HistorySettings(
        graph_store_backend="sqlite",
        graph_store_sqlite_path=tmp_path / "store.sqlite",
        graph_store_sqlite_busy_timeout=5.0,
    )
    with create_graph_store_sync(settings):
        pass
    return settings


def test_closing_waits_for_a_call_in_another_thread(tmp_path: Path) -> None:
    """The factory closes the connection only once a call in flight is over."""
    settings = _settings(tmp_path)
    errors: list[BaseException] = []
    with _lock_holder(settings.graph_store_sqlite_path) as holder:
        with create_graph_store_sync(settings) as store:
            ChatHistory(store).count("k")  # the driver's first use (its checks) is over

            def append() -> None:
                try:
                    ChatHistory(store).append("k", [HumanMessage("x")], budget=2.0)
                except BaseException as exc:
                    errors.append(exc)

            worker = threading.Thread(target=append)
            worker.start()
            while not store.lock.locked():  # until the call is in flight
                time.sleep(0.001)
        # Leaving the block waited for the call: it is over, with its own outcome.
        assert not worker.is_alive()
        worker.join()
        _commit(holder)
    assert len(errors) == 1 and isinstance(errors[0], StoreTimeout), errors


async def test_closing_an_async_store_waits_for_a_call_in_flight(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    with _lock_holder(settings.graph_store_sqlite_path) as holder:
        async with create_graph_store(settings) as astore:
            await ChatHistory(astore).acount("k")  # the driver's first use is over
            task = asyncio.ensure_future(
                ChatHistory(astore).aappend("k", [HumanMessage("x")], budget=2.0)
            )
            while not astore.lock.locked():  # noqa: ASYNC110 - until the call is in flight
                await asyncio.sleep(0.001)
        with pytest.raises(StoreTimeout):
            await task
        _commit(holder)


async def test_an_async_call_on_a_sync_store_ends_at_its_budget(tmp_path: Path) -> None:
    """The deadline travels into the worker thread that runs a sync store's call, so the
    call ends there (busy timeout 5 s, budget 1 s), not only the wait for it."""
    settings = _settings(tmp_path)
    with _lock_holder(settings.graph_store_sqlite_path) as holder:
        with create_graph_store_sync(settings) as store:
            history = ChatHistory(store)
            await history.acount("k")
            started = time.monotonic()
            with pytest.raises(StoreTimeout):
                await acall_with_budget(lambda: history.aappend("k", [HumanMessage("x")]), 1.0)
            elapsed = time.monotonic() - started
            assert not store.lock.locked()  # nothing of the call is still running
        _commit(holder)
    assert elapsed <= 1.1 + 0.5, elapsed
