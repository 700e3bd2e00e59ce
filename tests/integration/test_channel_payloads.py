"""Telegram and WeCom messages as the channels and their parsers really hand them over.

WeCom sends ``Content``/``MsgId`` (a decrypted callback) or ``text: {"content": ...}``
(an AI bot or customer-service message); listener payloads may be pydantic models. Each must be answered, stored once under the same key as the
webhook path gives, and recognised when re-delivered.
"""

from __future__ import annotations

import logging
import uuid
from enum import Enum, IntEnum
from typing import Any

import pytest
from langgraph.store.base import BaseStore
from pydantic import BaseModel

from agent_history import AgentNode, ChatHistory, HistoryReport
from agent_history.errors import InvalidKey
from agent_history.keys import KeyRejectReason, resolve_history_key
from agent_history.testing import RecordingChatModel
from agent_history.toggles import HistoryToggles
from tests.support.agent_graphs import build_graph, new_thread


class Platform(str, Enum):  # noqa: UP042 (as listener models type it; a StrEnum prints fine)
    TELEGRAM = "telegram"


class Chat(IntEnum):
    SUPPORT = 4242


class ListenerMessage(BaseModel):
    chat_id: int
    message_id: int
    text: str


class Listener(BaseModel):
    platform: str
    message: ListenerMessage


def _graph(store: BaseStore) -> tuple[Any, RecordingChatModel, list[HistoryReport]]:
    model, reports = RecordingChatModel(), []
    node = AgentNode(
        model,
        use_graph_chat_history=True,
        toggles=HistoryToggles(env={}),
        on_report=reports.append,
    )
    return build_graph(node, store), model, reports


def _stored(store: BaseStore, key: str) -> list[tuple[str, str, str | None]]:
    return [(t.role, str(t.content), t.id) for t in ChatHistory(store).read(key)]


def test_a_str_enum_value_keeps_the_key_it_always_had() -> None:
    """A `(str, Enum)` member renders through its own ``__str__`` (`Platform.TELEGRAM`), as
    it always did: rendering it otherwise would move the conversations stored under that
    key. The docs say to pass ``.value`` (or a JSON-mode dump)."""
    state = {"inputs": {"listener": {"platform": Platform.TELEGRAM, "message": {"chat_id": -5}}}}
    assert resolve_history_key(state).key == "Platform%2ETELEGRAM:-5"
    plain = {"inputs": {"listener": {"platform": "telegram", "message": {"chat_id": -5}}}}
    by_webhook = resolve_history_key({"results": {"telegram_events_parser": {"chat_id": -5}}})
    assert resolve_history_key(plain).key == by_webhook.key == "telegram:-5"
    custom = resolve_history_key(
        {"inputs": {"chat": Chat.SUPPORT}}, candidates=["chat:{{inputs.chat}}"]
    )
    assert custom.key == "chat:4242"  # an IntEnum prints as its number


def test_a_pydantic_listener_payload_is_answered_and_stored_once(store: BaseStore) -> None:
    graph, model, reports = _graph(store)
    chat = -(uuid.uuid4().int % 10**9)
    listener = Listener(
        platform="telegram", message=ListenerMessage(chat_id=chat, message_id=7, text="hi")
    )
    for _ in range(2):  # a re-delivery
        graph.invoke({"inputs": {"listener": listener}}, new_thread())
    assert model.calls and model.calls[0][-1].content == "hi"
    stored = _stored(store, f"telegram:{chat}")
    assert [(role, text) for role, text, _ in stored] == [("user", "hi"), ("assistant", "echo: hi")]
    assert stored[0][2] == "7"  # the channel id names the stored turn
    assert reports[-1].redelivered and reports[-1].appended == 0


@pytest.mark.parametrize(
    "message",
    [
        # A decrypted internal-app callback, as WeCom names its fields.
        {"ToUserName": "ww1", "FromUserName": "zhangsan", "CreateTime": 1700000000,
         "MsgType": "text", "Content": "请假流程是什么?", "MsgId": "7300000000000000001",
         "AgentID": 1000002},
        # An AI bot / customer-service message: the text is nested.
        {"msgid": "7300000000000000001", "msgtype": "text",
         "text": {"content": "请假流程是什么?"}, "from": {"userid": "zhangsan"}},
    ],
    ids=["callback-xml", "nested-text"],
)  # fmt: skip
def test_wecom_messages_as_wecom_sends_them_are_answered_and_stored_once(
    store: BaseStore, message: dict[str, Any]
) -> None:
    graph, model, reports = _graph(store)
    user = "u" + uuid.uuid4().hex[:8]
    state = {"inputs": {"message": message}, "results": {"wecom_events_parser": {"user": user}}}
    for _ in range(2):  # WeCom retries a callback it got no answer to in time
        graph.invoke(state, new_thread())
    assert model.calls[0][-1].content == "请假流程是什么?"
    stored = _stored(store, f"wecom_dm:{user}")
    assert [(role, text) for role, text, _ in stored] == [
        ("user", "请假流程是什么?"),
        ("assistant", "echo: 请假流程是什么?"),
    ]
    assert stored[0][2] == "7300000000000000001"  # the channel id names the stored turn
    assert reports[-1].redelivered and reports[-1].appended == 0
    # A WeCom event or an image (no text) is answered by nobody and stores nothing.
    image = {"MsgType": "image", "PicUrl": "https://example.invalid/p.png", "MsgId": "2"}
    graph.invoke({**state, "inputs": {"message": image}}, new_thread())
    assert len(model.calls) == 2 and len(_stored(store, f"wecom_dm:{user}")) == 2


def test_a_key_that_is_not_text_is_named_so(store: BaseStore) -> None:
    for key in (5, None, b"telegram:1"):
        with pytest.raises(InvalidKey) as raised:
            ChatHistory(store).for_key(key)  # type: ignore[arg-type]
        assert raised.value.reason == KeyRejectReason.NOT_TEXT == "not_text"


def _telegram(chat: int, message: Any, **beside: Any) -> dict[str, Any]:
    return {
        "inputs": {"message": message, **beside},
        "results": {"telegram_events_parser": {"chat_id": chat}},
    }


@pytest.mark.parametrize("field", ["update_id", "MsgId", "message_id"])
def test_a_text_message_takes_the_channel_id_beside_it(store: BaseStore, field: str) -> None:
    """A workflow that passes the text as ``inputs.message`` and the update's id beside it:
    the user's second "ok" is a message of its own, and a late re-delivery of the first
    is recognised by its id, not stored after "thanks"."""
    graph, model, reports = _graph(store)
    chat = int(uuid.uuid4().int % 10**9)
    for update, text in [(1, "ok"), (2, "ok"), (3, "thanks"), (1, "ok")]:
        graph.invoke(_telegram(chat, text, **{field: update}), new_thread())
    assert [(role, text, mid) for role, text, mid in _stored(store, f"telegram:{chat}")][::2] == [
        ("user", "ok", "1"),
        ("user", "ok", "2"),
        ("user", "thanks", "3"),
    ]
    # On a fresh thread per callback the re-delivery is answered again, and not stored.
    assert reports[-1].redelivered and reports[-1].appended == 0
    assert len(model.calls) == 4 and len(_stored(store, f"telegram:{chat}")) == 6


def test_id_beside_a_text_is_not_the_message_id(store: BaseStore) -> None:
    """``inputs.id`` beside a text names the request as often as the message: it is not
    taken as the message's id (the message goes by its content)."""
    graph, _, _ = _graph(store)
    chat = int(uuid.uuid4().int % 10**9)
    graph.invoke(_telegram(chat, "hi", id="request-1"), new_thread())
    [(_, _, mid), _] = _stored(store, f"telegram:{chat}")
    assert mid != "request-1"


@pytest.mark.parametrize(
    "message_id",
    [10**5000, "a\x00b", "\ud800", "chat\udfffid", 7.5, True],
    ids=[
        "int-past-conversion-limit",
        "nul",
        "lone-surrogate",
        "surrogate-inside",
        "fraction",
        "bool",
    ],
)
def test_a_message_id_no_store_can_hold_leaves_the_message_to_its_content(
    store: BaseStore, message_id: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A hostile client's or a broken parser's message id: the user is answered and the
    exchange stored (under a fresh id), where it used to raise out of the run or lose the
    exchange as an invalid message."""
    graph, model, reports = _graph(store)
    chat = int(uuid.uuid4().int % 10**9)
    out = graph.invoke(_telegram(chat, {"text": "hello", "message_id": message_id}), new_thread())
    assert out["messages"][-1].content == "echo: hello"
    stored = _stored(store, f"telegram:{chat}")
    assert [(role, text) for role, text, _ in stored] == [
        ("user", "hello"),
        ("assistant", "echo: hello"),
    ]
    assert reports[-1].fallbacks == ()
    assert len(model.calls) == 1


def test_a_whole_float_message_id_is_the_same_message_as_the_int(store: BaseStore) -> None:
    graph, _, reports = _graph(store)
    chat = int(uuid.uuid4().int % 10**9)
    for message_id in (7.0, 7):  # one JSON library reads every number as a float
        graph.invoke(_telegram(chat, {"text": "hello", "message_id": message_id}), new_thread())
    stored = _stored(store, f"telegram:{chat}")
    assert [(role, mid) for role, _, mid in stored][:1] == [("user", "7")]
    assert len(stored) == 2 and reports[-1].redelivered and reports[-1].appended == 0


def test_a_delivered_id_the_thread_answered_with_other_text_is_reported(
    store: BaseStore, caplog: pytest.LogCaptureFixture
) -> None:
    """Telegram numbers messages per chat: a thread that serves a user's private chat and
    a group sees message 42 of each. The thread holds the private one, answered, so the
    group's is taken for its re-delivery and not answered (as an edit re-sent under its
    id is). Not silently: a warning names the node and key, never the texts."""
    from langgraph.checkpoint.memory import InMemorySaver

    node = AgentNode(
        RecordingChatModel(), use_graph_chat_history=True, toggles=HistoryToggles(env={})
    )
    graph = build_graph(node, store, InMemorySaver())
    thread = new_thread()

    def callback(chat: int, text: str) -> dict[str, Any]:
        return {
            "inputs": {"message": {"message_id": 42, "text": text}},
            "results": {"telegram_events_parser": {"chat_id": chat}},
        }

    caplog.set_level(logging.INFO, logger="agent_history")
    graph.invoke(callback(111, "private question"), thread)
    graph.invoke(callback(111, "private question"), thread)  # a true re-delivery
    assert "delivered_id_answered_with_other_text" not in caplog.text
    graph.invoke(callback(-100500, "group question"), thread)
    warnings = [
        r for r in caplog.records if "delivered_id_answered_with_other_text" in r.getMessage()
    ]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert "key=telegram:-100500" in warnings[0].getMessage()
    assert "question" not in caplog.text
    assert _stored(store, "telegram:-100500") == []
