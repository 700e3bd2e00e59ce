"""Moving history between stores: streamed export, validated import, resumable migration,
checksums.

An export line is one stored turn with its conversation::

    {"namespace": [...], "key": ..., "seq": 1, "role": "user", "content": ..., "id": ...,
     "ts": ..., "type": "human", "fields": {...}}

``type`` and ``fields`` (LangChain's message type and the message's other non-default
fields: tool calls, tool call id, name, metadata) make the round trip exact; files
written before they existed still import. A conversation's running summary (see
`agent_history.context.summary`) follows its turns as one more line::

    {"namespace": [...], "key": ..., "summary": {"text": ..., "covers_seq": 20,
     "version": 10, "turns": 20, "skipped": 0, "updated_at": ...}}

Import validates the whole file before writing anything and names what is wrong as
``line N: ...``. Each conversation is then written in one transaction at the sequence
numbers its lines carry (`ChatHistory.import_turns`), so an import can be run again or
twice at once without a duplicate. Migrations copy each conversation the same way and
verify counts and checksums afterwards.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, NamedTuple, TextIO

from langgraph.store.base import BaseStore

from agent_history.context.summary import Summary
from agent_history.errors import AgentHistoryError, InvalidMessage, InvalidNamespace
from agent_history.history import DEFAULT_NAMESPACE, ChatHistory, Turn
from agent_history.history.arguments import MAX_COUNT
from agent_history.history.bulk import STORED_ROLES, ImportConflict, imported_turn
from agent_history.history.codec import check_content, is_plain, type_fits_role
from agent_history.history.naming import validate_namespace
from agent_history.history.records import id_or_none, is_utc_time
from agent_history.keys import validate_history_key

__all__ = [
    "STORED_ROLES",
    "ConversationCheck",
    "ExportCounts",
    "ImportReport",
    "LineError",
    "MigrationReport",
    "NotStrictJSON",
    "ParsedLine",
    "ParsedSummary",
    "conversation_checksum",
    "copy_conversation",
    "export_jsonl",
    "import_jsonl",
    "migrate_history",
    "parse_line",
    "summary_to_json",
    "turn_from_json",
    "turn_to_json",
    "validate_jsonl",
]

_FIELDS = frozenset({"namespace", "key", "seq", "role", "content", "id", "ts", "type", "fields"})
_SUMMARY_LINE = frozenset({"namespace", "key", "summary"})
_SUMMARY_FIELDS = frozenset({"text", "covers_seq", "version", "turns", "skipped", "updated_at"})
_MAX_ERRORS = 20
_SHOWN = 60


# --- one line ---------------------------------------------------------------------------


def turn_to_json(key: str, turn: Turn, namespace: Sequence[str]) -> dict[str, Any]:
    """One JSONL export line: the turn with its conversation key and namespace."""
    line: dict[str, Any] = {
        "namespace": list(namespace),
        "key": key,
        "seq": turn.seq,
        "role": turn.role,
        "content": turn.content,
        "id": turn.id,
        "ts": turn.ts,
    }
    if turn.kind is not None:
        line["type"] = turn.kind
    if turn.extra:
        line["fields"] = turn.extra
    return line


def summary_to_json(key: str, summary: Summary, namespace: Sequence[str]) -> dict[str, Any]:
    """The JSONL export line of a conversation's running summary."""
    return {
        "namespace": list(namespace),
        "key": key,
        "summary": {
            "text": summary.text,
            "covers_seq": summary.covers_seq,
            "version": summary.version,
            "turns": summary.turns,
            "skipped": summary.skipped,
            "updated_at": summary.updated_at,
        },
    }


class NotStrictJSON(AgentHistoryError, ValueError):
    """A stored turn holds a number JSON cannot represent (NaN or an infinity)."""


def _dumps(line: dict[str, Any]) -> str:
    try:
        text = json.dumps(line, ensure_ascii=False, allow_nan=False)
    except ValueError:  # Python would write NaN / Infinity, which no strict parser reads
        raise NotStrictJSON(
            f"conversation {_shown(line['key'])}, seq {line.get('seq', '(summary)')} holds "
            "NaN or an infinity, which JSON cannot represent"
        ) from None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: only an escape writes it exactly
        text = json.dumps(line, ensure_ascii=True, allow_nan=False)
    return text


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:24]} is out of range")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


class LineError(AgentHistoryError, ValueError):
    """A line of an import file is not a valid turn; ``str()`` is ``line N: problem``."""

    def __init__(self, line: int, problem: str) -> None:
        super().__init__(f"line {line}: {problem}")
        self.line = line
        self.problem = problem


@dataclass(frozen=True, slots=True)
class ParsedLine:
    """A valid line: where its conversation lives and the turn it holds."""

    line: int
    namespace: tuple[str, ...] | None
    """None when the line names no namespace (files written by hand)."""
    key: str
    turn: Turn


@dataclass(frozen=True, slots=True)
class ParsedSummary:
    """A valid summary line: where its conversation lives and the summary it holds."""

    line: int
    namespace: tuple[str, ...] | None
    key: str
    summary: Summary


def _shown(value: Any) -> str:
    """A short, printable form of a key or id for messages (never message bodies)."""
    text = repr(value)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    return {list: "an array", str: "a string", bool: "a boolean"}.get(type(value), "a number")


def _namespace_of(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise ValueError(f"namespace must be a list of labels (got {_json_kind(value)})")
    try:
        return validate_namespace(value)
    except InvalidNamespace as exc:
        raise ValueError(str(exc)) from None


def _check_key(key: Any) -> str:
    if not isinstance(key, str):
        raise ValueError(f"key must be a string (got {_json_kind(key)})")
    reason = validate_history_key(key)
    if reason is not None:  # the key itself is not echoed: it may be the bad part
        raise ValueError(f"key is not a valid conversation key ({reason.value})")
    return key


def _check_turn(data: dict[str, Any]) -> Turn:
    seq = data.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        raise ValueError(f"seq must be a whole number from 1 (got {_shown(seq)})")
    role = data.get("role")
    if role not in STORED_ROLES:
        raise ValueError(f"role {_shown(role)} is not one of {', '.join(STORED_ROLES)}")
    kind = data.get("type")
    if kind is not None and (not isinstance(kind, str) or not type_fits_role(kind, role)):
        raise ValueError(f"type {_shown(kind)} does not match role {role!r}")
    message_id = id_or_none(data.get("id"))  # "" in an earlier release's export
    if message_id is not None and not isinstance(message_id, str):
        raise ValueError(f"id must be a string or null (got {_json_kind(message_id)})")
    ts = data.get("ts")
    if ts is not None:
        _check_time(ts, "ts")
    extra = data.get("fields")
    if extra is not None and not isinstance(extra, dict):
        raise ValueError(f"fields must be an object (got {_json_kind(extra)})")
    if kind == "tool" and not (extra or {}).get("tool_call_id"):
        raise ValueError("a tool message needs fields.tool_call_id")
    content = data.get("content", "")
    check_content(content, "content")
    is_plain(content, "content")
    is_plain(extra, "fields")
    turn = Turn(seq, role, content, message_id, ts, kind, extra or None)
    try:
        imported_turn(turn, "content")
    except InvalidMessage as exc:
        raise ValueError(str(exc)) from None
    return turn


def _check_time(value: Any, name: str) -> None:
    if not is_utc_time(value):
        raise ValueError(f"{name} {_shown(value)} is not an ISO-8601 time with a UTC offset")


def _whole(data: dict[str, Any], name: str, minimum: int) -> int:
    value = data.get(name, minimum)
    if not isinstance(value, int) or isinstance(value, bool) or not minimum <= value <= MAX_COUNT:
        raise ValueError(f"summary.{name} must be a whole number from {minimum} to {MAX_COUNT}")
    return value


def _check_summary(data: Any) -> Summary:
    if not isinstance(data, dict):
        raise ValueError(f"summary must be an object (got {_json_kind(data)})")
    unknown = sorted(set(data) - _SUMMARY_FIELDS)
    if unknown:
        raise ValueError(f"unknown summary field {', '.join(map(_shown, unknown))}")
    text = data.get("text")
    if not isinstance(text, str):
        raise ValueError(f"summary.text must be a string (got {_json_kind(text)})")
    is_plain(text, "summary.text")
    if "covers_seq" not in data or "version" not in data:
        raise ValueError("summary.covers_seq and summary.version are required")
    updated_at = data.get("updated_at", "")
    if updated_at != "":
        _check_time(updated_at, "summary.updated_at")
    return Summary(
        text=text,
        covers_seq=_whole(data, "covers_seq", 1),
        version=_whole(data, "version", 1),
        turns=_whole(data, "turns", 0),
        skipped=_whole(data, "skipped", 0),
        updated_at=updated_at,
    )


def parse_line(number: int, raw: str | bytes) -> ParsedLine | ParsedSummary | None:
    """Parse and validate line ``number`` of an export (text, or bytes read from a file);
    None for a blank line.

    Raises:
        LineError: the line is not a valid turn or summary (the message names the problem).
    """
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise LineError(number, "not UTF-8 text (export files are UTF-8)") from None
    if not raw.strip():
        return None
    try:
        data = json.loads(raw.rstrip("\r\n"), parse_float=_finite, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise LineError(number, f"invalid JSON ({exc.msg}, column {exc.colno})") from None
    except RecursionError:
        raise LineError(number, "invalid JSON (nested too deeply)") from None
    except ValueError as exc:  # NaN, Infinity, 1e400: accepted by Python, not by JSON
        raise LineError(number, f"invalid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise LineError(number, f"expected a JSON object, got {_json_kind(data)}")
    if "summary" in data:
        return _parse_summary(number, data)
    unknown = sorted(set(data) - _FIELDS)
    if unknown:
        raise LineError(number, f"unknown field {', '.join(map(_shown, unknown))}")
    try:
        if "key" not in data:
            raise ValueError("key is missing")
        key = _check_key(data["key"])
        namespace = _namespace_of(data.get("namespace"))
        turn = _check_turn(data)
    except (ValueError, InvalidMessage) as exc:
        raise LineError(number, str(exc)) from None
    return ParsedLine(number, namespace, key, turn)


def _parse_summary(number: int, data: dict[str, Any]) -> ParsedSummary:
    unknown = sorted(set(data) - _SUMMARY_LINE)
    if unknown:
        raise LineError(number, f"unknown field {', '.join(map(_shown, unknown))} beside summary")
    try:
        if "key" not in data:
            raise ValueError("key is missing")
        key = _check_key(data["key"])
        namespace = _namespace_of(data.get("namespace"))
        summary = _check_summary(data["summary"])
    except (ValueError, InvalidMessage) as exc:
        raise LineError(number, str(exc)) from None
    return ParsedSummary(number, namespace, key, summary)


def turn_from_json(line: dict[str, Any]) -> tuple[str, Turn]:
    """Parse an export line (already decoded) into its key and turn.

    Raises:
        LineError: the line is not a valid turn.
    """
    parsed = parse_line(1, json.dumps(line))
    if not isinstance(parsed, ParsedLine):
        raise LineError(1, "not a turn")
    return parsed.key, parsed.turn


# --- export -----------------------------------------------------------------------------


class ExportCounts(NamedTuple):
    """What `export_jsonl` wrote."""

    conversations: int
    turns: int
    summaries: int


def export_jsonl(
    history: ChatHistory,
    out: TextIO,
    keys: Iterable[str] | None = None,
    *,
    on_progress: Callable[[str, int], None] | None = None,
) -> ExportCounts:
    """Write every turn of ``keys`` (default: all conversations) as JSON lines, each
    conversation's running summary after its turns.

    Args:
        history: Where to read.
        out: A text stream.
        keys: Conversations to export, in order.
        on_progress: Called with each conversation's key and turn count once written.

    Returns:
        Conversations, turns and summaries written.
    """
    conversations = turns = summaries = 0
    for key in keys if keys is not None else history.keys():
        conversations += 1
        written = last_seq = 0
        # The summary first: the turns read after it hold every turn it covers (a summary
        # read after them may cover turns written since, and be left out).
        summary = history.summary(key)
        for turn in history.read(key):
            out.write(_dumps(turn_to_json(key, turn, history.namespace)))
            out.write("\n")
            written += 1
            last_seq = turn.seq
        if summary is not None and summary.covers_seq <= last_seq:
            out.write(_dumps(summary_to_json(key, summary, history.namespace)))
            out.write("\n")
            summaries += 1
        turns += written
        if on_progress is not None:
            on_progress(key, written)
    return ExportCounts(conversations, turns, summaries)


# --- import -----------------------------------------------------------------------------

Conversation = tuple[tuple[str, ...] | None, str]


@dataclass(slots=True)
class _Span:
    first_line: int
    last_line: int
    last_seq: int
    ids: dict[str, int] = field(default_factory=dict)
    broken: bool = False
    summary_line: int = 0


@dataclass(slots=True)
class ImportPlan:
    """What `validate_jsonl` found: the conversations, in file order, and every problem."""

    conversations: list[Conversation] = field(default_factory=list)
    lines: int = 0
    turns: int = 0
    summaries: int = 0
    errors: list[str] = field(default_factory=list)
    more_errors: int = 0

    @property
    def ok(self) -> bool:
        """True when the file can be imported."""
        return not self.errors

    def error(self, message: str) -> None:
        """Record a problem (the first ones in full, then only counted)."""
        if len(self.errors) < _MAX_ERRORS:
            self.errors.append(message)
        else:
            self.more_errors += 1


def _label(namespace: tuple[str, ...] | None) -> str:
    return ".".join(namespace) if namespace else ".".join(DEFAULT_NAMESPACE)


def validate_jsonl(
    lines: Iterable[str | bytes],
    *,
    namespace: Sequence[str] | None = None,
    into: Sequence[str] | None = None,
) -> ImportPlan:
    """Check a whole import file without writing: every line, and every conversation's
    sequence numbers (from 1, no gap, no repeat), ids (no repeat) and lines (together,
    once: a file concatenated twice is refused).

    Args:
        lines: The file's lines.
        namespace: When given, every line must name this namespace (or none).
        into: When given, the file must hold one namespace (it is imported into ``into``).

    Returns:
        The plan; ``plan.errors`` lists ``line N: ...`` problems.
    """
    plan = ImportPlan()
    spans: dict[Conversation, _Span] = {}
    current: Conversation | None = None
    only = tuple(namespace) if namespace is not None else None
    first_namespace: tuple[tuple[str, ...] | None, int] | None = None
    for number, raw in enumerate(lines, start=1):
        plan.lines = number
        try:
            parsed = parse_line(number, raw)
        except LineError as exc:
            plan.error(str(exc))
            continue
        if parsed is None:
            continue
        if isinstance(parsed, ParsedLine):
            plan.turns += 1
        ns = parsed.namespace
        if only is not None and ns is not None and ns != only:
            plan.error(
                f"line {number}: namespace {_label(ns)!r} is not {_label(only)!r} "
                "(given with --namespace)"
            )
            continue
        if into is not None:
            if first_namespace is None:
                first_namespace = (ns, number)
            elif ns != first_namespace[0]:
                plan.error(
                    f"line {number}: namespace {_label(ns)!r} differs from "
                    f"{_label(first_namespace[0])!r} (line {first_namespace[1]}); "
                    "--into takes a file of one namespace"
                )
                continue
        conversation = (ns, parsed.key)
        span = spans.get(conversation)
        if isinstance(parsed, ParsedSummary):
            _check_summary_line(plan, parsed, span if conversation == current else None)
            continue
        if conversation != current and span is not None:
            if not span.broken:
                plan.error(
                    f"line {number}: conversation {_shown(parsed.key)} already appeared at "
                    f"lines {span.first_line}-{span.last_line} (a conversation's lines must "
                    "be together; a file concatenated twice?)"
                )
                span.broken = True
            current = conversation
            continue
        current = conversation
        seq, message_id = parsed.turn.seq, parsed.turn.id
        if span is None:
            span = spans[conversation] = _Span(number, number, 0)
            plan.conversations.append(conversation)
        elif span.broken:
            continue
        expected = span.last_seq + 1
        if seq != expected:
            if span.last_seq == 0:
                problem = f"conversation {_shown(parsed.key)} starts at seq {seq}, not 1"
            elif seq <= span.last_seq:
                problem = (
                    f"seq {seq} repeats or goes back "
                    f"(line {span.last_line} has seq {span.last_seq})"
                )
            else:
                problem = (
                    f"seq {seq} leaves a gap after seq {span.last_seq} (line {span.last_line})"
                )
            plan.error(f"line {number}: {problem}")
            span.broken = True
            continue
        if message_id is not None:
            if message_id in span.ids:
                plan.error(
                    f"line {number}: id {_shown(message_id)} repeats line {span.ids[message_id]}"
                )
                span.broken = True
                continue
            span.ids[message_id] = number
        span.last_seq, span.last_line = seq, number
    return plan


def _check_summary_line(plan: ImportPlan, parsed: ParsedSummary, span: _Span | None) -> None:
    """A summary must follow its conversation's turns (``span``: the conversation of the
    lines just before, None when it is another), once, covering none past them."""
    number, key, covers = parsed.line, _shown(parsed.key), parsed.summary.covers_seq
    if span is None:
        plan.error(f"line {number}: the summary of conversation {key} must follow its turns")
    elif span.broken:
        return
    elif span.summary_line:
        plan.error(f"line {number}: conversation {key} has a summary at line {span.summary_line}")
        span.broken = True
    elif covers > span.last_seq:
        plan.error(
            f"line {number}: the summary covers seq {covers}, past the conversation's last "
            f"turn (seq {span.last_seq}, line {span.last_line})"
        )
        span.broken = True
    else:
        span.summary_line = number
        plan.summaries += 1


@dataclass(slots=True)
class ImportReport:
    """What `import_jsonl` wrote."""

    conversations: int = 0
    """Conversations in the file."""
    written: int = 0
    """Turns written."""
    present: int = 0
    """Turns skipped because their conversation already held their sequence numbers."""
    summaries: int = 0
    """Running summaries written (a conversation whose summary covers as many turns
    already keeps its own)."""
    rejected: list[str] = field(default_factory=list)
    """``line N: ...`` for each conversation the store refused (nothing written for it)."""


@dataclass(slots=True)
class _FileConversation:
    """One conversation of a validated file: its first line, turns, the line of each
    turn, and its summary."""

    first: ParsedLine
    turns: list[Turn] = field(default_factory=list)
    numbers: list[int] = field(default_factory=list)
    summary: Summary | None = None


def _conversations(lines: Iterable[str | bytes]) -> Iterator[_FileConversation]:
    """The file's conversations in order (file already validated: a summary line follows
    turns of its conversation)."""
    current: _FileConversation | None = None
    for number, raw in enumerate(lines, start=1):
        parsed = parse_line(number, raw)
        if parsed is None:
            continue
        if isinstance(parsed, ParsedSummary):
            assert current is not None
            current.summary = parsed.summary
            continue
        if current is not None and (parsed.namespace, parsed.key) != (
            current.first.namespace,
            current.first.key,
        ):
            yield current
            current = None
        current = current or _FileConversation(parsed)
        current.turns.append(parsed.turn)
        current.numbers.append(number)
    if current is not None:
        yield current


def _line_of(exc: Exception, first: ParsedLine, turns: list[Turn], numbers: list[int]) -> int:
    """The line a refusal is about: the turn's when it names a seq, else the first."""
    seq = getattr(exc, "seq", None)
    if isinstance(seq, int) and turns and 0 <= seq - turns[0].seq < len(numbers):
        return numbers[seq - turns[0].seq]
    return first.line


def import_jsonl(
    store: BaseStore,
    lines: Callable[[], Iterable[str | bytes]],
    *,
    namespace: Sequence[str] | None = None,
    into: Sequence[str] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> tuple[ImportPlan, ImportReport]:
    """Validate an export, then import it conversation by conversation.

    Nothing is written when a line is invalid. Each conversation is written in one
    transaction at the sequence numbers of its lines: turns already present (the same
    turn at the same seq) are skipped, so the import can be run again (or twice at once)
    without a duplicate. A conversation holding other turns at those seqs is not imported
    (``report.rejected`` names the line of the first differing turn).

    Args:
        store: The destination store.
        lines: Returns the file's lines; called twice (validate, then import).
        namespace: Every line must name this namespace (or none); it is the destination.
        into: Import a file of one namespace into this namespace instead.
        on_progress: Called with the number of turns of each conversation once imported.

    Returns:
        The validation plan, and what was written (empty when the plan has errors).
    """
    plan = validate_jsonl(lines(), namespace=namespace, into=into)
    report = ImportReport(conversations=len(plan.conversations))
    if not plan.ok:
        return plan, report
    fallback = tuple(namespace) if namespace is not None else DEFAULT_NAMESPACE
    for conversation in _conversations(lines()):
        first, turns = conversation.first, conversation.turns
        target = tuple(into) if into is not None else first.namespace or fallback
        history = ChatHistory(store, namespace=target)
        try:
            result = history.import_turns(first.key, turns)
        except (ImportConflict, InvalidMessage) as exc:
            line = _line_of(exc, first, turns, conversation.numbers)
            report.rejected.append(
                f"line {line}: conversation {_shown(first.key)} not imported: {exc}"
            )
        else:
            report.written += result.written
            report.present += result.present
            if conversation.summary is not None:
                report.summaries += history.import_summary(first.key, conversation.summary).written
        if on_progress is not None:
            on_progress(len(turns))
    return plan, report


# --- checksums and migration ------------------------------------------------------------


def conversation_checksum(turns: Iterable[Turn]) -> tuple[int, str]:
    """Count and SHA-256 of a conversation's turns, in order, over every stored field but
    the time: seq, role, content, id, type and the other message fields."""
    digest = hashlib.sha256()
    count = 0
    for turn in turns:
        record = [turn.seq, turn.role, turn.content, turn.id, turn.kind, turn.extra or None]
        digest.update(json.dumps(record, sort_keys=True, ensure_ascii=True).encode())
        digest.update(b"\n")
        count += 1
    return count, digest.hexdigest()


@dataclass(frozen=True, slots=True)
class ConversationCheck:
    """Verification of one migrated conversation."""

    key: str
    source_turns: int
    target_turns: int
    matches: bool
    """The target's first ``source_turns`` turns equal the source's (count and checksum),
    and so does its summary (or the target's covers more turns)."""
    problem: str | None = None
    """Why the conversation was not copied, when it was not."""
    summary_copied: bool = False
    """The source's running summary was written to the target."""


@dataclass(frozen=True, slots=True)
class MigrationReport:
    """Outcome of a migration."""

    conversations: int
    turns_copied: int
    checks: tuple[ConversationCheck, ...]
    summaries_copied: int = 0

    @property
    def ok(self) -> bool:
        """True when every conversation's count and checksum match."""
        return all(check.matches for check in self.checks)


def copy_conversation(
    target: ChatHistory, key: str, turns: list[Turn], summary: Summary | None = None
) -> tuple[int, ConversationCheck]:
    """Write ``turns`` into ``target`` at their sequence numbers, then ``summary`` (the
    source's running summary), then verify them.

    Returns:
        Turns written, and the check: the target's first ``len(turns)`` turns must equal
        ``turns`` (the target may have grown since, with newer turns), and its summary
        ``summary`` (or cover more turns).
    """
    try:
        written = target.import_turns(key, turns).written
    except (ImportConflict, InvalidMessage) as exc:
        return 0, ConversationCheck(key, len(turns), target.count(key), False, str(exc))
    copied_summary = summary is not None and target.import_summary(key, summary).written
    source = conversation_checksum(turns)
    copied = conversation_checksum(islice(target.read(key), len(turns)))
    problem = None if source == copied else "the copy differs from the source (count or checksum)"
    summary_kept = summary is None or _kept(summary, target.summary(key), copied_summary)
    if problem is None and not summary_kept:
        problem = "the target's summary differs from the source's"
    return written, ConversationCheck(
        key, len(turns), target.count(key), problem is None, problem, copied_summary
    )


def _kept(source: Summary, target: Summary | None, copied: bool) -> bool:
    """The target holds the source's summary (``copied``: just written), or one of its
    own covering as many turns, which `ChatHistory.import_summary` keeps."""
    if target is None or target.covers_seq < source.covers_seq:
        return False
    return not copied or target.covers_seq > source.covers_seq or target.text == source.text


def migrate_history(
    source: ChatHistory,
    target: ChatHistory,
    *,
    keys: Iterable[str] | None = None,
    on_progress: Callable[[str, int], None] | None = None,
) -> MigrationReport:
    """Copy conversations from ``source`` to ``target``, resumably, and verify each.

    Each conversation is written in one transaction at the sequence numbers it has in
    the source; turns the target already holds are skipped, so a migration that was
    interrupted, or runs twice at once, copies every turn exactly once. Each
    conversation is then compared by count and checksum. Run it while writes go to the
    source only (or with writes stopped via ``ORCHEO_GRAPH_CHAT_HISTORY_MODE=read_only``).
    """
    checks: list[ConversationCheck] = []
    copied = 0
    for key in list(keys) if keys is not None else list(source.keys()):
        summary = source.summary(key)  # first: the turns read next hold all it covers
        turns = list(source.read(key))
        summary = summary if turns else None
        written, check = copy_conversation(target, key, turns, summary)
        copied += written
        checks.append(check)
        if on_progress is not None:
            on_progress(key, written)
    summaries = sum(check.summary_copied for check in checks)
    return MigrationReport(len(checks), copied, tuple(checks), summaries)
