"""OpenTelemetry bridge (optional extra ``agent-history[otel]``): spans and metrics.

`enable_opentelemetry` listens to the metrics registry and, for every update:

- records it through the OpenTelemetry metrics API: counters, gauges and histograms
  named like their Prometheus counterparts without the ``_total`` / ``_seconds``
  suffix (``agent_history_store_read_duration``, unit ``s``), with the same labels as
  attributes and the same bucket bounds;
- for each history read and append attempt, emits a span ``agent_history.read`` or
  ``agent_history.append`` covering the call (start = end - duration), with attributes
  ``agent_history.backend``, ``agent_history.channel``, ``agent_history.outcome`` and
  ``agent_history.latency_seconds``; a failed attempt has status ERROR. The span is a
  child of the span current where the node runs.

Only identifiers from closed sets are attached, never keys, texts or secrets.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any
from weakref import WeakKeyDictionary

from agent_history import observability as obs

__all__ = [
    "INSTRUMENTATION_NAME",
    "SPAN_NAMES",
    "disable_opentelemetry",
    "enable_opentelemetry",
    "otel_metric_name",
]

INSTRUMENTATION_NAME = "agent_history"
SPAN_NAMES = {
    obs.STORE_READ_LATENCY: "agent_history.read",
    obs.STORE_WRITE_LATENCY: "agent_history.append",
}

_lock = threading.Lock()
_bridges: WeakKeyDictionary[obs.MetricsRegistry, list[_Bridge]] = WeakKeyDictionary()


def otel_metric_name(name: str) -> str:
    """The OpenTelemetry instrument name of metric ``name``."""
    return name.removesuffix("_total").removesuffix("_seconds")


class _Bridge:
    def __init__(self, tracer_provider: Any, meter_provider: Any) -> None:
        from opentelemetry import metrics, trace

        self.tracer_provider = tracer_provider
        self.meter_provider = meter_provider
        self._tracer = trace.get_tracer(INSTRUMENTATION_NAME, tracer_provider=tracer_provider)
        self._meter = metrics.get_meter(INSTRUMENTATION_NAME, meter_provider=meter_provider)
        self._instruments: dict[str, Any] = {}
        self._lock = threading.Lock()

    def _instrument(self, kind: obs.MetricKind, name: str) -> Any:
        found = self._instruments.get(name)
        if found is not None:
            return found
        with self._lock:
            found = self._instruments.get(name)
            if found is not None:
                return found
            spec = obs.SPECS.get(name)
            description = spec.description if spec else ""
            otel_name = otel_metric_name(name)
            if kind == "counter":
                found = self._meter.create_counter(otel_name, "1", description)
            elif kind == "gauge":
                found = self._meter.create_gauge(otel_name, "1", description)
            else:
                found = self._meter.create_histogram(
                    otel_name,
                    "s",
                    description,
                    explicit_bucket_boundaries_advisory=list(obs.BUCKETS_SECONDS),
                )
            self._instruments[name] = found
            return found

    def __call__(
        self, kind: obs.MetricKind, name: str, value: float, labels: Mapping[str, str]
    ) -> None:
        instrument = self._instrument(kind, name)
        attributes = dict(labels)
        if kind == "counter":
            instrument.add(value, attributes)
        elif kind == "gauge":
            instrument.set(value, attributes)
        else:
            instrument.record(value, attributes)
            span_name = SPAN_NAMES.get(name)
            if span_name is not None:
                self._span(span_name, value, labels)

    def _span(self, span_name: str, seconds: float, labels: Mapping[str, str]) -> None:
        from opentelemetry.trace import SpanKind, Status, StatusCode

        end = time.time_ns()
        start = end - int(seconds * 1_000_000_000)
        outcome = labels.get("outcome", "ok")
        attributes: dict[str, str | float] = {
            f"agent_history.{label}": value for label, value in labels.items()
        }
        attributes["agent_history.latency_seconds"] = seconds
        span = self._tracer.start_span(
            span_name, kind=SpanKind.CLIENT, attributes=attributes, start_time=start
        )
        if outcome != "ok":
            span.set_status(Status(StatusCode.ERROR, outcome))
        span.end(end_time=end)


def enable_opentelemetry(
    *,
    tracer_provider: Any = None,
    meter_provider: Any = None,
    metrics: obs.MetricsRegistry = obs.METRICS,
) -> bool:
    """Send spans and metrics through the OpenTelemetry API.

    Idempotent: a second call with the same providers and registry changes nothing.

    Args:
        tracer_provider: A ``TracerProvider``; the global one if None.
        meter_provider: A ``MeterProvider``; the global one if None.
        metrics: The registry to bridge.

    Returns:
        False (and nothing changes) when ``opentelemetry-api`` is not installed.
    """
    with _lock:
        bridges = _bridges.setdefault(metrics, [])
        for existing in bridges:
            if (
                existing.tracer_provider is tracer_provider
                and existing.meter_provider is meter_provider
            ):
                return True
        try:
            bridge = _Bridge(tracer_provider, meter_provider)
        except ImportError:
            return False
        bridges.append(bridge)
    metrics.add_listener(bridge)
    return True


def disable_opentelemetry(
    *,
    tracer_provider: Any = None,
    meter_provider: Any = None,
    metrics: obs.MetricsRegistry = obs.METRICS,
) -> bool:
    """Detach the bridge `enable_opentelemetry` made with the same arguments.

    Returns:
        True when a bridge was detached.
    """
    with _lock:
        bridges = _bridges.get(metrics, [])
        for bridge in bridges:
            if (
                bridge.tracer_provider is tracer_provider
                and bridge.meter_provider is meter_provider
            ):
                bridges.remove(bridge)
                metrics.remove_listener(bridge)
                return True
    return False
