"""LangGraph's PostgreSQL stores in pipeline mode (``pipeline=True``): one shared
connection, so the history runs the store's own calls under the conversation's advisory
lock. Writers in several processes (pipelined, async pipelined and pooled ones at once)
lose and duplicate nothing; a held lock is waited for until the call's budget, without
blocking the shared connection, and is never left held."""

from __future__ import annotations

import asyncio
import concurrent.futures
import multiprocessing
import random
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.store.postgres import AsyncPostgresStore, PostgresStore

from agent_history import AgentNode
from agent_history.errors import StoreTimeout
from agent_history.history import ChatHistory
from agent_history.history.drivers import driver_for, namespace_text
from agent_history.testing import RecordingChatModel
from agent_history.toggles import HistoryToggles
from tests.support.agent_graphs import build_graph, new_thread, telegram_callback
from tests.support.pipeline_writers import pipeline_writers
from tests.support.postgres_server import waiting_on_a_lock

pytestmark = pytest.mark.postgres

APPENDS = 60
BUDGETED, FREE = 200, 150


@pytest.fixture
def dsn(fresh_pg_dsn: str) -> str:
    with PostgresStore.from_conn_string(fresh_pg_dsn) as store:
        store.setup()
    return fresh_pg_dsn


def _pair(tag: str) -> list[HumanMessage | AIMessage]:
    return [HumanMessage(tag, id=f"u-{tag}"), AIMessage(f"re: {tag}", id=f"a-{tag}")]


def _advisory_locks(dsn: str, pid: int) -> list[Any]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(
            "SELECT objid FROM pg_locks WHERE locktype = 'advisory' AND pid = %s AND granted",
            (pid,),
        ).fetchall()


@pytest.fixture
def held(dsn: str) -> Iterator[Any]:
    """Another session holding the advisory lock of conversation ``chat`` (the default
    namespace): a writer in another process in the middle of an append."""
    conn = psycopg.connect(dsn, autocommit=True)
    key = namespace_text(("agent_chat_history", "chat"))
    conn.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", (key,))

    class Holder:
        def release(self) -> None:
            conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (key,))

    try:
        yield Holder()
    finally:
        conn.close()


def test_writers_in_several_processes_lose_and_duplicate_nothing(dsn: str) -> None:
    # Sync pipelined stores with threads and with async callers, async pipelined stores
    # with tasks and with sync callers in threads, and a pooled store (the SQL path): three
    # writers each, all on one conversation at once.
    kinds = ["pipeline", "pipeline-tasks", "apipeline", "apipeline-threads", "pool"]
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=pipeline_writers, args=(dsn, kind, "chat", p, 3, APPENDS))
        for p, kind in enumerate(kinds)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=300)
    assert [proc.exitcode for proc in procs] == [0] * len(kinds)

    with PostgresStore.from_conn_string(dsn) as store:
        turns = list(ChatHistory(store).read("chat"))
    total = len(kinds) * 3 * APPENDS * 2
    assert len(turns) == total
    assert [t.seq for t in turns] == list(range(1, total + 1))
    assert len({t.id for t in turns}) == total
    per_writer: dict[str, list[int]] = defaultdict(list)
    for user, answer in zip(turns[::2], turns[1::2], strict=True):
        # Each exchange stays whole: no other writer's turn between a question and its answer.
        assert (user.role, answer.role, answer.content) == (
            "user",
            "assistant",
            f"re: {user.content}",
        )
        writer, i = str(user.content).rsplit("-", 1)
        per_writer[writer].append(int(i))
    assert all(order == list(range(APPENDS)) for order in per_writer.values())
    assert len(per_writer) == len(kinds) * 3


def test_a_held_conversation_is_waited_for_without_blocking_the_connection(
    dsn: str, held: Any
) -> None:
    with PostgresStore.from_conn_string(dsn, pipeline=True) as store:
        history = ChatHistory(store)
        driver = driver_for(store)
        assert driver.describe() == {"driver": "postgres-pipeline"}
        waiting = threading.Event()
        take = driver._take  # type: ignore[attr-defined]

        def noting_take(prefix: str) -> bool:
            got: bool = take(prefix)
            if not got:
                waiting.set()
            return got

        driver._take = noting_take  # type: ignore[attr-defined]
        results: list[Any] = []
        writer = threading.Thread(
            target=lambda: results.append(history.append("chat", _pair("one"), budget=30))
        )
        writer.start()
        try:
            assert waiting.wait(30), "the append did not wait for the held conversation"
            # The shared connection serves other conversations meanwhile.
            other = history.append("other", _pair("two"), budget=30)
            assert other.appended == 2
            assert history.count("chat") == 0
        finally:
            held.release()
            writer.join(60)
        assert [r.appended for r in results] == [2]
        assert [t.content for t in history.read("chat")] == ["one", "re: one"]
        assert _advisory_locks(dsn, store.conn.info.backend_pid) == []


def test_a_budget_ends_the_wait_and_leaves_no_lock_held(dsn: str, held: Any) -> None:
    with PostgresStore.from_conn_string(dsn, pipeline=True) as store:
        history = ChatHistory(store)
        with pytest.raises(StoreTimeout):
            history.append("chat", _pair("one"), budget=0.3)
        pid = store.conn.info.backend_pid
        assert _advisory_locks(dsn, pid) == []
        held.release()
        assert history.append("chat", _pair("one"), budget=30).appended == 2
        assert history.append("chat", _pair("one"), budget=30).duplicates == 2
        assert [t.content for t in history.read("chat")] == ["one", "re: one"]
        assert _advisory_locks(dsn, pid) == []


def test_async_budget_and_cancellation_leave_no_lock_held(dsn: str, held: Any) -> None:
    async def scenario() -> None:
        async with AsyncPostgresStore.from_conn_string(dsn, pipeline=True) as store:
            history = ChatHistory(store)
            pid = store.conn.info.backend_pid
            with pytest.raises(StoreTimeout):
                await history.aappend("chat", _pair("one"), budget=0.3)
            assert _advisory_locks(dsn, pid) == []
            # A caller that goes away (a client hanging up) while the append waits.
            driver = driver_for(store)
            waiting = asyncio.Event()
            take = driver._take  # type: ignore[attr-defined]

            async def noting_take(prefix: str, pending: Any) -> bool:
                got: bool = await take(prefix, pending)
                if not got:
                    waiting.set()
                return got

            driver._take = noting_take  # type: ignore[attr-defined]
            task = asyncio.ensure_future(history.aappend("chat", _pair("one"), budget=30))
            await asyncio.wait_for(waiting.wait(), 30)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert _advisory_locks(dsn, pid) == []
            held.release()
            assert (await history.aappend("chat", _pair("one"))).appended == 2
            assert (await history.aappend("chat", _pair("one"))).duplicates == 2
            assert [m.content for m in await history.atail("chat", 10)] == ["one", "re: one"]
            assert _advisory_locks(dsn, pid) == []

    asyncio.run(scenario())


def test_agent_node_on_a_pipelined_store_keeps_the_conversation(dsn: str) -> None:
    model = RecordingChatModel()
    node = AgentNode(model, use_graph_chat_history=True, toggles=HistoryToggles(env={}))
    with PostgresStore.from_conn_string(dsn, pipeline=True) as store:
        graph = build_graph(node, store)
        graph.invoke(telegram_callback(42, "hello", message_id=1), new_thread())
        graph.invoke(telegram_callback(42, "again", message_id=2), new_thread())
        graph.invoke(telegram_callback(42, "again", message_id=2), new_thread())  # re-delivered
        stored = [(t.role, t.content) for t in ChatHistory(store).read("telegram:42")]
    assert [[m.content for m in call] for call in model.calls] == [
        ["hello"],
        ["hello", "echo: hello", "again"],
        ["hello", "echo: hello", "again"],
    ]
    assert stored == [
        ("user", "hello"),
        ("assistant", "echo: hello"),
        ("user", "again"),
        ("assistant", "echo: again"),
    ]


def _writes_head(ops: Any) -> bool:
    return any(getattr(op, "key", None) == "head" and hasattr(op, "value") for op in ops)


def test_another_callers_failing_statement_does_not_keep_the_lock(dsn: str) -> None:
    # Another thread's statement that fails on the server (LangGraph's own put of a value
    # jsonb refuses, say) lands in the shared pipeline while the append holds the lock:
    # the unlock must still happen, or every other process waits on that conversation.
    with PostgresStore.from_conn_string(dsn, pipeline=True) as store:
        history = ChatHistory(store)
        pid = store.conn.info.backend_pid
        batch = store.batch

        def failing_neighbour(ops: Any) -> Any:
            out = batch(ops)
            if _writes_head(ops):
                with pytest.raises(psycopg.Error):
                    store.conn.execute("SELECT 1/0").fetchone()
            return out

        store.batch = failing_neighbour  # type: ignore[method-assign]
        assert history.append("chat", _pair("one")).appended == 2
        store.batch = batch  # type: ignore[method-assign]
        assert _advisory_locks(dsn, pid) == []
        with PostgresStore.from_conn_string(dsn) as other:  # another process's writer
            assert ChatHistory(other).append("chat", _pair("two"), budget=5).appended == 2
        assert [t.content for t in history.read("chat")] == ["one", "re: one", "two", "re: two"]


def test_async_another_callers_failing_statement_does_not_keep_the_lock(dsn: str) -> None:
    async def scenario() -> None:
        async with AsyncPostgresStore.from_conn_string(dsn, pipeline=True) as store:
            history = ChatHistory(store)
            pid = store.conn.info.backend_pid
            abatch = store.abatch

            async def failing_neighbour(ops: Any) -> Any:
                out = await abatch(ops)
                if _writes_head(ops):
                    with pytest.raises(psycopg.Error):
                        await (await store.conn.execute("SELECT 1/0")).fetchone()
                return out

            store.abatch = failing_neighbour  # type: ignore[method-assign]
            assert (await history.aappend("chat", _pair("one"))).appended == 2
            store.abatch = abatch  # type: ignore[method-assign]
            assert _advisory_locks(dsn, pid) == []
        async with AsyncPostgresStore.from_conn_string(dsn) as other:
            assert (await ChatHistory(other).aappend("chat", _pair("two"), budget=5)).appended == 2

    asyncio.run(scenario())


def test_callers_waiting_for_a_held_conversation_do_not_starve_the_others(
    dsn: str, held: Any
) -> None:
    # Every AgentNode call has a budget. Callers waiting for a conversation another
    # process holds must not take the threads budgeted calls of other conversations run on.
    with PostgresStore.from_conn_string(dsn, pipeline=True) as store:
        history = ChatHistory(store)
        driver = driver_for(store)
        take = driver._take  # type: ignore[attr-defined]
        waiting = threading.Semaphore(0)

        def noting_take(prefix: str) -> bool:
            got: bool = take(prefix)
            if not got:
                waiting.release()
            return got

        driver._take = noting_take  # type: ignore[attr-defined]
        results: list[Any] = []
        waiters = [
            threading.Thread(
                target=lambda i=i: results.append(history.append("chat", _pair(f"w{i}"), budget=60))
            )
            for i in range(6)
        ]
        for thread in waiters:
            thread.start()
        try:
            # The lock is being polled; the other waiters queue behind this process's
            # lock of the conversation.
            assert waiting.acquire(timeout=30)
            assert history.append("other", _pair("x"), budget=5).appended == 2
            assert [m.content for m in history.tail("other", 5, budget=5)] == ["x", "re: x"]
        finally:
            held.release()
            for thread in waiters:
                thread.join(60)
        assert sorted(r.appended for r in results) == [2] * 6
        assert history.count("chat") == 12


def test_budgets_running_out_never_disturb_other_callers_of_an_async_pipelined_store(
    dsn: str,
) -> None:
    # Calls whose budgets run out in the middle of their work (budgets around one
    # append's duration), beside callers without a budget and LangGraph's own calls on
    # the same shared connection: an operation cut half-way would hand later results to
    # the wrong callers ("no result available", another call's value).
    draw = random.Random(5)

    async def scenario() -> None:
        async with AsyncPostgresStore.from_conn_string(dsn, pipeline=True) as store:
            history = ChatHistory(store)
            pid = store.conn.info.backend_pid
            started = time.perf_counter()
            for i in range(20):
                await history.aappend("warm", _pair(f"w{i}"))
            per_append = (time.perf_counter() - started) / 20  # scales budgets, asserts nothing
            outcomes: dict[str, int] = defaultdict(int)
            failures: list[str] = []

            async def budgeted(writer: int) -> None:
                for i in range(BUDGETED):
                    budget = per_append * draw.uniform(0.5, 6)
                    try:
                        await history.aappend(f"b{writer}", _pair(f"b{writer}-{i}"), budget=budget)
                        outcomes["ok"] += 1
                    except StoreTimeout:
                        outcomes["timeout"] += 1

            async def free(writer: int) -> None:
                for i in range(FREE):
                    try:
                        await history.aappend(f"f{writer}", _pair(f"f{writer}-{i}"))
                        await store.aput(("own", str(writer)), "item", {"i": i})
                        item = await store.aget(("own", str(writer)), "item")
                        if item is None or item.value != {"i": i}:
                            failures.append(f"read back {item and item.value} for {i}")
                    except Exception as exc:
                        failures.append(type(exc).__name__)

            await asyncio.gather(*(budgeted(w) for w in range(3)), *(free(w) for w in range(2)))
            assert failures == []
            assert outcomes["timeout"] > 0  # budgets did run out
            for writer in range(2):
                assert await history.acount(f"f{writer}") == 2 * FREE
            # Work that outlived its caller ends and releases its locks.
            for writer in range(3):
                await history.aappend(f"b{writer}", _pair(f"b{writer}-late"), budget=30)
            assert _advisory_locks(dsn, pid) == []
            for writer in range(3):
                turns = [m.content for m in await history.atail(f"b{writer}", 1000)]
                assert len(turns) == len(set(turns))  # nothing stored twice

    asyncio.run(scenario())


@pytest.fixture
def busy_row(dsn: str) -> Iterator[Any]:
    """A row another session holds (FOR UPDATE): a statement writing it waits there."""
    conn = psycopg.connect(dsn)
    conn.execute("SELECT 1")

    class Row:
        def hold(self) -> None:
            conn.execute("SELECT 1 FROM store WHERE prefix = 'own' AND key = 'k' FOR UPDATE")

        def release(self) -> None:
            conn.rollback()

    try:
        yield Row()
    finally:
        conn.close()


def _until_waiting(dsn: str, application: str) -> None:
    for _ in range(4000):  # poll the server's view of the session
        if waiting_on_a_lock(dsn, application):
            return
        time.sleep(0.005)
    raise AssertionError("the statement never waited on the row")


def test_a_budget_holds_while_another_callers_statement_occupies_the_connection(
    dsn: str, busy_row: Any
) -> None:
    # LangGraph's own put waits on a locked row, so the shared connection answers nobody;
    # a history call on another conversation must still end at its budget.
    application = f"busy-{uuid.uuid4().hex[:8]}"
    with PostgresStore.from_conn_string(
        f"{dsn}?application_name={application}", pipeline=True
    ) as store:
        history = ChatHistory(store)
        history.append("other", _pair("before"))
        store.put(("own",), "k", {"v": 0})
        busy_row.hold()
        blocked = threading.Thread(target=lambda: store.put(("own",), "k", {"v": 1}))
        blocked.start()
        outcome: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def call() -> None:
            try:
                outcome.set_result(history.append("other", _pair("during"), budget=0.5))
            except BaseException as exc:
                outcome.set_exception(exc)

        try:
            _until_waiting(dsn, application)
            threading.Thread(target=call, daemon=True).start()
            # Ended while the row is still held (the connection still busy).
            with pytest.raises(StoreTimeout):
                outcome.result(timeout=30)
        finally:
            busy_row.release()
            blocked.join(30)
        pid = store.conn.info.backend_pid
        history.append("other", _pair("after"), budget=30)
        assert _advisory_locks(dsn, pid) == []
        contents = [t.content for t in history.read("other")]
        assert contents[:2] == ["before", "re: before"] and contents[-2:] == ["after", "re: after"]
        assert len(contents) == len(set(contents))


def test_an_async_budget_holds_while_another_callers_statement_occupies_the_connection(
    dsn: str, busy_row: Any
) -> None:
    application = f"abusy-{uuid.uuid4().hex[:8]}"

    async def scenario() -> None:
        async with AsyncPostgresStore.from_conn_string(
            f"{dsn}?application_name={application}", pipeline=True
        ) as store:
            history = ChatHistory(store)
            await history.aappend("other", _pair("before"))
            await store.aput(("own",), "k", {"v": 0})
            busy_row.hold()
            blocked = asyncio.ensure_future(store.aput(("own",), "k", {"v": 1}))
            try:
                await asyncio.to_thread(_until_waiting, dsn, application)
                call = asyncio.ensure_future(history.aappend("other", _pair("during"), budget=0.5))
                done, _ = await asyncio.wait({call}, timeout=30)
                assert done, "the call did not end while the connection was busy"
                with pytest.raises(StoreTimeout):
                    call.result()
            finally:
                busy_row.release()
                await blocked
            pid = store.conn.info.backend_pid
            await history.aappend("other", _pair("after"), budget=30)
            for _ in range(100):  # work that outlived its caller may still be finishing
                if _advisory_locks(dsn, pid) == []:
                    break
                await asyncio.sleep(0.01)
            assert _advisory_locks(dsn, pid) == []
            contents = [m.content for m in await history.atail("other", 20)]
            assert contents[:2] == ["before", "re: before"] and contents[-2:] == [
                "after",
                "re: after",
            ]

    asyncio.run(scenario())
