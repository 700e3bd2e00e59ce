"""Token windows and running summaries without a database: the window under a token
budget, the summary item's versioned writes and leases, the bounded window read."""

from __future__ import annotations

import logging
import math
from typing import Any

import pytest
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.messages.utils import count_tokens_approximately

from agent_history.context import budget
from agent_history.context.budget import GuardedCounter, WindowFill, token_counter_for
from agent_history.context.summary import (
    SUMMARY_KEY,
    Summary,
    claim_summary_steps,
    read_summary_steps,
    summary_message,
    summary_request,
    write_summary_steps,
)
from agent_history.context.window import chunks_per_get, context_steps
from agent_history.history.layout import HEAD_KEY, PendingTurn, plan_append
from agent_history.history.steps import Get, Put, Request, Steps, drive
from agent_history.messages import merge_history, window
from agent_history.session import HistoryOptions
from agent_history.testing import RecordingChatModel

T0 = "2030-01-01T00:00:00.000000+00:00"
T1 = "2030-01-01T00:00:10.000000+00:00"
T2 = "2030-01-01T00:01:00.000000+00:00"


def chars(messages: list[BaseMessage]) -> int:
    """A known counter: one token per character of content, plus 4 per message."""
    return sum(4 + len(str(m.content)) for m in messages)


def _texts(messages: list[BaseMessage]) -> list[str]:
    return [str(m.content) for m in messages]


# --- the window under a token budget ---------------------------------------------------------


def _call(call_id: str) -> AIMessage:
    return AIMessage("", tool_calls=[{"name": "lookup", "args": {}, "id": call_id}])


def test_token_budget_keeps_the_newest_messages_that_fit() -> None:
    # Tokens (see `chars`): q1 6, a1 6, q2 6, a2*20 44, q3 6.
    messages = [HumanMessage("q1"), AIMessage("a1"), HumanMessage("q2"), AIMessage("a2" * 20)]
    messages.append(HumanMessage("q3"))
    assert _texts(window(messages, 30, max_tokens=40, token_counter=chars)) == ["q3"]
    # The long answer fits, its question does not (a window starts on a user message
    # only when one fits).
    assert _texts(window(messages, 30, max_tokens=55, token_counter=chars)) == ["a2" * 20, "q3"]
    kept = window(messages, 30, max_tokens=56, token_counter=chars)
    assert _texts(kept) == ["q2", "a2" * 20, "q3"]
    kept = window(messages, 30, max_tokens=68, token_counter=chars)
    assert kept == messages
    assert chars(kept) == 68


def test_reserved_tokens_count_against_the_budget() -> None:
    messages = [HumanMessage("q1"), AIMessage("a1"), HumanMessage("q2")]
    assert _texts(window(messages, 30, max_tokens=18, token_counter=chars)) == ["q1", "a1", "q2"]
    kept = window(messages, 30, max_tokens=18, token_counter=chars, reserved_tokens=6)
    assert _texts(kept) == ["a1", "q2"]
    kept = window(messages, 30, max_tokens=18, token_counter=chars, reserved_tokens=12)
    assert _texts(kept) == ["q2"]


def test_oversized_tool_result_of_the_current_exchange_goes_with_its_call() -> None:
    huge = ToolMessage("x" * 500, tool_call_id="c1")
    messages = [HumanMessage("q1"), AIMessage("a1"), HumanMessage("look it up"), _call("c1"), huge]
    kept = window(messages, 30, max_tokens=100, token_counter=chars)
    assert _texts(kept) == ["q1", "a1", "look it up"]
    assert chars(kept) <= 100


def test_newer_tool_steps_of_the_current_exchange_stay_when_older_ones_do_not_fit() -> None:
    first = [_call("c1"), ToolMessage("y" * 60, tool_call_id="c1")]
    second = [_call("c2"), ToolMessage("ok", tool_call_id="c2")]
    messages = [HumanMessage("q"), *first, *second]
    kept = window(messages, 30, max_tokens=40, token_counter=chars)
    assert kept == [messages[0], *second]


def test_the_newest_user_message_stays_even_over_the_budget() -> None:
    kept = window([AIMessage("a"), HumanMessage("z" * 100)], 30, max_tokens=10, token_counter=chars)
    assert _texts(kept) == ["z" * 100]


def test_tighter_of_messages_and_tokens_wins() -> None:
    messages = [m for i in range(10) for m in (HumanMessage(f"q{i}"), AIMessage(f"a{i}"))]
    messages.append(HumanMessage("now"))
    by_messages = window(messages, 5, max_tokens=10_000, token_counter=chars)
    assert _texts(by_messages) == ["q8", "a8", "q9", "a9", "now"]
    by_tokens = window(messages, 50, max_tokens=27, token_counter=chars)
    assert _texts(by_tokens) == ["q9", "a9", "now"]


def test_without_a_user_message_units_over_the_budget_are_left_out() -> None:
    messages = [AIMessage("a" * 50), AIMessage("b")]
    assert _texts(window(messages, 30, max_tokens=10, token_counter=chars)) == ["b"]
    assert window([AIMessage("a" * 50)], 30, max_tokens=10, token_counter=chars) == []


def test_merge_reports_what_the_window_cut() -> None:
    stored = [HumanMessage("q1", id="1"), AIMessage("a1", id="2")]
    merged = merge_history(
        stored, [HumanMessage("q2", id="3")], max_messages=30, max_tokens=8, token_counter=chars
    )
    assert _texts(merged.messages) == ["q2"]
    assert _texts(merged.dropped) == ["q1", "a1"]
    assert merged.truncated == 2


def test_token_counter_choices() -> None:
    assert token_counter_for(None) is count_tokens_approximately
    model = RecordingChatModel()
    guarded = token_counter_for(model)
    assert isinstance(guarded, GuardedCounter)
    assert guarded.count == model.get_num_tokens_from_messages
    assert token_counter_for(chars).count is chars  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="token_counter must be"):
        token_counter_for(42)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (RuntimeError("tokenizer down"), "RuntimeError"),
        ("12", "answered str"),
        (-5, "answered int"),
        (True, "answered bool"),
        (math.nan, "answered float"),
        (None, "answered NoneType"),
    ],
)
def test_a_failing_counter_counts_approximately_and_warns_once_a_minute(
    answer: object, error: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(budget, "_warned_at", None)  # the process has not warned yet

    def counter(messages: list[BaseMessage]) -> int:
        if isinstance(answer, Exception):
            raise answer
        return answer  # type: ignore[return-value]

    messages = [HumanMessage("SeNtInEl " * 20)]
    with caplog.at_level(logging.WARNING, logger="agent_history"):
        # A counter made per run (as `AgentNode` makes its options) still warns once.
        counts = [token_counter_for(counter)(messages) for _ in range(3)]
    assert counts == [count_tokens_approximately(messages)] * 3
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == [f"event=token_counter_failed error={error} fallback=approximate"]


class _Tokens:
    """An integer of another library (numpy's ``int64``): it has ``__index__``."""

    def __index__(self) -> int:
        return 7


def test_a_counter_answering_a_fraction_or_another_integer_type_is_honoured() -> None:
    assert token_counter_for(lambda messages: 3.2)([HumanMessage("x")]) == 4
    assert token_counter_for(lambda messages: _Tokens())([HumanMessage("x")]) == 7


def test_history_options_validate_budgets_and_summaries() -> None:
    with pytest.raises(ValueError, match="max_tokens"):
        HistoryOptions(max_tokens=0)
    with pytest.raises(ValueError, match="token_counter"):
        HistoryOptions(token_counter="words")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="summary_model"):
        HistoryOptions(summarize=True)
    with pytest.raises(ValueError, match="summary_every"):
        HistoryOptions(summary_every=0)
    with pytest.raises(ValueError, match="summary_max_turns"):
        HistoryOptions(summary_every=20, summary_max_turns=10)
    with pytest.raises(ValueError, match="summary_budget_seconds"):
        HistoryOptions(summary_budget_seconds=float("nan"))


# --- the summary item ---------------------------------------------------------------------------


class DictStore:
    """A conversation namespace as a dict, performing step requests (and counting them)."""

    def __init__(self) -> None:
        self.items: dict[str, dict[str, Any]] = {}
        self.requests: list[Request] = []

    def perform(self, request: Request) -> Any:
        self.requests.append(request)
        if isinstance(request, Put):
            for key, value in request.items.items():
                if value is None:
                    self.items.pop(key, None)
                else:
                    self.items[key] = value
            return None
        assert isinstance(request, Get)
        found = {k: self.items[k] for k in request.keys if k in self.items}
        if request.newest_chunks:
            chunks = sorted(k for k in self.items if k.startswith("chunk:"))
            found.update({k: self.items[k] for k in chunks[-request.newest_chunks :]})
        return found

    def run(self, steps: Steps[Any]) -> Any:
        return drive(steps, self.perform)

    def append(self, count: int, chunk_size: int = 4) -> None:
        head = self.items.get(HEAD_KEY)
        last = int(head["last_seq"]) if head else 0
        chunk = None
        if head and last % int(head["chunk_size"]):
            chunk = self.items.get(f"chunk:{(last - 1) // int(head['chunk_size']):010d}")
        pending = [
            PendingTurn("user" if (last + i) % 2 == 0 else "assistant", f"t{last + i + 1}")
            for i in range(count)
        ]
        plan = plan_append(
            head, chunk, {}, pending, chunk_size=chunk_size, value_field="content", now=T0
        )
        self.items.update(plan.puts)


def _claim(store: DictStore, upto: int, owner: str | None = "A", now: str = T0, **kw: Any) -> Any:
    kw.setdefault("every", 4)
    kw.setdefault("max_turns", 100)
    steps = claim_summary_steps(
        upto, value_field="content", now=now, owner=owner, lease_until=T1, **kw
    )
    return store.run(steps)


def _write(store: DictStore, text: str, covers: int, base: int, owner: str | None = "A") -> Any:
    return store.run(write_summary_steps(text, covers, base_version=base, now=T0, owner=owner))


def test_first_summary_is_claimed_read_and_written_as_version_one() -> None:
    store = DictStore()
    store.append(12)
    claim = _claim(store, 8)
    assert (claim.granted, claim.reason, claim.previous, claim.upto) == (True, "claimed", None, 8)
    assert [t.content for t in claim.turns] == [f"t{i}" for i in range(1, 9)]
    assert store.items[SUMMARY_KEY]["lease"] == {"owner": "A", "until": T1}
    assert store.run(read_summary_steps()) is None  # a lease alone is no summary
    written = _write(store, "S1", 8, 0)
    assert written.written and written.summary.version == 1 and written.summary.covers_seq == 8
    assert store.run(read_summary_steps()) == Summary("S1", 8, 1, turns=0, updated_at=T0)
    assert store.items[SUMMARY_KEY]["lease"] is None


def test_an_update_reads_only_the_turns_after_the_summary() -> None:
    store = DictStore()
    store.append(30)
    _claim(store, 8)
    _write(store, "S1", 8, 0)
    claim = _claim(store, 20)
    assert claim.previous.text == "S1"
    assert [t.seq for t in claim.turns] == list(range(9, 21))
    gets = [r for r in store.requests[-3:] if isinstance(r, Get)]
    assert gets[-1].keys == ("chunk:0000000002", "chunk:0000000003", "chunk:0000000004")


def test_an_update_is_due_only_after_every_turns() -> None:
    store = DictStore()
    store.append(30)
    _claim(store, 8)
    _write(store, "S1", 8, 0)
    assert _claim(store, 11).reason == "not_due"
    assert _claim(store, 12, owner="B", now=T2).reason == "claimed"


def test_a_large_backlog_keeps_its_newest_turns_and_counts_the_rest() -> None:
    store = DictStore()
    store.append(30)
    claim = _claim(store, 28, max_turns=10)
    assert [t.seq for t in claim.turns] == list(range(19, 29))
    assert claim.skipped == 18
    written = store.run(
        write_summary_steps("S", 28, base_version=0, now=T0, owner="A", turns=10, skipped=18)
    )
    assert (written.summary.turns, written.summary.skipped) == (10, 18)


def test_a_live_lease_makes_others_wait_and_an_ended_one_does_not() -> None:
    store = DictStore()
    store.append(12)
    assert _claim(store, 8, owner="A").reason == "claimed"
    assert _claim(store, 8, owner="B").reason == "busy"
    assert _claim(store, 8, owner=None).reason == "read"  # a read takes no lease
    assert _claim(store, 8, owner="B", now=T2).reason == "claimed"  # A's lease ended at T1
    # A gave up by then: its late write is refused while B's lease is live ...
    assert _write(store, "from A", 8, 0, owner="A").reason == "stale"
    assert _write(store, "from B", 8, 0, owner="B").written


def test_one_version_per_covered_seq_and_none_built_on_a_stale_one() -> None:
    store = DictStore()
    store.append(20)
    assert _write(store, "S1", 8, 0, owner=None).written
    assert _write(store, "again", 8, 0, owner=None).reason == "stale"  # built on no summary
    assert _write(store, "again", 8, 1, owner=None).reason == "stale"  # covers nothing new
    assert _write(store, "S2", 12, 1, owner=None).summary.version == 2
    assert _write(store, "beyond", 21, 2, owner=None).reason == "stale"  # past the log


def test_a_summary_of_an_earlier_epoch_is_ignored() -> None:
    store = DictStore()
    store.append(12)
    _write(store, "old", 8, 0, owner=None)
    store.items[HEAD_KEY] = {**store.items[HEAD_KEY], "epoch": "new"}
    assert store.run(read_summary_steps()) is None
    assert _write(store, "fresh", 8, 0, owner=None).summary.version == 1


def test_summary_text_round_trips_exactly() -> None:
    store = DictStore()
    store.append(12)
    text = "nul \x00 and emoji 🙂"
    _write(store, text, 8, 0, owner=None)
    assert store.items[SUMMARY_KEY]["enc"] == "json"
    assert store.run(read_summary_steps()).text == text


def test_summary_request_holds_the_previous_summary_and_the_new_turns_only() -> None:
    request = summary_request("before", [HumanMessage("hi"), AIMessage("hello")], "PROMPT")
    assert request[0] == SystemMessage("PROMPT")
    assert request[1].content == (
        "<summary>\nbefore\n</summary>\n\n<messages>\nUser: hi\nAssistant: hello\n</messages>"
    )
    message = summary_message(Summary("S", 8, 1))
    assert isinstance(message, SystemMessage) and message.content.endswith("\nS")


# --- the window read ------------------------------------------------------------------------------


def test_window_read_skips_what_the_summary_covers() -> None:
    store = DictStore()
    store.append(20)
    _write(store, "S", 16, 0, owner=None)
    read = store.run(context_steps(10, "content", with_summary=True))
    assert [t.seq for t in read.turns] == [17, 18, 19, 20]
    assert read.summary.covers_seq == 16 and read.last_seq == 20
    assert [t.seq for t in store.run(context_steps(10, "content", with_summary=False)).turns] == (
        list(range(11, 21))
    )


def test_window_read_with_a_token_budget_stops_at_the_chunk_that_fills_it() -> None:
    store = DictStore()
    store.append(400)
    store.requests.clear()
    fill = WindowFill(30, chars, lambda turns: [t.to_message() for t in turns])
    read = store.run(context_steps(300, "content", with_summary=False, enough=fill, chunk_hint=1))
    # Chunks of 4 turns of ~8 tokens each: the newest chunk fills 30 tokens.
    assert [t.seq for t in read.turns] == [397, 398, 399, 400]
    assert len(store.requests) == 1
    fill = WindowFill(100, chars, lambda turns: [t.to_message() for t in turns])
    read = store.run(context_steps(300, "content", with_summary=False, enough=fill, chunk_hint=1))
    assert [t.seq for t in read.turns] == list(range(385, 401))
    # The head and the newest chunk, then one request for TURNS_PER_GET turns' chunks.
    assert len(store.requests) == 1 + 2
    assert sum(len(r.keys) for r in store.requests[1:] if isinstance(r, Get)) <= 1 + (
        chunks_per_get(4)
    )
