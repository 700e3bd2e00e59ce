"""`agent-history doctor`: validate configuration, connect, set up, round-trip a probe."""

from __future__ import annotations

import difflib
import json
import os
import uuid
from collections.abc import Mapping
from typing import Any

import typer
from rich.markup import escape

from agent_history import observability as obs
from agent_history.audit import audit_file_problem
from agent_history.cli.app import (
    EXIT_CHECK_FAILED,
    EXIT_CONFIG,
    EXIT_STORE,
    app,
    console,
    fail,
    open_store,
)
from agent_history.cli.app import load_settings as _load_settings
from agent_history.errors import ConfigError, StoreTimeout, StoreUnavailable
from agent_history.history import ChatHistory
from agent_history.history.drivers.postgres_setup import TABLES_ELSEWHERE
from agent_history.redaction import safe_error_text
from agent_history.settings import LEGACY_SQLITE_PATH_VAR, Backend, HistorySettings, env_var
from agent_history.stores import backend_of
from agent_history.toggle_config import (
    AUDIT_FILE_VAR,
    ENV_PREFIX,
    MODE_VAR,
    HistoryMode,
    ToggleConfig,
    TriggerSettings,
    watched_variables,
)
from agent_history.toggles import load_toggle_config

__all__ = ["doctor"]

_PROBE_NAMESPACE = ("agent_history_doctor",)


@app.command()
def doctor(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Check the configuration and the store; exit non-zero with the reason if anything is wrong."""
    settings = _load_settings()
    try:
        toggles = load_toggle_config()
    except ConfigError as exc:
        raise fail(str(exc), EXIT_CONFIG) from None
    if toggles.audit_file is not None:
        problem = audit_file_problem(toggles.audit_file)
        if problem is not None:
            # At run time each process would only warn once and keep no audit trail.
            raise fail(f"{AUDIT_FILE_VAR}: {problem}", EXIT_CONFIG)
    report: dict[str, Any] = {"settings": settings.describe(), "mode": toggles.mode.value}
    new_file = _new_sqlite_file(settings)
    with obs.events_logged(TABLES_ELSEWHERE) as elsewhere, open_store(settings) as store:
        history = ChatHistory(store, namespace=_PROBE_NAMESPACE)
        key = "probe-" + uuid.uuid4().hex[:12]
        try:
            written = history.append(key, [{"role": "user", "content": "probe", "id": "probe"}])
            read_back = [t.content for t in history.tail_turns(key, 1)]
            history.delete(key)
        except Exception as exc:
            dsn = settings.dsn if settings.postgres_dsn is not None else None
            # A store that cannot serve the probe (a read-only file, a full disk, a
            # replica) failed, like an unreachable one; anything else is a failed check.
            code = (
                EXIT_STORE
                if isinstance(exc, StoreUnavailable | StoreTimeout)
                else EXIT_CHECK_FAILED
            )
            raise fail(f"probe round-trip failed: {safe_error_text(exc, dsn)}", code) from None
        if written.appended != 1 or read_back != ["probe"]:
            raise fail("probe round-trip returned unexpected data", EXIT_CHECK_FAILED)
        report["backend"] = backend_of(store)
    report.update(
        store="reachable",
        schema="set up",
        probe="ok",
        breaker=(
            f"opens at {toggles.breaker_failure_ratio:.0%} failures of >= "
            f"{toggles.breaker_min_calls} calls in {toggles.breaker_window_seconds:g}s, "
            f"cools down {toggles.breaker_cooldown_seconds:g}s (state is per process: "
            "metric agent_history_breaker_state)"
        ),
        triggers=_describe_triggers(toggles.triggers),
        disabled_nodes=sorted(toggles.disabled_nodes),
        node_modes={name: mode.value for name, mode in sorted(toggles.node_modes.items())},
        flags_file=toggles.flags_file,
        audit_file=toggles.audit_file,
    )
    report["warnings"] = [
        *_schema_warnings(elsewhere),
        *_trigger_warnings(toggles),
        *_node_mode_warnings(toggles),
        *_variable_warnings(os.environ),
        *new_file,
    ]
    if as_json:
        console.print_json(json.dumps(report))
        return
    for name, value in report.items():
        if name != "warnings":
            console.print(f"[bold]{name}[/]: {escape(str(value))}", highlight=False)
    for warning in report["warnings"]:
        console.print(f"[yellow]warning[/]: {escape(warning)}", highlight=False)
    console.print("[green]ok[/]: configuration valid, store reachable, probe round-tripped")


_OWN_PREFIXES = (ENV_PREFIX, "ORCHEO_GRAPH_STORE_")
"""Prefixes only agent-history reads under: a name there that it does not read is a typo."""


def _variable_warnings(env: Mapping[str, str]) -> list[str]:
    """Variables under agent-history's own prefixes that it does not read (a typo such
    as ``..._MDOE``: the switch meant is not set), and a mode set to nothing, which
    reads as unset (``read_write``)."""
    known = {
        *watched_variables(),
        *(env_var(name) for name in HistorySettings.model_fields),
        LEGACY_SQLITE_PATH_VAR,
    }
    warnings = []
    for name in sorted(env):
        upper = name.upper()
        if not upper.startswith(_OWN_PREFIXES) or upper in known:
            continue
        close = difflib.get_close_matches(upper, known, n=1, cutoff=0.8)
        meant = f" (did you mean {close[0]}?)" if close else ""
        warnings.append(f"{name} is not a variable agent-history reads{meant}: it has no effect")
    if MODE_VAR in env and not env[MODE_VAR].strip():
        warnings.append(f"{MODE_VAR} is set but empty: read as unset, so the mode is read_write")
    return warnings


def _new_sqlite_file(settings: HistorySettings) -> list[str]:
    """A warning when the SQLite store's file is not there yet (doctor's setup makes it):
    a mistyped path passes every check, on an empty store the workers never open."""
    path = settings.graph_store_sqlite_path
    if settings.graph_store_backend is not Backend.SQLITE or path.exists():
        return []
    return [
        f"{env_var('graph_store_sqlite_path')}: {path} did not exist: doctor created an "
        "empty store there; if the workers' conversations are elsewhere, the path is wrong"
    ]


def _schema_warnings(events: list[dict[str, Any]]) -> list[str]:
    """Set-up found LangGraph's tables in a later schema of ``search_path`` than the one
    it creates tables in: this store shares that schema's conversations."""
    return [
        f"{e.get('table')} is in schema {e.get('schema')!r}, not in {e.get('first_schema')!r} "
        f"(the first schema of search_path): this store uses {e.get('schema')!r}'s "
        f"conversations; {e.get('hint')}"
        for e in events
    ]


def _describe_triggers(triggers: TriggerSettings) -> str:
    if not triggers.enabled:
        return "off (no ORCHEO_GRAPH_CHAT_HISTORY_TRIGGER_* threshold set)"
    limits = []
    if triggers.error_rate is not None:
        limits.append(f"error rate > {triggers.error_rate:.0%}")
    if triggers.read_p95_seconds is not None:
        limits.append(f"read p95 > {triggers.read_p95_seconds:g}s")
    if triggers.write_p95_seconds is not None:
        limits.append(f"write p95 > {triggers.write_p95_seconds:g}s")
    return (
        f"{' or '.join(limits)} over {triggers.window_seconds:g}s (>= {triggers.min_calls} "
        f"calls) sets {triggers.action.value} for {triggers.cooldown_seconds:g}s, then probes"
    )


def _node_mode_warnings(toggles: ToggleConfig) -> list[str]:
    """Nodes whose own mode overrides a global rollback mode (``read_only``, ``shadow``):
    a rollback made with the global mode does not reach them."""
    if toggles.mode in (HistoryMode.READ_WRITE, HistoryMode.OFF):
        return []
    return [
        f"node {name!r} keeps its own mode {mode.value} (flags file nodes or code), which "
        f"overrides the global mode {toggles.mode.value}; set its mode too, or use mode off"
        for name, mode in sorted(toggles.node_modes.items())
        if mode is not toggles.mode and name not in toggles.disabled_nodes
    ]


def _trigger_warnings(toggles: ToggleConfig) -> list[str]:
    """Latency triggers that can never fire: a call is cut at its budget, so its duration
    never passes a threshold above that budget (slow calls count as failures). At the
    budget itself it does: a call cut there lasts a little longer than it."""
    checks = (
        ("READ", toggles.triggers.read_p95_seconds, toggles.read_timeout_seconds),
        ("WRITE", toggles.triggers.write_p95_seconds, toggles.write_timeout_seconds),
    )
    return [
        f"{ENV_PREFIX}TRIGGER_{kind}_P95_SECONDS={threshold:g} can never fire: calls are cut "
        f"at {ENV_PREFIX}{kind}_TIMEOUT_SECONDS={budget:g}; set it below the budget (slow "
        "calls count as failures for the error-rate trigger and the breaker meanwhile)"
        for kind, threshold, budget in checks
        if threshold is not None and threshold > budget
    ]
