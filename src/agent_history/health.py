"""Health of the history layer (ok / degraded / down), ready for a ``/health`` endpoint."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

from langgraph.store.base import BaseStore

from agent_history.budget import deadline_after
from agent_history.history.drivers import driver_for
from agent_history.history.steps import head_steps
from agent_history.toggles import DEFAULT_TOGGLES, BreakerState, HistoryMode, HistoryToggles
from agent_history.triggers import TriggerState

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
    return "degraded" if details["degraded_by"] else "ok"


def _base_details(store: BaseStore, toggles: HistoryToggles) -> dict[str, Any]:
    config = toggles.current()
    driver = driver_for(store)
    backend = driver.backend
    node_modes = {
        node: mode.value
        for node, mode in sorted(config.node_modes.items())
        if mode is not HistoryMode.READ_WRITE
    }
    breaker = toggles.breaker_for(store, backend).state.value
    trigger = toggles.trigger_state(backend).value
    schema_set_up = getattr(store, "is_setup", None)
    described = driver.describe()
    # A SQL store whose schema is unknown, or whose history migrations failed, runs on
    # the store's own calls: correct, but serialised per process only (see the drivers).
    fallback = backend in ("sqlite", "postgres") and str(described.get("driver")).startswith(
        "generic"
    )
    # Every rollback switch in force, and what else keeps history from working fully.
    degraded_by = [
        reason
        for reason, on in (
            (f"mode:{config.mode.value}", config.mode is not HistoryMode.READ_WRITE),
            ("disabled_nodes", bool(config.disabled_nodes)),
            ("node_modes", bool(node_modes)),
            (f"trigger:{trigger}", trigger != TriggerState.WATCHING.value),
            (f"breaker:{breaker}", breaker != BreakerState.CLOSED.value),
            ("schema_not_set_up", schema_set_up is False),
            ("history_driver:generic", fallback),
        )
        if on
    ]
    return {
        "backend": backend,
        "history_driver": described,
        "mode": config.mode.value,
        "disabled_nodes": sorted(config.disabled_nodes),
        "node_modes": node_modes,
        "breaker": breaker,
        "trigger": trigger,
        "schema_set_up": schema_set_up,
        "degraded_by": degraded_by,
    }


def check_health(
    store: BaseStore | None, *, toggles: HistoryToggles | None = None, budget: float = 2.0
) -> HealthReport:
    """Probe the store (one read through the history driver, stopped at ``budget``
    seconds) and report mode, breaker, driver and schema state."""
    toggles = toggles or DEFAULT_TOGGLES
    if store is None:
        return HealthReport("down", {"store_reachable": False, "error": "no store configured"})
    details = _base_details(store, toggles)
    started = time.perf_counter()
    try:
        with deadline_after(budget):
            driver_for(store).read(_PROBE_NAMESPACE, head_steps())
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
        with deadline_after(budget):
            driver = driver_for(store)
            await driver.on_own_loop(driver.aread(_PROBE_NAMESPACE, head_steps()))
        details.update(store_reachable=True)
    except Exception as exc:
        details.update(store_reachable=False, error=type(exc).__name__)
    details["probe_ms"] = round((time.perf_counter() - started) * 1000, 2)
    return HealthReport(_verdict(details), details)
