"""Conversation keys: ordered candidates rendered in a Jinja2 sandbox, then validated."""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple

from jinja2 import StrictUndefined, nodes
from jinja2.exceptions import TemplateError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from agent_history.errors import KeyResolutionError
from agent_history.incoming import as_mapping

__all__ = [
    "DEFAULT_HISTORY_KEY_CANDIDATES",
    "DEFAULT_HISTORY_KEY_TEMPLATE",
    "KEY_PATTERN",
    "MAX_KEY_LENGTH",
    "KeyRejectReason",
    "KeyRejection",
    "KeyResolution",
    "KeyTemplateError",
    "channel_of",
    "render_key_template",
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
KEY_PATTERN = re.compile(r"^[A-Za-z0-9:_-]+$")
MAX_TEMPLATE_LENGTH = 2048
MAX_RENDERED_LENGTH = 4096
_CHANNELS = ("telegram", "wecom_cs", "wecom_aibot", "wecom_dm")
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
    """The channel named by a key's prefix (before the first ``:``), or ``other``."""
    if not key:
        return "other"
    prefix = key.split(":", 1)[0]
    return prefix if prefix in _CHANNELS else "other"


def validate_history_key(key: str) -> KeyRejectReason | None:
    """Check a rendered key; None when it is valid."""
    if not key:
        return KeyRejectReason.EMPTY
    if "{{" in key or "}}" in key or "{%" in key or "%}" in key:
        return KeyRejectReason.UNRESOLVED_TEMPLATE
    if len(key) > MAX_KEY_LENGTH:
        return KeyRejectReason.TOO_LONG
    if not KEY_PATTERN.match(key):
        return KeyRejectReason.INVALID_CHARS
    return None


class _Unresolved(Exception):
    """An output expression produced None or an empty value."""


_BLANK = "\x00blank\x00"


def _finalize(value: Any) -> Any:
    # None means the value is missing; a blank string is marked so that a key that is
    # only blank reads as "empty" while "telegram:" + blank reads as unresolved.
    if value is None:
        raise _Unresolved
    if isinstance(value, str) and not value.strip():
        return _BLANK
    return value


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


_ENV = ImmutableSandboxedEnvironment(
    undefined=StrictUndefined, finalize=_finalize, autoescape=False, cache_size=0
)
_ENV.filters["replace"] = _bounded_replace


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
    try:
        return _ENV.from_string(tree)
    except Exception as exc:  # compiling folds constants, which runs filters
        raise KeyTemplateError(KeyRejectReason.RENDER_ERROR, type(exc).__name__) from None


def _undefined_detail(exc: UndefinedError) -> str:
    message = str(exc.message or "")
    match = re.search(r"'([^']{1,80})' (?:is undefined|has no attribute '([^']{1,80})')", message)
    if match:
        return "undefined: " + ".".join(g for g in match.groups() if g)
    return "undefined variable"


def render_key_template(template: str, context: Mapping[str, Any]) -> str:
    """Render a key template in the sandbox and strip it (no validation of the result).

    Raises:
        KeyTemplateError: unresolved variables, a disallowed construct, or a render error.
    """
    if "{{" not in template and "{%" not in template and "{#" not in template:
        return template.strip()
    compiled = _compile(template)
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
    return rendered.strip()


def _plain(value: Any, depth: int = 0) -> Any:
    """Copy state into plain dicts and lists so templates never reach user objects."""
    if depth > 12:
        return None
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v, depth + 1) for v in value[:100]]
    dumped = as_mapping(value)
    return _plain(dumped, depth + 1) if dumped else None


def _context(state: Any, config: Mapping[str, Any] | None) -> dict[str, Any]:
    context = {k: _plain(v) for k, v in as_mapping(state).items() if k != "messages"}
    configurable = dict((config or {}).get("configurable") or {})
    context["config"] = {
        "configurable": {
            k: _plain(v) for k, v in configurable.items() if not str(k).startswith("__")
        },
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
        final, failure = _try(key_template, {**context, "conversation_key": value})
        if failure is not None:
            rejected.append(failure)
            return KeyResolution(None, value, candidate, tuple(rejected))
        return KeyResolution(final, value, candidate, tuple(rejected))
    return KeyResolution(None, None, None, tuple(rejected))
