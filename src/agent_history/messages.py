"""Message identity, merging and windows: what the model receives and what a run adds.

One identity per message: the id a message has in the graph state is the id it is stored
under, so merging the stored tail with the thread recognises messages by id. Content
comparison is the fallback only where no id matches (a thread that replays the end of
the stored tail without ids, or a re-delivered exchange without channel ids).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langchain_core.messages.utils import trim_messages

if TYPE_CHECKING:
    from agent_history.history.records import RunToken

__all__ = [
    "ASSISTANT",
    "USER",
    "MergedPayload",
    "MessageLike",
    "TokenCounter",
    "anchors_to_check",
    "apply_reset",
    "comparable",
    "content_of",
    "exchange_overlap",
    "is_context_summary",
    "is_reset",
    "is_tool_step",
    "merge_history",
    "message_id_of",
    "newest_human",
    "role_of",
    "text_of",
    "tool_call_before",
    "tool_safe_units",
    "window",
]

USER = "user"
ASSISTANT = "assistant"

MessageLike = BaseMessage | Mapping[str, Any]
"""A LangChain message or a mapping with ``role`` (or ``type``) and ``content``."""

TokenCounter = Callable[[list[BaseMessage]], int]
"""Counts the tokens of a message list (see `context.budget.token_counter_for`)."""

_ROLE_ALIASES = {
    "user": USER,
    "human": USER,
    "assistant": ASSISTANT,
    "ai": ASSISTANT,
    "aimessagechunk": ASSISTANT,
    "bot": ASSISTANT,
    "system": "system",
    "developer": "system",
    "tool": "tool",
    "function": "tool",
}


SUMMARY_SOURCE = "summarization"
"""``additional_kwargs["lc_source"]`` of the message langchain's `SummarizationMiddleware`
puts in place of the messages it summarised."""


def is_context_summary(message: BaseMessage) -> bool:
    """Whether ``message`` is a summary a middleware put in place of earlier messages
    (langchain's `SummarizationMiddleware`): context for the model, like a system
    message, not something the user said."""
    extra = message.additional_kwargs
    return isinstance(extra, Mapping) and extra.get("lc_source") == SUMMARY_SOURCE


def role_of(message: MessageLike) -> str:
    """The normalised role: ``user``, ``assistant``, ``system``, ``tool`` or ``unknown``
    (a `ChatMessage`'s is its ``role`` field's; a context summary's is ``system``)."""
    if isinstance(message, BaseMessage):
        if is_context_summary(message):
            return "system"
        if message.type in ("chat", "ChatMessageChunk"):
            role = _ROLE_ALIASES.get(str(getattr(message, "role", "")).lower(), "unknown")
            return role if role in (USER, ASSISTANT, "system") else "unknown"
        raw = message.type
    else:
        raw = str(message.get("role") or message.get("type") or "")
    return _ROLE_ALIASES.get(raw.lower(), "unknown")


def content_of(message: MessageLike) -> Any:
    """The message content: a string or a list of content blocks, unchanged."""
    if isinstance(message, BaseMessage):
        return message.content
    content = message.get("content")
    return "" if content is None else content


def message_id_of(message: MessageLike) -> str | None:
    """The message's id (a channel id or the id it has in the graph state)."""
    if isinstance(message, BaseMessage):
        raw = message.id
    else:
        raw = message.get("id") or message.get("message_id")
    return None if raw in (None, "") else str(raw)


def text_of(message: MessageLike) -> str:
    """The plain text of a message (text blocks joined), for comparisons, never for logs."""
    content = content_of(message)
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [
            str(block.get("text", "")) if isinstance(block, Mapping) else str(block)
            for block in content
        ]
        return " ".join(part for part in parts if part)
    return str(content)


def comparable(value: Any) -> Any:
    """``value`` (content, tool-call arguments) in a form that compares equal whatever the
    order of its mappings' keys: PostgreSQL's JSONB gives them back in its own order, so
    a stored content block differs from the model's in order only."""
    if isinstance(value, Mapping):
        items = ((str(key), comparable(item)) for key, item in value.items())
        return "{}", sorted(items, key=lambda pair: pair[0])
    if isinstance(value, list | tuple):
        return "[]", [comparable(item) for item in value]
    if isinstance(value, bool | int | float):
        # tagged with its type: 1, 1.0, True and "1" are different arguments (a NaN,
        # compared by its text, equals itself, as a stored NaN is read back)
        return type(value).__name__, repr(value) if isinstance(value, float) else value
    return value


def _signature(message: BaseMessage) -> tuple[Any, ...]:
    """What identifies a message when it has no usable id: role, content and tool calls."""
    calls = [
        (call.get("name"), comparable(call.get("args")))
        for call in getattr(message, "tool_calls", ())
    ]
    return role_of(message), comparable(message.content), calls


def newest_human(messages: Sequence[BaseMessage]) -> int | None:
    """Index of the newest user message, None when there is none."""
    for index in range(len(messages) - 1, -1, -1):
        if role_of(messages[index]) == USER:
            return index
    return None


@dataclass(frozen=True, slots=True)
class MergedPayload:
    """The messages a model receives for one run, and what the run adds to the log."""

    messages: list[BaseMessage]
    """Chat messages in order, tool-call safe (system messages excluded)."""
    system: list[BaseMessage]
    """System messages found in the thread; they go first and do not count."""
    stored_in_payload: int
    """How many of ``messages`` came from the stored history."""
    unstored: list[BaseMessage]
    """The end of the thread that is not stored yet (this run's messages): what the run
    appends, with what the model produces."""
    matched: bool
    """Whether any thread message was recognised as stored (by id or by content)."""
    redelivered: bool
    """The message to answer is already stored and nothing newer came with it: the
    payload ends at that message (the history as it stood when it first arrived)."""
    behind: bool
    """The log holds more of the exchange being answered than the thread (its answer, or
    tool steps the thread lacks) right after the thread's newest stored message, its
    question or one of its tool steps: the thread is a branch of a run forked from an
    earlier checkpoint (or resumed after its answer was stored), whose answer is not
    stored."""
    goes_on_from: tuple[str, ...]
    """The ids of the stored messages the thread goes on after, in place of its own
    copy of a stored pass (a branch of a revise loop sent back again): the stored pass
    and what the log holds after it are part of its conversation."""
    dropped_by_reset: int
    """Messages ignored because a later reset command cut them off."""
    truncated: int
    """Messages cut by the window."""
    dropped: list[BaseMessage] = field(default_factory=list)
    """The messages the window cut (``truncated`` of them), oldest first."""


def _match(stored: Sequence[BaseMessage], chat: Sequence[BaseMessage]) -> list[int | None]:
    """For each thread message, the index of the same stored message (by id; by content
    only when no id matches and the thread starts by replaying the end of the tail)."""
    index_of = {m.id: i for i, m in enumerate(stored) if m.id}
    by_id = [index_of.get(m.id) if m.id else None for m in chat]
    if any(i is not None for i in by_id):
        return by_id
    for size in range(min(len(stored), len(chat)), 0, -1):
        start = len(stored) - size
        if all(
            _signature(s) == _signature(c) for s, c in zip(stored[start:], chat[:size], strict=True)
        ):
            return [start + i for i in range(size)] + [None] * (len(chat) - size)
    return by_id


def _interleave(
    stored: Sequence[BaseMessage],
    chat: Sequence[BaseMessage],
    matched: list[int | None],
    late: set[int],
) -> tuple[list[BaseMessage], list[BaseMessage], list[BaseMessage]]:
    """The conversation in order: the thread up to its last stored message, with stored
    messages it lacks put where they belong; then stored messages newer than anything in
    the thread; then the unstored end of the thread.

    Returns ``(head, newer_stored, unstored)``. The thread's messages at the indexes
    ``late`` go where the log has them (the thread's copy: an edit that kept the id shows).
    """
    last = _last_matched(matched)
    if last < 0:
        # Nothing in common: the stored tail comes first, the whole thread after it.
        return [], list(stored), list(chat)
    in_thread = {j for i, j in enumerate(matched) if j is not None and i not in late}
    moved = {matched[i]: chat[i] for i in late}  # where the log has them -> the thread's copy
    head: list[BaseMessage] = []
    taken = 0  # stored messages before this index are placed
    for index, (message, j) in enumerate(zip(chat[: last + 1], matched[: last + 1], strict=True)):
        if index in late:
            continue  # placed where the log has it
        if j is not None and j >= taken:
            missing = [
                moved.get(k, s) for k, s in enumerate(stored[taken:j], taken) if k not in in_thread
            ]
            head.extend(missing)
            taken = j + 1
        head.append(message)
    newer = [moved.get(k, s) for k, s in enumerate(stored[taken:], taken) if k not in in_thread]
    return head, newer, list(chat[last + 1 :])


def _out_of_order(matched: Sequence[int | None]) -> set[int]:
    """The thread's stored messages that come after a message the log has after them: a
    callback re-delivered to a stable thread that lacked its stored exchange (the client
    hung up after the write, or two runs raced on one checkpoint) once the chat had gone
    on. The log's order is the conversation's; the thread's copy is left out and the
    stored one placed where it belongs."""
    late: set[int] = set()
    newest = -1
    seen: set[int] = set()
    for index, j in enumerate(matched):
        if j is None:
            continue
        if j < newest and j not in seen:  # (a second copy in the thread is no late one)
            late.add(index)
        newest = max(newest, j)
        seen.add(j)
    return late


@dataclass(frozen=True, slots=True)
class _Branch:
    """Thread messages right after a stored one (at ``at`` in the log), none of them
    stored, up to the thread's next stored or user message (``run``), where the log goes
    on with other messages after that one."""

    at: int
    run: range
    anchor: str | None
    """The id of the user message of their exchange (the newest one before them)."""
    sure: bool
    """They follow the exchange's question or one of its tool steps: the log's next
    message is then of the same exchange (an exchange is stored whole, in one append),
    so they are a second answer to it. After a stored answer or note, the log may go on
    with anything (another thread's turns, a message the application appended)."""
    between_stored: bool
    """A stored message of the thread follows them."""
    log_moved_on: bool
    """The log goes on with a user message after that message (its exchange ends there
    in the log, or another thread's exchange came next)."""


def _branches(
    stored: Sequence[BaseMessage], chat: Sequence[BaseMessage], matched: list[int | None]
) -> list[_Branch]:
    found: list[_Branch] = []
    for index, message in enumerate(chat):
        at = matched[index]
        if at is None or index + 1 >= len(chat) or matched[index + 1] is not None:
            continue
        if at + 1 >= len(stored):
            continue
        end = next(
            (
                k
                for k in range(index + 1, len(chat))
                if matched[k] is not None or role_of(chat[k]) == USER
            ),
            len(chat),
        )
        if end == index + 1:
            continue
        human = newest_human(chat[: index + 1])
        found.append(
            _Branch(
                at=at,
                run=range(index + 1, end),
                anchor=chat[human].id if human is not None else None,
                sure=not _is_answer(message),
                between_stored=end < len(chat) and matched[end] is not None,
                log_moved_on=role_of(stored[at + 1]) == USER,
            )
        )
    return found


def _token(tokens: Mapping[str, RunToken] | None, anchor: str | None) -> RunToken | None:
    """The run token read for ``anchor``, if any."""
    return tokens.get(anchor) if tokens is not None and anchor else None


def _log_went_further(
    token: RunToken | None, chat: Sequence[BaseMessage], stored: Sequence[BaseMessage]
) -> bool | None:
    """Whether the log holds a later pass of an exchange than the thread: its run token
    (``token``, the id of the latest answer stored for it) is stored and not in the
    thread. False when the thread holds it; None when that cannot be told (no token
    read, or the token is not among the messages at hand)."""
    if token is None:
        return None
    if any(m.id == token.answer for m in chat):
        return False
    if any(m.id == token.answer for m in stored):
        return True
    return None


def _stored_pass(
    stored: Sequence[BaseMessage], at: int, token: RunToken | None, copy: Sequence[BaseMessage]
) -> range | None:
    """The log's pass that a branch forked right after ``at`` copies (``copy``: the
    branch's messages from there): the exchange's latest pass (up to the run token) when
    it starts right after ``at``, or later when the branch's messages repeat it (its
    notes and tool steps, and an answer where it has its answer) or the log goes on with
    another exchange right after ``at``. None when that cannot be told (an earlier pass,
    whose extent is not recorded, or no token)."""
    ids = [m.id for m in stored]
    end = next((k for k in range(at + 1, len(stored)) if token and ids[k] == token.answer), None)
    if end is None or token is None:
        return None
    first = next((k for k in range(len(stored)) if token.first and ids[k] == token.first), None)
    if first is None or first <= at + 1:
        return range(at + 1, end + 1)
    latest = stored[first : end + 1]
    if not any(is_tool_step(m) for m in latest):  # a scope without tool steps
        copy = [m for m in copy if not is_tool_step(m)]
    repeated = len(copy) >= len(latest) and all(
        _signature(s) == _signature(c) if k < len(latest) - 1 else _is_answer(c)
        for k, (s, c) in enumerate(zip(latest, copy, strict=False))
    )
    if repeated or role_of(stored[at + 1]) == USER:
        return range(first, end + 1)
    return None


@dataclass(frozen=True, slots=True)
class _Pruned:
    chat: list[BaseMessage]
    matched: list[int | None]
    replaced_by: tuple[str, ...] = ()
    """The ids of the stored messages that stand for the thread's copy of a stored pass
    of its current exchange (and come after it), when the thread went on after that
    copy."""


def _without_second_answers(
    stored: Sequence[BaseMessage],
    chat: Sequence[BaseMessage],
    matched: list[int | None],
    tokens: Mapping[str, RunToken] | None,
) -> _Pruned:
    """The thread without its second answers to stored exchanges.

    A thread can answer an exchange the log already holds (it lost its checkpoints and
    answered a re-delivery again, two workers shared it, or a run was replayed from an
    earlier checkpoint; in a tool loop, the fork can come after the tool call, or after
    the tool result; in a revise loop, after an answer). Such an answer (a `_Branch`) is
    not this run's to store, nor to send beside the stored one: the log's pass stands
    for it. It is one when it follows the question or a tool step, or when the log holds
    a later pass of its exchange (``tokens``), or when it lies between two stored
    messages of the thread with other stored messages between them in the log (a copy
    a later pass already left out); when that cannot be told, after a stored answer only
    a tool loop is taken for one (another message is the thread's own).

    It spans as many answers as the log's pass (a revision: the reviewer's note and the
    revised answer); what comes after it before the next user message (another node's
    note on the next one say) is the thread's own. When it belongs to the exchange being
    answered now and the thread went on after it (the branch was sent back to revise
    again), the log's pass takes its place and the thread goes on from there.
    """
    in_thread = {j for j in matched if j is not None}
    drop: set[int] = set()
    replaced_by: tuple[str, ...] = ()
    for branch in _branches(stored, chat, matched):
        run = branch.run
        if branch.between_stored:
            next_at = matched[run.stop]
            assert next_at is not None
            gap = any(k not in in_thread for k in range(branch.at + 1, next_at))
            if gap and any(_is_answer(chat[k]) for k in run):
                # (Without an answer: tool steps or messages the scope does not store.)
                drop.update(run)
            continue
        token = _token(tokens, branch.anchor)
        log_pass = _stored_pass(stored, branch.at, token, [chat[k] for k in run])
        # (A pass whose extent is not known is taken to end at its first answer.)
        wanted = max(1, sum(1 for k in log_pass or () if _is_answer(stored[k])))
        answers = [k for k in run if _is_answer(chat[k])]
        further = _log_went_further(token, chat, stored)
        if branch.log_moved_on and not further:
            continue  # the thread's own messages, or nothing can be told
        if run.stop == len(chat):  # the exchange being answered now
            # A whole copy (as many answers as the log's pass): this pass comes after it.
            if further and log_pass is not None and len(answers) >= wanted:
                drop.update(range(run.start, answers[wanted - 1] + 1))
                after = range(branch.at + 1, len(stored))
                replaced_by = tuple(i for k in after if (i := stored[k].id) and k not in in_thread)
            continue
        last = answers[wanted - 1] if len(answers) >= wanted else run.stop - 1
        copy = range(run.start, last + 1)
        tool_steps = any(is_tool_step(chat[k]) for k in copy)
        if branch.sure or further or (further is None and tool_steps):
            drop.update(copy)
    if not drop:
        return _Pruned(list(chat), matched)
    kept = [k for k in range(len(chat)) if k not in drop]
    return _Pruned([chat[k] for k in kept], [matched[k] for k in kept], replaced_by)


def anchors_to_check(stored: Sequence[BaseMessage], thread: Sequence[BaseMessage]) -> list[str]:
    """The user messages whose run tokens (`ChatHistory.anchor_tokens`) `merge_history`
    needs to tell a branch of an answered exchange from a thread whose conversation
    moved on elsewhere: the exchanges the thread continues after a stored answer while
    the log goes on with something else. Usually none (no read then)."""
    chat = [m for m in thread if role_of(m) != "system"]
    matched = _match(stored, chat)
    branches = _branches(stored, chat, matched)
    anchors = [
        b.anchor for b in branches if not b.between_stored and (b.log_moved_on or not b.sure)
    ]
    last_human = newest_human(chat)
    last_stored = _last_matched(matched)
    if last_human is not None and last_stored >= last_human:
        further = max(j for j in matched if j is not None) < len(stored) - 1
        if further and not _within_exchange(chat, last_stored, last_human):
            anchors.append(chat[last_human].id)
    return list(dict.fromkeys(a for a in anchors if a))


def _last_matched(matched: Sequence[int | None]) -> int:
    """The index of the thread's newest stored message (-1: none is)."""
    return max((i for i, j in enumerate(matched) if j is not None), default=-1)


def _within_exchange(chat: Sequence[BaseMessage], last_stored: int, last_human: int) -> bool:
    """Whether the thread's newest stored message is its question or one of its tool
    steps: what follows it in the log is then of the same exchange (an exchange is
    stored whole, its answer with it)."""
    return last_stored == last_human or is_tool_step(chat[last_stored])


def _is_answer(message: BaseMessage) -> bool:
    return role_of(message) == ASSISTANT and not getattr(message, "tool_calls", None)


def is_tool_step(message: BaseMessage) -> bool:
    """A tool call (an assistant message asking for tools) or a tool result."""
    return role_of(message) == "tool" or bool(getattr(message, "tool_calls", None))


def tool_call_before(messages: Sequence[BaseMessage], end: int) -> int | None:
    """Where the tool call stands whose results (none or more) run up to ``end``
    (exclusive); None when what comes before those results calls no tool."""
    start = end
    while start and isinstance(messages[start - 1], ToolMessage):
        start -= 1
    return start - 1 if start and getattr(messages[start - 1], "tool_calls", None) else None


def tool_safe_units(messages: Sequence[BaseMessage]) -> list[list[BaseMessage]]:
    """Group messages into units a window may keep or drop whole: an assistant message
    that calls tools together with all of its results, or one other message.

    Units that would break a provider's rules are dropped: a tool result without its
    call, and a call whose results are not all there (a run that stopped mid-tool). A
    call whose arguments were not JSON (``invalid_tool_calls``) keeps the result that
    answered it (a provider gets it as a call); unanswered, it asks for none.
    """
    units: list[list[BaseMessage]] = []
    index = 0
    while index < len(messages):
        message = messages[index]
        index += 1
        if isinstance(message, ToolMessage) or role_of(message) == "tool":
            continue  # a result whose call is not right before it
        calls = message.tool_calls if isinstance(message, AIMessage) else []
        invalid = (
            {call.get("id") for call in message.invalid_tool_calls}
            if isinstance(message, AIMessage)
            else set()
        )
        if not calls and not invalid:
            units.append([message])
            continue
        results: list[BaseMessage] = []
        while index < len(messages) and isinstance(messages[index], ToolMessage):
            results.append(messages[index])
            index += 1
        wanted = [call.get("id") for call in calls]
        got = {getattr(r, "tool_call_id", None) for r in results}
        if all(w is not None for w in wanted):
            answered = all(w in got for w in wanted)
            allowed = {*wanted, *invalid} - {None}
            results = [r for r in results if getattr(r, "tool_call_id", None) in allowed]
        else:
            answered = len(results) >= len(calls)
        if answered:
            units.append([message, *results])
    return units


def window(
    messages: Sequence[BaseMessage],
    max_messages: int,
    *,
    max_tokens: int | None = None,
    token_counter: TokenCounter | None = None,
    reserved_tokens: int = 0,
) -> list[BaseMessage]:
    """The newest messages that fit, never breaking a tool call from its results.

    The current exchange (from the newest user message on: the question and this run's
    tool steps) is kept whole against ``max_messages``, so the model sees the newest
    user message and the results of the tools it asked for. Older messages fill what is
    left, and the window starts on a user message when one fits.

    With ``max_tokens`` (counted with ``token_counter``, after ``reserved_tokens`` for
    what goes before the window: system prompt, summary) the window never goes over the
    budget but for the newest user message itself, which always stays: when the current
    exchange alone is over it, its tool steps are dropped oldest first, each call with
    its results (a result too large for the budget goes with the call that asked for it).
    """
    units = tool_safe_units(messages)
    flat = [m for unit in units for m in unit]
    counting = max_tokens is not None and token_counter is not None
    token_budget = (max_tokens or 0) - reserved_tokens
    counter: TokenCounter = token_counter or len
    start = newest_human(flat)
    if start is None:
        return _last_units(units, max_messages, token_budget if counting else None, counter)
    current = flat[start:]
    older = flat[:start]
    room = max_messages - len(current)
    token_room = token_budget - counter(current) if counting else None
    if token_room is not None and token_room < 0:
        current = _cut_current(current, token_budget, counter)
        token_room = max(0, token_budget - counter(current))
        room = max_messages - len(current)
    if room <= 0 or token_room == 0 or not older:
        return current
    kept = _fit(older, room, len)
    if token_room is not None:
        kept = _fit(kept, token_room, counter)
    return [*kept, *current]


def _cut_current(
    current: list[BaseMessage], budget: int, counter: TokenCounter
) -> list[BaseMessage]:
    """The newest user message and the newest whole tool units after it that fit
    ``budget`` together (the user message stays even when it alone does not fit)."""
    human, after = current[0], tool_safe_units(current[1:])
    kept: list[BaseMessage] = []
    for unit in reversed(after):
        if counter([human, *unit, *kept]) > budget:
            break
        kept = [*unit, *kept]
    return [human, *kept]


def _fit(messages: list[BaseMessage], budget: int, counter: TokenCounter) -> list[BaseMessage]:
    """The newest whole messages within ``budget`` (LangChain's `trim_messages`, strategy
    ``last``), tool-call safe, starting on a user message when one is among them."""
    if counter is len:  # counting messages: `trim_messages` would keep this suffix
        kept = messages[max(0, len(messages) - budget) :] if budget > 0 else []
    else:
        kept = trim_messages(
            messages, max_tokens=budget, token_counter=counter, strategy="last", allow_partial=False
        )
    kept = [m for unit in tool_safe_units(kept) for m in unit]
    first = next((i for i, m in enumerate(kept) if role_of(m) == USER), 0)
    return kept[first:]


def _last_units(
    units: Sequence[Sequence[BaseMessage]],
    max_messages: int,
    token_budget: int | None,
    counter: TokenCounter,
) -> list[BaseMessage]:
    """Without any user message: the newest whole units that fit (at least one, unless
    it is over the token budget)."""
    kept: list[BaseMessage] = []
    for unit in reversed(units):
        if kept and len(kept) + len(unit) > max_messages:
            break
        if token_budget is not None and counter([*unit, *kept]) > token_budget:
            break
        kept = [*unit, *kept]
    return kept


def is_reset(message: BaseMessage, reset_command: str) -> bool:
    """Whether ``message`` is the user's reset command (``reset_command``, stripped)."""
    command = reset_command.strip()
    return bool(command) and role_of(message) == USER and text_of(message).strip() == command


def apply_reset(
    messages: Sequence[BaseMessage], reset_command: str
) -> tuple[list[BaseMessage], int]:
    """Drop every message up to and including the latest user turn equal to ``reset_command``.

    When the reset is the very last message it is kept alone, so the model can acknowledge
    it. Returns the remaining messages and how many were dropped.
    """
    command = reset_command.strip()
    if not command:
        return list(messages), 0
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if is_reset(message, command):
            if index == len(messages) - 1:
                return [message], index
            return list(messages[index + 1 :]), index + 1
    return list(messages), 0


def merge_history(
    stored: Sequence[BaseMessage],
    thread: Sequence[BaseMessage],
    *,
    max_messages: int,
    reset_command: str = "",
    max_tokens: int | None = None,
    token_counter: TokenCounter | None = None,
    reserved_tokens: int = 0,
    tokens: Mapping[str, RunToken] | None = None,
) -> MergedPayload:
    """Merge the stored tail with the current thread into the model payload.

    Thread messages are recognised as stored by id (the same message has the same id in
    the graph state and in the store), or, when no id matches, by a thread that replays
    the end of the tail. The thread keeps its order (tool steps that only the thread
    holds stay where they were), but for stored messages it holds out of the log's order
    (`_out_of_order`); stored messages the thread lacks go where they belong:
    older ones before the thread's stored messages, newer ones (written by other runs)
    after them and before this run's new messages. When the message to answer is
    already stored and nothing newer came with it, the payload ends at that message.
    Then the reset command applies and the tool-call-safe `window` is cut.

    Args:
        stored: The stored tail, oldest first.
        thread: The current thread's messages, oldest first.
        max_messages: Window size in messages; system messages are not counted.
        reset_command: User text that clears the history before it ("" disables).
        max_tokens: Optional token budget for the window (the tighter limit wins).
        token_counter: Counts tokens of a message list (with ``max_tokens``).
        reserved_tokens: Tokens already spent before the window (system prompt, summary).
        tokens: The run tokens of the user messages `anchors_to_check` names, as
            `ChatHistory.anchor_tokens` reads them (None: not read).

    Returns:
        The payload and the bookkeeping the node reports.
    """
    system = [m for m in thread if role_of(m) == "system"]
    chat = [m for m in thread if role_of(m) != "system"]
    pruned = _without_second_answers(stored, chat, _match(stored, chat), tokens)
    chat, matched = pruned.chat, pruned.matched
    late = _out_of_order(matched)
    head, newer, unstored = _interleave(stored, chat, matched, late)
    conversation = [*head, *newer, *unstored]
    last_human = newest_human(chat)
    # The message to answer is already stored and only this run's tool steps (if any)
    # came after it: a re-delivery. Or the log goes on with this exchange past the
    # thread's newest stored message (its answer, or tool steps the thread lacks): a run
    # replayed or resumed from a checkpoint in the middle of an exchange the log holds.
    # Answer it as the thread stands (stored turns after it are later ones).
    last_stored = _last_matched(matched)
    behind = (
        last_human is not None
        # (The question itself may be older than the window read: a long tool loop.)
        and last_stored >= last_human
        and bool(newer)
        # (A thread that went on after its copy of the log's pass goes on from that pass.)
        and not pruned.replaced_by
        and (
            # After the question or a tool step, what follows in the log is surely of
            # this exchange: an exchange is stored whole, its answer with it.
            (role_of(newer[0]) != USER and _within_exchange(chat, last_stored, last_human))
            # After an answer or a note, the log may go on with anything (another
            # thread's turns, a message the application appended): the exchange's run
            # token tells whether the log holds a later pass of it.
            or bool(_log_went_further(_token(tokens, chat[last_human].id), chat, stored))
        )
    )
    redelivered = behind or (
        last_human is not None
        and matched[last_human] is not None
        and all(j is None for j in matched[last_human + 1 :])
        and len(chat) - last_human - 1 == len(unstored)
    )
    if redelivered:
        # The history as it stood when the message first arrived: up to its stored copy
        # (a late re-delivery's is placed among what the log holds after it).
        assert last_human is not None
        asked = matched[last_human]
        cut = len(head)
        if last_human in late and asked is not None:
            cut = next((k + 1 for k, m in enumerate(head) if m is chat[last_human]), cut)
        conversation = [*head[:cut], *unstored]
    after_reset, dropped = apply_reset(conversation, reset_command)
    kept = window(
        after_reset,
        max_messages,
        max_tokens=max_tokens,
        token_counter=token_counter,
        reserved_tokens=reserved_tokens,
    )
    in_window = {id(m) for m in kept}
    stored_ids = {id(m) for m in stored} | {
        id(m) for m, j in zip(chat, matched, strict=True) if j is not None
    }
    return MergedPayload(
        messages=kept,
        system=system,
        stored_in_payload=sum(1 for m in kept if id(m) in stored_ids),
        unstored=unstored,
        matched=any(j is not None for j in matched),
        redelivered=redelivered,
        behind=behind,
        goes_on_from=pruned.replaced_by,
        dropped_by_reset=dropped,
        truncated=len(after_reset) - len(kept),
        dropped=[m for m in after_reset if id(m) not in in_window],
    )


def exchange_overlap(stored: Sequence[BaseMessage], pending: Sequence[BaseMessage]) -> int:
    """How many leading ``pending`` messages repeat the end of ``stored`` by content: a
    re-delivered exchange without channel ids (it is stored once)."""
    for size in range(min(len(stored), len(pending)), 0, -1):
        start = len(stored) - size
        if all(
            _signature(s) == _signature(p)
            for s, p in zip(stored[start:], pending[:size], strict=True)
        ):
            return size
    return 0
