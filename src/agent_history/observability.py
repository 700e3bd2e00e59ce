"""Metric names, an in-process metrics registry with Prometheus and listener exports, and logs.

Durations are kept and exported in seconds (``*_seconds`` histograms, buckets in seconds).
Every metric declares the labels that mean something for it; other labels passed by a
caller are dropped, and every label value comes from a closed set (anything else becomes
``other``), so no key, text or secret can ever become a label value.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal
from weakref import WeakKeyDictionary

from agent_history.redaction import safe_error_text

__all__ = [
    "BREAKER_STATE",
    "BUCKETS_SECONDS",
    "CONFIG_ERRORS",
    "FALLBACKS",
    "KEY_RESOLUTION_FAILURES",
    "LOGGER_NAME",
    "METRICS",
    "QUARANTINED_RECORDS",
    "SHADOW_DIFFERENCES",
    "SPECS",
    "STORE_READ_FAILURES",
    "STORE_READ_LATENCY",
    "STORE_WRITE_FAILURES",
    "STORE_WRITE_LATENCY",
    "SUMMARY_FAILURES",
    "SWITCH_CHANGES",
    "TRIGGER_FIRES",
    "TRIGGER_RETURNS",
    "TRIGGER_STATE",
    "TRUNCATION_EVENTS",
    "WRITE_CONFLICTS",
    "MetricKind",
    "MetricListener",
    "MetricSpec",
    "MetricsRegistry",
    "channel_label",
    "describe_error",
    "enable_prometheus",
    "events_logged",
    "known_channels",
    "log_event",
    "logger",
    "register_channels",
    "register_channels_from_candidates",
]

LOGGER_NAME = "agent_history"
logger = logging.getLogger(LOGGER_NAME)

KEY_RESOLUTION_FAILURES = "agent_history_key_resolution_failures_total"
STORE_READ_FAILURES = "agent_history_store_read_failures_total"
STORE_WRITE_FAILURES = "agent_history_store_write_failures_total"
WRITE_CONFLICTS = "agent_history_write_conflicts_total"
TRUNCATION_EVENTS = "agent_history_truncation_events_total"
FALLBACKS = "agent_history_fallbacks_total"
SHADOW_DIFFERENCES = "agent_history_shadow_differences_total"
QUARANTINED_RECORDS = "agent_history_quarantined_records_total"
STORE_READ_LATENCY = "agent_history_store_read_duration_seconds"
STORE_WRITE_LATENCY = "agent_history_store_write_duration_seconds"
BREAKER_STATE = "agent_history_breaker_state"
SWITCH_CHANGES = "agent_history_switch_changes_total"
TRIGGER_FIRES = "agent_history_rollback_trigger_fires_total"
TRIGGER_RETURNS = "agent_history_rollback_trigger_returns_total"
TRIGGER_STATE = "agent_history_rollback_trigger_state"
CONFIG_ERRORS = "agent_history_config_errors_total"
SUMMARY_FAILURES = "agent_history_summary_failures_total"

MetricKind = Literal["counter", "histogram", "gauge"]


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One metric: its kind, its help text and the labels that mean something for it."""

    name: str
    kind: MetricKind
    description: str
    labels: tuple[str, ...]


_STORE = ("backend", "channel")
SPECS: dict[str, MetricSpec] = {
    spec.name: spec
    for spec in (
        MetricSpec(
            KEY_RESOLUTION_FAILURES,
            "counter",
            "Runs whose conversation key could not be resolved",
            ("backend",),
        ),
        MetricSpec(
            STORE_READ_FAILURES, "counter", "History reads that failed or timed out", _STORE
        ),
        MetricSpec(
            STORE_WRITE_FAILURES,
            "counter",
            "History appends that failed after their retries",
            _STORE,
        ),
        MetricSpec(
            WRITE_CONFLICTS,
            "counter",
            "Concurrent-writer conflicts detected on best-effort stores",
            ("backend",),
        ),
        MetricSpec(TRUNCATION_EVENTS, "counter", "Payloads cut to the window", _STORE),
        MetricSpec(
            FALLBACKS,
            "counter",
            "Runs that went on with in-memory messages",
            (*_STORE, "reason"),
        ),
        MetricSpec(
            SHADOW_DIFFERENCES,
            "counter",
            "Shadow-mode runs whose stored payload differed from in-memory",
            _STORE,
        ),
        MetricSpec(
            QUARANTINED_RECORDS,
            "counter",
            "Stored records skipped on read because they cannot be decoded",
            ("backend",),
        ),
        MetricSpec(
            STORE_READ_LATENCY,
            "histogram",
            "History tail read duration in seconds, per attempt",
            (*_STORE, "outcome"),
        ),
        MetricSpec(
            STORE_WRITE_LATENCY,
            "histogram",
            "History append duration in seconds, per attempt",
            (*_STORE, "outcome"),
        ),
        MetricSpec(
            BREAKER_STATE,
            "gauge",
            "Circuit breaker state: 0 closed, 1 half-open, 2 open",
            ("backend",),
        ),
        MetricSpec(
            SWITCH_CHANGES,
            "counter",
            "Effective changes of a rollback switch (each also audited)",
            ("change", "source"),
        ),
        MetricSpec(
            TRIGGER_FIRES,
            "counter",
            "Automatic rollback triggers fired",
            ("backend", "trigger", "action"),
        ),
        MetricSpec(
            TRIGGER_RETURNS,
            "counter",
            "Returns to the configured mode after a trigger's cool-down and a good probe",
            ("backend", "trigger"),
        ),
        MetricSpec(
            TRIGGER_STATE,
            "gauge",
            "Automatic rollback trigger state: 0 watching, 1 probing, 2 fired",
            ("backend",),
        ),
        MetricSpec(
            CONFIG_ERRORS,
            "counter",
            "Invalid configuration seen at run time (the last good one stayed in force)",
            ("source",),
        ),
        MetricSpec(
            SUMMARY_FAILURES,
            "counter",
            "Summary updates that failed or timed out (the previous summary stayed)",
            ("backend", "outcome"),
        ),
    )
}
_DEFAULT_LABELS = ("backend", "channel", "outcome")

BUCKETS_SECONDS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.0,
    3.0,
    5.0,
    10.0,
)
"""Histogram bucket bounds (seconds); 3 s is the suggested p95 trigger threshold."""

_DEFAULT_CHANNELS = ("telegram", "wecom_cs", "wecom_aibot", "wecom_dm")
_MAX_CHANNELS = 64
_CHANNEL_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_channels_lock = threading.Lock()
_channels: frozenset[str] = frozenset(_DEFAULT_CHANNELS)

# Closed label sets: no user data (keys, texts) can ever become a label value.
_LABEL_VALUES: dict[str, frozenset[str]] = {
    "backend": frozenset({"memory", "sqlite", "postgres", "other"}),
    "outcome": frozenset({"ok", "fallback", "error", "timeout", "conflict", "skipped"}),
    "reason": frozenset(
        {
            "no_store",
            "no_valid_key",
            "read_failed",
            "read_timeout",
            "write_failed",
            "write_timeout",
            "breaker_open",
            "other",
        }
    ),
    "change": frozenset(
        {"startup", "mode", "disabled_nodes", "node_modes", "breaker_state", "trigger"}
    ),
    "source": frozenset({"env", "code", "flags_file", "breaker", "trigger"}),
    "trigger": frozenset({"error_rate", "read_p95", "write_p95"}),
    "action": frozenset({"read_only", "off"}),
}


def known_channels() -> frozenset[str]:
    """The channel label values in use (besides ``other``)."""
    return _channels


def register_channels(names: Iterable[str]) -> frozenset[str]:
    """Allow more ``channel`` label values (lower-case identifiers, at most 64 in all).

    Names that are not plain identifiers, or past the cap, are ignored: the set stays
    closed and small whatever the caller passes.

    Returns:
        The channels now known.
    """
    global _channels
    with _channels_lock:
        current = set(_channels)
        for name in names:
            if len(current) >= _MAX_CHANNELS:
                break
            if isinstance(name, str) and _CHANNEL_NAME.match(name):
                current.add(name)
        _channels = frozenset(current)
        return _channels


def register_channels_from_candidates(candidates: Iterable[str]) -> frozenset[str]:
    """Register the literal prefixes of key candidates as channels.

    ``"slack:{{inputs.team}}:{{inputs.user}}"`` registers ``slack``; a candidate whose
    prefix is itself a template (``"{{inputs.platform}}:..."``) registers nothing, since
    its value comes from the request.
    """
    prefixes = []
    for candidate in candidates:
        prefix, sep, _ = candidate.partition(":")
        if sep and "{" not in prefix and "}" not in prefix and "%" not in prefix:
            prefixes.append(prefix.strip())
    return register_channels(prefixes)


def channel_label(key: str | None) -> str:
    """The channel of a conversation key: its prefix when that is a known channel."""
    if not key:
        return "other"
    prefix = key.split(":", 1)[0]
    return prefix if prefix in _channels else "other"


STORE_CALL_OPERATIONS: dict[str, Literal["read", "write"]] = {
    STORE_READ_LATENCY: "read",
    STORE_WRITE_LATENCY: "write",
}
LabelKey = tuple[tuple[str, str], ...]
MetricListener = Callable[[MetricKind, str, float, Mapping[str, str]], None]
"""Called after every update: (kind, metric name, value, labels). Histogram values are
seconds; counter values are the increment."""


def _allowed(name: str, value: str) -> bool:
    if name == "channel":
        return value in _channels or value == "other"
    return value in _LABEL_VALUES.get(name, frozenset())


def _labels(name: str, labels: Mapping[str, str]) -> LabelKey:
    spec = SPECS.get(name)
    declared = spec.labels if spec else _DEFAULT_LABELS
    clean: list[tuple[str, str]] = []
    for label in declared:
        value = labels.get(label)
        if value is None:
            continue
        clean.append((label, value if _allowed(label, value) else "other"))
    return tuple(clean)


class MetricsRegistry:
    """Thread-safe counters, histograms and gauges, with a JSON-able snapshot."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, dict[LabelKey, float]] = {}
        self._gauges: dict[str, dict[LabelKey, float]] = {}
        self._histograms: dict[str, dict[LabelKey, list[float]]] = {}
        self._listeners: tuple[MetricListener, ...] = ()
        self._failed_listeners: set[int] = set()

    # --- updates ----------------------------------------------------------------------------

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        """Add ``value`` to counter ``name``."""
        key = _labels(name, labels)
        with self._lock:
            series = self._counters.setdefault(name, {})
            series[key] = series.get(key, 0.0) + value
        self._notify("counter", name, value, key)

    def observe_seconds(self, name: str, seconds: float, **labels: str) -> None:
        """Record one duration (seconds) in histogram ``name``."""
        key = _labels(name, labels)
        with self._lock:
            series = self._histograms.setdefault(name, {})
            state = series.setdefault(key, [0.0, 0.0] + [0.0] * len(BUCKETS_SECONDS))
            state[0] += 1
            state[1] += seconds
            for index, bound in enumerate(BUCKETS_SECONDS):
                if seconds <= bound:
                    state[2 + index] += 1
        self._notify("histogram", name, seconds, key)

    def set_gauge(self, name: str, value: float, **labels: str) -> None:
        """Set gauge ``name``."""
        key = _labels(name, labels)
        with self._lock:
            self._gauges.setdefault(name, {})[key] = value
        self._notify("gauge", name, value, key)

    # --- listeners --------------------------------------------------------------------------

    def add_listener(self, listener: MetricListener) -> None:
        """Call ``listener`` after every update (exporters, automatic triggers)."""
        with self._lock:
            if listener not in self._listeners:
                self._listeners = (*self._listeners, listener)

    def remove_listener(self, listener: MetricListener) -> None:
        """Stop calling ``listener`` (no error if it was not added)."""
        with self._lock:
            self._listeners = tuple(x for x in self._listeners if x != listener)

    def _notify(self, kind: MetricKind, name: str, value: float, key: LabelKey) -> None:
        listeners = self._listeners
        if not listeners:
            return
        labels = dict(key)
        for listener in listeners:
            try:
                listener(kind, name, value, labels)
            except Exception as exc:
                # An exporter or trigger must never fail the run that reported a metric;
                # say so once per listener, then stay quiet.
                if id(listener) not in self._failed_listeners:
                    self._failed_listeners.add(id(listener))
                    log_event("metric_listener_failed", error=describe_error(exc))

    # --- reading ----------------------------------------------------------------------------

    def value(self, name: str, **labels: str) -> float:
        """Counter or gauge value (histogram: count) summed over series matching ``labels``.

        Labels the metric does not declare are ignored, as they are when recording.
        """
        wanted = set(_labels(name, labels))
        with self._lock:
            if name in self._histograms:
                return sum(s[0] for k, s in self._histograms[name].items() if wanted <= set(k))
            series = self._counters.get(name) or self._gauges.get(name) or {}
            return sum(v for k, v in series.items() if wanted <= set(k))

    def snapshot(self) -> dict[str, Any]:
        """Every metric and series, as plain data (histogram sums and bounds in seconds)."""
        with self._lock:
            out: dict[str, Any] = {}
            for kind, table in (("counter", self._counters), ("gauge", self._gauges)):
                for name, series in table.items():
                    out[name] = {
                        "type": kind,
                        "series": [{"labels": dict(k), "value": v} for k, v in series.items()],
                    }
            for name, hist in self._histograms.items():
                out[name] = {
                    "type": "histogram",
                    "series": [
                        {
                            "labels": dict(k),
                            "count": s[0],
                            "sum": s[1],
                            "buckets": dict(zip(BUCKETS_SECONDS, s[2:], strict=True)),
                        }
                        for k, s in hist.items()
                    ],
                }
            return out

    def _series(self, name: str, kind: MetricKind) -> list[tuple[LabelKey, Any]]:
        with self._lock:
            if kind == "counter":
                return list(self._counters.get(name, {}).items())
            if kind == "gauge":
                return list(self._gauges.get(name, {}).items())
            return [(k, list(s)) for k, s in self._histograms.get(name, {}).items()]

    def reset(self) -> None:
        """Forget every value (tests and the CLI demo); listeners stay."""
        with self._lock:
            self._counters.clear()
            self._gauges.clear()
            self._histograms.clear()


class _PrometheusCollector:
    """Exposes one or more `MetricsRegistry` objects to a prometheus_client registry at
    scrape time. Each series carries only the labels it was recorded with."""

    def __init__(self) -> None:
        self.sources: list[MetricsRegistry] = []

    def describe(self) -> Iterator[Any]:
        from prometheus_client.metrics_core import Metric

        for spec in SPECS.values():
            yield Metric(spec.name.removesuffix("_total"), spec.description, spec.kind)

    def collect(self) -> Iterator[Any]:
        from prometheus_client.metrics_core import Metric

        for spec in SPECS.values():
            family = Metric(spec.name.removesuffix("_total"), spec.description, spec.kind)
            merged: dict[LabelKey, Any] = {}
            for source in self.sources:
                for key, value in source._series(spec.name, spec.kind):
                    if spec.kind == "histogram":
                        old = merged.get(key)
                        merged[key] = (
                            value
                            if old is None
                            else [a + b for a, b in zip(old, value, strict=True)]
                        )
                    elif spec.kind == "counter":
                        merged[key] = merged.get(key, 0.0) + value
                    else:
                        merged[key] = value
            for key, value in merged.items():
                labels = dict(key)
                if spec.kind != "histogram":
                    family.add_sample(spec.name, labels, value)
                else:
                    for bound, count in zip(BUCKETS_SECONDS, value[2:], strict=True):
                        family.add_sample(
                            spec.name + "_bucket", {**labels, "le": str(bound)}, count
                        )
                    family.add_sample(spec.name + "_bucket", {**labels, "le": "+Inf"}, value[0])
                    family.add_sample(spec.name + "_count", labels, value[0])
                    family.add_sample(spec.name + "_sum", labels, value[1])
            yield family


_prometheus_lock = threading.Lock()
_prometheus_collectors: WeakKeyDictionary[Any, _PrometheusCollector] = WeakKeyDictionary()


METRICS = MetricsRegistry()
"""The process-wide registry every component reports to."""


def enable_prometheus(registry: Any = None, metrics: MetricsRegistry = METRICS) -> bool:
    """Expose the metrics through prometheus_client (optional ``metrics`` extra).

    Idempotent: calling it again with the same registries changes nothing; several
    `MetricsRegistry` objects exposed in one Prometheus registry are summed.

    Args:
        registry: A ``prometheus_client.CollectorRegistry``; the default registry if None.
        metrics: The registry to expose.

    Returns:
        False (and nothing changes) when prometheus_client is not installed.
    """
    try:
        import prometheus_client
    except ImportError:
        return False
    target = registry if registry is not None else prometheus_client.REGISTRY
    with _prometheus_lock:
        collector = _prometheus_collectors.get(target)
        if collector is None:
            collector = _PrometheusCollector()
            target.register(collector)
            _prometheus_collectors[target] = collector
        if metrics not in collector.sources:
            collector.sources.append(metrics)
    return True


def describe_error(exc: BaseException, dsn: str | None = None) -> str:
    """One line for logs that carries no user data and no secret.

    The library's own errors keep their first line; a driver's error keeps its class,
    SQLSTATE or SQLite error name and known phrases only (`redaction.safe_error_text`),
    since its text can quote the data that failed. DSN passwords are scrubbed.
    """
    return safe_error_text(exc, dsn)


def log_event(event: str, *, level: int = logging.WARNING, **fields: object) -> None:
    """Log one structured event on the ``agent_history`` logger.

    The message reads ``event=<event> k=v ...``; the same data is attached as
    ``record.event`` and ``record.fields``. Callers pass identifiers, counts and reasons,
    never message bodies.
    """
    if not logger.isEnabledFor(level):
        return
    clean = {k: (v[:200] if isinstance(v, str) else v) for k, v in fields.items() if v is not None}
    text = " ".join([f"event={event}", *(f"{k}={v}" for k, v in clean.items())])
    logger.log(level, text, extra={"event": event, "fields": clean})


class _Collector(logging.Handler):
    def __init__(self, event: str) -> None:
        super().__init__(logging.WARNING)
        self.event = event
        self.found: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "event", None) == self.event:
            self.found.append(dict(getattr(record, "fields", {})))


@contextmanager
def events_logged(event: str) -> Iterator[list[dict[str, Any]]]:
    """The fields of each ``event`` warning `log_event` logs meanwhile (a command that
    reports what set-up warned about, beside the log line)."""
    collector = _Collector(event)
    logger.addHandler(collector)
    try:
        yield collector.found
    finally:
        logger.removeHandler(collector)
