"""A PostgreSQL server that accepts TCP and never answers: every call ends within its
budget, connections that hung are dropped from the pool, and a silent failover (old
connections frozen, new ones fine) recovers at the next call.

The server sits behind a TCP proxy (`tests.support.tcp_proxy`) that can stop answering.
A call may overrun its budget by 10% plus one connect timeout (a new connection may be
on its way when the budget ends), never more.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.store.base import BaseStore
from langgraph.store.postgres import AsyncPostgresStore, PostgresStore

from agent_history import AgentNode, HistoryReport
from agent_history.errors import StoreTimeout
from agent_history.history import ChatHistory
from agent_history.settings import HistorySettings
from agent_history.stores import create_graph_store, create_graph_store_sync
from agent_history.testing import RecordingChatModel
from tests.reliability.conftest import Record
from tests.support.agent_graphs import build_graph, new_thread, telegram_callback, toggles
from tests.support.postgres_server import PostgresServer
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.postgres

BUDGET = 1.0
CONNECT_TIMEOUT = 1
LIMIT = BUDGET * 1.1 + CONNECT_TIMEOUT
RECOVERY_CALLS = 3


@pytest.fixture
def proxy(pg_server: PostgresServer) -> Iterator[TcpProxy]:
    relay = TcpProxy("127.0.0.1", pg_server.port)
    try:
        yield relay
    finally:
        relay.close()


def _settings(dsn: str) -> HistorySettings:
    return HistorySettings(
        graph_store_backend="postgres",
        postgres_dsn=dsn,
        postgres_pool_min_size=3,
        postgres_pool_max_size=4,
        postgres_pool_timeout=5.0,
        postgres_connect_timeout=CONNECT_TIMEOUT,
    )


class Opened:
    """A store opened through the sync or the async factory, with calls to match."""

    def __init__(self, mode: str, settings: HistorySettings) -> None:
        self.mode, self.settings = mode, settings
        self.stack = AsyncExitStack()
        self.store: BaseStore

    async def __aenter__(self) -> Opened:
        if self.mode == "sync":
            self.store = self.stack.enter_context(create_graph_store_sync(self.settings))
        else:
            self.store = await self.stack.enter_async_context(create_graph_store(self.settings))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stack.aclose()

    async def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        history = ChatHistory(self.store)
        if self.mode == "sync":
            return await asyncio.to_thread(getattr(history, name), *args, **kwargs)
        return await getattr(history, "a" + name)(*args, **kwargs)


async def _timed(call: Callable[[], Awaitable[Any]]) -> tuple[float, Any]:
    started = time.monotonic()
    try:
        outcome = await call()
    except Exception as exc:
        outcome = exc
    return time.monotonic() - started, outcome


def _pair(tag: str) -> list[Any]:
    return [HumanMessage(f"q {tag}", id=f"q-{tag}"), AIMessage(f"a {tag}", id=f"a-{tag}")]


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_a_server_that_never_answers_holds_no_call_past_its_budget(
    mode: str, proxy: TcpProxy, fresh_pg_dsn: str, record_figures: Record
) -> None:
    key = f"telegram:{uuid.uuid4().int % 10**9}"
    async with Opened(mode, _settings(proxy.dsn_for(fresh_pg_dsn))) as opened:
        assert (await opened.call("append", key, _pair("before"), budget=BUDGET)).appended == 2
        proxy.set_mode("hang")
        calls: list[tuple[str, Callable[[], Awaitable[Any]]]] = []
        for i in range(3):
            calls.append(("tail", lambda: opened.call("tail_turns", key, 30, budget=BUDGET)))
            calls.append(
                ("append", lambda i=i: opened.call("append", key, _pair(f"h{i}"), budget=BUDGET))
            )
        worst = 0.0
        for name, call in calls:
            elapsed, outcome = await _timed(call)
            assert isinstance(outcome, StoreTimeout), (name, outcome)
            assert elapsed <= LIMIT, (name, elapsed)
            worst = max(worst, elapsed)
        # The node: a run answers within its read budget (the append is skipped).
        reports: list[HistoryReport] = []
        node = AgentNode(
            RecordingChatModel(),
            use_graph_chat_history=True,
            toggles=toggles(read_timeout_seconds=str(BUDGET), write_timeout_seconds=str(BUDGET)),
            write_attempts=1,
            on_report=reports.append,
        )
        graph = build_graph(node, opened.store)
        state = telegram_callback(int(key.split(":")[1]), "during", message_id="d1")
        started = time.monotonic()
        if mode == "sync":
            out = await asyncio.to_thread(graph.invoke, state, new_thread())
        else:
            out = await graph.ainvoke(state, new_thread())
        run_seconds = time.monotonic() - started
        assert out["messages"][-1].content == "echo: during"
        assert reports[-1].fallbacks == ("read_timeout",)
        assert run_seconds <= LIMIT + 0.5, run_seconds

        proxy.set_mode("forward")  # the server answers again, on new connections
        recovered = None
        for attempt in range(1, RECOVERY_CALLS + 1):
            elapsed, outcome = await _timed(
                lambda: opened.call("append", key, _pair("after"), budget=BUDGET)
            )
            assert elapsed <= LIMIT
            if not isinstance(outcome, Exception):
                recovered = attempt
                break
        assert recovered is not None, "no call succeeded after the server came back"
        turns = await opened.call("tail_turns", key, 100, budget=5.0)
    contents = [t.content for t in turns]
    # Timed-out appends may have reached the server or not; none twice, nothing lost.
    assert contents[:2] == ["q before", "a before"] and contents[-2:] == ["q after", "a after"]
    assert len(contents) == len(set(contents))
    record_figures(
        scenario="hung_server",
        backend="postgres",
        mode=mode,
        calls=len(calls) + 1,
        budget_seconds=BUDGET,
        worst_call_seconds=round(worst, 3),
        worst_run_seconds=round(run_seconds, 3),
        limit_seconds=LIMIT,
        calls_until_recovered=recovered,
        lost=0,
        duplicated=0,
    )


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_a_silent_failover_recovers_at_the_next_call(
    mode: str, proxy: TcpProxy, fresh_pg_dsn: str, record_figures: Record
) -> None:
    key = f"telegram:{uuid.uuid4().int % 10**9}"
    async with Opened(mode, _settings(proxy.dsn_for(fresh_pg_dsn))) as opened:
        # Several pooled connections, all open before the failover.
        await asyncio.gather(
            *(opened.call("append", key, _pair(f"w{i}"), budget=5.0) for i in range(4))
        )
        proxy.set_mode("failover")
        outcomes = []
        for i in range(6):
            elapsed, outcome = await _timed(
                lambda i=i: opened.call("append", key, _pair(f"f{i}"), budget=BUDGET)
            )
            assert elapsed <= LIMIT, (i, elapsed)
            outcomes.append(outcome)
        failed = [i for i, o in enumerate(outcomes) if isinstance(o, Exception)]
        # The first call may meet a frozen connection; then the pool is drained and
        # every later call runs on a new connection.
        assert failed in ([], [0]), [type(o).__name__ for o in outcomes]
        assert all(isinstance(o, StoreTimeout) for o in outcomes if isinstance(o, Exception))
        turns = await opened.call("tail_turns", key, 100, budget=5.0)
    contents = [t.content for t in turns]
    assert len(contents) == len(set(contents))
    for i in range(1, 6):
        assert f"q f{i}" in contents and f"a f{i}" in contents
    record_figures(
        scenario="silent_failover",
        backend="postgres",
        mode=mode,
        calls=len(outcomes),
        failed_calls=len(failed),
        lost=0,
        duplicated=0,
    )


def test_a_store_on_one_connection_ends_its_calls_when_the_server_never_answers(
    proxy: TcpProxy, fresh_pg_dsn: str
) -> None:
    # A cancel request cannot help here (the server takes none): the statement is ended
    # by shutting the socket after the cancel's grace, so the call still returns.
    with PostgresStore.from_conn_string(proxy.dsn_for(fresh_pg_dsn)) as store:
        store.setup()
        history = ChatHistory(store)
        assert history.append("k", _pair("before"), budget=5.0).appended == 2
        proxy.set_mode("hang")
        with pytest.raises(StoreTimeout):
            history.tail_turns("k", 30, budget=BUDGET)


async def test_an_async_store_on_one_connection_ends_its_calls_when_the_server_never_answers(
    proxy: TcpProxy, fresh_pg_dsn: str
) -> None:
    async with AsyncPostgresStore.from_conn_string(proxy.dsn_for(fresh_pg_dsn)) as store:
        await store.setup()
        history = ChatHistory(store)
        assert (await history.aappend("k", _pair("before"), budget=5.0)).appended == 2
        proxy.set_mode("hang")
        with pytest.raises(StoreTimeout):
            await history.atail_turns("k", 30, budget=BUDGET)
