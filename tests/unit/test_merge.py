"""Merging stored history with the current thread: overlap, reset, window, thread reading."""

from __future__ import annotations

from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage

from agent_history.messages import apply_reset, merge_history, trim_window
from agent_history.thread import current_thread


def _texts(messages: list) -> list[str]:
    return [m.content for m in messages]


def test_new_thread_gets_stored_turns_before_it() -> None:
    stored = [HumanMessage("q1", id="a"), AIMessage("a1", id="b")]
    merged = merge_history(stored, [HumanMessage("q2", id="c")], max_messages=10)
    assert _texts(merged.messages) == ["q1", "a1", "q2"]
    assert merged.stored_in_payload == 2
    assert _texts(merged.new_turns) == ["q2"]


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
    assert _texts(merged.new_turns) == ["q3"]
    assert merged.stored_in_payload == 4


def test_overlap_by_id_wins_over_position() -> None:
    stored = [HumanMessage("older", id="o"), HumanMessage("hi", id="m1"), AIMessage("yo", id="m2")]
    thread = [HumanMessage("hi", id="m1"), AIMessage("yo", id="m2"), HumanMessage("next", id="m3")]
    merged = merge_history(stored, thread, max_messages=10)
    assert _texts(merged.messages) == ["older", "hi", "yo", "next"]
    assert [m.id for m in merged.new_turns] == ["m3"]


def test_thread_messages_older_than_the_stored_tail_go_first() -> None:
    thread = [HumanMessage(f"m{i}", id=f"id{i}") for i in range(6)] + [HumanMessage("new", id="n")]
    stored = thread[3:6]  # the tail window holds only the newest stored turns
    merged = merge_history(stored, thread, max_messages=50)
    assert _texts(merged.messages) == ["m0", "m1", "m2", "m3", "m4", "m5", "new"]
    assert _texts(merged.new_turns) == ["new"]
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
    assert merged.new_turns == []
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
    assert _texts(trim_window(thread, 3)) == ["answer", "again"]
    merged = merge_history([], thread, max_messages=3)
    assert merged.truncated == 3 and len(merged.messages) == 2


def test_system_messages_do_not_count_against_the_window() -> None:
    thread = [SystemMessage("be nice"), HumanMessage("a"), AIMessage("b"), HumanMessage("c")]
    merged = merge_history([], thread, max_messages=2)
    assert _texts(merged.system) == ["be nice"]
    assert _texts(merged.messages) == ["b", "c"]


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
    thread, incoming, _ = current_thread(state)
    assert _texts(thread) == ["hello"]
    assert thread[0].id == "99" and incoming is not None and incoming.message_id == "99"


def test_thread_does_not_duplicate_the_latest_user_turn() -> None:
    state = {
        "messages": [HumanMessage("hi", id="uuid-1")],
        "inputs": {"message": "hi", "message_id": "tg-5"},
    }
    thread, _, _ = current_thread(state)
    assert _texts(thread) == ["hi"]
    assert thread[0].id == "tg-5"


def test_thread_from_history_and_prompt_fields() -> None:
    state = {
        "inputs": {
            "history": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
            "query": "c",
        }
    }
    thread, _, _ = current_thread(state)
    assert _texts(thread) == ["a", "b", "c"]
    listener = {
        "inputs": {"listener": {"platform": "wecom", "message": {"content": "hey", "msgid": "w1"}}}
    }
    thread, incoming, _ = current_thread(listener)
    assert _texts(thread) == ["hey"] and incoming is not None and incoming.message_id == "w1"
    assert current_thread({"inputs": {"message": "   "}})[0] == []
    assert current_thread(None)[0] == []
