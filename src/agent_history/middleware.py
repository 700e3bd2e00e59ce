"""`HistoryMiddleware`: durable chat history for an agent made with langchain's
``create_agent``.

It is one more surface over the shared pass (`session.HistoryPass`), with `AgentNode`'s
key resolution, toggles, breaker, fallbacks, metrics and `HistoryReport`:

- ``before_agent`` adds the message a callback delivered (``inputs``) to the thread, once
  per run, with the channel's message id as its id; a callback this thread has already
  answered ends the run there, without calling the model;
- ``wrap_model_call`` / ``awrap_model_call`` run one pass per model call: read the newest
  stored window, merge it with the thread, call the model on that window (the agent's
  state keeps every message; only the model's input is windowed), and append the
  exchange once the model's answer is final, so a tool loop inside the agent is stored
  once, with its tool steps in the ``full`` scope.

Needs the optional ``langchain`` package (``pip install 'agent-history[agents]'``).
"""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Generator, Iterable, Mapping, Sequence
from typing import Annotated, Any, NotRequired

from langchain_core.messages import AIMessage, AnyMessage, BaseMessage, ToolMessage

from agent_history.incoming import (
    ANSWERED_FIELD,
    BEGAN_PREFIX,
    ThreadView,
    answered_earlier,
    answered_update,
    current_thread,
    delivered_before_tool_steps,
    ended_earlier,
    ended_update,
    history_key_update,
    key_span,
    merged_markers,
    not_streamed_as_output,
)
from agent_history.messages import tool_call_before
from agent_history.node import merge_results
from agent_history.pass_steps import Step, drive_async, drive_sync
from agent_history.session import HistoryPass
from agent_history.state import as_mapping
from agent_history.surface import (
    SYSTEM_PROMPT_ID,
    HistoryFields,
    Surface,
    current_config,
    model_pass_steps,
    surface_from,
)

try:
    from langchain.agents.middleware import (
        AgentMiddleware,
        AgentState,
        ModelRequest,
        ModelResponse,
        hook_config,
    )
    from langchain.agents.middleware.types import ExtendedModelResponse
except ImportError as exc:  # without the agents extra
    raise ImportError(
        "HistoryMiddleware needs the langchain package: pip install 'agent-history[agents]'"
    ) from exc
from langgraph.runtime import Runtime
from typing_extensions import Unpack

__all__ = ["HistoryAgentState", "HistoryMiddleware", "MessageIds"]

ModelCallResult = ModelResponse[Any] | AIMessage | ExtendedModelResponse[Any]


class HistoryAgentState(AgentState[Any]):
    """The agent's state with the callback fields the key templates read."""

    inputs: NotRequired[dict[str, Any]]
    """The delivered callback (``inputs.message.text``, ``inputs.message.message_id``...)."""
    results: NotRequired[Annotated[dict[str, Any], merge_results]]
    """Earlier nodes' results (``results.telegram_events_parser.chat_id``...)."""
    answered: NotRequired[Annotated[dict[str, str], merge_results]]
    """Per ``node_name``, the channel id of the delivered message the agent last answered
    (a final or a structured answer): a re-delivery of it ends the run at once; its key
    span on the thread (`incoming.SPAN_PREFIX`); the tool result its last run ended on
    (`incoming.ENDED_PREFIX`); and whether a run is under way (`incoming.BEGAN_PREFIX`)."""


class HistoryMiddleware(AgentMiddleware[HistoryAgentState, Any]):
    """Durable, keyed chat history for ``create_agent(..., middleware=[HistoryMiddleware()])``.

    Compile the agent with ``store=`` (and usually ``checkpointer=``). Each model call
    resolves the conversation key (templates over state and config, or ``history_key``),
    reads the newest stored messages, gives the model the merged window, and appends the
    exchange when the answer is final. Any store problem degrades to the thread's own
    messages with a warning; the agent always answers.

    Args:
        **fields: The history settings, named and defaulted as `AgentNode`'s (see
            `surface.HistoryFields`): ``max_messages``, ``reset_command``,
            ``history_namespace``, ``history_key_template``, ``history_key_candidates``,
            ``history_key`` (a function ``(state, runtime) -> key``),
            ``history_value_field``, ``history_chunk_size``, ``history_scope``,
            ``toggles``, ``write_attempts``, ``write_backoff_seconds``, ``on_report``,
            ``node_name`` (default ``"agent"``) and ``use_graph_chat_history`` (default
            True). An unknown name raises `TypeError`.
    """

    state_schema = HistoryAgentState

    def __init__(self, **fields: Unpack[HistoryFields]) -> None:
        super().__init__()
        self.surface: Surface = surface_from(fields)
        self._answers = _RecentIds()
        """The ids of the messages this middleware's model calls produced lately: a
        thread ending on another message after tool results was ended by a hook."""

    # --- the delivered message, once per run -----------------------------------------------

    @hook_config(can_jump_to=["end"])
    def before_agent(
        self, state: HistoryAgentState, runtime: Runtime[Any]
    ) -> dict[str, Any] | None:
        """Add the delivered message to the thread; end a run whose callback this thread
        already answered (a re-delivery) without calling the model."""
        view = current_thread(state, self.surface.node)
        if view.answered:
            run = self.surface.begin(view, state, runtime.store, runtime)
            run.redelivered = view.delivered  # (else: nothing was delivered)
            run.report([], model_called=False)
            return {"jump_to": "end"}
        began = {ANSWERED_FIELD: {BEGAN_PREFIX + self.surface.node: "1"}}
        if view.added is None:
            return began
        not_streamed_as_output(current_config(), [view.added])
        return {"messages": [view.added], **began}

    @hook_config(can_jump_to=["end"])
    async def abefore_agent(
        self, state: HistoryAgentState, runtime: Runtime[Any]
    ) -> dict[str, Any] | None:
        """Async `before_agent` (it does no I/O)."""
        return self.before_agent(state, runtime)

    def after_agent(self, state: HistoryAgentState, runtime: Runtime[Any]) -> dict[str, Any] | None:
        """Store an exchange a tool or a hook ended (`_tool_ended`); record that the agent answered
        the delivered message (its run ended), so a re-delivery is recognised whatever
        the answer was (a structured one too), and the key span the run's exchange
        belongs to (`incoming.history_key_update`)."""
        ended = self._tool_ended(state, runtime)
        if ended is not None:
            drive_sync(_store_steps(*ended))
        return self._answered(state, runtime)

    async def aafter_agent(
        self, state: HistoryAgentState, runtime: Runtime[Any]
    ) -> dict[str, Any] | None:
        """Async `after_agent`."""
        ended = self._tool_ended(state, runtime)
        if ended is not None:
            await drive_async(_store_steps(*ended))
        return self._answered(state, runtime)

    def _tool_ended(
        self, state: HistoryAgentState, runtime: Runtime[Any]
    ) -> tuple[HistoryPass, list[BaseMessage]] | None:
        """The pass that stores the exchange when the agent ended on tool results, not on
        a model's answer (a tool with ``return_direct=True``: its result is the answer),
        or on a message a hook added after them (`_hook_ended`), and the messages from
        the tool call on; None otherwise. No model call ended that exchange, so no model
        call's pass stored it."""
        messages = list(as_mapping(state).get("messages") or [])
        by_hook = self._hook_ended(state, messages)
        if not messages or not (by_hook or isinstance(messages[-1], ToolMessage)):
            return None
        if ended_earlier(state, self.surface.node, messages):
            return None  # the state as an earlier run left it: this one ended before the agent
        if current_thread(state, self.surface.node).answered:
            return None  # a re-delivery: no exchange of this run
        if by_hook:
            start = tool_call_before(messages, len(messages) - 1)
        else:
            calls = [i for i, m in enumerate(messages) if isinstance(m, AIMessage) and m.tool_calls]
            start = calls[-1] if calls else None
        if start is None:
            return None
        if as_mapping(state).get("structured_response") is not None and all(
            m.id in self._answers for m in messages[start:]
        ):
            # A structured answer given as a tool call: its pass stored it. (Other tool
            # calls beside it run after it: their results are this exchange's too.)
            return None
        return self._begin_on(messages[:start], state, runtime), messages[start:]

    def _hook_ended(self, state: Any, thread: Sequence[BaseMessage]) -> bool:
        """Whether the run that ends on ``thread`` reached the agent (`BEGAN_PREFIX`) and
        ``thread`` ends on an answer no model call of this middleware gave, right after
        tool results: a hook ended the run there, as langchain's
        ``ModelCallLimitMiddleware`` and ``ToolCallLimitMiddleware`` do with
        ``exit_behavior="end"``. (A model call of another process, or one forgotten
        since, is taken for a hook's: its exchange is stored again, which stores nothing
        twice.)"""
        answered = as_mapping(state).get(ANSWERED_FIELD)
        began = isinstance(answered, Mapping) and answered.get(BEGAN_PREFIX + self.surface.node)
        last = thread[-1] if thread else None
        return (
            bool(began)
            and isinstance(last, AIMessage)
            and not last.tool_calls
            and len(thread) > 1
            and isinstance(thread[-2], ToolMessage)
            and last.id not in self._answers
        )

    def _answered(self, state: HistoryAgentState, runtime: Runtime[Any]) -> dict[str, Any] | None:
        node = self.surface.node
        view = current_thread(state, node)
        if view.answered:
            return None  # a re-delivery: no exchange of this run
        # A key function may read what the run changed (its messages): only templates,
        # which see neither, give at the end the key the run's passes used.
        key = None
        if self.surface.key is None:
            key = self.surface.key_of(state, runtime)
        # (Without a channel id, the view re-adds the delivered message under a fresh id:
        # the span is opened on the state's own copy.)
        thread = [m for m in view.messages if m is not view.added]
        span = history_key_update(node, key, key_span(state, node), thread)
        # A delivered message the thread lacks now was taken out by this run (before_agent
        # added it or found it): a summary in its place. It was answered all the same.
        answered = answered_update(view, node) if view.incoming else {}
        ended = ended_update(node, thread, by_hook=self._hook_ended(state, thread))
        done = {ANSWERED_FIELD: {BEGAN_PREFIX + node: ""}}  # (the run's end: see `_hook_ended`)
        return merged_markers(answered, span, ended, done) or None

    # --- one pass per model call -----------------------------------------------------------

    def _begin(self, request: ModelRequest[Any]) -> HistoryPass:
        # The thread is what the model would get: earlier middleware may have edited it.
        return self._begin_on(request.messages, request.state, request.runtime)

    def _begin_on(self, messages: Sequence[Any], state: Any, runtime: Any) -> HistoryPass:
        """The pass over the thread ``messages``. A delivered message they lack was taken
        out (a summary in its place): in this run, it goes back before the run's tool
        steps; in an earlier run that answered it, the callback is the last one's, still
        in the state (a plain-messages run)."""
        state = as_mapping(state)
        view: ThreadView = current_thread({"messages": messages, "inputs": state.get("inputs")})
        if view.added is not None and answered_earlier(state, self.surface.node, view.incoming):
            view = current_thread({"messages": messages})
        view = delivered_before_tool_steps(view)
        store = runtime.store if runtime is not None else None
        return self.surface.begin(view, state, store, runtime)

    def wrap_model_call(
        self,
        request: ModelRequest[Any],
        handler: Callable[[ModelRequest[Any]], ModelResponse[Any]],
    ) -> ModelCallResult:
        """Call the model on the history window; append the exchange when it ends."""
        run = self._begin(request)
        answers: list[ModelCallResult] = []

        def model(payload: list[BaseMessage]) -> list[BaseMessage]:
            answers.append(handler(request.override(messages=_sent(payload))))
            return _produced(answers[-1])

        steps = model_pass_steps(run, request.system_prompt or "", lambda: _structured(answers))
        drive_sync(steps, model)
        self._answers.add(m.id for m in _produced(answers[-1]))
        return answers[-1]

    async def awrap_model_call(
        self,
        request: ModelRequest[Any],
        handler: Callable[[ModelRequest[Any]], Awaitable[ModelResponse[Any]]],
    ) -> ModelCallResult:
        """Async `wrap_model_call`."""
        run = self._begin(request)
        answers: list[ModelCallResult] = []

        async def model(payload: list[BaseMessage]) -> list[BaseMessage]:
            answers.append(await handler(request.override(messages=_sent(payload))))
            return _produced(answers[-1])

        steps = model_pass_steps(run, request.system_prompt or "", lambda: _structured(answers))
        await drive_async(steps, model)
        self._answers.add(m.id for m in _produced(answers[-1]))
        return answers[-1]


class MessageIds(AgentMiddleware[AgentState[Any], Any]):
    """Gives each message a model call produced without an id (``None`` or ``""``) one of
    its own, before the agent's state takes it in. `AgentNode` puts it in the tool agent
    it builds: LangGraph's ``add_messages`` takes messages that share the id ``""`` (as
    some OpenAI-compatible servers answer) for one message, so the final answer replaced
    the tool call it followed, and the exchange ended on a tool result."""

    def wrap_model_call(
        self,
        request: ModelRequest[Any],
        handler: Callable[[ModelRequest[Any]], ModelResponse[Any]],
    ) -> ModelCallResult:
        return _with_ids(handler(request))

    async def awrap_model_call(
        self,
        request: ModelRequest[Any],
        handler: Callable[[ModelRequest[Any]], Awaitable[ModelResponse[Any]]],
    ) -> ModelCallResult:
        return _with_ids(await handler(request))


class _RecentIds:
    """The newest ``size`` ids added, from any thread."""

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, ids: Iterable[str | None]) -> None:
        with self._lock:
            for id_ in ids:
                if id_:
                    self._ids[id_] = None
                    self._ids.move_to_end(id_)
            while len(self._ids) > self._size:
                self._ids.popitem(last=False)

    def __contains__(self, id_: object) -> bool:
        with self._lock:
            return id_ in self._ids


def _with_ids(answer: ModelCallResult) -> ModelCallResult:
    for message in _produced(answer):
        if not message.id:
            message.id = str(uuid.uuid4())
    return answer


def _store_steps(run: HistoryPass, ended: list[BaseMessage]) -> Generator[Step, Any, None]:
    """Read the window and append the exchange ``ended`` (a tool call and its results)
    ends, as a model call's pass would have; report it."""
    yield from run.read()
    payload = run.build_payload()  # (merges the thread with the log: what is unstored)
    yield from run.append(ended, ends=True)
    if not run.redelivered:
        # (Else the log held the exchange: a model call's pass stored it, and reported.)
        run.report(payload, model_called=False)


def _structured(answers: list[ModelCallResult]) -> bool | None:
    """True when the model call gave the agent's structured response (with a tool
    strategy, the answer is a tool call): that ends the exchange. Unless the answer
    also calls other tools: the agent runs them before it ends, and their results are
    the exchange's too (`HistoryMiddleware._tool_ended` stores it then)."""
    response = answers[-1] if answers else None
    if getattr(response, "structured_response", None) is None:
        return None
    produced = _produced(answers[-1])
    called = {c["id"] for m in produced if isinstance(m, AIMessage) for c in m.tool_calls}
    answered = {m.tool_call_id for m in produced if isinstance(m, ToolMessage)}
    return True if called <= answered else None


def _sent(payload: list[BaseMessage]) -> list[AnyMessage]:
    """The window as the request's messages: the agent sends its system prompt itself."""
    return [m for m in payload if m.id != SYSTEM_PROMPT_ID]  # type: ignore[misc]


def _produced(answer: ModelCallResult) -> list[BaseMessage]:
    """The messages a model call produced (the objects the agent puts in its state, so
    the ids the pass gives them are the ids they have there)."""
    if isinstance(answer, AIMessage):
        return [answer]
    if isinstance(answer, ExtendedModelResponse):
        return list(answer.model_response.result)
    return list(answer.result)
