"""Subprocess entry point: writers on a PostgreSQL store in pipeline mode, or on a pool."""

from __future__ import annotations

import asyncio
import threading

from langchain_core.messages import AIMessage, HumanMessage
from langgraph.store.postgres import AsyncPostgresStore, PostgresStore
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from agent_history.history import ChatHistory


def _pair(tag: str) -> list[HumanMessage | AIMessage]:
    return [HumanMessage(tag, id=f"u-{tag}"), AIMessage(f"re: {tag}", id=f"a-{tag}")]


def pipeline_writers(dsn: str, kind: str, key: str, proc: int, writers: int, appends: int) -> None:
    """``writers`` concurrent writers in this process, each appending ``appends`` exchanges
    tagged ``p<proc>-w<writer>-<i>``, through one store of ``kind``: ``pipeline`` (a sync
    store in pipeline mode, one thread per writer), ``apipeline`` (an async one, one task
    per writer) or ``pool`` (a sync store on a pool: the SQL path)."""
    if kind == "apipeline":
        asyncio.run(_async_writers(dsn, key, proc, writers, appends))
        return
    if kind == "apipeline-threads":
        _threads_on_async_store(dsn, key, proc, writers, appends)
        return
    if kind == "pipeline":
        with PostgresStore.from_conn_string(dsn, pipeline=True) as store:
            _threads(ChatHistory(store), key, proc, writers, appends)
        return
    if kind == "pipeline-tasks":
        with PostgresStore.from_conn_string(dsn, pipeline=True) as store:
            asyncio.run(_tasks(ChatHistory(store), key, proc, writers, appends))
        return
    kwargs = {"autocommit": True, "row_factory": dict_row, "prepare_threshold": 0}
    with ConnectionPool(dsn, min_size=1, max_size=writers, kwargs=kwargs) as pool:
        _threads(ChatHistory(PostgresStore(pool)), key, proc, writers, appends)


def _threads(history: ChatHistory, key: str, proc: int, writers: int, appends: int) -> None:
    start = threading.Barrier(writers)
    errors: list[BaseException] = []

    def write(writer: int) -> None:
        start.wait()
        try:
            for i in range(appends):
                history.append(key, _pair(f"p{proc}-w{writer}-{i}"))
        except BaseException as exc:  # surfaced through the exit code
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


async def _tasks(history: ChatHistory, key: str, proc: int, writers: int, appends: int) -> None:
    async def write(writer: int) -> None:
        for i in range(appends):
            await history.aappend(key, _pair(f"p{proc}-w{writer}-{i}"))

    await asyncio.gather(*(write(w) for w in range(writers)))


async def _async_writers(dsn: str, key: str, proc: int, writers: int, appends: int) -> None:
    async with AsyncPostgresStore.from_conn_string(dsn, pipeline=True) as store:
        await _tasks(ChatHistory(store), key, proc, writers, appends)


def _threads_on_async_store(dsn: str, key: str, proc: int, writers: int, appends: int) -> None:
    """Sync callers in threads of their own, on an async store whose loop runs elsewhere."""
    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever, daemon=True)
    runner.start()
    opened = AsyncPostgresStore.from_conn_string(dsn, pipeline=True)
    store = asyncio.run_coroutine_threadsafe(opened.__aenter__(), loop).result()
    try:
        _threads(ChatHistory(store), key, proc, writers, appends)
    finally:
        asyncio.run_coroutine_threadsafe(opened.__aexit__(None, None, None), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        runner.join()
        loop.close()
