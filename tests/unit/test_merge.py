"""Merging stored history with the current thread: identity, order, reset, tool-safe
windows, and placing the delivered message in the thread."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
    trim_messages,
)

from agent_history.history.records import RunToken
from agent_history.incoming import current_thread
from agent_history.messages import (
    _fit,
    anchors_to_check,
    apply_reset,
    exchange_overlap,
    merge_history,
    tool_safe_units,
    window,
)


def _texts(messages: list) -> list[str]:
    return [m.content for m in messages]


def test_new_thread_gets_stored_turns_before_it() -> None:
    stored = [HumanMessage("q1", id="a"), AIMessage("a1", id="b")]
    merged = merge_history(stored, [HumanMessage("q2", id="c")], max_messages=10)
    assert _texts(merged.messages) == ["q1", "a1", "q2"]
    assert merged.stored_in_payload == 2
    assert _texts(merged.unstored) == ["q2"]


def test_checkpointed_thread_that_replays_stored_turns_is_not_duplicated() -> None:
    stored = [HumanMessage("q1"), AIMessage("a1"), HumanMessage("q2"), AIMessage("a2")]
    thread = [
        HumanMessage("q1"),
        AIMessage("a1"),
        HumanMessage("q2"),
        AIMessage("a2"),
        HumanMessage("q3"),
    ]
    merged = merge_history(stored, thread, max_messages=10)
    assert _texts(merged.messages) == ["q1", "a1", "q2", "a2", "q3"]
    assert _texts(merged.unstored) == ["q3"]
    assert merged.stored_in_payload == 4


def test_overlap_by_id_wins_over_position() -> None:
    stored = [HumanMessage("older", id="o"), HumanMessage("hi", id="m1"), AIMessage("yo", id="m2")]
    thread = [HumanMessage("hi", id="m1"), AIMessage("yo", id="m2"), HumanMessage("next", id="m3")]
    merged = merge_history(stored, thread, max_messages=10)
    assert _texts(merged.messages) == ["older", "hi", "yo", "next"]
    assert [m.id for m in merged.unstored] == ["m3"]


def test_thread_messages_older_than_the_stored_tail_go_first() -> None:
    thread = [HumanMessage(f"m{i}", id=f"id{i}") for i in range(6)] + [HumanMessage("new", id="n")]
    stored = thread[3:6]  # the tail window holds only the newest stored turns
    merged = merge_history(stored, thread, max_messages=50)
    assert _texts(merged.messages) == ["m0", "m1", "m2", "m3", "m4", "m5", "new"]
    assert _texts(merged.unstored) == ["new"]
    assert merged.stored_in_payload == 3


def test_turns_from_other_threads_keep_their_place() -> None:
    stored = [
        HumanMessage("a1", id="a1"),
        AIMessage("A1", id="A1"),
        HumanMessage("b1", id="b1"),
        AIMessage("B1", id="B1"),
    ]
    thread_a = [HumanMessage("a1", id="a1"), AIMessage("A1", id="A1"), HumanMessage("a2", id="a2")]
    merged = merge_history(stored, thread_a, max_messages=50)
    assert _texts(merged.messages) == ["a1", "A1", "b1", "B1", "a2"]


def test_redelivered_user_turn_is_answered_with_the_history_as_it_stood() -> None:
    stored = [
        HumanMessage("first", id="m1"),
        AIMessage("echo: first", id="reply:m1:0"),
        HumanMessage("second", id="m2"),
        AIMessage("echo: second", id="reply:m2:0"),
    ]
    merged = merge_history(stored, [HumanMessage("first", id="m1")], max_messages=10)
    assert _texts(merged.messages) == ["first"]
    assert merged.unstored == []
    assert merged.stored_in_payload == 1


def test_stored_latest_user_turn_keeps_the_whole_tail() -> None:
    # Not a re-delivery of an older turn: the thread ends where the store ends.
    stored = [HumanMessage("q1", id="a"), AIMessage("a1", id="b"), HumanMessage("q2", id="c")]
    merged = merge_history(stored, [HumanMessage("q2", id="c")], max_messages=10)
    assert _texts(merged.messages) == ["q1", "a1", "q2"]


def test_window_trims_oldest_and_skips_orphan_tool_results() -> None:
    thread = [
        HumanMessage("q"),
        AIMessage("", tool_calls=[{"name": "f", "args": {}, "id": "t1"}]),
        ToolMessage("r", tool_call_id="t1"),
        AIMessage("answer"),
        HumanMessage("again"),
    ]
    # The tool result whose call fell out of the window goes too.
    assert _texts(window(thread, 3)) == ["answer", "again"]
    assert _texts(window(thread, 4)) == ["", "r", "answer", "again"]  # no user message fits
    assert _texts(window(thread, 5)) == ["q", "", "r", "answer", "again"]
    merged = merge_history([], thread, max_messages=3)
    assert merged.truncated == 3 and _texts(merged.messages) == ["answer", "again"]
    orphan = [ToolMessage("r", tool_call_id="t9"), HumanMessage("q")]
    assert _texts(window(orphan, 5)) == ["q"]


def test_system_messages_do_not_count_against_the_window() -> None:
    thread = [SystemMessage("be nice"), HumanMessage("a"), AIMessage("b"), HumanMessage("c")]
    merged = merge_history([], thread, max_messages=2)
    assert _texts(merged.system) == ["be nice"]
    assert _texts(merged.messages) == ["b", "c"]
    assert _texts(merge_history([], thread, max_messages=3).messages) == ["a", "b", "c"]


def test_reset_drops_everything_before_it_stored_turns_included() -> None:
    stored = [
        HumanMessage("old"),
        AIMessage("old answer"),
        HumanMessage("/reset"),
        AIMessage("cleared"),
    ]
    merged = merge_history(stored, [HumanMessage("fresh")], max_messages=10, reset_command="/reset")
    assert _texts(merged.messages) == ["cleared", "fresh"]
    assert merged.dropped_by_reset == 3


def test_reset_as_latest_message_is_kept_alone() -> None:
    messages, dropped = apply_reset(
        [HumanMessage("a"), AIMessage("b"), HumanMessage(" /reset ")], "/reset"
    )
    assert _texts(messages) == [" /reset "] and dropped == 2
    assert apply_reset([HumanMessage("a")], "")[0][0].content == "a"


def test_thread_from_inputs_with_channel_id() -> None:
    state = {
        "inputs": {
            "platform": "telegram",
            "message": {"chat_id": 7, "text": "hello", "message_id": 99},
        }
    }
    view = current_thread(state)
    assert _texts(view.messages) == ["hello"]
    assert view.messages[0].id == "99" and view.incoming is not None
    assert view.incoming.message_id == "99" and view.added is view.messages[0]


def test_thread_does_not_duplicate_the_latest_user_turn() -> None:
    # The caller put the message in the thread itself: its state id is its identity.
    state = {
        "messages": [HumanMessage("hi", id="uuid-1")],
        "inputs": {"message": "hi", "message_id": "tg-5"},
    }
    view = current_thread(state)
    assert _texts(view.messages) == ["hi"] and view.added is None
    assert view.messages[0].id == "uuid-1"


def test_thread_from_history_and_prompt_fields() -> None:
    state = {
        "inputs": {
            "history": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
            "query": "c",
        }
    }
    assert _texts(current_thread(state).messages) == ["a", "b", "c"]
    listener = {
        "inputs": {"listener": {"platform": "wecom", "message": {"content": "hey", "msgid": "w1"}}}
    }
    view = current_thread(listener)
    assert _texts(view.messages) == ["hey"]
    assert view.incoming is not None and view.incoming.message_id == "w1"
    assert current_thread({"inputs": {"message": "   "}}).messages == []
    assert current_thread(None).messages == []


_KINDS = st.sampled_from(["human", "ai", "call", "tool", "system"])


def _conversation(kinds: list[str]) -> list[BaseMessage]:
    """Messages of the given kinds: tool calls answered, orphaned or left unanswered."""
    messages: list[BaseMessage] = []
    for index, kind in enumerate(kinds):
        if kind == "human":
            messages.append(HumanMessage(f"q{index}"))
        elif kind == "ai":
            messages.append(AIMessage(f"a{index}"))
        elif kind == "call":
            messages.append(
                AIMessage("", tool_calls=[{"name": "f", "args": {}, "id": f"c{index}"}])
            )
        elif kind == "tool":
            call = next((m for m in reversed(messages) if isinstance(m, AIMessage)), None)
            ids = [c["id"] for c in call.tool_calls] if call is not None else []
            messages.append(ToolMessage(f"r{index}", tool_call_id=ids[0] if ids else "none"))
        else:
            messages.append(SystemMessage(f"s{index}"))
    return messages


@settings(max_examples=300, deadline=None)
@given(st.lists(_KINDS, max_size=14), st.integers(min_value=-1, max_value=16))
def test_counting_messages_keeps_what_trim_messages_keeps(kinds: list[str], budget: int) -> None:
    """The window counts messages without `trim_messages` (a quarter of a turn's history
    overhead); it must keep exactly what `trim_messages` keeps when counting with `len`."""
    messages = _conversation(kinds)
    kept = trim_messages(
        messages, max_tokens=budget, token_counter=len, strategy="last", allow_partial=False
    )
    kept = [m for unit in tool_safe_units(kept) for m in unit]
    first = next((i for i, m in enumerate(kept) if isinstance(m, HumanMessage)), 0)
    assert _fit(messages, budget, len) == kept[first:]


def test_a_second_answer_to_a_stored_exchange_is_left_out_but_tool_steps_stay() -> None:
    """Turns scope stores the question and the final answer; the thread also holds the
    tool steps between them (kept: the exchange's stored answer is in the thread), and a
    second answer to another stored question (left out: the log holds the first one)."""
    call = AIMessage("", id="c", tool_calls=[{"name": "t", "args": {}, "id": "t1"}])
    result = ToolMessage("r", id="r", tool_call_id="t1")
    stored = [
        HumanMessage("q1", id="q1"),
        AIMessage("a1", id="a1"),
        HumanMessage("q2", id="q2"),
        AIMessage("a2", id="a2"),
    ]
    thread = [
        HumanMessage("q1", id="q1"),
        call,
        result,
        AIMessage("a1", id="a1"),
        HumanMessage("q2", id="q2"),
        AIMessage("a2 again", id="a2-bis"),
        HumanMessage("q3", id="q3"),
    ]
    merged = merge_history(stored, thread, max_messages=20)
    assert _texts(merged.messages) == ["q1", "", "r", "a1", "q2", "a2", "q3"]
    assert _texts(merged.unstored) == ["q3"]


def _call(call_id: str) -> AIMessage:
    return AIMessage("", id=call_id, tool_calls=[{"name": "t", "args": {}, "id": call_id}])


def test_a_branch_forked_after_the_tool_call_is_answered_as_it_stands() -> None:
    """Full scope: the log holds the first branch's tool result and answer; the second
    branch (resumed from the same approval) ran the tool again. Its final pass answers
    its own tool result, not a conversation ending in the stored answer; its next
    payload carries the exchange once."""
    stored = [
        HumanMessage("q", id="q"),
        _call("c"),
        ToolMessage("r", id="r1", tool_call_id="c"),
        AIMessage("a", id="a1"),
    ]
    branch = [HumanMessage("q", id="q"), _call("c"), ToolMessage("r", id="r2", tool_call_id="c")]
    merged = merge_history(stored, branch, max_messages=20)
    assert [m.id for m in merged.messages] == ["q", "c", "r2"]
    assert merged.redelivered
    later = [*branch, AIMessage("a", id="a2"), HumanMessage("next", id="n")]
    merged = merge_history(stored, later, max_messages=20)
    assert [m.id for m in merged.messages] == ["q", "c", "r1", "a1", "n"]
    assert [m.id for m in merged.unstored] == ["n"]


def test_a_replay_after_the_tool_result_is_answered_as_it_stands() -> None:
    stored = [
        HumanMessage("q", id="q"),
        _call("c"),
        ToolMessage("r", id="r", tool_call_id="c"),
        AIMessage("a", id="a1"),
        HumanMessage("q2", id="q2"),  # a later exchange, from another thread
        AIMessage("a2", id="a2"),
    ]
    replay = stored[:3]
    merged = merge_history(stored, replay, max_messages=20)
    assert [m.id for m in merged.messages] == ["q", "c", "r"]
    later = [*replay, AIMessage("a again", id="a1-bis"), HumanMessage("q3", id="q3")]
    merged = merge_history(stored, later, max_messages=20)
    assert [m.id for m in merged.messages] == ["q", "c", "r", "a1", "q2", "a2", "q3"]


def test_messages_the_thread_adds_after_a_stored_answer_are_not_taken_for_a_second_one() -> None:
    """After a final answer the log goes on with another assistant message (one a program
    appended); the thread's own note after that answer is its own message, kept."""
    stored = [HumanMessage("q", id="q"), AIMessage("a", id="a"), AIMessage("notice", id="n")]
    thread = [
        HumanMessage("q", id="q"),
        AIMessage("a", id="a"),
        AIMessage("note", id="own"),
        HumanMessage("q2", id="q2"),
    ]
    merged = merge_history(stored, thread, max_messages=20)
    assert [m.id for m in merged.unstored] == ["own", "q2"]


def test_a_second_tool_loop_answer_after_another_nodes_note_is_left_out() -> None:
    """Turns scope: a note of another node (a pipeline's first agent) comes between the
    question and the agent's tool loop; the log holds the first branch's answer."""
    stored = [HumanMessage("q", id="q"), AIMessage("note", id="g"), AIMessage("a", id="a1")]
    thread = [
        HumanMessage("q", id="q"),
        AIMessage("note", id="g"),
        _call("c"),
        ToolMessage("r", id="r2", tool_call_id="c"),
        AIMessage("a", id="a2"),
        HumanMessage("next", id="n"),
    ]
    merged = merge_history(stored, thread, max_messages=20)
    assert [m.id for m in merged.messages] == ["q", "g", "a1", "n"]
    assert [m.id for m in merged.unstored] == ["n"]


def test_after_its_stored_answer_a_thread_is_not_behind_what_others_wrote() -> None:
    """A revise pass (the reviewer's note after the stored answer) while the log went on
    with another thread's reviewer note and revision: those are later turns, placed
    before this pass's note, and the pass appends its note and revision."""
    stored = [
        HumanMessage("qA", id="qA"),
        AIMessage("vA1", id="vA1"),
        HumanMessage("qB", id="qB"),
        AIMessage("vB1", id="vB1"),
        AIMessage("reviewer A", id="rA"),
        AIMessage("vA2", id="vA2"),
    ]
    thread = [HumanMessage("qB", id="qB"), AIMessage("vB1", id="vB1"), AIMessage("rev", id="rB")]
    merged = merge_history(stored, thread, max_messages=20)
    assert not merged.behind and not merged.redelivered
    assert [m.id for m in merged.messages] == ["qA", "vA1", "qB", "vB1", "rA", "vA2", "rB"]
    assert [m.id for m in merged.unstored] == ["rB"]


def test_a_follow_up_without_a_question_is_not_behind_a_pushed_message() -> None:
    stored = [HumanMessage("hi", id="h"), AIMessage("a", id="a"), AIMessage("sale", id="p")]
    thread = [HumanMessage("hi", id="h"), AIMessage("a", id="a"), _call("c")]
    thread.append(ToolMessage("r", id="r", tool_call_id="c"))
    merged = merge_history(stored, thread, max_messages=20)
    assert not merged.behind
    assert [m.id for m in merged.messages] == ["h", "a", "p", "c", "r"]
    assert [m.id for m in merged.unstored] == ["c", "r"]


def test_a_thread_whose_stored_question_the_log_answered_is_behind() -> None:
    """Turns scope: the question is stored with the answer of another branch right after
    it (an exchange is stored whole), so that answer is of this exchange."""
    stored = [HumanMessage("q", id="q"), AIMessage("a1", id="a1")]
    branch = [HumanMessage("q", id="q"), _call("c"), ToolMessage("r", id="r", tool_call_id="c")]
    merged = merge_history(stored, branch, max_messages=20)
    assert merged.behind and merged.redelivered
    assert [m.id for m in merged.messages] == ["q", "c", "r"]


def test_a_revise_pass_asks_for_its_run_token_only_when_the_log_went_on() -> None:
    thread = [HumanMessage("q", id="q"), AIMessage("v1", id="v1"), AIMessage("rev", id="r")]
    alone = [HumanMessage("q", id="q"), AIMessage("v1", id="v1")]
    assert anchors_to_check(alone, thread) == []
    moved_on = [*alone, AIMessage("pushed", id="p")]
    assert anchors_to_check(moved_on, thread) == ["q"]
    # After the question itself the log's next message is of this exchange: no read.
    branch = [HumanMessage("q", id="q"), _call("c"), ToolMessage("r", id="t", tool_call_id="c")]
    assert anchors_to_check(alone, branch) == []


def test_the_run_token_tells_a_replayed_revision_from_a_conversation_that_moved_on() -> None:
    """The log: the question, its answer, the reviewer's note and the revision v2 (the
    question's token). A replay of the revise pass lacks v2: it is behind, and when it
    goes on with a new message its own revision is left out."""
    stored = [
        HumanMessage("q", id="q"),
        AIMessage("v1", id="v1"),
        AIMessage("rev", id="r"),
        AIMessage("v2", id="v2"),
    ]
    replay = stored[:3]
    merged = merge_history(stored, replay, max_messages=20, tokens={"q": RunToken("v2")})
    assert merged.behind
    assert [m.id for m in merged.messages] == ["q", "v1", "r"]
    later = [*replay, AIMessage("v2 again", id="v2-bis"), HumanMessage("thanks", id="t")]
    assert anchors_to_check(stored, later) == ["q"]
    merged = merge_history(stored, later, max_messages=20, tokens={"q": RunToken("v2")})
    assert [m.id for m in merged.messages] == ["q", "v1", "r", "v2", "t"]
    assert [m.id for m in merged.unstored] == ["t"]
    # Whose token the thread holds goes on from it: another writer's message followed.
    other = [*stored, AIMessage("pushed", id="p")]
    mine = [*stored, _call("c"), ToolMessage("x", id="x", tool_call_id="c")]
    mine += [AIMessage("follow-up", id="f"), HumanMessage("thanks", id="t")]
    merged = merge_history(other, mine, max_messages=20, tokens={"q": RunToken("v2")})
    assert [m.id for m in merged.unstored] == ["c", "x", "f", "t"]


def test_a_branch_sent_back_again_goes_on_from_the_stored_pass() -> None:
    """The log holds branch A's revision (the pass from "rA" to the token "vA"), after
    another thread's exchange; the thread is branch B, sent back again ("r2"). B's copy
    of the pass is left out, A's stands in its place and is part of what B has seen."""
    stored = [
        HumanMessage("q", id="q"),
        AIMessage("v1", id="v1"),
        HumanMessage("other", id="o"),
        AIMessage("other answer", id="oa"),
        AIMessage("rev", id="rA"),
        AIMessage("v2", id="vA"),
    ]
    thread = [
        HumanMessage("q", id="q"),
        AIMessage("v1", id="v1"),
        AIMessage("rev", id="rB"),
        AIMessage("v2", id="vB"),
        AIMessage("rev 2", id="r2"),
    ]
    assert anchors_to_check(stored, thread) == ["q"]
    merged = merge_history(stored, thread, max_messages=20, tokens={"q": RunToken("vA", "rA")})
    assert not merged.behind and not merged.redelivered
    assert [m.id for m in merged.messages] == ["q", "v1", "o", "oa", "rA", "vA", "r2"]
    assert [m.id for m in merged.unstored] == ["r2"]
    assert merged.goes_on_from == ("o", "oa", "rA", "vA")  # what the payload shows before "r2"
    # Without the token nothing tells B's copy from its own messages: they stay.
    merged = merge_history(stored, thread, max_messages=20)
    assert [m.id for m in merged.unstored] == ["rB", "vB", "r2"]
    # The copy while it is made (B's first pass) is behind the stored pass.
    merged = merge_history(stored, thread[:3], max_messages=20, tokens={"q": RunToken("vA", "rA")})
    assert merged.behind and merged.goes_on_from == ()
    # Once B's later pass is stored, its copy lies between stored messages: left out.
    later = [*stored, AIMessage("rev 2", id="r2"), AIMessage("v3", id="v3")]
    thanks = [*thread, AIMessage("v3", id="v3"), HumanMessage("thanks", id="t")]
    merged = merge_history(later, thanks, max_messages=20)
    assert [m.id for m in merged.messages] == [*(m.id for m in later), "t"]


def test_a_message_no_scope_stores_keeps_its_place_between_stored_ones() -> None:
    """A node's custom-role note after each answer is never stored; with another
    writer's message between the thread's stored ones, it is still the thread's own."""
    stored = [
        HumanMessage("q", id="q"),
        AIMessage("a", id="a"),
        AIMessage("pushed", id="p"),
        HumanMessage("q2", id="q2"),
        AIMessage("a2", id="a2"),
    ]
    critic = ChatMessage("looks fine", role="critic", id="c")
    thread = [stored[0], stored[1], critic, stored[3], stored[4], HumanMessage("q3", id="q3")]
    merged = merge_history(stored, thread, max_messages=20)
    assert [m.id for m in merged.messages] == ["q", "a", "c", "p", "q2", "a2", "q3"]


def test_a_message_the_thread_holds_twice_is_no_late_one() -> None:
    # A state whose reducer appends (``operator.add``) and a client that sends the whole
    # conversation again: the retried question is in the thread twice.
    stored = [
        HumanMessage("four", id="4"),
        AIMessage("echo four", id="a4"),
        HumanMessage("five", id="5"),
        AIMessage("echo five", id="a5"),
    ]
    thread = [*stored, HumanMessage("four", id="4")]
    merged = merge_history(stored, thread, max_messages=20)
    assert [m.content for m in merged.messages] == [
        "four", "echo four", "five", "echo five", "four",
    ]  # fmt: skip
    assert merged.redelivered and merged.unstored == []


def test_a_late_redelivery_is_answered_with_the_log_up_to_it() -> None:
    stored = [
        HumanMessage("one", id="1"),
        AIMessage("echo one", id="a1"),
        HumanMessage("four", id="4"),
        AIMessage("echo four", id="a4"),
        HumanMessage("five", id="5"),
        AIMessage("echo five", id="a5"),
    ]
    thread = [stored[0], stored[1], stored[4], stored[5], HumanMessage("four", id="4")]
    merged = merge_history(stored, thread, max_messages=20)
    assert [m.content for m in merged.messages] == ["one", "echo one", "four"]
    assert merged.redelivered and merged.unstored == []
    later = [*thread, AIMessage("echo four again", id="a4-bis"), HumanMessage("six", id="6")]
    merged = merge_history(stored, later, max_messages=20)
    assert [m.content for m in merged.messages] == [
        "one", "echo one", "four", "echo four", "five", "echo five", "six",
    ]  # fmt: skip
    assert [m.id for m in merged.unstored] == ["6"]


def test_a_late_message_goes_where_the_log_has_it_with_the_threads_edit() -> None:
    # An operator reordered the thread (update_state) and edited an answer in place,
    # keeping its id: the edit shows (as on any stable thread), in the log's order.
    q1, a1 = HumanMessage("q1", id="q1"), AIMessage("a1", id="a1")
    q2, a2 = HumanMessage("q2", id="q2"), AIMessage("a2", id="a2")
    stored = [q1, a1, q2, a2]
    thread = [q2, a2, q1, AIMessage("EDITED a1", id="a1"), HumanMessage("q3", id="q3")]
    merged = merge_history(stored, thread, max_messages=20)
    assert [m.content for m in merged.messages] == ["q1", "EDITED a1", "q2", "a2", "q3"]
    assert [m.id for m in merged.unstored] == ["q3"]


def test_a_repeated_exchange_is_recognised_whatever_the_order_of_its_keys() -> None:
    """PostgreSQL's JSONB gives mappings back in its own key order: the stored copy of
    a block answer or a tool call's arguments still repeats the model's (a NaN, stored
    and read back, equals itself)."""
    stored = [
        HumanMessage("book"),
        AIMessage(
            [{"text": "ok", "type": "text"}],
            tool_calls=[{"name": "book", "args": {"a": 1, "z": [{"y": 2, "x": 1}]}, "id": "c"}],
        ),
        ToolMessage("done", tool_call_id="c"),
        AIMessage("booked", additional_kwargs={}),
    ]
    again = [
        HumanMessage("book"),
        AIMessage(
            [{"type": "text", "text": "ok"}],
            tool_calls=[{"name": "book", "args": {"z": [{"x": 1, "y": 2}], "a": 1}, "id": "c"}],
        ),
        ToolMessage("done", tool_call_id="c"),
        AIMessage("booked"),
    ]
    assert exchange_overlap(stored, again) == 4
    changed = [again[0], AIMessage([{"type": "text", "text": "no"}])]
    assert exchange_overlap(stored[:2], changed) == 0
    for a, b in [(21.5, "21.5"), (True, 1), (1, 1.0), ([1], "[1]")]:
        first = [AIMessage("", tool_calls=[{"name": "f", "args": {"v": a}, "id": "x"}])]
        other = [AIMessage("", tool_calls=[{"name": "f", "args": {"v": b}, "id": "x"}])]
        assert exchange_overlap(first, other) == 0, (a, b)  # another call: not repeated
    nan = [AIMessage("", tool_calls=[{"name": "f", "args": {"v": float("nan")}, "id": "n"}])]
    assert exchange_overlap(nan, [nan[0].model_copy(deep=True)]) == 1


def test_a_result_of_an_invalid_tool_call_stays_with_its_call() -> None:
    """A call whose arguments were not JSON is in ``invalid_tool_calls``; a tool loop
    that answered it with an error result sent both to the provider (langchain's
    converters send invalid calls as tool calls, and each needs its reply). The window
    keeps the result with its call; a call left unanswered still costs nothing."""

    def invalid(call_id: str) -> Any:
        return [{"name": "weather", "args": "{", "id": call_id, "error": "bad json",
                 "type": "invalid_tool_call"}]  # fmt: skip

    messages: list[BaseMessage] = [
        HumanMessage("weather in Paris and Rome?", id="h1"),
        AIMessage(
            "",
            id="a1",
            tool_calls=[{"name": "weather", "args": {"city": "Paris"}, "id": "c1"}],
            invalid_tool_calls=invalid("c2"),
        ),
        ToolMessage("sunny", tool_call_id="c1", id="t1"),
        ToolMessage("Error: not JSON", tool_call_id="c2", status="error", id="t2"),
        AIMessage("Paris is sunny.", id="a2"),
        HumanMessage("and tomorrow?", id="h2"),
        AIMessage("", id="a3", invalid_tool_calls=invalid("c3")),
        ToolMessage("Error: not JSON", tool_call_id="c3", status="error", id="t3"),
        AIMessage("Sorry, try again.", id="a4"),
        HumanMessage("ok", id="h3"),
        AIMessage("hm", id="a5", invalid_tool_calls=invalid("c4")),  # never answered
    ]
    kept = [m.id for unit in tool_safe_units(messages) for m in unit]
    assert kept == [m.id for m in messages]
    assert [m.id for m in window(messages, 20)] == [m.id for m in messages]
