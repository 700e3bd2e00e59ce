"""Deadlines nest to the soonest; the TTL rule gives a conversation one expiry."""

from __future__ import annotations

import asyncio
import math
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from langgraph.store.memory import InMemoryStore

from agent_history import budget
from agent_history.errors import InvalidArgument
from agent_history.history.drivers import TtlPolicy

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def test_deadlines_nest_to_the_soonest_and_are_restored() -> None:
    assert budget.remaining() is None
    with budget.deadline_after(10):
        outer = budget.current_deadline()
        assert outer is not None
        with budget.deadline_after(60):  # a later deadline does not extend the call
            assert budget.current_deadline() == outer
        with budget.deadline_after(1):
            inner = budget.current_deadline()
            assert inner is not None and inner < outer
        assert budget.current_deadline() == outer
        with budget.deadline_after(None):
            assert budget.current_deadline() == outer
    assert budget.current_deadline() is None
    with pytest.raises(InvalidArgument):
        budget.deadline_after(math.nan)


def test_call_with_budget_runs_in_the_callers_thread_under_the_deadline() -> None:
    seen: list[float | None] = []
    started = time.monotonic()
    assert budget.call_with_budget(lambda: seen.append(budget.remaining()) or 7, 5.0) == 7
    left = seen[0]
    assert left is not None and 0 < left <= 5.0
    assert budget.current_deadline() is None
    assert time.monotonic() - started < 5.0


async def test_the_deadline_reaches_another_loop_and_enforced_cancels_at_it() -> None:
    async def wait_forever() -> None:
        async with budget.enforced():
            await asyncio.Event().wait()

    with pytest.raises(budget.StoreTimeout):
        await budget.acall_with_budget(wait_forever, 0.01)
    deadline = time.monotonic() + 30
    assert (
        await budget.run_with_deadline(asyncio.sleep(0, budget.current_deadline()), deadline)
        is None
    )


def test_no_ttl_keeps_whatever_expiry_the_conversation_has() -> None:
    policy = TtlPolicy()
    assert policy.expiry(None, False, NOW) == (None, False)
    existing = NOW + timedelta(minutes=5)
    assert policy.expiry(existing, True, NOW) == (existing, False)
    assert not policy.needs_refresh(existing, NOW)


def test_a_ttl_is_set_on_new_conversations_and_refreshed_past_a_tenth() -> None:
    policy = TtlPolicy(60.0, refresh_on_read=True)
    fresh = NOW + timedelta(minutes=60)
    assert policy.expiry(None, False, NOW) == (fresh, False)  # new: nothing to refresh
    assert policy.expiry(None, True, NOW) == (fresh, True)  # written before TTL was on
    recent = NOW + timedelta(minutes=55)
    assert policy.expiry(recent, True, NOW) == (recent, False)  # < 10% spent: kept
    assert not policy.needs_refresh(recent, NOW)
    stale = NOW + timedelta(minutes=50)
    assert policy.expiry(stale, True, NOW) == (fresh, True)  # > 10% spent: all items
    assert policy.needs_refresh(stale, NOW)
    assert not TtlPolicy(60.0, refresh_on_read=False).needs_refresh(stale, NOW)


class _Configured(InMemoryStore):
    def __init__(self, ttl: Any) -> None:
        super().__init__()
        self.__dict__["ttl_config"] = ttl


def test_the_policy_follows_the_stores_ttl_config() -> None:
    assert TtlPolicy.of(InMemoryStore(), True) == TtlPolicy()
    store = _Configured({"default_ttl": 30})
    assert TtlPolicy.of(store, True) == TtlPolicy(30.0, True)  # PostgreSQL's default
    assert TtlPolicy.of(store, False) == TtlPolicy(30.0, False)  # SQLite's default
    no_refresh = _Configured({"default_ttl": 30, "refresh_on_read": False})
    assert TtlPolicy.of(no_refresh, True) == TtlPolicy(30.0, False)
    assert TtlPolicy.of(_Configured({"default_ttl": float("nan")}), True) == TtlPolicy()
