"""The incoming message: the user message a callback delivered, and where it stands in the
current thread.

A run adds the delivered message to the thread at most once. With a channel message id
(Telegram ``message_id``, WeCom ``msgid``, ...) that id becomes the id of the
`HumanMessage` itself, before it enters the graph state, so the checkpoint, the stored
log and re-deliveries all name it the same way. Without one, a node pass that comes
back to the message in the same run (agent -> tools -> agent) finds it as the newest
user message followed only by this run's tool steps.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from langchain_core.messages import BaseMessage, HumanMessage, ToolMessage, convert_to_messages
from langchain_core.runnables import RunnableConfig

from agent_history import observability as obs
from agent_history.history.codec import is_final_answer, is_plain
from agent_history.messages import is_tool_step, newest_human, role_of, text_of
from agent_history.state import as_mapping

__all__ = [
    "ANSWERED_FIELD",
    "BEGAN_PREFIX",
    "ENDED_PREFIX",
    "SPAN_PREFIX",
    "IncomingMessage",
    "KeySpan",
    "OwedSpan",
    "ThreadView",
    "answered_earlier",
    "answered_update",
    "current_thread",
    "delivered_before_tool_steps",
    "ended_earlier",
    "ended_update",
    "history_key_update",
    "incoming_message",
    "key_span",
    "merged_markers",
    "not_streamed_as_output",
    "owed_positions",
    "span_start",
]

ANSWERED_FIELD = "answered"
"""The state field (in `AgentState`) naming, per node, the channel id of the delivered
message the node last answered (and its key span, see `SPAN_PREFIX`)."""

SPAN_PREFIX = "history_span:"
"""Per node, its `KeySpan` is kept in `ANSWERED_FIELD` under ``SPAN_PREFIX + node`` (a
name no LangGraph node can have: ``:`` is reserved), as JSON text. The field is one
every release keeps: a channel of its own would be unknown to an earlier release run
beside this one, or rolled back to, and LangGraph would count it as an update that keeps
a thread paused by ``interrupt_before`` from ever resuming."""

BEGAN_PREFIX = "history_began:"
"""Per node, ``"1"`` from the start of a middleware run of the agent (its ``before_agent``)
to its end (``after_agent`` sets ``""``), kept in `ANSWERED_FIELD` under
``BEGAN_PREFIX + node``: a run whose end finds it unset never reached the agent (a guard
listed before the history ended it), so the state is as an earlier run left it."""

ENDED_PREFIX = "history_ended:"
"""Per node, the id of the tool result a run of the agent ended on (a ``return_direct``
tool's, which is the answer; or the message a hook ended the run with after tool
results, as a call-limit middleware does), kept in `ANSWERED_FIELD` under
``ENDED_PREFIX + node``: a thread ending on it has its newest question answered
(`ended_earlier`), so a callback without text has nothing to answer, and a middleware
run whose state still ends on it ended before the agent began (a guard listed before the
history)."""

_MESSAGE_FIELDS = ("message", "user_message", "query", "prompt")
_TEXT_FIELDS = ("text", "content", "message", "query", "prompt", "Content")
_ID_FIELDS = ("message_id", "msgid", "msg_id", "MsgId", "id", "update_id")
"""WeCom's own names too: ``Content``/``MsgId`` (a decrypted callback), and ``text`` as
``{"content": ...}`` (an AI bot or customer-service message)."""


@dataclass(frozen=True, slots=True)
class IncomingMessage:
    """The user message a callback delivered, with the channel's message id if it has one."""

    text: str
    message_id: str | None


def _channel_id(value: Any) -> str | None:
    """A channel message id as text; None for a value that cannot be one (a bool, a
    fraction, text a store cannot hold): the message then goes by its content."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # 7.0 from a JSON library that reads every number as a float
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    try:
        text = str(value)
    except ValueError:  # an int past Python's conversion limit: no channel's id
        return None
    return text if text and is_plain(text) else None


def _from_payload(payload: Any, outer: Mapping[str, Any]) -> IncomingMessage | None:
    if isinstance(payload, str):
        # Beside a text, ``inputs`` is the callback's own envelope: every channel id
        # field but ``id``, which there names the request or the workflow as often.
        found = (_channel_id(outer.get(f)) for f in _ID_FIELDS if f != "id")
        message_id = next((i for i in found if i is not None), None)
        return IncomingMessage(payload, message_id) if payload.strip() else None
    if payload is not None and not isinstance(payload, Mapping):
        payload = as_mapping(payload) or None  # a pydantic model or an object
    if isinstance(payload, Mapping):
        text = next((payload[f] for f in _TEXT_FIELDS if isinstance(payload.get(f), str)), None)
        nested = payload.get("text")
        if text is None and isinstance(nested, Mapping) and isinstance(nested.get("content"), str):
            text = nested["content"]
        if text is None or not text.strip():
            return None
        found = (_channel_id(payload.get(f)) for f in _ID_FIELDS)
        return IncomingMessage(text, next((i for i in found if i is not None), None))
    return None


def incoming_message(inputs: Mapping[str, Any]) -> IncomingMessage | None:
    """The latest user message in ``inputs``: ``message``, ``user_message``, ``query``,
    ``prompt`` or ``listener.message``, as text or as a dict with ``text``/``content``."""
    for field in _MESSAGE_FIELDS:
        found = _from_payload(inputs.get(field), inputs)
        if found:
            return found
    listener = as_mapping(inputs.get("listener"))
    if listener:
        return _from_payload(listener.get("message"), listener)
    return None


def _to_messages(raw: Any) -> list[BaseMessage]:
    if not isinstance(raw, Sequence) or isinstance(raw, str | bytes) or not raw:
        return []
    try:
        return list(convert_to_messages(list(raw)))
    except (ValueError, TypeError, NotImplementedError):
        return []


@dataclass(frozen=True, slots=True)
class ThreadView:
    """The thread as this pass of the node sees it."""

    messages: list[BaseMessage]
    """The thread's messages, the delivered message included."""
    incoming: IncomingMessage | None
    """The delivered message, if ``inputs`` carries one."""
    added: BaseMessage | None
    """The message this pass added for it (None when the thread already had it)."""
    answered: bool
    """Nothing to do: the thread already holds the delivered message (by its channel id)
    and a final answer after it (a re-delivered callback on a stable thread), or the
    callback delivered no user message and every user message has an answer."""
    delivered: bool = False
    """``inputs`` carries a user message (a re-delivery when ``answered``), even one the
    thread has moved on from; False for a sticker, an event, no ``inputs``."""
    other_text: bool = False
    """The thread holds the delivered message's channel id on a message with other text:
    an edit re-sent under its id, or another chat's message with the same number (a
    thread serving several chats). Taken as the same message all the same."""


def _position(thread: Sequence[BaseMessage], incoming: IncomingMessage) -> int | None:
    """Where the thread already holds the delivered message, if it does."""
    if incoming.message_id is not None:
        for index in range(len(thread) - 1, -1, -1):
            if thread[index].id == incoming.message_id:
                return index
    last = newest_human(thread)
    if last is None or text_of(thread[last]) != incoming.text:
        return None
    if last == len(thread) - 1:
        return last  # the caller put it in the thread too
    if incoming.message_id is None and not any(is_final_answer(m) for m in thread[last + 1 :]):
        return last  # this run's tool steps follow it: the node was reached again
    return None


def current_thread(state: Any, node: str | None = None) -> ThreadView:
    """The thread for this node pass, with the delivered message in it exactly once.

    ``state["messages"]`` wins when present; otherwise ``inputs.history`` is used. The
    delivered message (from ``inputs``) is added as the newest user message unless the
    thread already holds it (same channel id; or, without one, the newest user message
    with the same text followed only by tool steps, or by nothing, unless those steps
    are the tool result an earlier run of ``node`` ended on: `ENDED_PREFIX`).

    A delivered message the thread holds with a user message after it is an earlier
    run's callback still in the state (``inputs`` keeps its last value on a stable
    thread): the pass answers the thread's newest user message, as without a callback.
    With ``node`` and the state's `ANSWERED_FIELD`, a delivered message counts as
    answered when that node has answered it (its exchange ended, with a final or a
    structured answer), so a second node in the same run (a pipeline of agents) answers
    it too; without that field, when a final answer follows it in the thread.
    """
    mapping = as_mapping(state)
    inputs = as_mapping(mapping.get("inputs") or {})
    thread = _to_messages(mapping.get("messages")) or _to_messages(inputs.get("history"))
    incoming = incoming_message(inputs)
    delivered = incoming is not None
    position = None if incoming is None else _position(thread, incoming)
    if (
        position is not None
        and incoming is not None
        and incoming.message_id is None
        and node is not None
        and ended_earlier(mapping, node, thread)
    ):
        # The same text again, with only tool steps after the thread's copy: those are an
        # earlier run's, which a tool's result ended. A new message, not this run's own.
        position = None
    if incoming is not None and position is not None and newest_human(thread) != position:
        incoming = None  # the thread has moved on since that callback
    if position is None and answered_earlier(mapping, node, incoming):
        # Answered, then taken out of the thread (a summary in its place): a re-delivery
        # when every user message since has its answer, as below.
        incoming = None
    if incoming is None:
        # Without a delivered user message there is nothing to answer in a callback's
        # state (a sticker, a photo: `inputs` without a text) when every user message of
        # the thread already has an answer, nor when a callback brought no message at
        # all (an event with only a parser's `results`, its `inputs` empty or absent):
        # the stored question must not be answered again. A graph driven with plain
        # messages answers its thread as it stands: a pipeline's second agent, a
        # supervisor's worker (their `inputs` may be an empty default), an assistant that
        # speaks first on an empty thread.
        last = newest_human(thread)
        settled = (
            last is None
            or any(is_final_answer(m) for m in thread[last + 1 :])
            or (node is not None and ended_earlier(mapping, node, thread))
        )
        event = not thread and bool(as_mapping(mapping.get("results") or {}))
        return ThreadView(thread, None, None, settled and (bool(inputs) or event), delivered)
    if position is not None:
        answered = other_text = False
        if incoming.message_id is not None:
            marked = _answered_by(mapping, node, incoming.message_id)
            answered = (
                any(is_final_answer(m) for m in thread[position + 1 :])
                if marked is None
                else marked
            )
            other_text = text_of(thread[position]) != incoming.text
        return ThreadView(thread, incoming, None, answered, delivered, other_text)
    added = HumanMessage(incoming.text, id=incoming.message_id or str(uuid.uuid4()))
    return ThreadView([*thread, added], incoming, added, False, delivered)


def delivered_before_tool_steps(view: ThreadView) -> ThreadView:
    """``view`` with the delivered message it added put before the thread's newest tool
    steps instead of after them.

    For a model call inside a run that already added the delivered message (or found
    it) when it began (`HistoryMiddleware.before_agent`): a thread that lacks it now had
    it taken out by this run, by a summary put in place of the messages before its tool
    steps (langchain's `SummarizationMiddleware`) or a trim. The message goes back where
    it stood, before the run's tool calls and results: after them, the model would see
    the question unanswered and call its tools again, without end.
    """
    if view.added is None:
        return view
    thread = view.messages[:-1]
    at = len(thread)
    while at and is_tool_step(thread[at - 1]):
        at -= 1
    return dataclasses.replace(view, messages=[*thread[:at], view.added, *thread[at:]])


def answered_earlier(state: Any, node: str | None, incoming: IncomingMessage | None) -> bool:
    """Whether ``node`` has answered the delivered message ``incoming``, as the state's
    `ANSWERED_FIELD` records (False without a channel id, a node or the field)."""
    if incoming is None or incoming.message_id is None:
        return False
    return _answered_by(as_mapping(state), node, incoming.message_id) is True


def _answered_by(state: Mapping[str, Any], node: str | None, message_id: str) -> bool | None:
    """Whether ``node`` answered the delivered message ``message_id``, as the state's
    `ANSWERED_FIELD` tells; None when the state does not keep it (a schema without it,
    or a thread from before it): the thread rule decides then."""
    answered = state.get(ANSWERED_FIELD)
    if node is None or not isinstance(answered, Mapping):
        return None
    return answered.get(node) == message_id


def answered_update(view: ThreadView, node: str) -> dict[str, Any]:
    """The state update recording that ``node`` has answered the delivered message: its
    exchange ended (a final or a structured answer). Empty when the callback has no
    channel id: without one, re-deliveries go by content."""
    incoming = view.incoming
    if incoming is None or incoming.message_id is None:
        return {}
    return {ANSWERED_FIELD: {node: incoming.message_id}}


def ended_update(
    node: str, thread: Sequence[BaseMessage], *, by_hook: bool = False
) -> dict[str, Any]:
    """The state update recording the tool result ``node``'s run ended on (`ENDED_PREFIX`),
    or with ``by_hook`` the message it ended on, which a hook added (a call-limit
    middleware's after tool results); empty when the thread ends on anything else."""
    last = thread[-1] if thread else None
    if last is None or not last.id or not (by_hook or isinstance(last, ToolMessage)):
        return {}
    return {ANSWERED_FIELD: {ENDED_PREFIX + node: last.id}}


def ended_earlier(state: Any, node: str, thread: Sequence[BaseMessage]) -> bool:
    """Whether ``thread`` ends on the tool result an earlier run of ``node`` ended on."""
    answered = as_mapping(state).get(ANSWERED_FIELD)
    ended = answered.get(ENDED_PREFIX + node) if isinstance(answered, Mapping) else None
    return bool(thread) and isinstance(ended, str) and thread[-1].id == ended


def not_streamed_as_output(
    config: RunnableConfig | None, messages: Sequence[BaseMessage | None]
) -> None:
    """Keep ``stream_mode="messages"`` from emitting ``messages`` (the delivered user
    message, a history window handed to the model) as if this node had produced them:
    LangGraph's message stream skips ids it has seen. Each must have an id."""
    ids = [message.id for message in messages if message is not None and message.id]
    if not ids:
        return
    callbacks = (config or {}).get("callbacks")
    handlers = callbacks if isinstance(callbacks, list) else getattr(callbacks, "handlers", [])
    for handler in handlers or ():
        seen = getattr(handler, "seen", None)
        if isinstance(seen, set) and type(handler).__name__.startswith("StreamMessagesHandler"):
            seen.update(ids)


OWED_RANGES_KEPT = 32
"""At most this many owed ranges (`KeySpan.owed`) are kept per node; past it the oldest
is dropped, with a warning: a thread serving so many keys whose runs stored nothing."""


class OwedSpan(NamedTuple):
    """A span of ``key`` that ended with an exchange not stored (see `KeySpan.owed`)."""

    key: str
    since: str | None
    """The id of the user message that opened it (None: the thread's start)."""
    until: str
    """The id of the user message that opened the next key's span."""
    after: str | None = None
    """The id of the message before ``since`` (`KeySpan.after`)."""


@dataclass(frozen=True, slots=True)
class KeySpan:
    """Where this node's current key began on the thread: the key of its last exchange,
    and the id of the user message that opened the run of exchanges under that key."""

    key: str
    since: str | None
    unstored: bool = False
    """The span's last exchange was not stored (its write failed, or it ran in memory)."""
    owed: tuple[OwedSpan, ...] = ()
    """Spans of other keys that ended with an exchange not stored; the key's next stored
    run stores them."""
    after: str | None = None
    """The id of the message before ``since`` when the span opened (the previous key's
    last one): where the span starts when ``since`` was removed from the thread."""


def key_span(state: Any, node: str) -> KeySpan | None:
    """``node``'s `KeySpan` as the state keeps it (None when the state has no
    `ANSWERED_FIELD`, or the node has ended no exchange under a key on this thread)."""
    answered = as_mapping(state).get(ANSWERED_FIELD)
    raw = answered.get(SPAN_PREFIX + node) if isinstance(answered, Mapping) else None
    try:
        span = json.loads(raw) if isinstance(raw, str) else None
    except ValueError:
        return None
    if not isinstance(span, dict) or not isinstance(span.get("key"), str):
        return None
    since, after = span.get("since"), span.get("after")
    owed = span.get("owed")
    return KeySpan(
        span["key"],
        since if isinstance(since, str) else None,
        span.get("unstored") is True,
        tuple(
            OwedSpan(*entry)
            for entry in (owed if isinstance(owed, list) else ())
            if isinstance(entry, list)
            and len(entry) in (3, 4)
            and isinstance(entry[0], str)
            and isinstance(entry[1], str | None)
            and isinstance(entry[2], str)
            and isinstance(entry[-1], str | None)
        ),
        after if isinstance(after, str) else None,
    )


def span_start(thread: Sequence[BaseMessage], span: KeySpan | None, key: str) -> int | None:
    """The first position of ``thread`` whose messages are ``key``'s to store when they
    are not stored yet: None for the whole thread (no span yet, or the span under
    ``key`` began before anything the thread still holds), the span's start under
    ``key``, or (another key's span) the newest user message, the exchange being
    answered."""
    if span is None:
        return None
    if span.key == key:
        if span.since is None:
            return None  # opened with the thread: all of it is this key's
        where = {message.id: index for index, message in enumerate(thread) if message.id}
        if span.since in where:
            return where[span.since]
        if span.after in where:
            # Its first message was removed (a recalled message): the span starts after
            # the previous key's last one, whatever went before is that key's.
            return where[span.after] + 1
        return None  # its start was trimmed away with all before it
    newest = newest_human(thread)
    return len(thread) if newest is None else newest


def owed_positions(thread: Sequence[BaseMessage], span: KeySpan | None, key: str) -> list[range]:
    """The parts of ``thread`` that earlier spans of ``key`` left unstored (`KeySpan.owed`):
    from a span's start (after the message before it, when the start was removed) up to
    the next key's span. A part whose bounds the thread no longer holds is given up:
    messages are removed from anywhere in a thread (a recalled message), so what went
    before a lost bound may be another key's."""
    if span is None or not span.owed:
        return []
    where = {message.id: index for index, message in enumerate(thread) if message.id}
    parts = []
    for owed in span.owed:
        end = where.get(owed.until)
        if owed.since is None:
            start: int | None = 0
        elif owed.since in where:
            start = where[owed.since]
        else:
            start = where[owed.after] + 1 if owed.after in where else None
        if owed.key == key and start is not None and end is not None:
            parts.append(range(start, end))
    return parts


def history_key_update(
    node: str,
    key: str | None,
    span: KeySpan | None,
    thread: Sequence[BaseMessage],
    stored: bool | None = None,
) -> dict[str, Any]:
    """The state update recording that ``node`` ended an exchange under ``key``: the span
    goes on under the same key, or a new one opens at this exchange's user message (the
    first key on the thread spans all of it; ``thread`` holds only messages of the
    state, so the id is found there again). On a
    thread that serves several keys (a group chat's thread with a key per member) a key
    then stores only its own exchanges. Without a key the exchange is still the span's,
    to be stored by the span key's next run (only marked as not stored, when it was not).

    ``stored``: whether the exchange was stored (with what ``key``'s earlier spans owed);
    None when the caller cannot tell, which keeps no account of what is owed. A span
    whose last exchange was not stored is owed to its key when another key's span opens.
    """
    if not key:
        if span is None or stored is not False or span.unstored:
            return {}
        key, stored = span.key, None  # the span's, and not stored: mark it so
        span = dataclasses.replace(span, unstored=True)
    owed = list(span.owed) if span is not None else []
    after = None
    if span is None:
        since = None  # the first key on the thread: what came before is its own
    elif span.key == key:
        since, after = span.since, span.after
    else:
        newest = newest_human(thread)
        since = None if newest is None else thread[newest].id
        # (Readers look for it among the thread's chat messages: system ones are not.)
        before = [m for m in thread[:newest] if role_of(m) != "system"] if newest else []
        after = before[-1].id if before else None
        if span.unstored and since is not None:
            owed.append(OwedSpan(span.key, span.since, since, span.after))
    if stored:
        owed = [entry for entry in owed if entry.key != key]
    if len(owed) > OWED_RANGES_KEPT:
        obs.log_event(
            "history_owed_exchanges_dropped",
            node=node,
            dropped=len(owed) - OWED_RANGES_KEPT,
            kept=OWED_RANGES_KEPT,
        )
        owed = owed[-OWED_RANGES_KEPT:]
    entry: dict[str, Any] = {"key": key, "since": since}
    if after is not None:
        entry["after"] = after
    if stored is False or (
        stored is None and span is not None and span.key == key and span.unstored
    ):
        entry["unstored"] = True
    if owed:
        entry["owed"] = [list(item) for item in owed]
    text = json.dumps(entry, ensure_ascii=False)
    return {ANSWERED_FIELD: {SPAN_PREFIX + node: text}}


def merged_markers(*updates: dict[str, Any]) -> dict[str, Any]:
    """State updates of `answered_update` and `history_key_update` as one: both write
    `ANSWERED_FIELD`, whose reducer merges the entries."""
    entries: dict[str, Any] = {}
    for update in updates:
        entries.update(update.get(ANSWERED_FIELD) or {})
    return {ANSWERED_FIELD: entries} if entries else {}
