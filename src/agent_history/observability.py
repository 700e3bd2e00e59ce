"""Metric names, an in-process metrics registry with an optional Prometheus mirror, and logs."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from agent_history.dsn import scrub_dsn_password

__all__ = [
    "BREAKER_STATE",
    "FALLBACKS",
    "KEY_RESOLUTION_FAILURES",
    "LOGGER_NAME",
    "METRICS",
    "QUARANTINED_RECORDS",
    "SHADOW_DIFFERENCES",
    "STORE_READ_FAILURES",
    "STORE_READ_LATENCY",
    "STORE_WRITE_FAILURES",
    "STORE_WRITE_LATENCY",
    "TRUNCATION_EVENTS",
    "WRITE_CONFLICTS",
    "MetricsRegistry",
    "describe_error",
    "enable_prometheus",
    "log_event",
    "logger",
    "timed",
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
STORE_READ_LATENCY = "agent_history_store_read_latency_ms"
STORE_WRITE_LATENCY = "agent_history_store_write_latency_ms"
BREAKER_STATE = "agent_history_breaker_state"
QUARANTINED_RECORDS = "agent_history_quarantined_records_total"

_COUNTERS = (
    KEY_RESOLUTION_FAILURES,
    STORE_READ_FAILURES,
    STORE_WRITE_FAILURES,
    WRITE_CONFLICTS,
    TRUNCATION_EVENTS,
    FALLBACKS,
    SHADOW_DIFFERENCES,
    QUARANTINED_RECORDS,
)
_HISTOGRAMS = (STORE_READ_LATENCY, STORE_WRITE_LATENCY)
_GAUGES = (BREAKER_STATE,)
_DESCRIPTIONS = {
    KEY_RESOLUTION_FAILURES: "Runs whose conversation key could not be resolved",
    STORE_READ_FAILURES: "History reads that failed or timed out",
    STORE_WRITE_FAILURES: "History appends that failed after their retries",
    WRITE_CONFLICTS: "Concurrent-writer conflicts detected on best-effort stores",
    TRUNCATION_EVENTS: "Payloads cut to max_messages",
    FALLBACKS: "Runs that went on with in-memory messages",
    QUARANTINED_RECORDS: "Stored records skipped on read because they cannot be decoded",
    SHADOW_DIFFERENCES: "Shadow-mode runs whose stored payload differed from in-memory",
    STORE_READ_LATENCY: "History tail read latency in milliseconds",
    STORE_WRITE_LATENCY: "History append latency in milliseconds",
    BREAKER_STATE: "Circuit breaker state: 0 closed, 1 half-open, 2 open",
}
BUCKETS_MS = (1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0)

# Closed label sets: no user data (keys, texts) can ever become a label value.
_LABEL_VALUES: dict[str, frozenset[str]] = {
    "backend": frozenset({"memory", "sqlite", "postgres", "other"}),
    "channel": frozenset({"telegram", "wecom_cs", "wecom_aibot", "wecom_dm", "other"}),
    "outcome": frozenset({"ok", "fallback", "conflict", "skipped"}),
}
_LABEL_NAMES = ("backend", "channel", "outcome")

LabelKey = tuple[tuple[str, str], ...]


def _labels(labels: dict[str, str]) -> LabelKey:
    clean: list[tuple[str, str]] = []
    for name in _LABEL_NAMES:
        value = labels.get(name)
        if value is None:
            continue
        clean.append((name, value if value in _LABEL_VALUES[name] else "other"))
    return tuple(clean)


class MetricsRegistry:
    """Thread-safe counters, histograms and gauges, with a JSON-able snapshot."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, dict[LabelKey, float]] = {}
        self._gauges: dict[str, dict[LabelKey, float]] = {}
        self._histograms: dict[str, dict[LabelKey, list[float]]] = {}
        self._mirror: Any = None

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        """Add ``value`` to counter ``name``."""
        key = _labels(labels)
        with self._lock:
            series = self._counters.setdefault(name, {})
            series[key] = series.get(key, 0.0) + value
        if self._mirror is not None:
            self._mirror.inc(name, value, key)

    def observe(self, name: str, value_ms: float, **labels: str) -> None:
        """Record one observation in histogram ``name``."""
        key = _labels(labels)
        with self._lock:
            series = self._histograms.setdefault(name, {})
            state = series.setdefault(key, [0.0, 0.0] + [0.0] * len(BUCKETS_MS))
            state[0] += 1
            state[1] += value_ms
            for index, bound in enumerate(BUCKETS_MS):
                if value_ms <= bound:
                    state[2 + index] += 1
        if self._mirror is not None:
            self._mirror.observe(name, value_ms, key)

    def set_gauge(self, name: str, value: float, **labels: str) -> None:
        """Set gauge ``name``."""
        key = _labels(labels)
        with self._lock:
            self._gauges.setdefault(name, {})[key] = value
        if self._mirror is not None:
            self._mirror.set(name, value, key)

    def value(self, name: str, **labels: str) -> float:
        """Counter or gauge value (histogram: count) summed over series matching ``labels``."""
        wanted = set(_labels(labels))
        with self._lock:
            if name in self._histograms:
                return sum(s[0] for k, s in self._histograms[name].items() if wanted <= set(k))
            series = self._counters.get(name) or self._gauges.get(name) or {}
            return sum(v for k, v in series.items() if wanted <= set(k))

    def snapshot(self) -> dict[str, Any]:
        """Every metric and series, as plain data."""
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
                            "buckets": dict(zip(BUCKETS_MS, s[2:], strict=True)),
                        }
                        for k, s in hist.items()
                    ],
                }
            return out

    def reset(self) -> None:
        """Forget every value (tests and the CLI demo)."""
        with self._lock:
            self._counters.clear()
            self._gauges.clear()
            self._histograms.clear()


class _PrometheusMirror:
    """Forwards updates to prometheus_client metrics in a given registry."""

    def __init__(self, registry: Any) -> None:
        import prometheus_client as prom

        names = list(_LABEL_NAMES)
        self.metrics: dict[str, Any] = {}
        for name in _COUNTERS:
            self.metrics[name] = prom.Counter(
                name.removesuffix("_total"), _DESCRIPTIONS[name], names, registry=registry
            )
        for name in _HISTOGRAMS:
            self.metrics[name] = prom.Histogram(
                name, _DESCRIPTIONS[name], names, buckets=BUCKETS_MS, registry=registry
            )
        for name in _GAUGES:
            self.metrics[name] = prom.Gauge(name, _DESCRIPTIONS[name], names, registry=registry)

    def _child(self, name: str, key: LabelKey) -> Any:
        metric = self.metrics.get(name)
        if metric is None:
            return None
        given = dict(key)
        return metric.labels(**{n: given.get(n, "other") for n in _LABEL_NAMES})

    def inc(self, name: str, value: float, key: LabelKey) -> None:
        child = self._child(name, key)
        if child is not None:
            child.inc(value)

    def observe(self, name: str, value: float, key: LabelKey) -> None:
        child = self._child(name, key)
        if child is not None:
            child.observe(value)

    def set(self, name: str, value: float, key: LabelKey) -> None:
        child = self._child(name, key)
        if child is not None:
            child.set(value)


METRICS = MetricsRegistry()
"""The process-wide registry every component reports to."""


def enable_prometheus(registry: Any = None, metrics: MetricsRegistry = METRICS) -> bool:
    """Mirror every metric update into prometheus_client (optional ``metrics`` extra).

    Args:
        registry: A ``prometheus_client.CollectorRegistry``; the default registry if None.
        metrics: The registry to mirror.

    Returns:
        False (and nothing changes) when prometheus_client is not installed.
    """
    try:
        import prometheus_client
    except ImportError:
        return False
    metrics._mirror = _PrometheusMirror(registry or prometheus_client.REGISTRY)
    return True


def describe_error(exc: BaseException, dsn: str | None = None) -> str:
    """The error's class and a short first line, with any DSN password removed."""
    first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
    text = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return scrub_dsn_password(text, dsn)


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


@contextmanager
def timed(name: str, metrics: MetricsRegistry = METRICS, **labels: str) -> Iterator[None]:
    """Observe the block's duration (ms) in histogram ``name``."""
    started = time.perf_counter()
    try:
        yield
    finally:
        metrics.observe(name, (time.perf_counter() - started) * 1000, **labels)
