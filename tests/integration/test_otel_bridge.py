"""The OpenTelemetry bridge, observed with the OTel SDK's in-memory exporters."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langgraph.store.memory import InMemoryStore

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from agent_history import AgentNode, HistorySettings, HistoryToggles
from agent_history import observability as obs
from agent_history.observability import MetricsRegistry
from agent_history.otel import disable_opentelemetry, enable_opentelemetry
from agent_history.stores import create_graph_store_sync
from agent_history.testing import RecordingChatModel
from tests.support.agent_graphs import build_graph, new_thread, telegram_callback
from tests.support.fault_stores import FaultyStore

SENTINEL = "0tel-body-5e1"


class Telemetry:
    def __init__(self) -> None:
        self.spans = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    def metrics(self) -> dict[str, list[Any]]:
        found: dict[str, list[Any]] = {}
        data = self.reader.get_metrics_data()
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    found[metric.name] = [metric, *metric.data.data_points]
        return found


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    found = Telemetry()
    assert enable_opentelemetry(
        tracer_provider=found.tracer_provider, meter_provider=found.meter_provider
    )
    yield found
    assert disable_opentelemetry(
        tracer_provider=found.tracer_provider, meter_provider=found.meter_provider
    )
    assert not disable_opentelemetry(
        tracer_provider=found.tracer_provider, meter_provider=found.meter_provider
    )
    found.tracer_provider.shutdown()
    found.meter_provider.shutdown()


def test_reads_and_appends_become_spans_and_otel_metrics(
    telemetry: Telemetry, tmp_path: Path
) -> None:
    settings = HistorySettings(
        graph_store_backend="sqlite",
        graph_store_sqlite_path=tmp_path / "s.sqlite",
        checkpoint_sqlite_path=tmp_path / "c.sqlite",
    )
    with create_graph_store_sync(settings) as store:
        node = AgentNode(
            RecordingChatModel(), use_graph_chat_history=True, toggles=HistoryToggles(env={})
        )
        graph = build_graph(node, store)
        graph.invoke(telegram_callback(9, f"hello {SENTINEL}"), new_thread())
    spans = {span.name: span for span in telemetry.spans.get_finished_spans()}
    assert set(spans) == {"agent_history.read", "agent_history.append"}
    read = spans["agent_history.read"]
    assert read.attributes is not None
    assert read.attributes["agent_history.backend"] == "sqlite"
    assert read.attributes["agent_history.channel"] == "telegram"
    assert read.attributes["agent_history.outcome"] == "ok"
    latency = read.attributes["agent_history.latency_seconds"]
    assert isinstance(latency, float) and latency > 0
    assert read.end_time is not None and read.start_time is not None
    assert read.end_time - read.start_time == pytest.approx(latency * 1e9, abs=2)
    assert read.status.status_code is StatusCode.UNSET
    metrics = telemetry.metrics()
    histogram, point = metrics["agent_history_store_read_duration"][:2]
    assert histogram.unit == "s" and point.count == 1
    assert tuple(point.explicit_bounds) == obs.BUCKETS_SECONDS
    assert dict(point.attributes) == {"backend": "sqlite", "channel": "telegram", "outcome": "ok"}
    assert SENTINEL not in str([span.to_json() for span in spans.values()])
    assert "telegram:9" not in str([span.to_json() for span in spans.values()])


def test_failed_attempts_are_error_spans_and_counters(telemetry: Telemetry) -> None:
    faulty = FaultyStore(InMemoryStore())
    faulty.fail_writes = True
    node = AgentNode(
        RecordingChatModel(),
        use_graph_chat_history=True,
        toggles=HistoryToggles(env={}),
        write_attempts=2,
        write_backoff_seconds=0.0,
    )
    build_graph(node, faulty).invoke(telegram_callback(9, "hi"), new_thread())
    appends = [s for s in telemetry.spans.get_finished_spans() if s.name == "agent_history.append"]
    assert [s.status.status_code for s in appends] == [StatusCode.ERROR] * 2
    assert {s.attributes["agent_history.outcome"] for s in appends if s.attributes} == {"fallback"}
    metrics = telemetry.metrics()
    failures = metrics["agent_history_store_write_failures"][1]
    assert failures.value == 1 and dict(failures.attributes) == {
        "backend": "other",
        "channel": "telegram",
    }
    assert "agent_history_fallbacks" in metrics


def test_enable_is_idempotent_and_reports_missing_package() -> None:
    registry = MetricsRegistry()
    telemetry = Telemetry()
    for _ in range(2):
        assert enable_opentelemetry(
            tracer_provider=telemetry.tracer_provider,
            meter_provider=telemetry.meter_provider,
            metrics=registry,
        )
    registry.observe_seconds(obs.STORE_READ_LATENCY, 0.01, backend="memory", outcome="ok")
    assert len(telemetry.spans.get_finished_spans()) == 1  # one bridge, one span


def test_without_the_package_nothing_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_otel(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("opentelemetry"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_otel)
    registry = MetricsRegistry()
    assert enable_opentelemetry(metrics=registry) is False
    registry.inc(obs.FALLBACKS, backend="memory")  # no listener attached, nothing raised
