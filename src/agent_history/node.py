"""`AgentNode`: a LangGraph node that runs a chat model or agent with durable chat history.

The node only wires the pieces together: `incoming` places the delivered message in the
thread, `session.HistoryPass` resolves the key, decides, reads, merges and appends, and
`runner` calls the model. One generator (`_steps`) drives both `invoke` and `ainvoke`.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from typing import Annotated, Any, TypedDict

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AnyMessage, BaseMessage
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.runnables.base import RunnableBindingBase
from langgraph.config import get_store
from langgraph.graph.message import add_messages
from langgraph.runtime import Runtime
from langgraph.store.base import BaseStore

from agent_history.context.budget import TokenCounterLike
from agent_history.context.summary import DEFAULT_SUMMARY_PROMPT
from agent_history.history.arguments import items_arg, namespace_arg, text_arg, texts_arg
from agent_history.history.chat_history import DEFAULT_CHUNK_SIZE
from agent_history.history.codec import HistoryScope, is_final_answer
from agent_history.incoming import (
    answered_update,
    current_thread,
    ended_update,
    merged_markers,
    not_streamed_as_output,
)
from agent_history.keys import (
    DEFAULT_HISTORY_KEY_CANDIDATES,
    DEFAULT_HISTORY_KEY_TEMPLATE,
)
from agent_history.pass_steps import Model, Step, drive_async, drive_sync
from agent_history.runner import aproduce, build_runnable, produce, takes_messages
from agent_history.session import REPORT_LISTENERS, HistoryOptions, HistoryPass, HistoryReport
from agent_history.surface import current_config
from agent_history.toggles import DEFAULT_TOGGLES, HistoryToggles

__all__ = ["REPORT_LISTENERS", "AgentNode", "AgentState", "HistoryReport", "merge_results"]


def merge_results(left: dict[str, Any] | None, right: dict[str, Any] | None) -> dict[str, Any]:
    """Reducer for ``results``: each node's entry replaces only its own key."""
    return {**(left or {}), **(right or {})}


def newest_inputs(left: dict[str, Any] | None, right: dict[str, Any] | None) -> dict[str, Any]:
    """Reducer for ``inputs``: the newest value (of several written in one step, as agents
    a ``Send`` fanned deliveries out to each return theirs, the last one's); ``None``
    clears it, as it did before the field had a reducer."""
    return {} if right is None else right


class AgentState(TypedDict, total=False):
    """A ready-made workflow state for graphs built around `AgentNode`."""

    messages: Annotated[list[AnyMessage], add_messages]
    inputs: Annotated[dict[str, Any], newest_inputs]
    """The delivered callback; a new run's replaces the last one's."""
    results: Annotated[dict[str, Any], merge_results]
    answered: Annotated[dict[str, str], merge_results]
    """Per node, the channel message id of the delivered message it last answered: a
    re-delivered callback is skipped by the nodes that answered it, and a second agent
    node of the same run still answers. Also, per node, its key span on the thread (a
    thread serving several keys stores under each key only that key's exchanges)."""


class AgentNode(Runnable[Any, dict[str, Any]]):
    """Runs a chat model or agent on the conversation, with opt-in durable history.

    Add it to a `StateGraph` and compile with ``store=`` (and usually ``checkpointer=``).
    With ``use_graph_chat_history=True`` each pass resolves the conversation key, reads the
    newest stored messages, merges them with the thread, runs the model and appends what
    the pass added (the delivered message, the model's messages, tool results of this
    run). Any store problem degrades to in-memory messages with a warning; the run
    always returns the model's answer. It works in every usual graph shape: a fresh
    thread per callback, a stable thread with a checkpointer, an ``agent <-> tools``
    loop through `ToolNode`, tools inside the node, and prebuilt agents.

    Args:
        model: A chat model (also after ``bind_tools``/``with_config``/``with_retry``), a
            ``"provider:model"`` string (needs the ``langchain`` package), or any runnable
            taking ``{"messages": [...]}`` (a compiled graph, a prebuilt agent).
        name: Node name used in logs, metrics and toggles (LangGraph's node name wins).
        tools: Tools for a tool-calling agent built around ``model``.
        system_prompt: System message put before the payload; not counted against
            ``max_messages`` (it is against ``max_tokens``).
        max_messages: Most chat messages the model receives (the current exchange is
            always sent whole, see `messages.window`).
        max_tokens: Token budget of the whole payload (system prompt, summary, window);
            the tighter of it and ``max_messages`` wins. The newest user message always
            stays. None: no token budget.
        token_counter: How tokens are counted: a callable taking a message list, a chat
            model (its ``get_num_tokens_from_messages``), or None for LangChain's
            ``count_tokens_approximately``.
        summarize: Keep a running summary of the turns that fell out of the window, put
            before the window as one system message. None (default): on when
            ``summary_model`` is given. True without ``summary_model`` uses ``model``
            (without its tools); an agent runnable needs a ``summary_model``.
        summary_model: The chat model (or ``"provider:model"``) that writes summaries.
        summary_every: Fewest stored turns that must fall out of the window past the
            summary before it is updated (at most one update per this many turns).
        summary_max_turns: Most turns one update reads (a larger backlog, e.g. when
            summaries are turned on for a long conversation, keeps its newest turns).
        summary_budget_seconds: Longest a run spends on the summary after the answer;
            past it, the run returns without a fresh summary.
        summary_prompt: The summary model's instructions.
        reset_command: User text that clears earlier history ("" disables).
        use_graph_chat_history: Opt in to durable history (default off).
        history_namespace: Store namespace prefix of the history.
        history_key_template: Template applied to the resolved ``conversation_key``.
        history_key_candidates: Ordered key candidates (literals or templates).
        history_value_field: Record field holding a turn's content.
        history_chunk_size: Turns per chunk item for new conversations.
        history_scope: ``"turns"`` stores user messages and final answers; ``"full"``
            stores every message of the run (tool calls and results included).
        history_read_legacy: When a conversation has no log yet, read its single-item
            legacy history (namespace ``("agent_chat_history",)``, key = conversation
            key) and write it into the log before the first new exchange.
        toggles: Rollout switches; the process-wide default reads ``ORCHEO_*`` variables.
        write_attempts: Attempts for an append before giving up with a warning.
        write_backoff_seconds: First backoff between attempts (doubles, with jitter).
        on_report: Called with a `HistoryReport` after every run.
    """

    def __init__(
        self,
        model: BaseChatModel | Runnable[Any, Any] | str,
        *,
        name: str = "agent",
        tools: Sequence[Any] = (),
        system_prompt: str | None = "",
        max_messages: int = 30,
        reset_command: str = "",
        use_graph_chat_history: bool = False,
        history_namespace: Sequence[str] = ("agent_chat_history",),
        history_key_template: str = DEFAULT_HISTORY_KEY_TEMPLATE,
        history_key_candidates: Sequence[str] = DEFAULT_HISTORY_KEY_CANDIDATES,
        history_value_field: str = "content",
        history_chunk_size: int = DEFAULT_CHUNK_SIZE,
        history_scope: HistoryScope = "turns",
        history_read_legacy: bool = False,
        toggles: HistoryToggles | None = None,
        write_attempts: int = 3,
        write_backoff_seconds: float = 0.05,
        on_report: Callable[[HistoryReport], None] | None = None,
        max_tokens: int | None = None,
        token_counter: TokenCounterLike = None,
        summarize: bool | None = None,
        summary_model: BaseChatModel | Runnable[Any, Any] | str | None = None,
        summary_every: int = 4,
        summary_max_turns: int = 100,
        summary_budget_seconds: float = 15.0,
        summary_prompt: str = DEFAULT_SUMMARY_PROMPT,
    ) -> None:
        self.name = name
        self.model = model
        self.tools = list(items_arg("tools", tools, "tools"))
        # None (a prompt read from a config that has none) means no prompt, as "" does.
        prompt = "" if system_prompt is None else system_prompt
        self.system_prompt = text_arg("system_prompt", prompt)
        self.max_messages = max_messages
        self.reset_command = reset_command
        self.use_graph_chat_history = use_graph_chat_history
        # Checked before they become lists: a string would become one label or one
        # candidate per character (every chat then sharing the key of its first letter).
        self.history_namespace = list(namespace_arg(history_namespace))
        self.history_key_template = history_key_template
        # (What the candidates say is checked with the other history settings, below.)
        self.history_key_candidates = list(
            texts_arg("history_key_candidates", history_key_candidates)
        )
        self.history_value_field = history_value_field
        self.history_chunk_size = history_chunk_size
        self.history_scope: HistoryScope = history_scope
        self.history_read_legacy = history_read_legacy
        self.toggles = toggles or DEFAULT_TOGGLES
        if use_graph_chat_history:
            self.toggles.check()  # a bad switch fails the start, naming the variable
        self.write_attempts = write_attempts
        self.write_backoff_seconds = write_backoff_seconds
        self.on_report = on_report
        self.max_tokens = max_tokens
        self.token_counter = token_counter
        self.summarize = summarize
        self.summary_model = summary_model
        self.summary_every = summary_every
        self.summary_max_turns = summary_max_turns
        self.summary_budget_seconds = summary_budget_seconds
        self.summary_prompt = summary_prompt
        self._runnable = build_runnable(model, self.tools)
        self._summarizer: tuple[tuple[Any, ...], Runnable[Any, Any] | None] | None = None
        _ = self._options  # validate the history settings now, not at the first run

    @property
    def _options(self) -> HistoryOptions:
        """The history settings as the shared pass reads them (the fields may be changed
        after construction, as on any LangGraph node)."""
        return HistoryOptions(
            enabled=self.use_graph_chat_history,
            namespace=tuple(self.history_namespace),
            key_template=self.history_key_template,
            key_candidates=tuple(self.history_key_candidates),
            value_field=self.history_value_field,
            chunk_size=self.history_chunk_size,
            scope=self.history_scope,
            read_legacy=self.history_read_legacy,
            max_messages=self.max_messages,
            reset_command=self.reset_command,
            toggles=self.toggles,
            write_attempts=self.write_attempts,
            write_backoff_seconds=self.write_backoff_seconds,
            on_report=self.on_report,
            max_tokens=self.max_tokens,
            token_counter=self.token_counter,
            summarize=self._summary_runnable() is not None,
            summary_model=self._summary_runnable(),
            summary_every=self.summary_every,
            summary_max_turns=self.summary_max_turns,
            summary_budget_seconds=self.summary_budget_seconds,
            summary_prompt=self.summary_prompt,
        )

    def _summary_runnable(self) -> Runnable[Any, Any] | None:
        """The model that writes summaries, None when summaries are off (made once per
        setting: a ``"provider:model"`` string is not built on every run)."""
        wanted = (self.summarize, id(self.summary_model), id(self.model), tuple(self.tools))
        if self._summarizer is None or self._summarizer[0] != wanted:
            self._summarizer = (wanted, self._resolve_summarizer())
        return self._summarizer[1]

    def _resolve_summarizer(self) -> Runnable[Any, Any] | None:
        if self.summarize is False or (self.summarize is None and self.summary_model is None):
            return None
        if self.summary_model is not None:
            chosen = build_runnable(self.summary_model, ())
            if not takes_messages(chosen):
                raise ValueError("summary_model must be a chat model (it takes a message list)")
            return chosen
        own = self.model if self.tools else self._runnable
        chat = _chat_model_of(own) if isinstance(own, Runnable) else None
        if chat is None:
            raise ValueError(
                "summarize=True: the node's model is an agent, not a chat model; "
                "pass summary_model=<a chat model>"
            )
        return chat

    # --- one pass ----------------------------------------------------------------------

    def _node_name(self, config: RunnableConfig | None, inherited: bool) -> str:
        # Called by the user's own node (which may call other agents): its markers keep
        # the name they had when such a call took no config.
        metadata = {} if inherited else (config or {}).get("metadata") or {}
        node = metadata.get("langgraph_node")
        return str(node) if node else (self.name or "agent")

    def _begin(self, state: Any, config: RunnableConfig | None) -> HistoryPass:
        """The pass; called without a config (from the user's code), on the run's config,
        as any runnable (``run.config`` is the one the model is called with)."""
        inherited = config is None
        if inherited:
            config = current_config()
        store = _current_store(config) if self.use_graph_chat_history else None
        node = self._node_name(config, inherited)
        view = current_thread(state, node)
        return HistoryPass.begin(self._options, node, view, state, config, store)

    def _steps(self, run: HistoryPass) -> Generator[Step, Any, dict[str, Any]]:
        """The pass's control flow; it yields the I/O it needs and receives the outcome."""
        if run.view.answered:
            # A re-delivered callback this thread already answered, or nothing delivered
            # and nothing left to answer: nothing to do.
            run.redelivered = run.view.delivered
            run.report([], model_called=False)
            return {"messages": []}
        yield from run.read()
        payload = run.build_payload(self.system_prompt)
        produced: list[BaseMessage] = yield Model(payload)
        ends = getattr(produced, "ends", False)
        yield from run.append(produced, ends=True if ends else None)
        run.report(payload)
        added = [run.view.added] if run.view.added is not None else []
        ended = ends or (bool(produced) and is_final_answer(produced[-1]))
        marker = (
            merged_markers(
                answered_update(run.view, run.node),
                run.key_update(),
                ended_update(run.node, produced),
            )
            if ended
            else {}
        )
        return {"messages": [*added, *produced], **marker}

    def invoke(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        """Run the node synchronously (LangGraph calls this in sync graphs)."""
        run = self._begin(input, config)
        output: dict[str, Any] = drive_sync(
            self._steps(run), lambda payload: produce(self._runnable, payload, run.config)
        )
        not_streamed_as_output(run.config, [run.view.added])
        return output

    async def ainvoke(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        """Run the node asynchronously (LangGraph calls this in async graphs)."""
        run = self._begin(input, config)
        output: dict[str, Any] = await drive_async(
            self._steps(run), lambda payload: aproduce(self._runnable, payload, run.config)
        )
        not_streamed_as_output(run.config, [run.view.added])
        return output


def _chat_model_of(runnable: Runnable[Any, Any]) -> Runnable[Any, Any] | None:
    """The chat model under ``runnable`` without its bound tools (``bind_tools``,
    ``with_config`` and ``with_retry`` wrap it), or the runnable itself when it takes
    messages; None for an agent (a runnable taking ``{"messages": [...]}``)."""
    inner: Runnable[Any, Any] = runnable
    while isinstance(inner, RunnableBindingBase):
        inner = inner.bound
    if isinstance(inner, BaseChatModel):
        return inner
    return runnable if takes_messages(runnable) else None


def _current_store(config: RunnableConfig | None) -> BaseStore | None:
    """The run's store: from the config the node was given (LangGraph sets the run's
    context only for the first step of a ``step | node`` sequence), else the context's."""
    for value in ((config or {}).get("configurable") or {}).values():
        if isinstance(value, Runtime):
            return value.store
    try:
        return get_store()
    except (RuntimeError, KeyError):  # called outside a LangGraph run
        return None
