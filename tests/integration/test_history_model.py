"""Model-based test: ChatHistory behaves like a plain list per key, on every backend."""

from __future__ import annotations

import uuid

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)
from langgraph.store.base import BaseStore

from agent_history.history import ChatHistory

KEYS = st.sampled_from(["k1", "k2", "K1", "k1:x"])
TURN = st.tuples(
    st.sampled_from(["user", "assistant"]),
    st.text(max_size=12),
    st.none() | st.sampled_from(["i1", "i2", "i3", "i4"]),
)


def test_history_matches_a_list_model(store: BaseStore) -> None:
    class HistoryMachine(RuleBasedStateMachine):
        @initialize()
        def fresh(self) -> None:
            self.history = ChatHistory(
                store, namespace=("model", uuid.uuid4().hex[:12]), chunk_size=3
            )
            self.model: dict[str, list[tuple[str, str]]] = {}
            self.ids: dict[str, set[str]] = {}

        @rule(key=KEYS, turns=st.lists(TURN, max_size=7))
        def append(self, key: str, turns: list[tuple[str, str, str | None]]) -> None:
            result = self.history.append(
                key, [{"role": r, "content": c, "id": i} for r, c, i in turns]
            )
            expected_new = 0
            seen = self.ids.setdefault(key, set())
            for role, content, mid in turns:
                if mid is not None:
                    if mid in seen:
                        continue
                    seen.add(mid)
                self.model.setdefault(key, []).append((role, content))
                expected_new += 1
            assert result.appended == expected_new
            assert result.total == len(self.model.get(key, []))

        @rule(key=KEYS, n=st.integers(0, 12))
        def tail(self, key: str, n: int) -> None:
            got = [(t.role, t.content) for t in self.history.tail_turns(key, n)]
            expected = self.model.get(key, [])
            assert got == (expected[-n:] if n else [])

        @rule(key=KEYS)
        def delete(self, key: str) -> None:
            assert self.history.delete(key) == len(self.model.pop(key, []))
            self.ids.pop(key, None)

        @invariant()
        def full_reads_match(self) -> None:
            if not hasattr(self, "history"):
                return
            for key, turns in self.model.items():
                stored = list(self.history.read(key))
                assert [(t.role, t.content) for t in stored] == turns
                assert [t.seq for t in stored] == list(range(1, len(turns) + 1))
                assert self.history.count(key) == len(turns)
            assert sorted(self.history.keys()) == sorted(k for k, v in self.model.items() if v)

    run_state_machine_as_test(
        HistoryMachine,
        settings=settings(
            max_examples=25,
            stateful_step_count=20,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        ),
    )
