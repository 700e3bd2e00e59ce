"""Conversation keys: ordered candidates rendered in a Jinja2 sandbox, then validated.

A key is any text of 1 to 256 characters without control characters; `validate_history_key`
is the one check every entry point applies. Values rendered into a template with several
placeholders are percent-escaped (`escape_key_value`) so distinct values give distinct keys.
"""

from __future__ import annotations

import functools
import math
import numbers
import re
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import Any, NamedTuple

from jinja2 import StrictUndefined, Undefined, nodes
from jinja2.exceptions import TemplateError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from pydantic import SecretBytes, SecretStr

from agent_history.errors import InvalidKey, KeyResolutionError
from agent_history.observability import channel_label
from agent_history.state import as_mapping

__all__ = [
    "DEFAULT_HISTORY_KEY_CANDIDATES",
    "DEFAULT_HISTORY_KEY_TEMPLATE",
    "KEY_PATTERN",
    "MAX_KEY_LENGTH",
    "KeyRejectReason",
    "KeyRejection",
    "KeyResolution",
    "KeyTemplateError",
    "candidate_problem",
    "channel_of",
    "escape_key_value",
    "format_field",
    "is_key_template",
    "key_failure",
    "render_key_template",
    "require_history_key",
    "resolve_history_key",
    "validate_history_key",
]

DEFAULT_HISTORY_KEY_CANDIDATES: tuple[str, ...] = (
    "{{inputs.platform}}:{{inputs.message.chat_id}}",
    "{{inputs.listener.platform}}:{{inputs.listener.message.chat_id}}",
    "telegram:{{results.telegram_events_parser.chat_id}}",
    "wecom_cs:{{results.wecom_cs_sync.open_kf_id}}:{{results.wecom_cs_sync.external_userid}}",
    "wecom_aibot:{{results.wecom_ai_bot_events_parser.chat_type}}:"
    "{{results.wecom_ai_bot_events_parser.user}}",
    "wecom_dm:{{results.wecom_events_parser.user}}",
)
DEFAULT_HISTORY_KEY_TEMPLATE = "{{conversation_key}}"
MAX_KEY_LENGTH = 256
# Characters no key may hold: C0 and C1 controls (NUL, newline, DEL, ...), the line and
# paragraph separators, bidirectional embedding/override/isolate controls (they make a
# printed key read as another one) and surrogates (a lone one cannot be stored as UTF-8).
_FORBIDDEN = "\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff"
FORBIDDEN_KEY_CHARS = re.compile(f"[{_FORBIDDEN}]")
KEY_PATTERN = re.compile(f"^[^{_FORBIDDEN}]+$")
"""Matches text made only of characters a key may hold (length and blanks not checked)."""
_TEMPLATE_MARKERS = ("{{", "}}", "{%", "%}", "{#")
# Characters a value keeps when it is escaped into a key: today's ids (Telegram chat ids,
# WeCom user ids, names) are made of these, so their keys do not change.
_SAFE_VALUE = re.compile(r"[A-Za-z0-9_-]*")
MAX_TEMPLATE_LENGTH = 2048
MAX_RENDERED_LENGTH = 4096
_ALLOWED_FILTERS = frozenset(
    {"lower", "upper", "trim", "default", "d", "string", "replace", "truncate", "first", "last"}
)
# Only an expression language: names, attribute and item access, constants, a few
# filters, conditionals and concatenation. No statements, calls, loops or arithmetic,
# so a template can neither run code nor spin.
_ALLOWED_NODES: tuple[type[nodes.Node], ...] = (
    nodes.Template,
    nodes.Output,
    nodes.TemplateData,
    nodes.Name,
    nodes.Getattr,
    nodes.Getitem,
    nodes.Const,
    nodes.Filter,
    nodes.CondExpr,
    nodes.And,
    nodes.Or,
    nodes.Not,
    nodes.Compare,
    nodes.Operand,
    nodes.Concat,
)


class KeyRejectReason(StrEnum):
    """Why a candidate did not become the conversation key."""

    EMPTY = "empty"
    UNRESOLVED_TEMPLATE = "unresolved_template"
    INVALID_CHARS = "invalid_chars"
    TOO_LONG = "too_long"
    RENDER_ERROR = "render_error"
    NOT_TEXT = "not_text"


class KeyRejection(NamedTuple):
    """One rejected candidate: the candidate as declared, the reason, and a short detail."""

    candidate: str
    reason: KeyRejectReason
    detail: str


class KeyTemplateError(KeyResolutionError):
    """A template could not be rendered into a usable value."""

    def __init__(self, reason: KeyRejectReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class KeyResolution:
    """The outcome of resolving a conversation key for one run."""

    key: str | None
    """The final, validated key; None when no candidate produced one."""
    conversation_key: str | None
    """The winning candidate's value before ``history_key_template``."""
    candidate: str | None
    """The winning candidate as declared."""
    rejected: tuple[KeyRejection, ...]
    """Every rejected candidate (and the key template, if it failed), in order."""

    @property
    def ok(self) -> bool:
        """True when a key was resolved."""
        return self.key is not None

    @property
    def channel(self) -> str:
        """The key's channel: telegram, wecom_cs, wecom_aibot, wecom_dm or other."""
        return channel_of(self.key)


def channel_of(key: str | None) -> str:
    """The channel named by a key's prefix (before the first ``:``) when it is a known
    channel (the built-in ones and those registered from key candidates), or ``other``."""
    return channel_label(key)


def validate_history_key(key: str) -> KeyRejectReason | None:
    """Check a conversation key; None when it is valid.

    The one check behind every entry point (`resolve_history_key`, `AgentNode`,
    `ChatHistory`, the CLI): any text of 1 to `MAX_KEY_LENGTH` characters is a key, except
    blank text, text holding a control character or a lone surrogate, and text holding
    ``{{``, ``}}``, ``{%``, ``%}`` or ``{#`` (an unrendered template).

    Returns:
        None, or the reason code: ``not_text``, ``empty``, ``unresolved_template``,
        ``too_long`` or ``invalid_chars``.
    """
    if not isinstance(key, str):
        return KeyRejectReason.NOT_TEXT
    if not key or key.isspace():
        return KeyRejectReason.EMPTY
    if any(marker in key for marker in _TEMPLATE_MARKERS):
        return KeyRejectReason.UNRESOLVED_TEMPLATE
    if len(key) > MAX_KEY_LENGTH:
        return KeyRejectReason.TOO_LONG
    if FORBIDDEN_KEY_CHARS.search(key):
        return KeyRejectReason.INVALID_CHARS
    return None


def require_history_key(key: str) -> str:
    """Return ``key`` when `validate_history_key` accepts it.

    Raises:
        InvalidKey: with the reason code; the message never quotes the key.
    """
    reason = validate_history_key(key)
    if reason is not None:
        raise InvalidKey(reason)
    return key


def escape_key_value(value: str) -> str:
    """Percent-escape one value rendered into a key template with several placeholders.

    ASCII letters, digits, ``_`` and ``-`` stay as they are; every other character becomes
    ``%XX`` per UTF-8 byte (``:`` is ``%3A``, ``%`` is ``%25``). An escaped value never holds
    a separator such as ``:`` or ``/``, so ``a:{{x}}:{{y}}`` gives distinct keys for
    distinct ``(x, y)``, while ids made of the kept characters render as before.
    """
    if _SAFE_VALUE.fullmatch(value):
        return value
    return "".join(
        char
        if _SAFE_VALUE.fullmatch(char)
        else "".join(f"%{b:02X}" for b in char.encode("utf-8", "surrogatepass"))
        for char in value
    )


class _Unresolved(Exception):
    """An output expression produced None or an empty value."""


class _ResolvedKey(str):
    """``conversation_key`` in the key template: already a key, so never escaped."""

    __slots__ = ()


_BLANK = "\x00blank\x00"


class _Unusable:
    """A state value no key can be made of (None, an object that is not data, a value
    nested too deep, a key function that failed): falsy, equal to None, without
    attributes; printing it, directly or through a filter, rejects the candidate with
    its reason."""

    __slots__ = ("_detail", "_reason")

    def __init__(self, reason: KeyRejectReason, detail: str) -> None:
        self._reason = reason
        self._detail = detail

    def error(self) -> KeyTemplateError:
        return KeyTemplateError(self._reason, self._detail)

    def _refuse(self, *args: Any) -> Any:
        raise self.error()

    __str__ = __iter__ = __len__ = __reversed__ = _refuse

    def __bool__(self) -> bool:
        # Falsy, as None: ``x or 'fallback'`` and ``default(v, true)`` fall back;
        # rendering it, even through a filter, rejects the candidate.
        return False

    def __eq__(self, other: object) -> bool:
        return other is None or isinstance(other, _Unusable)

    __hash__ = object.__hash__


_EMPTY = _Unusable(KeyRejectReason.UNRESOLVED_TEMPLATE, "a value is empty")
"""None in the state: ``telegram:{{ x|string }}`` or ``{{ x|lower }}`` must not make
``telegram:None`` the key of every chat whose parser left the id out."""


def key_failure(reason: KeyRejectReason, detail: str) -> Any:
    """A value for the state that rejects, with ``reason`` and ``detail``, any candidate
    that renders it (a key function's failure, for instance)."""
    return _Unusable(reason, detail)


_NOT_TEXT = "a value is not text or a number"
MAX_STATE_DEPTH = 12


def _finalize(value: Any) -> Any:
    # None means the value is missing; a blank string is marked so that a key that is
    # only blank reads as "empty" while "telegram:" + blank reads as unresolved.
    if value is None:
        raise _Unresolved
    if isinstance(value, _Unusable):
        raise value.error()
    if isinstance(value, str) and not value.strip():
        return _BLANK
    if not isinstance(value, str | int | float | Undefined):  # Undefined raises on output
        # A mapping, a list, a method or one of Jinja's own objects prints as its repr:
        # never a key (and a repr with an address would change every run).
        raise KeyTemplateError(KeyRejectReason.RENDER_ERROR, _NOT_TEXT)
    if isinstance(value, bool):
        # A parser's "no id" as True/False would put every such chat in one conversation.
        raise KeyTemplateError(KeyRejectReason.RENDER_ERROR, "a value is true or false")
    if isinstance(value, float) and not math.isfinite(value):
        raise KeyTemplateError(KeyRejectReason.RENDER_ERROR, "a value is not a finite number")
    return value


def _finalize_escaped(value: Any) -> Any:
    # Several values in one key: each is escaped so none can forge a separator. A value
    # holding a control character is refused here as it would be in a single-value key.
    value = _finalize(value)
    if value is _BLANK or isinstance(value, _ResolvedKey):
        return value
    text = str(value)
    if FORBIDDEN_KEY_CHARS.search(text):
        raise KeyTemplateError(KeyRejectReason.INVALID_CHARS, "a value holds a control character")
    return escape_key_value(text)


def _bounded_replace(value: Any, old: Any, new: Any, count: int | None = None) -> str:
    """Jinja's ``replace`` that refuses to build a value longer than any key could be:
    ``replace('', s)`` puts ``s`` between every character, and chained it grows
    exponentially (Jinja even folds constant chains while compiling)."""
    text, old, new = str(value), str(old), str(new)
    hits = len(text) + 1 if old == "" else text.count(old)
    if count is not None and count >= 0:
        hits = min(hits, count)
    if len(text) + hits * (len(new) - len(old)) > MAX_RENDERED_LENGTH:
        raise KeyTemplateError(KeyRejectReason.TOO_LONG, "rendered value too long")
    return text.replace(old, new, -1 if count is None else count)


class _KeyEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox over the state's data views (`_plain`): ``a.b`` and ``a['b']`` read the
    field ``b`` of a mapping, never a method of it (so a field named ``items`` or
    ``update`` is reachable, and no method's text can become a key); other values show
    their data attributes only (an enum member's ``value``), and a missing or unusable
    value has none."""

    def getattr(self, obj: Any, attribute: str) -> Any:
        if isinstance(obj, _Unusable):
            return self.undefined(obj=None, name=attribute)  # as None's attributes
        if isinstance(obj, Mapping):
            return self.getitem(obj, attribute)
        value = super().getattr(obj, attribute)
        # A method's printout must never be a key (and calls are not allowed): data
        # attributes only, such as an enum member's ``value`` or ``name``.
        return self.undefined(obj=obj, name=attribute) if callable(value) else value

    def getitem(self, obj: Any, argument: Any) -> Any:
        if isinstance(obj, _Unusable):
            return self.undefined(obj=None, name=argument)
        if isinstance(obj, Mapping):
            try:
                return obj[argument]
            except (LookupError, TypeError):
                return self.undefined(obj=obj, name=argument)
        if isinstance(obj, str | Sequence | int | float) and isinstance(argument, str):
            return self.getattr(obj, argument)
        return super().getitem(obj, argument)


def _environment(finalize: Any) -> ImmutableSandboxedEnvironment:
    env = _KeyEnvironment(
        undefined=StrictUndefined, finalize=finalize, autoescape=False, cache_size=0
    )
    env.filters["replace"] = _bounded_replace
    return env


# One value per key is inserted as it is (a fixed prefix or suffix cannot make two values
# collide, and keys of templates like ``telegram:{{chat_id}}`` stay what they were); with
# several values each one is escaped.
_ENV = _environment(_finalize)
_ENV_ESCAPED = _environment(_finalize_escaped)


def _value_count(tree: nodes.Template) -> int:
    return sum(
        not isinstance(child, nodes.TemplateData)
        for output in tree.find_all(nodes.Output)
        for child in output.nodes
    )


def _check_tree(tree: nodes.Node) -> None:
    for node in tree.find_all(nodes.Node):
        if not isinstance(node, _ALLOWED_NODES):
            raise KeyTemplateError(
                KeyRejectReason.RENDER_ERROR, f"{type(node).__name__} is not allowed in keys"
            )
        if isinstance(node, nodes.Filter) and node.name not in _ALLOWED_FILTERS:
            raise KeyTemplateError(
                KeyRejectReason.RENDER_ERROR, f"filter {node.name!r} not allowed"
            )
        name = getattr(node, "attr", None) or getattr(node, "name", None)
        if isinstance(name, str) and name.startswith("_"):
            raise KeyTemplateError(KeyRejectReason.RENDER_ERROR, "private attribute access")
        if isinstance(node, nodes.Getitem):
            arg = node.arg
            if isinstance(arg, nodes.Const) and str(arg.value).startswith("_"):
                raise KeyTemplateError(KeyRejectReason.RENDER_ERROR, "private item access")


@functools.lru_cache(maxsize=512)
def _compile(template: str) -> Any:
    if len(template) > MAX_TEMPLATE_LENGTH:
        raise KeyTemplateError(
            KeyRejectReason.RENDER_ERROR, f"template longer than {MAX_TEMPLATE_LENGTH} chars"
        )
    try:
        tree = _ENV.parse(template)
    except (TemplateError, RecursionError, MemoryError) as exc:
        raise KeyTemplateError(KeyRejectReason.RENDER_ERROR, type(exc).__name__) from None
    _check_tree(tree)
    env = _ENV_ESCAPED if _value_count(tree) > 1 else _ENV
    try:
        return env.from_string(tree)
    except Exception as exc:  # compiling folds constants, which runs filters
        raise KeyTemplateError(KeyRejectReason.RENDER_ERROR, type(exc).__name__) from None


def _undefined_detail(exc: UndefinedError) -> str:
    message = str(exc.message or "")
    match = re.search(r"'([^']{1,80})' is undefined|has no attribute '([^']{1,80})'", message)
    if match:
        return "undefined: " + next(g for g in match.groups() if g)
    return "undefined variable"


def render_key_template(template: str, context: Mapping[str, Any]) -> str:
    """Render a key template in the sandbox (no validation of the result).

    A text without ``{{``, ``{%`` or ``{#`` is a literal and is returned as it is. A
    template's own text is stripped of surrounding whitespace before rendering; the values
    it renders are never stripped, so ``" 555"`` and ``"555"`` give different keys. With
    several values in one template each is escaped by `escape_key_value`.

    Raises:
        KeyTemplateError: unresolved variables, a disallowed construct, or a render error.
    """
    if not is_key_template(template):
        return template
    compiled = _compile(template.strip())
    try:
        rendered = str(compiled.render(context))
    except UndefinedError as exc:
        raise KeyTemplateError(
            KeyRejectReason.UNRESOLVED_TEMPLATE, _undefined_detail(exc)
        ) from None
    except _Unresolved:
        raise KeyTemplateError(KeyRejectReason.UNRESOLVED_TEMPLATE, "a value is empty") from None
    except KeyTemplateError:
        raise
    except Exception as exc:
        raise KeyTemplateError(KeyRejectReason.RENDER_ERROR, type(exc).__name__) from None
    if len(rendered) > MAX_RENDERED_LENGTH:
        raise KeyTemplateError(KeyRejectReason.TOO_LONG, "rendered value too long")
    if _BLANK in rendered:
        if not rendered.replace(_BLANK, "").strip():
            return ""
        raise KeyTemplateError(KeyRejectReason.UNRESOLVED_TEMPLATE, "a value is blank")
    return rendered


# `{name}` (Python's format fields) outside any Jinja block: a literal that meant to be
# a template, which would put every chat in one conversation.
_JINJA_BLOCK = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", re.DOTALL)
_FORMAT_FIELD = re.compile(r"\{[^{}]*\}|%\(\w+\)[sdr]|\$\{\w+\}")


def is_key_template(text: str) -> bool:
    """Whether ``text`` is a template (holds ``{{``, ``{%`` or ``{#``), not a literal."""
    return "{{" in text or "{%" in text or "{#" in text


def format_field(text: str) -> str | None:
    """A placeholder of another template language (``{chat_id}``, ``{0}``, ``{}``,
    ``%(chat_id)s``, ``${chat_id}``) outside any Jinja block of ``text``, if there is one:
    a literal meant as a template. As a candidate it is the key of every chat, so all
    would share one conversation."""
    found = _FORMAT_FIELD.search(_JINJA_BLOCK.sub("", text))
    return None if found is None else found.group(0)


def candidate_problem(text: str) -> str | None:
    """Why a configured candidate (or key template) could never give a key, or None: a
    literal that is not a valid key, or a template the sandbox refuses."""
    if not is_key_template(text):
        reason = validate_history_key(text)
        return None if reason is None else f"is a literal that is never a valid key ({reason})"
    try:
        _compile(text.strip())
    except KeyTemplateError as exc:
        return f"is not a usable key template: {exc.detail}"
    return None


class _MappingView(Mapping[str, Any]):
    """A read-only view of a mapping in the state, its values seen through `_plain` as
    they are read: rendering costs what a template reads, not the state's size."""

    __slots__ = ("_any_keys", "_data", "_depth", "_names")

    def __init__(self, data: Mapping[Any, Any], depth: int, any_keys: bool = False) -> None:
        self._data = data
        self._depth = depth
        self._names: dict[str, Any] | None = None
        self._any_keys = any_keys  # ``config.configurable[1]``: its keys as they are too

    def _index(self) -> dict[str, Any]:
        if self._names is None:
            self._names = {str(k): k for k in self._data}
        return self._names

    def __getitem__(self, name: str) -> Any:
        if not isinstance(name, str):
            if self._any_keys and name in self._data:
                return _plain(self._data[name], self._depth + 1)
            raise KeyError(name)
        if name.startswith("_"):  # refused when written; so when computed (``'_' ~ x``)
            raise KeyError(name)
        return self.item(name)

    def item(self, name: str) -> Any:
        """The value of field ``name``, a private one too (printing the mapping whole
        shows every field, as it always did: a key made so keeps its text)."""
        return _plain(self._data[self._index()[name]], self._depth + 1)

    def __iter__(self) -> Iterator[str]:
        return iter(self._index())

    def __reversed__(self) -> Iterator[str]:
        return reversed(list(self._index()))

    def __len__(self) -> int:
        return len(self._data)

    def __str__(self) -> str:
        return str(_materialized(self))

    def __repr__(self) -> str:  # printed inside a mapping: ``{{ config|string }}``
        return repr(_materialized(self))


class _SequenceView(Sequence[Any]):
    """A read-only view of a list or tuple in the state (see `_MappingView`)."""

    __slots__ = ("_data", "_depth")

    def __init__(self, data: Sequence[Any], depth: int) -> None:
        self._data = data
        self._depth = depth

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return _SequenceView(self._data[index], self._depth)
        return _plain(self._data[index], self._depth + 1)

    def __len__(self) -> int:
        return len(self._data)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence) and not isinstance(other, str):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __str__(self) -> str:
        return str(_materialized(self))

    def __repr__(self) -> str:
        return repr(_materialized(self))


def _materialized(value: Any, budget: list[int] | None = None) -> Any:
    """A view as the plain dicts and lists it shows (``|string`` and ``~`` print a
    mapping or a list as they always did: a key made that way keeps its text), built
    from no more values than a key could print (an object graph that refers back to
    itself would otherwise be printed at exponential cost)."""
    budget = [MAX_RENDERED_LENGTH] if budget is None else budget
    budget[0] -= 1
    if budget[0] < 0:
        raise KeyTemplateError(KeyRejectReason.TOO_LONG, "rendered value too long")
    if isinstance(value, _MappingView):
        return {name: _materialized(value.item(name), budget) for name in value}
    if isinstance(value, _SequenceView):
        return [_materialized(item, budget) for item in value]
    return None if isinstance(value, _Unusable) else value


def _plain(value: Any, depth: int = 0) -> Any:
    """State as templates see it: data only, so templates never reach user objects.

    Texts and numbers are themselves; mappings and lists are read-only views; a UUID is
    its text, numbers of other types (numpy's, `Decimal`) are ints, floats or their
    text; a pydantic model or an object is the mapping of its fields; anything else, and
    anything nested deeper than `MAX_STATE_DEPTH`, rejects a candidate that renders it.
    """
    if depth > MAX_STATE_DEPTH:
        return _Unusable(KeyRejectReason.RENDER_ERROR, "a value is nested too deep")
    if value is None:
        return _EMPTY
    if isinstance(value, str | int | float | _Unusable):
        # (A str subclass renders through its own __str__: a `(str, Enum)` member as
        # `Platform.TELEGRAM`. Kept so: changing it would move stored conversations.)
        return value
    if isinstance(value, Mapping):
        return _MappingView(value, depth)
    if isinstance(value, list | tuple):
        return _SequenceView(value, depth)
    if isinstance(value, uuid.UUID):
        return str(value)
    if type(value).__module__ == "numpy" and isinstance(value, numbers.Real):
        # numpy's numbers as printed; no other class's number code runs here
        if isinstance(value, numbers.Integral):
            return int(value)
        return str(value) if math.isfinite(float(value)) else math.nan
    if isinstance(value, Decimal):
        return str(value) if value.is_finite() else math.nan
    if isinstance(value, SecretStr | SecretBytes):
        # its value is a private field, which printing the object would show
        return _Unusable(KeyRejectReason.RENDER_ERROR, "a secret is never printed into a key")
    try:
        dumped = as_mapping(value)
    except Exception as exc:  # a model whose dump raises: not data a key can be made of
        detail = f"reading a {type(value).__name__} raised {type(exc).__name__}"
        return _Unusable(KeyRejectReason.RENDER_ERROR, detail)
    if dumped:
        return _MappingView(dumped, depth + 1)  # the object, then its fields
    return _Unusable(KeyRejectReason.RENDER_ERROR, f"{_NOT_TEXT} ({type(value).__name__})")


def _context(state: Any, config: Mapping[str, Any] | None) -> dict[str, Any]:
    context = {k: _plain(v) for k, v in as_mapping(state).items() if k != "messages"}
    configurable = (config or {}).get("configurable") or {}
    context["config"] = {
        # a view: an object passed to the run's tools (a client, a pydantic settings
        # object) is read only when a template reads it, not once per pass
        "configurable": _MappingView(
            {k: v for k, v in configurable.items() if not str(k).startswith("__")}, -1, True
        ),
        "metadata": _plain(dict((config or {}).get("metadata") or {})),
        "tags": _plain(list((config or {}).get("tags") or [])),
    }
    return context


def _short(candidate: str) -> str:
    return candidate if len(candidate) <= 200 else candidate[:197] + "..."


def _try(template: str, context: Mapping[str, Any]) -> tuple[str | None, KeyRejection | None]:
    try:
        value = render_key_template(template, context)
    except KeyTemplateError as exc:
        return None, KeyRejection(_short(template), exc.reason, exc.detail)
    reason = validate_history_key(value)
    if reason is not None:
        return None, KeyRejection(_short(template), reason, f"rendered value is {reason.value}")
    return value, None


def resolve_history_key(
    state: Any,
    config: Mapping[str, Any] | None = None,
    *,
    candidates: Sequence[str] = DEFAULT_HISTORY_KEY_CANDIDATES,
    key_template: str = DEFAULT_HISTORY_KEY_TEMPLATE,
) -> KeyResolution:
    """Resolve the conversation key for one run.

    Args:
        state: Workflow state (mapping, pydantic model or object): ``inputs.*``,
            ``results.*`` and any other top-level field are visible to templates.
        config: The RunnableConfig, visible as ``config.*`` (``config.configurable.*``).
        candidates: Literals or templates, tried in order; the first valid one wins.
        key_template: Applied to the winner with ``conversation_key`` in scope.

    Returns:
        The key (or None) with a reason for every rejected candidate.
    """
    context = _context(state, config)
    rejected: list[KeyRejection] = []
    for candidate in candidates:
        value, rejection = _try(candidate, context)
        if rejection is not None:
            rejected.append(rejection)
            continue
        final, failure = _try(key_template, {**context, "conversation_key": _ResolvedKey(value)})
        if failure is not None:
            rejected.append(failure)
            return KeyResolution(None, value, candidate, tuple(rejected))
        return KeyResolution(final, value, candidate, tuple(rejected))
    return KeyResolution(None, None, None, tuple(rejected))
