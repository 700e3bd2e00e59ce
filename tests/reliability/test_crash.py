"""A writer SIGKILLed at random moments loses no acknowledged turn and corrupts nothing."""

from __future__ import annotations

import multiprocessing
import random
import signal
import uuid
from multiprocessing.connection import Connection
from typing import Any

from agent_history.history import ChatHistory
from agent_history.settings import HistorySettings
from agent_history.stores import create_graph_store_sync
from tests.reliability.conftest import Record, trials
from tests.support.agent_graphs import settings_values
from tests.support.crash_worker import READY, append_until_killed, role_for

PLANNED = 100_000  # far more than a trial lets it write: every run ends by the kill
CHUNK_SIZE = 4  # small chunks: kills also land while a new chunk item is being created
START_TIMEOUT = 60.0
ACK_TIMEOUT = 30.0


def _context() -> Any:
    # A fork server pays the imports once; every victim is then a cheap fork of it.
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["tests.support.crash_worker"])
    return ctx


def _receive(conn: Connection, timeout: float) -> int:
    if not conn.poll(timeout):
        raise AssertionError(f"the writer sent nothing for {timeout:g}s")
    return int(conn.recv())


def _trial(
    ctx: Any, values: dict[str, Any], namespace: tuple[str, ...], key: str, rng: random.Random
) -> tuple[int, int]:
    """Run one victim, kill it after a random number of acks; return (acked, exit code)."""
    reader, writer = ctx.Pipe(duplex=False)
    proc = ctx.Process(
        target=append_until_killed, args=(values, namespace, key, PLANNED, CHUNK_SIZE, writer)
    )
    proc.start()
    writer.close()
    acked = 0
    try:
        assert _receive(reader, START_TIMEOUT) == READY
        wanted = rng.randint(3, 40)
        while acked < wanted:
            assert _receive(reader, ACK_TIMEOUT) == acked
            acked += 1
        # A random extra wait for the next ack moves the kill to a random point inside the
        # following append (reading the head, writing chunks, committing, or acking).
        if reader.poll(rng.uniform(0.0, 0.004)):
            assert reader.recv() == acked
            acked += 1
        proc.kill()
        proc.join(ACK_TIMEOUT)
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join(ACK_TIMEOUT)
        # Acks sent before the kill but not yet read still count as acknowledged.
        while True:
            try:
                if not reader.poll(0):
                    break
                assert reader.recv() == acked
                acked += 1
            except EOFError:
                break
        reader.close()
    return acked, int(proc.exitcode if proc.exitcode is not None else 0)


def _check_store(
    settings: HistorySettings, namespace: tuple[str, ...], key: str, acked: int
) -> tuple[int, int]:
    """Reopen the store and check the transcript; return (stored, appended after restart)."""
    with create_graph_store_sync(settings) as store:
        history = ChatHistory(store, namespace=namespace, chunk_size=CHUNK_SIZE)
        turns = list(history.read(key))
        stored = len(turns)
        # Every acknowledged append is there; at most the one in flight at the kill
        # committed without being acknowledged.
        assert acked <= stored <= acked + 1, (acked, stored)
        assert [t.seq for t in turns] == list(range(1, stored + 1))
        assert [t.content for t in turns] == [f"t{i}" for i in range(stored)]
        assert [t.role for t in turns] == [role_for(i) for i in range(stored)]
        assert history.count(key) == stored
        after = history.append(key, [{"role": "user", "content": "after the crash"}])
        assert (after.first_seq, after.total) == (stored + 1, stored + 1)
        last = history.tail_turns(key, 1)
        assert [(t.seq, t.content) for t in last] == [(stored + 1, "after the crash")]
    return stored, after.appended


def test_sigkill_during_appends_loses_nothing_acknowledged(
    persistent_settings: HistorySettings, record_figures: Record
) -> None:
    ctx = _context()
    values = settings_values(persistent_settings)
    namespace = ("crash", uuid.uuid4().hex[:10])
    rng = random.Random()
    seed = rng.randrange(2**32)
    rng.seed(seed)
    count = trials()
    acked_total = stored_total = in_flight_committed = 0
    for trial in range(count):
        key = f"crash-{trial}"
        acked, exitcode = _trial(ctx, values, namespace, key, rng)
        # The fault really happened: killed by SIGKILL, mid-run, after some acks.
        assert exitcode == -signal.SIGKILL, (seed, trial, exitcode)
        assert 3 <= acked < PLANNED, (seed, trial, acked)
        stored, _ = _check_store(persistent_settings, namespace, key, acked)
        acked_total += acked
        stored_total += stored
        in_flight_committed += stored - acked
    record_figures(
        scenario="crash",
        backend=persistent_settings.graph_store_backend.value,
        seed=seed,
        trials=count,
        sigkills=count,
        acknowledged_turns=acked_total,
        stored_turns=stored_total,
        committed_but_unacknowledged=in_flight_committed,
        lost=0,
        duplicated=0,
    )
