"""Health of the history layer (ok / degraded / down), ready for a ``/health`` endpoint."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from langgraph.store.base import BaseStore

from agent_history.budget import call_with_budget
from agent_history.stores import backend_of
from agent_history.toggles import DEFAULT_TOGGLES, BreakerState, HistoryMode, HistoryToggles

__all__ = ["HealthReport", "acheck_health", "check_health"]

Status = Literal["ok", "degraded", "down"]
_PROBE_NAMESPACE = ("agent_history_health",)


@dataclass(frozen=True, slots=True)
class HealthReport:
    """Overall status and the facts behind it."""

    status: Status
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def http_status(self) -> int:
        """200 when ok or degraded (history falls back, the agent answers), 503 when down."""
        return 503 if self.status == "down" else 200

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"status": self.status, **self.details}


def _verdict(details: dict[str, Any]) -> Status:
    if not details["store_reachable"]:
        return "down"
    degraded = (
        details["mode"] != HistoryMode.READ_WRITE.value
        or details["breaker"] != BreakerState.CLOSED.value
        or details["schema_set_up"] is False
    )
    return "degraded" if degraded else "ok"


def _base_details(store: BaseStore, toggles: HistoryToggles) -> dict[str, Any]:
    config = toggles.current()
    backend = backend_of(store)
    return {
        "backend": backend,
        "mode": config.mode.value,
        "disabled_nodes": sorted(config.disabled_nodes),
        "breaker": toggles.breaker_for(store, backend).state.value,
        "schema_set_up": getattr(store, "is_setup", None),
    }


def check_health(
    store: BaseStore | None, *, toggles: HistoryToggles | None = None, budget: float = 2.0
) -> HealthReport:
    """Probe the store (one bounded read) and report mode, breaker and schema state."""
    toggles = toggles or DEFAULT_TOGGLES
    if store is None:
        return HealthReport("down", {"store_reachable": False, "error": "no store configured"})
    details = _base_details(store, toggles)
    started = time.perf_counter()
    try:
        call_with_budget(lambda: store.get(_PROBE_NAMESPACE, "probe"), budget)
        details.update(store_reachable=True)
    except Exception as exc:
        details.update(store_reachable=False, error=type(exc).__name__)
    details["probe_ms"] = round((time.perf_counter() - started) * 1000, 2)
    return HealthReport(_verdict(details), details)


async def acheck_health(
    store: BaseStore | None, *, toggles: HistoryToggles | None = None, budget: float = 2.0
) -> HealthReport:
    """Async `check_health`."""
    toggles = toggles or DEFAULT_TOGGLES
    if store is None:
        return HealthReport("down", {"store_reachable": False, "error": "no store configured"})
    details = _base_details(store, toggles)
    started = time.perf_counter()
    try:
        await asyncio.wait_for(store.aget(_PROBE_NAMESPACE, "probe"), budget)
        details.update(store_reachable=True)
    except Exception as exc:
        details.update(store_reachable=False, error=type(exc).__name__)
    details["probe_ms"] = round((time.perf_counter() - started) * 1000, 2)
    return HealthReport(_verdict(details), details)
