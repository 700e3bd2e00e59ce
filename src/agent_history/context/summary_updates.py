"""The running summary's part of a history pass: after an exchange is written, update the
summary of the stored turns that have fallen out of the window.

`SummaryUpdates` is mixed into `session.HistoryPass`; it yields the same steps
(`ClaimSummary`, `Summarize`, `WriteSummary`) the drivers perform, so sync and async
passes share it.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Generator, Sequence
from typing import TYPE_CHECKING, Any

from langchain_core.messages import BaseMessage, HumanMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.runnables.config import merge_configs
from langgraph.constants import TAG_NOSTREAM

from agent_history import observability as obs
from agent_history.context.summary import Summary, SummaryClaim, SummaryWrite, summary_request
from agent_history.history.records import AppendResult, Turn
from agent_history.messages import MergedPayload, apply_reset, is_reset, window
from agent_history.pass_steps import ClaimSummary, ReleaseSummary, Step, Summarize, WriteSummary

if TYPE_CHECKING:
    from agent_history.history import ChatHistory
    from agent_history.incoming import ThreadView
    from agent_history.session import HistoryOptions
    from agent_history.toggles import HistoryDecision

__all__ = ["SummaryUpdates"]


class SummaryUpdates:
    """The summary half of `session.HistoryPass` (its attributes are the pass's)."""

    options: HistoryOptions
    node: str
    backend: str
    key: str
    config: RunnableConfig | None
    decision: HistoryDecision
    history: ChatHistory | None
    merged: MergedPayload | None
    stored: list[BaseMessage]
    view: ThreadView
    summary: Summary | None
    redelivered: bool
    last_seq: int
    summary_outcome: str
    summary_written_seq: int
    _seq_of: dict[int, int]
    _seq_of_id: dict[str, int]
    _appended: list[BaseMessage]
    _reserved: int

    @property
    def summary_on(self) -> bool:
        """Whether this pass keeps a running summary."""
        return self.options.summarize and self.options.summary_model is not None

    def summarize(self) -> Generator[Step, Any, None]:
        """Update the running summary with the stored turns that have fallen out of the
        window (as the conversation stands after this exchange), when at least
        ``summary_every`` have since the summary (after the answer; `append` calls it
        once the exchange is written).

        Only a pass that may write updates it (``read_only`` reads the summary and
        writes none); in ``shadow`` mode it is computed and not stored. The update
        takes a lease, so one run at a time asks the model; the model sees the previous
        summary and the newly dropped turns only; the write is versioned, so a stale
        update stores nothing. Failures (store, model, budget) leave the previous
        summary in place, with a warning and `obs.SUMMARY_FAILURES`.
        """
        history, merged, options = self.history, self.merged, self.options
        model = options.summary_model
        if not self.summary_on or model is None or history is None or merged is None:
            return
        if not self.decision.write or self.redelivered:
            return
        upto = self._dropped_upto()
        deadline = time.monotonic() + options.summary_budget_seconds
        write_budget = options.toggles.current().write_timeout_seconds
        shadow = not self.decision.payload_from_store
        summary = self.summary
        if merged.dropped_by_reset and not self.summary_after_reset(summary):
            # What came before the reset is never summarised: the summary is cleared up to
            # the window (even when there was none yet), so no later pass shows it again.
            # Once it is, the turns after the reset are summarised as usual (on a stable
            # thread the reset stays in the thread: every later pass sees it). In shadow
            # mode too, which stores the turns (the reset with them) but no summary: the
            # user's reset must hold at the cut-over, when the reset may have left the
            # window read and the summary kept from before would be shown again.
            yield from self._clear_summary(summary, upto, min(write_budget, _left(deadline)))
            return
        covers = summary.covers_seq if summary else 0
        if shadow:
            covers = max(covers, _shadow_covers(self._conversation()))
        if upto - covers < options.summary_every:
            self.summary_outcome = "not_due" if upto > covers else ""
            return
        owner = None if shadow else uuid.uuid4().hex
        ok, claim = yield ClaimSummary(
            history,
            self.key,
            upto,
            options.summary_every,
            options.summary_max_turns,
            owner,
            options.summary_budget_seconds + write_budget,
            min(write_budget, _left(deadline)),
        )
        if not ok:
            self._summary_failed("claim_failed", claim)
            return
        claimed: SummaryClaim = claim
        if not claimed.granted:
            self.summary_outcome = claimed.reason if claimed.reason != "no_conversation" else ""
            return
        previous = claimed.previous
        request = self._summary_request(previous, claimed.turns)
        ok, text = yield Summarize(model, request, _left(deadline), self._summary_config())
        if not ok:
            self._summary_failed("model_failed", text)
            if owner is not None and not isinstance(text, TimeoutError):
                # A model that failed or gave no text gives the lease back, so the next
                # run tries again: held to its end, it kept every run "busy" while turns
                # fell out of the window unsummarised. One write, in the write budget
                # (the summary's may be spent); when it fails too, the lease ends by
                # itself. A model that ran out of time keeps it: while the provider
                # hangs, one run per lease waits for it, not every run.
                yield ReleaseSummary(history, self.key, owner, write_budget)
            return
        if shadow:
            _shadow_covers(self._conversation(), claimed.upto)
            self.summary_outcome = "shadow"
            return
        ok, written = yield WriteSummary(
            history,
            self.key,
            text,
            claimed.upto,
            previous.version if previous else 0,
            owner,
            len(claimed.turns),
            claimed.skipped,
            min(write_budget, _left(deadline)),
        )
        if not ok:
            self._summary_failed("write_failed", written)
            return
        self._summary_written(written, claimed.upto)

    def _summary_request(self, previous: Summary | None, turns: list[Turn]) -> list[BaseMessage]:
        """The summary model's input: the previous summary and the turns to add. A reset
        command among them clears what came before it, the previous summary included."""
        assert self.history is not None
        messages = self.history.to_messages(turns, self.key)
        after_reset, cut = apply_reset(messages, self.options.reset_command)
        text = "" if cut or previous is None else previous.text
        return summary_request(text, after_reset, self.options.summary_prompt)

    def _clear_summary(
        self, summary: Summary | None, upto: int, budget: float
    ) -> Generator[Step, Any, None]:
        """A reset command is in the window: store an empty summary covering everything
        before the window, so what came before the reset is not shown again."""
        assert self.history is not None
        covers = summary.covers_seq if summary else 0
        if upto <= covers and not (summary and summary.text):
            return
        version = summary.version if summary else 0
        upto = max(upto, covers)
        step = WriteSummary(self.history, self.key, "", upto, version, None, 0, 0, budget, True)
        ok, written = yield step
        if not ok:
            self._summary_failed("write_failed", written)
        elif written.written:
            self.summary_outcome = "cleared"
            self.summary_written_seq = upto
        else:
            self.summary_outcome = written.reason

    def _summary_written(self, written: SummaryWrite, upto: int) -> None:
        self.summary_outcome = written.reason
        if written.written:
            self.summary_written_seq = upto

    def _dropped_upto(self) -> int:
        """The newest stored turn that has fallen out of the window, as the conversation
        stands after this exchange: the next pass's window (this one's stored messages,
        what this pass appended, and one more user message) starts after it."""
        assert self.merged is not None
        options = self.options
        kept = [m for m in self.merged.messages if self._seq_for(m) is not None]
        seen = {id(m) for m in kept}
        added = [m for m in self._appended if id(m) not in seen]
        conversation = [*kept, *added, HumanMessage("")]
        counting = options.max_tokens is not None
        upcoming = window(
            conversation,
            options.max_messages,
            max_tokens=options.max_tokens,
            token_counter=options.counter if counting else None,
            reserved_tokens=self._reserved,
        )
        seqs = [seq for seq in map(self._seq_for, upcoming) if seq is not None]
        if seqs:
            return min(seqs) - 1
        # Nothing stored fits the next window (this exchange fills it). The newest stored
        # turn stays out of the summary all the same: the next read then finds it, and a
        # stable thread is matched against the log by it instead of being taken whole for
        # unstored (which would make the next pass read and check the whole log).
        known = [seq for seq in map(self._seq_for, conversation) if seq is not None]
        return max(known, default=self.last_seq + 1) - 1

    def _note_appended(self, pending: Sequence[BaseMessage], result: AppendResult) -> None:
        """Remember the seqs of what this pass appended (when the append stored all of it
        in order, so the seqs are certain)."""
        if result.first_seq is None or result.appended != len(pending):
            return
        for offset, message in enumerate(pending):
            seq = result.first_seq + offset
            self._seq_of[id(message)] = seq
            if message.id:
                self._seq_of_id[message.id] = seq
        self._appended = list(pending)

    def summary_after_reset(self, summary: Summary | None) -> bool:
        """Whether ``summary`` was made after the thread's latest reset command: it was
        cleared at the reset (it covers the turns before it, with no text) or covers the
        reset too (what it summarises starts after it). False when the reset is not
        stored yet (this pass's own message)."""
        command = self.options.reset_command
        resets = [m for m in (*self.stored, *self.view.messages) if is_reset(m, command)]
        if summary is None or not resets:
            return False
        pending = {id(m) for m in self.merged.unstored} if self.merged is not None else set()
        seqs = []
        for message in resets:
            seq = self._seq_for(message)
            if seq is not None:
                seqs.append(seq)
            elif id(message) in pending:
                return False  # this pass's own reset, not stored yet
            # (else older than the window read: the pass that stored it cleared the summary)
        if not seqs:
            return True
        reset_seq = max(seqs)
        covers = summary.covers_seq
        return covers >= reset_seq or (covers == reset_seq - 1 and not summary.text)

    def _seq_for(self, message: BaseMessage) -> int | None:
        seq = self._seq_of.get(id(message))
        if seq is None and message.id:
            seq = self._seq_of_id.get(message.id)
        return seq

    def _conversation(self) -> tuple[str, ...]:
        return (*self.options.namespace, self.key)

    def _summary_config(self) -> RunnableConfig:
        """The summary model's config: the run's (callbacks, tracing) with LangGraph's
        ``nostream`` tag, so ``stream_mode="messages"`` never streams a summary as if the
        node had answered with it."""
        own: RunnableConfig = {"tags": [TAG_NOSTREAM], "run_name": "agent_history_summary"}
        return merge_configs(self.config, own) if self.config else own

    def _summary_failed(self, reason: str, exc: Any) -> None:
        self.summary_outcome = "failed"
        timeout = isinstance(exc, TimeoutError)
        outcome = "timeout" if timeout else "error"
        obs.METRICS.inc(obs.SUMMARY_FAILURES, backend=self.backend, outcome=outcome)
        obs.log_event(
            "summary_failed",
            node=self.node,
            namespace="/".join(self.options.namespace),
            key=self.key or None,
            reason="timeout" if timeout else reason,
            error=obs.describe_error(exc) if isinstance(exc, BaseException) else None,
        )


def _left(deadline: float) -> float:
    """Seconds left before ``deadline`` (at least 0)."""
    return max(0.0, deadline - time.monotonic())


_SHADOW_COVERS: OrderedDict[tuple[str, ...], int] = OrderedDict()
"""In shadow mode nothing is stored: the turn each conversation's last computed summary
covered, so a shadow pass still computes at most once per ``summary_every`` turns."""
_SHADOW_COVERS_MAX = 4096
_shadow_lock = threading.Lock()


def _shadow_covers(conversation: tuple[str, ...], upto: int | None = None) -> int:
    with _shadow_lock:
        if upto is not None:
            _SHADOW_COVERS[conversation] = upto
            _SHADOW_COVERS.move_to_end(conversation)
            while len(_SHADOW_COVERS) > _SHADOW_COVERS_MAX:
                _SHADOW_COVERS.popitem(last=False)
        return _SHADOW_COVERS.get(conversation, 0)
