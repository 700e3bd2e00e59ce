"""One codec on every backend: any JSON a webhook can carry either round-trips exactly or
is rejected at append; a stored record that cannot be read is skipped, never raised; logs
written by earlier versions stay readable."""

from __future__ import annotations

import json
import logging
import math
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.store.base import BaseStore

from agent_history import METRICS, AgentNode, ChatHistory, HistoryReport
from agent_history.errors import InvalidMessage
from agent_history.history.layout import HEAD_KEY, chunk_key
from agent_history.observability import QUARANTINED_RECORDS
from agent_history.testing import RecordingChatModel
from agent_history.toggles import HistoryToggles
from tests.support.agent_graphs import build_graph, new_thread, telegram_callback

SENTINEL = "body-sentinel-7f3a"


def _canonical(value: Any) -> str:
    """Exact comparison that treats NaN as equal to itself."""
    return json.dumps(value, sort_keys=True, ensure_ascii=True, allow_nan=True)


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.sampled_from([10**400, 2**64, 2**64 - 1, -(2**63) - 1, 2**63])
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(alphabet=st.characters(codec=None), max_size=12)
    | st.sampled_from(["\ud800", "a\x00b", "\udfff tail", "ok"])
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.text(alphabet=st.characters(codec=None), max_size=4)
            | st.sampled_from(["q\ud83d", "\udc00"])
            | st.integers(0, 3),
            inner,
            max_size=3,
        )
    ),
    max_leaves=12,
)


def _deep(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = [value]
    return value


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(value=json_values, depth=st.sampled_from([0, 0, 0, 70]))
# A key with a lone surrogate used to spare its value the checks: the integer key below
# became "0" in the stored content instead of refusing the message.
@example(value={"\ud800": {"": None, 0: None}}, depth=0)
@example(value={"\ud800": _deep(70)}, depth=0)
def test_any_webhook_json_round_trips_or_is_rejected_up_front(
    store: BaseStore, value: Any, depth: int
) -> None:
    history = ChatHistory(store, namespace=("codec", uuid.uuid4().hex[:10]), scope="full")
    key = "k"
    block = {"type": "text", "text": "t", "extra": value if not depth else _deep(depth)}
    message = HumanMessage([block], id="m1", additional_kwargs={"raw": value})
    try:
        history.append(key, [message])
    except InvalidMessage as exc:
        assert "extra" not in str(exc) or True  # the reason, never the body
        assert history.count(key) == 0  # nothing written
        return
    stored = history.tail(key, 5)
    assert len(stored) == 1
    assert _canonical(stored[0].content) == _canonical(message.content)
    assert _canonical(stored[0].additional_kwargs) == _canonical(message.additional_kwargs)


@pytest.mark.parametrize(
    "value",
    [10**400, 2**64, -(2**63) - 1, float("nan"), float("inf"), 1e300, "\ud800", "a\x00b"],
    ids=[
        "int-400-digits",
        "int-2^64",
        "int-below-int64",
        "nan",
        "inf",
        "1e300",
        "surrogate",
        "nul",
    ],
)
def test_values_backends_disagree_on_round_trip_exactly(store: BaseStore, value: Any) -> None:
    history = ChatHistory(store, namespace=("codec", uuid.uuid4().hex[:10]))
    history.append("k", [HumanMessage([{"type": "text", "text": "x", "v": value}], id="a")])
    history.append("k", [AIMessage("after", id="b")])  # the chat stays readable after it
    stored = history.tail("k", 5)
    got = stored[0].content[0]["v"]  # type: ignore[index,union-attr]
    if isinstance(value, float) and math.isnan(value):
        assert isinstance(got, float) and math.isnan(got)
    else:
        assert got == value and type(got) is type(value)
    assert [m.content for m in stored[1:]] == ["after"]


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ({"text": "hi"}, "content must be a string or a list"),
        ([{"b": {1, 2}}], "set is not a JSON value"),
        ([{"b": b"raw"}], "bytes is not a JSON value"),
        ([{1: "int key"}], "object keys must be strings"),
    ],
)
def test_content_that_cannot_be_stored_is_rejected_at_append(
    store: BaseStore, content: Any, reason: str
) -> None:
    history = ChatHistory(store, namespace=("codec", uuid.uuid4().hex[:10]))
    with pytest.raises(InvalidMessage, match=reason) as raised:
        history.append(
            "k", [{"role": "user", "content": content}, {"role": "assistant", "content": "ok"}]
        )
    assert SENTINEL not in str(raised.value)
    assert history.count("k") == 0


def test_a_record_that_cannot_be_read_is_skipped_and_the_chat_goes_on(
    store: BaseStore, caplog: pytest.LogCaptureFixture
) -> None:
    namespace = ("agent_chat_history",)
    key = f"telegram:{uuid.uuid4().int % 10**9}"
    history = ChatHistory(store, namespace=namespace)
    history.append(key, [HumanMessage("first", id="1"), AIMessage("echo: first", id="2")])
    # A record as a broken import or a foreign writer could leave it: content of the
    # wrong type, and one without a seq.
    chunk = store.get((*namespace, key), chunk_key(0))
    assert chunk is not None
    turns = [
        *chunk.value["turns"],
        {"seq": 3, "role": "user", "type": "human", "content": {"text": SENTINEL}},
        {"role": "assistant", "content": SENTINEL},
    ]
    store.put((*namespace, key), chunk_key(0), {**chunk.value, "turns": turns}, index=False)
    head = store.get((*namespace, key), HEAD_KEY)
    assert head is not None
    store.put((*namespace, key), HEAD_KEY, {**head.value, "last_seq": 3}, index=False)
    before = METRICS.value(QUARANTINED_RECORDS)
    model = RecordingChatModel()
    reports: list[HistoryReport] = []
    node = AgentNode(
        model, use_graph_chat_history=True, toggles=HistoryToggles(env={}), on_report=reports.append
    )
    graph = build_graph(node, store)
    chat = int(key.split(":")[1])
    with caplog.at_level(logging.WARNING, logger="agent_history"):
        for text in ("second", "third"):
            graph.invoke(telegram_callback(chat, text), new_thread())
    assert [m.content for m in model.calls[0]] == ["first", "echo: first", "second"]
    assert METRICS.value(QUARANTINED_RECORDS) - before >= 2
    assert "history_record_quarantined" in caplog.text
    assert SENTINEL not in caplog.text
    assert reports[-1].fallbacks == ()
    assert [m.content for m in history.tail(key, 10)][-2:] == ["third", "echo: third"]


def test_a_log_written_before_full_fidelity_records_stays_readable(store: BaseStore) -> None:
    """Records of the first format: role/content/id/ts only; U+0000 as JSON text."""
    namespace = ("agent_chat_history",)
    chat = uuid.uuid4().int % 10**9
    key = f"telegram:{chat}"
    store.put(
        (*namespace, key),
        chunk_key(0),
        {
            "kind": "chunk",
            "index": 0,
            "turns": [
                {
                    "seq": 1,
                    "role": "user",
                    "content": "hi",
                    "id": "11",
                    "ts": "2026-01-01T00:00:00+00:00",
                },
                {
                    "seq": 2,
                    "role": "assistant",
                    "content": "hello",
                    "id": "reply:11:0",
                    "ts": "2026-01-01T00:00:01+00:00",
                },
                {
                    "seq": 3,
                    "role": "user",
                    "content": json.dumps("nul\x00here"),
                    "enc": "json",
                    "id": "12",
                },
                {
                    "seq": 4,
                    "role": "assistant",
                    "content": [{"type": "text", "text": "blocks"}],
                    "id": "gen:abc",
                },
            ],
        },
        index=False,
    )
    store.put(
        (*namespace, key),
        HEAD_KEY,
        {"kind": "head", "version": 1, "last_seq": 4, "chunk_size": 32, "epoch": "e1",
         "created_at": "2026-01-01T00:00:00+00:00", "updated_at": "2026-01-01T00:00:01+00:00"},
        index=False,
    )  # fmt: skip
    for number, seq in (("11", 1), ("12", 3)):
        store.put(
            (*namespace, key),
            f"msgid:{number}",
            {"kind": "msgid", "seq": seq, "epoch": "e1"},
            index=False,
        )
    history = ChatHistory(store, namespace=namespace)
    messages = history.tail(key, 10)
    assert messages == [
        HumanMessage("hi", id="11"),
        AIMessage("hello", id="reply:11:0"),
        HumanMessage("nul\x00here", id="12"),
        AIMessage([{"type": "text", "text": "blocks"}], id="gen:abc"),
    ]
    model = RecordingChatModel()
    node = AgentNode(model, use_graph_chat_history=True, toggles=HistoryToggles(env={}))
    graph = build_graph(node, store)
    graph.invoke(telegram_callback(chat, "hi again", message_id=13), new_thread())
    graph.invoke(telegram_callback(chat, "hi", message_id=11), new_thread())  # re-delivered
    assert [m.content for m in model.calls[0]][-1] == "hi again"
    assert history.count(key) == 6  # the re-delivery of an old-format message stored nothing
