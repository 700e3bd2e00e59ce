"""`HistoryHooks`: durable chat history for ``langgraph.prebuilt.create_react_agent``.

``create_react_agent(model, tools, **HistoryHooks(...).hooks())`` adds two nodes around
the agent's model node, sharing one pass (`session.HistoryPass`) per model call:

- ``pre_model_hook`` adds the delivered message (``inputs``) to the thread once per run,
  resolves the key, reads the newest stored window and returns it as
  ``llm_input_messages``: the model gets the window, the state keeps every message;
- ``post_model_hook`` appends the exchange when the model's answer is final (a tool loop
  is stored once, its tool steps in the ``full`` scope) and reports.

The post hook takes over the pass its pre hook began in this process; when it cannot
(the run was resumed elsewhere, or the pass was evicted), it reads the window again.

A prebuilt agent always calls its model after the pre hook, so a callback that a stable
thread has already answered (same channel message id) costs one model call: its answer
is removed from the thread and nothing is stored. ``create_agent`` with
`HistoryMiddleware` skips that call.
"""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from collections.abc import Generator, Sequence
from typing import Annotated, Any, NotRequired, TypedDict

from langchain_core.messages import AIMessage, BaseMessage, RemoveMessage
from langchain_core.runnables import Runnable, RunnableConfig
from langgraph.graph.message import add_messages
from langgraph.managed import RemainingSteps
from langgraph.runtime import Runtime, get_runtime
from typing_extensions import Unpack

from agent_history.incoming import ThreadView, current_thread, not_streamed_as_output
from agent_history.node import merge_results
from agent_history.pass_steps import Step, drive_async, drive_sync
from agent_history.session import HistoryPass
from agent_history.state import as_mapping
from agent_history.surface import HistoryFields, Surface, current_config, surface_from

__all__ = ["HistoryHooks", "HistoryReactState"]

_PENDING_LIMIT = 1024
"""Passes kept between a pre hook and its post hook (more in flight at once in one
process only costs the oldest a second window read)."""

HandoffKey = tuple[str, str, str, str]


class HistoryReactState(TypedDict):
    """``create_react_agent``'s state with the callback fields the key templates read."""

    messages: Annotated[Sequence[BaseMessage], add_messages]
    remaining_steps: NotRequired[RemainingSteps]
    inputs: NotRequired[dict[str, Any]]
    """The delivered callback (``inputs.message.text``, ``inputs.message.message_id``...)."""
    results: NotRequired[Annotated[dict[str, Any], merge_results]]
    """Earlier nodes' results (``results.telegram_events_parser.chat_id``...)."""
    structured_response: NotRequired[Any]
    """The agent's structured response, with ``create_react_agent(response_format=...)``."""


class HistoryHooks:
    """The ``pre_model_hook``, ``post_model_hook`` and ``state_schema`` that give a
    ``create_react_agent`` agent durable, keyed chat history.

    Compile the agent with ``store=`` (and usually ``checkpointer=``)::

        history = HistoryHooks(max_messages=30)
        agent = create_react_agent(model, tools, **history.hooks(), store=store)

    Args:
        **fields: The history settings, named and defaulted as `AgentNode`'s (see
            `surface.HistoryFields`), ``node_name`` (default ``"agent"``) and
            ``use_graph_chat_history`` (default True). An unknown name raises
            `TypeError`.
    """

    def __init__(self, **fields: Unpack[HistoryFields]) -> None:
        self.surface: Surface = surface_from(fields)
        self.pre_model_hook = PreModelHook(self)
        self.post_model_hook = PostModelHook(self)
        self.state_schema: type[HistoryReactState] = HistoryReactState
        self._pending: OrderedDict[HandoffKey, HistoryPass] = OrderedDict()
        self._lock = threading.Lock()

    def hooks(self) -> dict[str, Any]:
        """The keyword arguments for ``create_react_agent``. A state schema of your own
        must extend `HistoryReactState` (pass it after these to override)."""
        return {
            "pre_model_hook": self.pre_model_hook,
            "post_model_hook": self.post_model_hook,
            "state_schema": self.state_schema,
        }

    # --- handing a pass from the pre hook to the post hook ----------------------------------

    def _keep(self, key: HandoffKey | None, run: HistoryPass) -> None:
        if key is None:
            return
        with self._lock:
            self._pending[key] = run
            while len(self._pending) > _PENDING_LIMIT:
                self._pending.popitem(last=False)

    def _conversation(self, state: Any, runtime: Runtime[Any] | None) -> str | None:
        """The conversation key that tells apart the hand-offs of runs without a thread
        id: the templates' (they read ``inputs``, ``results`` and the config, which the
        two hooks see alike). A key function may read the run's messages, which differ
        between the hooks (the post hook's end with the answer): not used then."""
        if self.surface.key is not None:
            return None
        return self.surface.key_of(state, runtime)

    def _take(self, key: HandoffKey | None) -> HistoryPass | None:
        if key is None:
            return None
        with self._lock:
            return self._pending.pop(key, None)


def _handoff_key(
    view: ThreadView, config: RunnableConfig | None, conversation: str | None
) -> HandoffKey | None:
    """Names one model call: the conversation, the thread, the graph it runs in (a
    subgraph's parent task) and the newest message the model is called on (the post hook
    sees the same thread with the model's answer after it). The conversation key tells
    apart runs without a thread id (an agent compiled without a checkpointer) of two
    chats whose channels number messages per chat: both chats' message 5 answered at
    once took each other's pass, and one chat's answer was stored in the other's log."""
    if not view.messages or not view.messages[-1].id:
        return None
    config = config or {}
    thread = str((config.get("configurable") or {}).get("thread_id") or "")
    namespace = str((config.get("metadata") or {}).get("langgraph_checkpoint_ns") or "")
    parent = namespace.rsplit("|", 1)[0] if "|" in namespace else ""
    return conversation or "", thread, parent, str(view.messages[-1].id)


def _current_runtime() -> Runtime[Any] | None:
    try:
        return get_runtime()
    except RuntimeError:  # called outside a LangGraph run
        return None


def _store_of(runtime: Runtime[Any] | None) -> Any:
    return runtime.store if runtime is not None else None


def _window_steps(run: HistoryPass, read: bool) -> Generator[Step, Any, list[BaseMessage]]:
    if read:
        yield from run.read()
    return run.build_payload()


def _finish_steps(run: HistoryPass, answer: AIMessage, derived: bool) -> Generator[Step, Any, None]:
    """Append and report the model call's pass (reading the window first when the post
    hook had to begin the pass again)."""
    if derived:
        yield from run.read()
        run.build_payload()
    yield from run.append([answer])
    payload = run.payload
    run.report([*payload.system, *payload.messages] if payload else [])


def _report_redelivery(run: HistoryPass) -> None:
    """A callback this thread already answered: the model was called (a prebuilt agent
    cannot skip it), its answer is dropped and nothing is stored. (Also a run that
    delivered nothing, with nothing left to answer: not a re-delivery.)"""
    run.redelivered = run.view.delivered
    run.report([])


class PreModelHook(Runnable[Any, dict[str, Any]]):
    """Adds the delivered message once per run and gives the model the history window."""

    def __init__(self, hooks: HistoryHooks) -> None:
        self.hooks = hooks
        self.name = "pre_model_hook"

    def _begin(self, input: Any) -> tuple[HistoryPass, bool, str | None]:
        view = current_thread(input)
        runtime = _current_runtime()
        run = self.hooks.surface.begin(view, input, _store_of(runtime), runtime)
        return run, not view.answered, self.hooks._conversation(input, runtime)

    def _update(
        self, run: HistoryPass, payload: list[BaseMessage], conversation: str | None
    ) -> dict[str, Any]:
        config = current_config()
        self.hooks._keep(_handoff_key(run.view, config, conversation), run)
        # The window is the model's input, not this hook's output: not streamed.
        payload = [m if m.id else m.model_copy(update={"id": str(uuid.uuid4())}) for m in payload]
        not_streamed_as_output(config, [*payload, run.view.added])
        update: dict[str, Any] = {"llm_input_messages": payload}
        if run.view.added is not None:
            update["messages"] = [run.view.added]
        return update

    def invoke(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        """Run the hook synchronously."""
        run, read, conversation = self._begin(input)
        return self._update(run, drive_sync(_window_steps(run, read)), conversation)

    async def ainvoke(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        """Run the hook asynchronously."""
        run, read, conversation = self._begin(input)
        return self._update(run, await drive_async(_window_steps(run, read)), conversation)


class PostModelHook(Runnable[Any, dict[str, Any]]):
    """Appends the exchange when the model's answer is final, and reports."""

    def __init__(self, hooks: HistoryHooks) -> None:
        self.hooks = hooks
        self.name = "post_model_hook"

    def _begin(self, input: Any) -> tuple[HistoryPass, AIMessage, bool] | None:
        state = as_mapping(input)
        messages = list(state.get("messages") or [])
        if not messages or not isinstance(messages[-1], AIMessage):
            return None
        answer = messages[-1]
        view = current_thread({"messages": messages[:-1], "inputs": state.get("inputs") or {}})
        runtime = _current_runtime()
        conversation = self.hooks._conversation(input, runtime)
        run = self.hooks._take(_handoff_key(view, current_config(), conversation))
        if run is not None:
            return run, answer, False
        run = self.hooks.surface.begin(view, input, _store_of(runtime), runtime)
        return run, answer, not view.answered

    @staticmethod
    def _update(run: HistoryPass, answer: AIMessage) -> dict[str, Any]:
        if run.view.answered and answer.id:
            # This thread already answered the callback: keep it as it was.
            return {"messages": [RemoveMessage(id=answer.id)]}
        return {}

    def invoke(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        """Run the hook synchronously."""
        begun = self._begin(input)
        if begun is None:
            return {}
        run, answer, derived = begun
        if run.view.answered:
            _report_redelivery(run)
        else:
            drive_sync(_finish_steps(run, answer, derived))
        return self._update(run, answer)

    async def ainvoke(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        """Run the hook asynchronously."""
        begun = self._begin(input)
        if begun is None:
            return {}
        run, answer, derived = begun
        if run.view.answered:
            _report_redelivery(run)
        else:
            await drive_async(_finish_steps(run, answer, derived))
        return self._update(run, answer)
