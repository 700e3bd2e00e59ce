"""A PostgreSQL outage mid-stream: every run answers, the breaker opens, writing resumes."""

from __future__ import annotations

import logging
import uuid
from collections import Counter

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from agent_history import METRICS, AgentNode, HistoryReport
from agent_history.history import ChatHistory
from agent_history.settings import HistorySettings
from agent_history.stores import create_graph_store_sync
from agent_history.testing import RecordingChatModel
from tests.reliability.conftest import Record
from tests.support.agent_graphs import build_graph, new_thread, telegram_callback, toggles
from tests.support.postgres_server import PostgresServer

pytestmark = pytest.mark.postgres

COOLDOWN = 5.0
WINDOW = 10.0
RESUME_DEADLINE_RUNS = 200  # bound on probe runs while the pool reconnects


class FakeClock:
    """A monotonic clock the test advances by hand (cool-downs pass without sleeping)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _server_refuses(dsn: str) -> bool:
    try:
        with psycopg.connect(dsn, connect_timeout=2):
            return False
    except psycopg.OperationalError:
        return True


def _durable_commits(dsn: str) -> None:
    """Give the test database PostgreSQL's default ``synchronous_commit = on``.

    The throwaway server runs with ``synchronous_commit=off`` for speed; with it, commits
    acknowledged in the last few hundred milliseconds before an immediate shutdown are
    lost by the server itself (this test lost a whole acknowledged run that way). A
    production server keeps the default, so the outage is tested with it.
    """
    dbname = conninfo_to_dict(dsn)["dbname"]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("ALTER DATABASE {} SET synchronous_commit = on").format(sql.Identifier(dbname))
        )


def test_outage_degrades_opens_breaker_and_resumes_without_duplicates(
    pg_server: PostgresServer,
    fresh_pg_dsn: str,
    caplog: pytest.LogCaptureFixture,
    record_figures: Record,
) -> None:
    _durable_commits(fresh_pg_dsn)
    settings = HistorySettings(
        graph_store_backend="postgres",
        postgres_dsn=fresh_pg_dsn,
        postgres_pool_max_size=4,
        postgres_pool_timeout=1.0,
        postgres_connect_timeout=1,
    )
    clock = FakeClock()
    reports: list[HistoryReport] = []
    model = RecordingChatModel()
    node = AgentNode(
        model,
        use_graph_chat_history=True,
        toggles=toggles(
            clock,
            read_timeout_seconds="1",
            write_timeout_seconds="1",
            breaker_min_calls="2",
            breaker_window_seconds=str(WINDOW),
            breaker_cooldown_seconds=str(COOLDOWN),
        ),
        write_backoff_seconds=0,
        on_report=reports.append,
    )
    chat = int(uuid.uuid4().int % 10**9)
    key = f"telegram:{chat}"
    sent: list[str] = []

    def run(label: str) -> HistoryReport:
        text = f"{label} #{len(sent)}"
        sent.append(text)
        out = graph.invoke(telegram_callback(chat, text, message_id=f"m{len(sent)}"), new_thread())
        # The agent keeps answering, whatever the store does.
        assert out["messages"][-1].content == f"echo: {text}"
        return reports[-1]

    with create_graph_store_sync(settings) as store:
        graph = build_graph(node, store)
        before = [run("before") for _ in range(4)]
        assert all(r.fallbacks == () and r.appended == 2 for r in before)
        assert METRICS.value("agent_history_breaker_state", backend="postgres") == 0
        clock.advance(WINDOW + 1)  # the healthy calls leave the breaker's window

        during: list[HistoryReport] = []
        outage_runs = 0
        try:
            with caplog.at_level(logging.WARNING, logger="agent_history"):
                pg_server.stop("immediate")
                # The fault is real: the server refuses new connections.
                assert _server_refuses(fresh_pg_dsn)
                for _ in range(6):
                    during.append(run("during"))
                outage_runs = len(during)
                assert METRICS.value("agent_history_breaker_state", backend="postgres") == 2
                breaker_state_during = 2
        finally:
            pg_server.start()
        assert not _server_refuses(fresh_pg_dsn)

        failed = [r for r in during if {"read_failed", "read_timeout"} & set(r.fallbacks)]
        assert failed, [r.fallbacks for r in during]
        assert during[-1].fallbacks == ("breaker_open",)
        assert all(r.appended == 0 for r in during)
        warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert any("history_fallback" in m and "read_" in m for m in warnings)
        assert any("breaker_open" in m for m in warnings)

        # Still open without the cool-down: no store call, immediate fallback.
        assert run("still open").fallbacks == ("breaker_open",)

        # Cool-downs pass on the injected clock; probe runs go on until the pool has
        # reconnected and one run reads and writes again.
        resumed: HistoryReport | None = None
        probes = 0
        for _ in range(RESUME_DEADLINE_RUNS):
            clock.advance(COOLDOWN + 0.1)
            probes += 1
            report = run("after")
            if report.fallbacks == () and report.appended == 2:
                resumed = report
                break
        assert resumed is not None, "the node never resumed writing after the restart"
        assert METRICS.value("agent_history_breaker_state", backend="postgres") == 0
        after = [run("after") for _ in range(3)]
        assert all(r.fallbacks == () and r.appended == 2 for r in after)

        turns = list(ChatHistory(store).read(key))
    ids = Counter(t.id for t in turns)
    contents = Counter(t.content for t in turns)
    assert all(n == 1 for n in ids.values()), ids
    assert all(n == 1 for n in contents.values()), contents
    assert [t.seq for t in turns] == list(range(1, len(turns) + 1))
    user_texts = [t.content for t in turns if t.role == "user"]
    # Every run that was not in fallback is stored, in order; the outage runs are not.
    written = [text for text, r in zip(sent, reports, strict=True) if r.appended]
    assert user_texts == written
    assert sent[: len(before)] == user_texts[: len(before)]
    assert sent[-3:] == user_texts[-3:]
    record_figures(
        scenario="outage",
        backend="postgres",
        runs=len(sent),
        outage_runs=outage_runs,
        runs_in_fallback=sum(1 for r in reports if r.fallbacks),
        breaker_state_during_outage=breaker_state_during,
        probe_runs_until_resumed=probes,
        stored_turns=len(turns),
        lost=0,
        duplicated=0,
    )


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_after_a_server_restart_one_run_falls_back_and_the_next_ones_store(
    pg_server: PostgresServer, fresh_pg_dsn: str, mode: str
) -> None:
    """The pool's idle connections were all opened to the old server process. The first
    call on one of them fails; the pool is then refreshed, so later runs do not each fail
    on another stale connection (with four of them, three more runs would fall back, and
    the breaker would open)."""
    from agent_history.stores import create_graph_store

    settings = HistorySettings(
        graph_store_backend="postgres",
        postgres_dsn=fresh_pg_dsn,
        postgres_pool_min_size=4,
        postgres_pool_max_size=4,
        postgres_connect_timeout=2,
    )
    reports: list[HistoryReport] = []
    node = AgentNode(
        RecordingChatModel(),
        use_graph_chat_history=True,
        toggles=toggles(breaker_min_calls="3"),
        write_backoff_seconds=0,
        on_report=reports.append,
    )
    chat = int(uuid.uuid4().int % 10**9)

    async def runs(graph: object, count: int, label: str) -> None:
        for i in range(count):
            callback = telegram_callback(chat, f"{label} {i}", message_id=f"{label}{i}")
            if mode == "sync":
                graph.invoke(callback, new_thread())  # type: ignore[attr-defined]
            else:
                await graph.ainvoke(callback, new_thread())  # type: ignore[attr-defined]

    if mode == "sync":
        with create_graph_store_sync(settings) as store:
            graph = build_graph(node, store)
            await runs(graph, 4, "before")
            pg_server.stop("fast")
            pg_server.start()
            await runs(graph, 6, "after")
    else:
        async with create_graph_store(settings) as astore:
            graph = build_graph(node, astore)
            await runs(graph, 4, "before")
            pg_server.stop("fast")
            pg_server.start()
            await runs(graph, 6, "after")

    after = reports[4:]
    failed = [r for r in after if r.fallbacks]
    assert len(failed) <= 1, [r.fallbacks for r in after]
    assert all(r.appended == 2 for r in after[1:]), [r.fallbacks for r in after]


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_a_checkpointed_graph_runs_on_after_a_server_restart(
    pg_server: PostgresServer, fresh_pg_dsn: str, mode: str
) -> None:
    """LangGraph's checkpointer raises out of the run on a broken connection: its pool
    checks each connection it lends, so a restart costs no run an exception."""
    from agent_history.stores import create_checkpointer, create_checkpointer_sync

    settings = HistorySettings(
        graph_store_backend="postgres",
        checkpoint_backend="postgres",
        postgres_dsn=fresh_pg_dsn,
        postgres_pool_min_size=3,
        postgres_pool_max_size=3,
        postgres_connect_timeout=2,
    )
    model = RecordingChatModel()
    node = AgentNode(model, use_graph_chat_history=True, toggles=toggles(), write_backoff_seconds=0)
    chat = int(uuid.uuid4().int % 10**9)
    config = {"configurable": {"thread_id": f"chat-{chat}"}}
    texts = [f"m{i}" for i in range(8)]
    if mode == "sync":
        with (
            create_graph_store_sync(settings) as store,
            create_checkpointer_sync(settings) as saver,
        ):
            graph = build_graph(node, store, saver)
            for i, text in enumerate(texts):
                if i == 4:
                    pg_server.stop("fast")
                    pg_server.start()
                graph.invoke(telegram_callback(chat, text, message_id=i), config)
            thread = graph.get_state(config).values["messages"]
    else:
        from agent_history.stores import create_graph_store

        async with create_graph_store(settings) as astore, create_checkpointer(settings) as asaver:
            graph = build_graph(node, astore, asaver)
            for i, text in enumerate(texts):
                if i == 4:
                    pg_server.stop("fast")
                    pg_server.start()
                await graph.ainvoke(telegram_callback(chat, text, message_id=i), config)
            thread = (await graph.aget_state(config)).values["messages"]
    assert [m.content for m in thread if m.type == "human"] == texts
