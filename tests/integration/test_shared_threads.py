"""One stable thread serving several conversation keys: a WeCom AI bot in a group chat,
with the thread per group (agent-node.md's stable thread per chat) and the default key per
member. Each member's conversation used to receive every unstored message of the thread,
so one member's stored history held what the others said."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Annotated, Any, TypedDict

import pytest
from langchain_core.messages import AnyMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph.message import add_messages
from langgraph.store.base import BaseStore

from agent_history import AgentNode, ChatHistory, HistoryReport, HistoryToggles
from agent_history.incoming import key_span
from agent_history.node import merge_results
from agent_history.testing import RecordingChatModel
from tests.support.agent_graphs import build_graph, telegram_callback, toggles


class OlderState(TypedDict, total=False):
    """An earlier release's `AgentState`: no channel this release added."""

    messages: Annotated[list[AnyMessage], add_messages]
    inputs: dict[str, Any]
    results: Annotated[dict[str, Any], merge_results]
    answered: Annotated[dict[str, str], merge_results]


GROUP_TALK = [
    ("alice", "a1", "alice: my salary is 9000"),
    ("bob", "b1", "bob: hello"),
    ("alice", "a2", "alice: again"),
    ("bob", "b2", "bob: what did alice say?"),
]


def _callback(group: str, user: str, message_id: str, text: str) -> dict[str, Any]:
    return {
        "inputs": {"message": {"msgid": message_id, "chatid": group, "chattype": "group",
                               "from": {"userid": user}, "text": {"content": text}}},
        "results": {"wecom_ai_bot_events_parser": {"chat_type": "group", "user": user}},
    }  # fmt: skip


def _contents(store: BaseStore, key: str) -> list[str]:
    return [str(turn.content) for turn in ChatHistory(store).read(key)]


def _group_thread() -> tuple[str, str, dict[str, Any]]:
    """A group's id, a suffix making its members unique to the test, and its thread."""
    group, suffix = "G-" + uuid.uuid4().hex[:6], uuid.uuid4().hex[:6]
    return group, suffix, {"configurable": {"thread_id": f"wecom-group-{group}"}}


def _agent_on_a_stable_thread(
    store: BaseStore, model: RecordingChatModel | None = None, **settings: Any
) -> tuple[Any, AgentNode, RecordingChatModel, list[HistoryReport]]:
    model, reports = model or RecordingChatModel(), []
    node = AgentNode(
        model, use_graph_chat_history=True, toggles=toggles(), on_report=reports.append,
        **settings,
    )  # fmt: skip
    return build_graph(node, store, checkpointer=InMemorySaver()), node, model, reports


def test_each_member_of_a_group_thread_keeps_only_their_own_exchanges(store: BaseStore) -> None:
    graph, _node, model, reports = _agent_on_a_stable_thread(store)
    group, suffix, thread = _group_thread()
    for user, message_id, text in GROUP_TALK:
        graph.invoke(_callback(group, f"{user}{suffix}", message_id, text), thread)
    assert _contents(store, f"wecom_aibot:group:alice{suffix}") == [
        "alice: my salary is 9000", "echo: alice: my salary is 9000",
        "alice: again", "echo: alice: again",
    ]  # fmt: skip
    assert _contents(store, f"wecom_aibot:group:bob{suffix}") == [
        "bob: hello", "echo: bob: hello",
        "bob: what did alice say?", "echo: bob: what did alice say?",
    ]  # fmt: skip
    assert [r.appended for r in reports] == [2, 2, 2, 2]
    # The thread is the group's: the model still sees the whole group talk.
    assert [m.content for m in model.calls[-1]][:2] == [
        "alice: my salary is 9000", "echo: alice: my salary is 9000",
    ]  # fmt: skip


def test_a_thread_of_one_key_still_catches_up_what_a_failed_write_left(
    store: BaseStore, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The same key run after run: an exchange whose write failed is stored by the next
    run (the thread still holds it), as before."""
    from agent_history.history import chat_history

    graph, _node, _model, reports = _agent_on_a_stable_thread(store, write_attempts=1)
    group, user = "G-" + uuid.uuid4().hex[:6], "carol" + uuid.uuid4().hex[:6]
    thread = {"configurable": {"thread_id": f"wecom-group-{group}"}}
    real = chat_history.ChatHistory.append
    with monkeypatch.context() as patched:

        def failing(*args: Any, **kwargs: Any) -> Any:
            raise ConnectionError("store down")

        patched.setattr(chat_history.ChatHistory, "append", failing)
        graph.invoke(_callback(group, user, "c1", "first"), thread)
    assert reports[-1].fallbacks == ("write_failed",)
    # The key resolved: the default list's candidates for other channels are not listed.
    (warning,) = [r.getMessage() for r in caplog.records if "reason=write_failed" in r.getMessage()]
    assert "rejected=" not in warning and f"key=wecom_aibot:group:{user}" in warning
    assert chat_history.ChatHistory.append is real
    graph.invoke(_callback(group, user, "c2", "second"), thread)
    assert _contents(store, f"wecom_aibot:group:{user}") == [
        "first", "echo: first", "second", "echo: second"
    ]  # fmt: skip


def test_a_group_thread_through_the_middleware_keeps_members_apart(store: BaseStore) -> None:
    from langchain.agents import create_agent

    from agent_history.middleware import HistoryMiddleware

    reports: list[HistoryReport] = []
    agent = create_agent(
        RecordingChatModel(), tools=[],
        middleware=[HistoryMiddleware(toggles=toggles(), on_report=reports.append)],
        store=store, checkpointer=InMemorySaver(),
    )  # fmt: skip
    group, suffix, thread = _group_thread()
    for user, message_id, text in GROUP_TALK[:3]:
        agent.invoke(_callback(group, f"{user}{suffix}", message_id, text), thread)
    assert _contents(store, f"wecom_aibot:group:bob{suffix}") == ["bob: hello", "echo: bob: hello"]
    assert _contents(store, f"wecom_aibot:group:alice{suffix}") == [
        "alice: my salary is 9000", "echo: alice: my salary is 9000",
        "alice: again", "echo: alice: again",
    ]  # fmt: skip


def test_runs_in_memory_leave_their_exchanges_to_the_next_run_with_a_key(
    store: BaseStore,
) -> None:
    """A run without a key, or with history switched off, records no key: the next run
    under the thread's key still stores the exchanges those runs left (an early version
    recorded an empty key, and the next run dropped them for good)."""
    model, reports = RecordingChatModel(), []
    node = AgentNode(
        model, use_graph_chat_history=True, toggles=toggles(), on_report=reports.append,
        history_key_candidates=["tg:{{ inputs.chat }}"],
    )  # fmt: skip
    graph = build_graph(node, store, checkpointer=InMemorySaver())
    chat = uuid.uuid4().int % 10**9
    thread = {"configurable": {"thread_id": uuid.uuid4().hex}}
    graph.invoke({"inputs": {"chat": chat, "message": "one"}}, thread)
    out = graph.invoke({"inputs": {"message": "two, without a key"}}, thread)
    assert reports[-1].fallbacks == ("no_valid_key",)
    span = key_span(out, "agent")
    assert span is not None and span.key == f"tg:{chat}"  # the keyless run left it
    node.toggles = toggles(mode="off")
    graph.invoke({"inputs": {"chat": chat, "message": "three, history off"}}, thread)
    node.toggles = toggles()
    graph.invoke({"inputs": {"chat": chat, "message": "four"}}, thread)
    assert reports[-2].mode == "off" and reports[-2].appended == 0
    assert _contents(store, f"tg:{chat}")[::2] == [
        "one", "two, without a key", "three, history off", "four"
    ]  # fmt: skip


def test_the_middleware_records_no_key_from_a_key_function(store: BaseStore) -> None:
    """A key function may read what the run changed (its messages), so the key it gives
    at the end need not be the one the run's passes used: it is not recorded, and a
    thread keyed by a function catches up as before."""
    from langchain.agents import create_agent

    from agent_history.middleware import HistoryMiddleware

    def key(state: Any, runtime: Any) -> str:
        return "fn:" + str(len(state.get("messages") or []))

    agent = create_agent(
        RecordingChatModel(), tools=[],
        middleware=[HistoryMiddleware(history_key=key, toggles=toggles())],
        store=store, checkpointer=InMemorySaver(),
    )  # fmt: skip
    out = agent.invoke({"messages": [{"role": "user", "content": "hi"}]}, {
        "configurable": {"thread_id": uuid.uuid4().hex}
    })  # fmt: skip
    assert key_span(out, "agent") is None


@pytest.mark.parametrize("mode", ["read_only", "off", "write_fails"])
def test_a_members_run_in_memory_stays_that_members(store: BaseStore, mode: str) -> None:
    """A member's run that stored nothing (history read-only or off, or the write
    failed) belongs to that member: the other member's next run never stores it (an
    early version stored bob's run with history off under alice). The member's next run
    with history on stores it before its own exchange, after another member's turn too
    (an earlier version lost it there), and the member's span goes on from there."""
    from agent_history.history import chat_history

    graph, node, _model, reports = _agent_on_a_stable_thread(store, write_attempts=1)
    group, suffix, thread = _group_thread()
    alice, bob = f"alice{suffix}", f"bob{suffix}"
    graph.invoke(_callback(group, alice, "a1", "a1"), thread)
    real = chat_history.ChatHistory.append
    if mode == "write_fails":

        def failing(*args: Any, **kwargs: Any) -> Any:
            raise ConnectionError("store down")

        chat_history.ChatHistory.append = failing  # type: ignore[method-assign]
    else:
        node.toggles = toggles(mode=mode)
    try:
        graph.invoke(_callback(group, bob, "b1", "b1"), thread)
    finally:
        chat_history.ChatHistory.append = real  # type: ignore[method-assign]
        node.toggles = toggles()
    assert reports[-1].appended == 0
    graph.invoke(_callback(group, alice, "a2", "a2"), thread)
    graph.invoke(_callback(group, bob, "b2", "b2"), thread)
    assert _contents(store, f"wecom_aibot:group:{alice}")[::2] == ["a1", "a2"]
    assert _contents(store, f"wecom_aibot:group:{bob}") == ["b1", "echo: b1", "b2", "echo: b2"]
    assert reports[-1].appended == 4
    graph.invoke(_callback(group, bob, "b3", "b3"), thread)  # bob again: his span goes on
    assert _contents(store, f"wecom_aibot:group:{bob}")[::2] == ["b1", "b2", "b3"]
    assert _contents(store, f"wecom_aibot:group:{alice}")[::2] == ["a1", "a2"]
    span = key_span(graph.get_state(thread).values, "agent")
    assert span is not None and span.owed == () and not span.unstored


def test_a_member_whose_earlier_run_stored_nothing_gets_only_their_own(store: BaseStore) -> None:
    """alice, then bob with history read-only, then bob again: bob's next run stores his
    two exchanges, never alice's (bob's log lacked the thread's earlier messages)."""
    graph, node, _model, _reports = _agent_on_a_stable_thread(store)
    group, suffix, thread = _group_thread()
    graph.invoke(_callback(group, f"alice{suffix}", "a1", "a1"), thread)
    node.toggles = toggles(mode="read_only")
    graph.invoke(_callback(group, f"bob{suffix}", "b1", "b1"), thread)
    node.toggles = toggles()
    graph.invoke(_callback(group, f"bob{suffix}", "b2", "b2"), thread)
    assert _contents(store, f"wecom_aibot:group:bob{suffix}")[::2] == ["b1", "b2"]
    assert _contents(store, f"wecom_aibot:group:alice{suffix}")[::2] == ["a1"]


def test_a_redelivery_through_the_middleware_moves_no_span(store: BaseStore) -> None:
    """alice's message re-delivered (same channel id) after bob's turn ends the run at once
    and records nothing: alice's next run does not store bob's exchange."""
    from langchain.agents import create_agent

    from agent_history.middleware import HistoryMiddleware

    agent = create_agent(
        RecordingChatModel(), tools=[], middleware=[HistoryMiddleware(toggles=toggles())],
        store=store, checkpointer=InMemorySaver(),
    )  # fmt: skip
    group, suffix, thread = _group_thread()
    alice, bob = f"alice{suffix}", f"bob{suffix}"
    for user, message_id in [(alice, "a1"), (bob, "b1"), (alice, "a1"), (alice, "a2")]:
        agent.invoke(_callback(group, user, message_id, message_id), thread)
    assert _contents(store, f"wecom_aibot:group:{alice}")[::2] == ["a1", "a2"]
    assert _contents(store, f"wecom_aibot:group:{bob}")[::2] == ["b1"]


def _trim_to_four(state: dict[str, Any]) -> dict[str, Any]:
    from langchain_core.messages import RemoveMessage

    messages = state.get("messages") or []
    return (
        {"messages": [RemoveMessage(id=m.id) for m in messages[:-4]]} if len(messages) > 4 else {}
    )


def _agent_after(
    store: BaseStore, node: AgentNode, before: Callable[[dict[str, Any]], Any] | None = None
) -> Any:
    """A graph running ``before`` (a trimming or recalling step, when given), then the agent,
    on a stable thread (a checkpointer)."""
    from langgraph.graph import START, StateGraph

    from agent_history import AgentState

    builder = StateGraph(AgentState)
    builder.add_node("agent", node)
    if before is None:
        builder.add_edge(START, "agent")
    else:
        builder.add_node("before", before)
        builder.add_edge(START, "before")
        builder.add_edge("before", "agent")
    return builder.compile(store=store, checkpointer=InMemorySaver())


@pytest.mark.parametrize("ids", [True, False], ids=["channel-ids", "no-ids"])
@pytest.mark.parametrize("shape", ["node", "node-trimmed", "middleware", "keyless-first"])
def test_one_key_still_catches_up_what_a_run_left_unstored(
    store: BaseStore, shape: str, ids: bool
) -> None:
    """A thread of one key, as before the key spans: the exchange a read-only run left
    unstored is stored by the next run. An early version of the spans lost it when the
    middleware ran without channel ids, when the thread was trimmed (RemoveMessage)
    past the span's start, and when the thread's first run had no key."""
    from langchain.agents import create_agent

    from agent_history.middleware import HistoryMiddleware

    chat = uuid.uuid4().int % 10**9
    thread = {"configurable": {"thread_id": uuid.uuid4().hex}}
    env: dict[str, str] = {}
    read_only = HistoryToggles(env=env)  # the environment is read again on each run
    if shape == "middleware":
        graph: Any = create_agent(
            RecordingChatModel(), tools=[], middleware=[HistoryMiddleware(toggles=read_only)],
            store=store, checkpointer=InMemorySaver(),
        )  # fmt: skip
    else:
        node = AgentNode(RecordingChatModel(), use_graph_chat_history=True, toggles=read_only)
        graph = _agent_after(store, node, _trim_to_four if shape == "node-trimmed" else None)
    texts = [f"m{i}" for i in range(1, 6)]
    for i, text in enumerate(texts, start=1):
        message: dict[str, Any] = {"text": text, **({"message_id": i} if ids else {})}
        results = (
            {}
            if shape == "keyless-first" and i == 1
            else {"telegram_events_parser": {"chat_id": chat}}
        )
        env.pop("ORCHEO_GRAPH_CHAT_HISTORY_MODE", None)
        if i == 3:
            env["ORCHEO_GRAPH_CHAT_HISTORY_MODE"] = "read_only"
        graph.invoke({"inputs": {"message": message}, "results": results}, thread)
    assert _contents(store, f"telegram:{chat}")[::2] == texts


@pytest.mark.parametrize("trimmed", [False, True], ids=["whole-thread", "trimmed"])
def test_a_members_failed_exchanges_are_stored_in_order_after_the_others_turns(
    store: BaseStore, caplog: pytest.LogCaptureFixture, trimmed: bool
) -> None:
    """alice's writes fail twice, each time followed by bob's turn; her next run with a
    working store stores both failed exchanges, then her own, in the thread's order, and
    none of bob's. Trimmed (RemoveMessage keeping the last 7 messages), the exchange whose
    start was cut keeps what the thread still holds of it."""
    from langchain_core.messages import RemoveMessage

    from agent_history.history import chat_history

    model, reports = RecordingChatModel(), []
    node = AgentNode(
        model, use_graph_chat_history=True, toggles=toggles(), write_attempts=1,
        on_report=reports.append,
    )  # fmt: skip

    def trim(state: dict[str, Any]) -> dict[str, Any]:
        messages = state.get("messages") or []
        return {"messages": [RemoveMessage(id=m.id) for m in messages[:-7]]}

    graph = _agent_after(store, node, trim if trimmed else None)
    group, suffix, thread = _group_thread()
    alice, bob = f"alice{suffix}", f"bob{suffix}"
    real = chat_history.ChatHistory.append

    def failing(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionError("store down")

    talk = [(alice, "a1", True), (bob, "b1", False), (alice, "a2", True), (bob, "b2", False)]
    for user, message_id, fails in talk:
        chat_history.ChatHistory.append = failing if fails else real  # type: ignore[method-assign]
        try:
            graph.invoke(_callback(group, user, message_id, message_id), thread)
        finally:
            chat_history.ChatHistory.append = real  # type: ignore[method-assign]
    assert [r.fallbacks for r in reports] == [("write_failed",), (), ("write_failed",), ()]
    assert _contents(store, f"wecom_aibot:group:{alice}") == []
    graph.invoke(_callback(group, alice, "a3", "a3"), thread)
    expected = ["a1", "echo: a1", "a2", "echo: a2", "a3", "echo: a3"]
    # Trimmed to 7 before a3's run: a1's question was cut, its answer is still there.
    assert _contents(store, f"wecom_aibot:group:{alice}") == (expected[1:] if trimmed else expected)
    assert _contents(store, f"wecom_aibot:group:{bob}") == ["b1", "echo: b1", "b2", "echo: b2"]
    span = key_span(graph.get_state(thread).values, "agent")
    assert span is not None and span.key.endswith(alice) and span.owed == ()
    graph.invoke(_callback(group, bob, "b3", "b3"), thread)
    assert _contents(store, f"wecom_aibot:group:{bob}")[::2] == ["b1", "b2", "b3"]
    assert len(_contents(store, f"wecom_aibot:group:{alice}")) == len(expected) - trimmed
    assert "history_owed_exchanges_dropped" not in caplog.text


def test_a_keyless_run_after_a_members_turn_stays_with_that_members_span(
    store: BaseStore,
) -> None:
    """A run without a key belongs to the span it ran in (as on a thread of one key): when
    another member speaks before the span's member does again, the span's member's next
    run still stores it, and the other member's never does."""
    graph, _node, _model, reports = _agent_on_a_stable_thread(store)
    group, suffix, thread = _group_thread()
    alice, bob = f"alice{suffix}", f"bob{suffix}"
    graph.invoke(_callback(group, alice, "a1", "a1"), thread)
    keyless = {
        "inputs": {"message": {"msgid": "k1", "chatid": group, "text": {"content": "k1"}}},
        "results": {"wecom_ai_bot_events_parser": {"chat_type": "group", "user": None}},
    }
    graph.invoke(keyless, thread)
    assert reports[-1].fallbacks == ("no_valid_key",)
    graph.invoke(_callback(group, bob, "b1", "b1"), thread)
    graph.invoke(_callback(group, alice, "a2", "a2"), thread)
    assert _contents(store, f"wecom_aibot:group:{alice}")[::2] == ["a1", "k1", "a2"]
    assert _contents(store, f"wecom_aibot:group:{bob}")[::2] == ["b1"]


class _RefusedAnswerModel(RecordingChatModel):
    """Answers "poison" with a content block holding bytes, which the codec refuses."""

    def reply(self, messages: Any, **kwargs: Any) -> Any:
        from langchain_core.messages import AIMessage

        if "poison" in str([m for m in messages if m.type == "human"][-1].content):
            return AIMessage(content=[{"type": "text", "text": "odd", "raw": b"\x00\x01"}])
        return super().reply(messages, **kwargs)


@pytest.mark.parametrize("group", [False, True], ids=["one-key", "group"])
def test_an_answer_the_codec_refuses_never_keeps_later_exchanges_from_the_log(
    store: BaseStore, group: bool
) -> None:
    """An answer that cannot be stored (bytes in a content block) costs its exchange, with
    an ``invalid_message`` warning; every later exchange is stored. Before, the refused
    answer, still unstored in the thread, came back with every later append of the
    conversation on a stable thread, and each was refused whole: nothing of that member
    was ever stored again."""
    graph, _node, _model, reports = _agent_on_a_stable_thread(store, _RefusedAnswerModel())
    chat, suffix, thread = _group_thread()
    alice, bob = f"alice{suffix}", f"bob{suffix}"
    talk = [(alice, "p1", "poison"), (bob, "b1", "b1"), (alice, "a2", "a2"), (alice, "a3", "a3")]
    for user, message_id, text in talk if group else [t for t in talk if t[0] == alice]:
        graph.invoke(_callback(chat, user, message_id, text), thread)
    alices = [r for r in reports if r.key and r.key.endswith(alice)]
    assert [(r.appended, r.fallbacks) for r in alices] == [
        (0, ("invalid_message",)),
        # One key: the refused exchange, caught up with a2's, is left out again. A group:
        # the refused exchange is not owed (no run could store it).
        (2, () if group else ("invalid_message",)),
        (2, ()),
    ]
    assert _contents(store, f"wecom_aibot:group:{alice}") == ["a2", "echo: a2", "a3", "echo: a3"]
    if group:
        assert _contents(store, f"wecom_aibot:group:{bob}") == ["b1", "echo: b1"]


def test_a_refused_exchange_costs_only_itself_not_the_unstored_ones_before_it(
    store: BaseStore,
) -> None:
    """q1 runs with history read-only (left unstored), q2's answer is refused, q3 is fine:
    q2's run catches q1 up and stores it, leaving out only q2's exchange. An earlier
    version of the refusal rule stored only what followed the refused message: q1 was
    lost for good."""
    graph, node, _model, reports = _agent_on_a_stable_thread(store, _RefusedAnswerModel())
    chat, suffix, thread = _group_thread()
    alice = f"alice{suffix}"
    node.toggles = toggles(mode="read_only")
    graph.invoke(_callback(chat, alice, "q1", "q1"), thread)
    node.toggles = toggles()
    graph.invoke(_callback(chat, alice, "q2", "poison"), thread)
    assert (reports[-1].appended, reports[-1].fallbacks) == (2, ("invalid_message",))
    graph.invoke(_callback(chat, alice, "q3", "q3"), thread)
    assert _contents(store, f"wecom_aibot:group:{alice}") == ["q1", "echo: q1", "q3", "echo: q3"]


@pytest.mark.parametrize("notes", [False, True], ids=["chat-only", "system-notes"])
@pytest.mark.parametrize("bob_between", [True, False], ids=["owed-span", "own-span"])
def test_a_removed_message_never_opens_a_members_span_to_the_others(
    store: BaseStore, bob_between: bool, notes: bool
) -> None:
    """bob, then alice's exchange whose write failed, (then bob again,) and alice's
    question is removed from the thread (a recalled message, RemoveMessage) before her
    next run. Her span (owed, with bob between; her own, without) has lost its first
    message: it goes on after bob's last message before it, so her orphaned answer is
    stored as hers. It used to reach back to the thread's start and put bob's first
    exchange in alice's log (her own span: before this release too). With a system note
    added to the thread on every run (context for the model), the message before a span
    is the previous key's last chat message."""
    from langchain_core.messages import RemoveMessage, SystemMessage

    from agent_history.history import chat_history

    recalled: set[str] = set()

    def recall(state: dict[str, Any]) -> dict[str, Any]:
        messages = state.get("messages") or []
        removed: list[Any] = [RemoveMessage(id=m.id) for m in messages if m.id in recalled]
        return {"messages": [*removed, *([SystemMessage("note")] if notes else [])]}

    node = AgentNode(
        RecordingChatModel(), use_graph_chat_history=True, toggles=toggles(), write_attempts=1
    )
    graph = _agent_after(store, node, recall)
    chat, suffix, thread = _group_thread()
    alice, bob = f"alice{suffix}", f"bob{suffix}"
    graph.invoke(_callback(chat, bob, "b0", "b0"), thread)
    real = chat_history.ChatHistory.append

    def failing(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionError("store down")

    chat_history.ChatHistory.append = failing  # type: ignore[method-assign]
    try:
        graph.invoke(_callback(chat, alice, "a1", "a1"), thread)
    finally:
        chat_history.ChatHistory.append = real  # type: ignore[method-assign]
    if bob_between:
        graph.invoke(_callback(chat, bob, "b1", "b1"), thread)
    recalled.add("a1")
    graph.invoke(_callback(chat, alice, "a2", "a2"), thread)
    assert _contents(store, f"wecom_aibot:group:{alice}") == ["echo: a1", "a2", "echo: a2"]
    assert _contents(store, f"wecom_aibot:group:{bob}") == (
        ["b0", "echo: b0", "b1", "echo: b1"] if bob_between else ["b0", "echo: b0"]
    )


def test_owed_exchanges_past_the_limit_drop_the_oldest_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A thread whose members' runs keep failing owes at most `OWED_RANGES_KEPT` ranges:
    the oldest goes, with a warning naming the node, never a key or a message."""
    from langchain_core.messages import HumanMessage

    from agent_history.incoming import OWED_RANGES_KEPT, history_key_update

    state: dict[str, Any] = {"answered": {}}
    thread: list[Any] = []
    for turn in range(OWED_RANGES_KEPT + 3):
        thread.append(HumanMessage(f"q{turn}", id=f"m{turn}"))
        key = f"member-{turn % 2}"
        update = history_key_update("agent", key, key_span(state, "agent"), thread, stored=False)
        state["answered"].update(update["answered"])
    span = key_span(state, "agent")
    assert span is not None and span.unstored and len(span.owed) == OWED_RANGES_KEPT
    # (key, since, until, the message before since); (m0, m1) and (m1, m2) dropped
    assert span.owed[0] == ("member-0", "m2", "m3", "m1")
    assert span.owed[-1] == ("member-1", "m33", "m34", "m32")
    dropped = [r for r in caplog.records if "history_owed_exchanges_dropped" in r.getMessage()]
    assert len(dropped) == 2 and "member-" not in caplog.text and "q1" not in caplog.text
    stored = history_key_update("agent", "member-1", span, thread, stored=True)
    state["answered"].update(stored["answered"])
    left = key_span(state, "agent")
    assert left is not None and {owed.key for owed in left.owed} == {"member-0"}


def test_a_release_that_does_not_know_the_spans_resumes_a_paused_thread(store: BaseStore) -> None:
    """The key spans live in the `answered` channel every release has: a channel of their
    own, unknown to a release rolled back to (or run beside this one), made LangGraph
    count it as an update, and a thread paused with ``interrupt_before`` never resumed
    there. A graph whose state lacks any new channel stands in for that release."""
    from langgraph.graph import START, StateGraph

    saver = InMemorySaver()
    chat = uuid.uuid4().int % 10**9
    thread = {"configurable": {"thread_id": uuid.uuid4().hex}}

    def graph(state_schema: Any) -> Any:
        node = AgentNode(RecordingChatModel(), use_graph_chat_history=True, toggles=toggles())
        builder = StateGraph(state_schema)
        builder.add_node("agent", node)
        builder.add_node("after", lambda state: {})
        builder.add_edge(START, "agent")
        builder.add_edge("agent", "after")
        return builder.compile(store=store, checkpointer=saver, interrupt_before=["after"])

    from agent_history import AgentState

    current = graph(AgentState)
    current.invoke(telegram_callback(chat, "one", 1), thread)  # writes a span, pauses
    current.invoke(None, thread)
    current.invoke(telegram_callback(chat, "two", 2), thread)  # pauses again
    assert current.get_state(thread).next == ("after",)
    older = graph(OlderState)  # rolled back while the thread is paused
    older.invoke(None, thread)
    assert older.get_state(thread).next == ()  # it resumed
    older.invoke(telegram_callback(chat, "three", 3), thread)
    assert _contents(store, f"telegram:{chat}")[::2] == ["one", "two", "three"]
