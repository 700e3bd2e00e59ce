"""The pure parts of the history log: planning appends and tails, roles, content encoding."""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage

from agent_history.history.chat_history import to_pending
from agent_history.history.layout import (
    HEAD_KEY,
    PendingTurn,
    chunk_key,
    msgid_key,
    new_head,
    plan_append,
    tail_chunk_keys,
)
from agent_history.history.records import Turn, decode_content, encode_content

NOW = "2026-01-01T00:00:00+00:00"


def _plan(head: Any, last_chunk: Any, pending: list[PendingTurn], known: Any = None) -> Any:
    return plan_append(
        head, last_chunk, known or {}, pending, chunk_size=3, value_field="content", now=NOW
    )


def test_first_append_creates_head_and_chunks() -> None:
    plan = _plan(None, None, [PendingTurn("user", f"m{i}") for i in range(4)])
    assert plan.result is not None
    assert (plan.result.first_seq, plan.result.last_seq, plan.result.total) == (1, 4, 4)
    assert [r["seq"] for r in plan.puts[chunk_key(0)]["turns"]] == [1, 2, 3]
    assert [r["seq"] for r in plan.puts[chunk_key(1)]["turns"]] == [4]
    assert plan.puts[HEAD_KEY]["last_seq"] == 4
    assert plan.puts[HEAD_KEY]["chunk_size"] == 3


def test_append_extends_the_open_chunk_and_drops_stale_records() -> None:
    head = {"last_seq": 4, "chunk_size": 3, "epoch": "e", "created_at": NOW}
    stale = {"seq": 6, "role": "user", "content": "from an abandoned epoch"}
    chunk = {"turns": [{"seq": 4, "role": "user", "content": "m4"}, stale]}
    plan = _plan(head, chunk, [PendingTurn("assistant", "a5")])
    turns = plan.puts[chunk_key(1)]["turns"]
    assert [(r["seq"], r["content"]) for r in turns] == [(4, "m4"), (5, "a5")]
    assert chunk_key(0) not in plan.puts  # full chunks are never rewritten


def test_known_ids_and_repeated_ids_are_duplicates() -> None:
    head = {"last_seq": 1, "chunk_size": 3, "epoch": "e", "created_at": NOW}
    known = {"a": {"seq": 1, "epoch": "e"}, "old": {"seq": 1, "epoch": "previous"}}
    pending = [PendingTurn("user", "x", "a"), PendingTurn("user", "y", "b"),
               PendingTurn("user", "y", "b"), PendingTurn("user", "z", "old")]  # fmt: skip
    plan = _plan(head, {"turns": []}, pending, known)
    assert plan.result is not None
    assert plan.result.appended == 2 and plan.result.duplicates == 2
    assert plan.puts[msgid_key("b")]["seq"] == 2
    assert plan.puts[msgid_key("old")] == {"kind": "msgid", "seq": 3, "epoch": "e"}


def test_nothing_new_writes_nothing() -> None:
    head = {"last_seq": 1, "chunk_size": 3, "epoch": "e", "created_at": NOW}
    plan = _plan(head, None, [PendingTurn("user", "x", "a")], {"a": {"seq": 1, "epoch": "e"}})
    assert plan.puts == {}
    assert plan.result is not None and plan.result.total == 1


@given(last=st.integers(0, 10_000), n=st.integers(0, 200), size=st.integers(1, 64))
def test_tail_chunk_keys_cover_exactly_the_window(last: int, n: int, size: int) -> None:
    keys, first = tail_chunk_keys({"last_seq": last, "chunk_size": size}, n)
    if n == 0 or last == 0:
        assert keys == []
        return
    assert first == max(1, last - n + 1)
    assert keys[0] == chunk_key((first - 1) // size)
    assert keys[-1] == chunk_key((last - 1) // size)
    assert len(keys) <= n // size + 2


def test_roles_are_normalised_and_non_chat_turns_skipped() -> None:
    messages = [
        SystemMessage("sys"),
        HumanMessage("hi", id="h1"),
        AIMessage("", tool_calls=[{"name": "f", "args": {}, "id": "c1"}]),
        ToolMessage("result", tool_call_id="c1"),
        AIMessage("hello"),
        {"role": "human", "content": "dict turn", "message_id": 42},
        {"role": "bot", "content": "bot turn"},
        {"role": "mystery", "content": "?"},
    ]
    pending, skipped = to_pending(messages)
    assert [(p.role, p.content, p.id) for p in pending] == [
        ("user", "hi", "h1"),
        ("assistant", "hello", None),
        ("user", "dict turn", "42"),
        ("assistant", "bot turn", None),
    ]
    assert skipped == 4


def test_message_ids_override_and_must_match_length() -> None:
    pending, _ = to_pending([HumanMessage("a", id="x")], ["y"])
    assert pending[0].id == "y"
    with pytest.raises(ValueError, match="one entry per message"):
        to_pending([HumanMessage("a")], [])


content_values = st.recursive(
    st.text() | st.integers() | st.booleans() | st.none(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=10,
)


@given(content=content_values)
def test_content_encoding_round_trips(content: Any) -> None:
    stored, encoding = encode_content(content)
    assert decode_content(stored, encoding) == content
    turn = Turn(1, "user", content, "id", NOW)
    assert Turn.from_record(turn.to_record("text"), "text") == turn


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_worker_never_repeats_its_parents_epochs() -> None:
    """A conversation deleted and begun again must get a new epoch, whichever worker of
    a forking server (gunicorn, celery) begins it."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write, " ".join(new_head(16, "t")["epoch"] for _ in range(3)).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = os.read(read, 4096).decode().split()
    os.close(read)
    parent = [new_head(16, "t")["epoch"] for _ in range(3)]
    assert len(child) == 3 and not set(child) & set(parent)
    assert all(len(e) == 32 and int(e, 16) >= 0 for e in child + parent)
