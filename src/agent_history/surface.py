"""What the ``create_agent`` middleware and the prebuilt agent hooks share: the history
settings they take (the fields `AgentNode` documents, plus a key function), and how one
pass begins for a model call.

Neither surface runs the model itself: the agent does. So a surface's pass is the shared
`session.HistoryPass` cut at the model call: `model_pass_steps` reads and merges, yields
the payload as a `Model` step, and appends what the agent's model produced.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict

from langchain_core.messages import BaseMessage
from langchain_core.runnables import Runnable, RunnableConfig
from langgraph.config import get_config
from langgraph.store.base import BaseStore

from agent_history.context.budget import TokenCounterLike
from agent_history.history.arguments import flag_arg, namespace_arg, texts_arg
from agent_history.history.codec import HistoryScope
from agent_history.incoming import ThreadView
from agent_history.keys import KeyRejectReason, key_failure, resolve_history_key
from agent_history.pass_steps import Model, Step
from agent_history.runner import build_runnable, takes_messages
from agent_history.session import SYSTEM_PROMPT_ID, HistoryOptions, HistoryPass, HistoryReport
from agent_history.state import as_mapping
from agent_history.toggles import DEFAULT_TOGGLES, HistoryToggles

__all__ = [
    "KEY_FUNCTION_FIELD",
    "SYSTEM_PROMPT_ID",
    "HistoryFields",
    "KeyFunction",
    "Surface",
    "current_config",
    "model_pass_steps",
    "surface_from",
]

KeyFunction = Callable[[Mapping[str, Any], Any], "str | None"]
"""``key(state, runtime) -> key or None``: the conversation key for a run, computed in code
(``runtime`` is LangGraph's `Runtime`: ``runtime.context``, ``runtime.store``)."""

KEY_FUNCTION_FIELD = "agent_history_key"
"""The template variable a key function's value is rendered from: it goes through the
same candidate, ``history_key_template`` and validation steps as a template's value."""


class HistoryFields(TypedDict, total=False):
    """The history settings of `HistoryMiddleware` and `HistoryHooks` (those of
    `AgentNode`, with the same defaults but ``use_graph_chat_history``)."""

    node_name: str
    """Name in logs, metrics, reports and toggles (``disabled_nodes``); default ``agent``."""
    max_messages: int
    """Most chat messages the model receives (the current exchange is always sent whole)."""
    reset_command: str
    """User text that clears earlier history (``""`` disables)."""
    use_graph_chat_history: bool
    """Durable history on (default True: adding the surface is the opt-in)."""
    history_namespace: Sequence[str]
    """Store namespace prefix of the history."""
    history_key_template: str
    """Template applied to the resolved ``conversation_key``."""
    history_key_candidates: Sequence[str]
    """Ordered key candidates (literals or templates over state and config)."""
    history_key: KeyFunction
    """A function giving the key instead of the candidates (``key(state, runtime)``)."""
    history_value_field: str
    """Record field holding a turn's content."""
    history_chunk_size: int
    """Turns per chunk item for new conversations."""
    history_scope: HistoryScope
    """``"turns"`` (user messages and final answers) or ``"full"`` (tool steps too)."""
    toggles: HistoryToggles
    """Rollout switches; the process-wide default reads ``ORCHEO_*`` variables."""
    write_attempts: int
    """Attempts for an append before giving up with a warning."""
    write_backoff_seconds: float
    """First backoff between attempts (doubles, with jitter)."""
    on_report: Callable[[HistoryReport], None]
    """Called with a `HistoryReport` after every model call."""
    max_tokens: int | None
    """Token budget of the whole payload (the tighter of it and ``max_messages`` wins)."""
    token_counter: TokenCounterLike
    """How tokens are counted (a callable, a chat model, None: approximate)."""
    summarize: bool | None
    """None (default): summaries on when ``summary_model`` is given; False: off (the
    summary is neither read nor written); True: on, which needs ``summary_model`` (the
    agent's model is not the surface's to call)."""
    summary_model: Runnable[Any, Any] | str
    """A chat model (or ``"provider:model"``) keeping a running summary of what fell out
    of the window; summaries are off without one."""
    summary_every: int
    """Fewest turns that must fall out of the window before the summary is updated."""
    summary_max_turns: int
    """Most turns one summary update reads."""
    summary_budget_seconds: float
    """Longest a pass spends on the summary after the answer."""
    summary_prompt: str
    """The summary model's instructions."""
    history_read_legacy: bool
    """Read a conversation's single-item legacy history while it has no log."""


_OPTION_NAMES = {
    "use_graph_chat_history": "enabled",
    "history_namespace": "namespace",
    "history_key_template": "key_template",
    "history_key_candidates": "key_candidates",
    "history_value_field": "value_field",
    "history_chunk_size": "chunk_size",
    "history_scope": "scope",
    "max_messages": "max_messages",
    "reset_command": "reset_command",
    "toggles": "toggles",
    "write_attempts": "write_attempts",
    "write_backoff_seconds": "write_backoff_seconds",
    "on_report": "on_report",
    "max_tokens": "max_tokens",
    "token_counter": "token_counter",
    "summary_every": "summary_every",
    "summary_max_turns": "summary_max_turns",
    "summary_budget_seconds": "summary_budget_seconds",
    "summary_prompt": "summary_prompt",
    "history_read_legacy": "read_legacy",
}


@dataclass(frozen=True, slots=True)
class Surface:
    """A surface's settings: the pass options, its name, and its key function if any."""

    options: HistoryOptions
    node: str
    key: KeyFunction | None

    def begin(
        self, view: ThreadView, state: Any, store: BaseStore | None, runtime: Any
    ) -> HistoryPass:
        """Resolve the key and decide what this model call's pass may do (no I/O)."""
        return HistoryPass.begin(
            self.options, self.node, view, self._keyed(state, runtime), current_config(), store
        )

    def key_of(self, state: Any, runtime: Any) -> str | None:
        """The conversation key a run belongs to now (None when it has none, or history is
        not on for this surface); a run in memory by a switch belongs to it too."""
        options = self.options
        if not options.enabled:
            return None
        return resolve_history_key(
            self._keyed(state, runtime),
            current_config(),
            candidates=options.key_candidates,
            key_template=options.key_template,
        ).key

    def _keyed(self, state: Any, runtime: Any) -> Any:
        """``state`` with the key function's value, when there is one."""
        if self.key is None or not self.options.enabled:
            return state
        return {**as_mapping(state), KEY_FUNCTION_FIELD: _call_key(self.key, state, runtime)}


def surface_from(fields: Mapping[str, Any]) -> Surface:
    """Check ``fields`` (unknown names raise, so a typo never runs silently) and build the
    surface's settings; invalid values raise now, not at the first run."""
    unknown = sorted(set(fields) - set(HistoryFields.__annotations__))
    if unknown:
        raise TypeError(f"unknown history setting(s): {', '.join(unknown)}")
    values: dict[str, Any] = {"enabled": True, "toggles": DEFAULT_TOGGLES}
    for name, value in fields.items():
        if name in _OPTION_NAMES:
            values[_OPTION_NAMES[name]] = value
    if "namespace" in values:
        values["namespace"] = namespace_arg(values["namespace"])
    if "key_candidates" in values:
        # A list, not a generator `HistoryOptions` would consume when it checks what the
        # candidates say.
        values["key_candidates"] = texts_arg("history_key_candidates", values["key_candidates"])
    key = fields.get("history_key")
    if key is not None:
        if not callable(key):
            raise TypeError("history_key must be a function (state, runtime) -> str | None")
        values["key_candidates"] = ("{{ " + KEY_FUNCTION_FIELD + " }}",)
    summarize = fields.get("summarize")
    if summarize is not None:
        flag_arg("summarize", summarize)
    summary_model = fields.get("summary_model")
    if summarize and summary_model is None:
        raise ValueError(
            "summarize=True needs a summary_model (a chat model): the agent's model is not "
            "called for summaries"
        )
    if summary_model is not None:
        chosen = build_runnable(summary_model, ())
        if not takes_messages(chosen):
            raise ValueError("summary_model must be a chat model (it takes a message list)")
        if summarize is not False:
            values["summarize"], values["summary_model"] = True, chosen
    node = str(fields.get("node_name") or "agent")
    options = HistoryOptions(**values)
    if options.enabled:
        options.toggles.check()  # a bad switch fails the start, naming the variable
    return Surface(options, node, key)


def _call_key(key: KeyFunction, state: Any, runtime: Any) -> Any:
    """The key function's value, rendered as a template renders a value (an int as its
    digits, a UUID as its text; bytes, a bool or an object reject it), or (when it
    raises) a failure naming the error class: the pass goes in-memory with
    ``no_valid_key``, as with a template that cannot render."""
    try:
        return key(as_mapping(state), runtime)
    except Exception as exc:
        raised = f"the key function raised {type(exc).__name__}"
        return key_failure(KeyRejectReason.RENDER_ERROR, raised)


def current_config() -> RunnableConfig | None:
    """The running node's config, None outside a LangGraph run."""
    try:
        return get_config()
    except RuntimeError:
        return None


def model_pass_steps(
    run: HistoryPass, system_prompt: str = "", ends: Callable[[], bool | None] | None = None
) -> Generator[Step, Any, tuple[list[BaseMessage], list[BaseMessage]]]:
    """One model call's pass: read the window, hand the payload to the model (a `Model`
    step answered with the messages the model produced), append when the answer ends the
    exchange, report. Returns ``(payload, produced)``.

    ``system_prompt`` is the agent's own (it sends it): it counts against ``max_tokens``
    and leads the payload as a message with the id `SYSTEM_PROMPT_ID`, which the caller
    leaves out of what it sends. ``ends`` tells, after the call, whether the answer ended
    the exchange although it calls a tool (a structured answer); None: by the message."""
    yield from run.read()
    payload = run.build_payload(system_prompt)
    produced: list[BaseMessage] = yield Model(payload)
    yield from run.append(produced, ends=ends() if ends is not None else None)
    run.report(payload)
    return payload, produced
