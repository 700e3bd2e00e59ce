"""The metrics registry: seconds, declared labels, closed label values, Prometheus, listeners."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from agent_history import observability as obs
from agent_history.observability import MetricsRegistry, enable_prometheus


def test_durations_are_kept_in_seconds() -> None:
    registry = MetricsRegistry()
    registry.observe_seconds(obs.STORE_READ_LATENCY, 0.003, backend="postgres", outcome="ok")
    registry.observe_seconds(obs.STORE_READ_LATENCY, 0.7, backend="postgres", outcome="ok")
    registry.observe_seconds(obs.STORE_WRITE_LATENCY, 0.0001, backend="sqlite", outcome="ok")
    histogram = registry.snapshot()[obs.STORE_READ_LATENCY]["series"][0]
    assert histogram["count"] == 2
    assert histogram["sum"] == pytest.approx(0.703)
    assert histogram["buckets"][0.005] == 1 and histogram["buckets"][1.0] == 2
    assert obs.STORE_READ_LATENCY.endswith("_seconds")
    assert obs.STORE_WRITE_LATENCY.endswith("_seconds")
    assert registry.value(obs.STORE_WRITE_LATENCY, backend="sqlite") == 1


def test_only_declared_labels_with_closed_values_are_kept() -> None:
    registry = MetricsRegistry()
    registry.inc(obs.FALLBACKS, backend="sqlite", channel="telegram", outcome="fallback")
    registry.inc(obs.FALLBACKS, 2, backend="sqlite", channel="telegram:12345", reason="x")
    registry.inc(obs.KEY_RESOLUTION_FAILURES, backend="redis", outcome="fallback")
    registry.set_gauge(obs.BREAKER_STATE, 2, backend="postgres", channel="telegram")
    snapshot = registry.snapshot()
    assert [s["labels"] for s in snapshot[obs.FALLBACKS]["series"]] == [
        {"backend": "sqlite", "channel": "telegram"},  # outcome is not a fallback label
        {"backend": "sqlite", "channel": "other", "reason": "other"},
    ]
    assert snapshot[obs.KEY_RESOLUTION_FAILURES]["series"] == [
        {"labels": {"backend": "other"}, "value": 1.0}
    ]
    assert snapshot[obs.BREAKER_STATE]["series"][0]["labels"] == {"backend": "postgres"}
    assert registry.value(obs.FALLBACKS) == 3
    assert registry.value(obs.FALLBACKS, channel="other") == 2
    assert "12345" not in str(snapshot)
    registry.reset()
    assert registry.snapshot() == {}


def test_configured_channels_become_label_values_and_nothing_else(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(obs, "_channels", obs.known_channels())  # restored afterwards
    before = obs.known_channels()
    obs.register_channels_from_candidates(
        [
            "slack:{{inputs.team}}:{{inputs.user}}",
            "{{inputs.platform}}:{{inputs.chat_id}}",  # the prefix comes from the request
            "{% if x %}evil{% endif %}:{{y}}",
            "Line Bot:{{inputs.user}}",  # not a plain lower-case identifier
            "no-separator",
        ]
    )
    assert obs.known_channels() == before | {"slack"}
    assert obs.channel_label("slack:T1:U2") == "slack"
    assert obs.channel_label("telegram:42") == "telegram"
    assert obs.channel_label("mystery:42") == "other"
    assert obs.channel_label(None) == "other"
    registry = MetricsRegistry()
    registry.inc(obs.STORE_READ_FAILURES, backend="sqlite", channel="slack")
    registry.inc(obs.STORE_READ_FAILURES, backend="sqlite", channel="mystery")
    assert {
        s["labels"]["channel"] for s in registry.snapshot()[obs.STORE_READ_FAILURES]["series"]
    } == {
        "slack",
        "other",
    }
    obs.register_channels(f"c{i}" for i in range(500))
    assert len(obs.known_channels()) == 64  # the set stays small whatever is registered


def test_prometheus_exposition_in_seconds_and_meaningful_labels_only() -> None:
    registry, prom = MetricsRegistry(), CollectorRegistry()
    assert enable_prometheus(prom, registry) is True
    assert enable_prometheus(prom, registry) is True  # idempotent: no "Duplicated timeseries"
    registry.inc(obs.STORE_WRITE_FAILURES, backend="sqlite", channel="wecom_cs")
    registry.inc(obs.FALLBACKS, backend="sqlite", channel="wecom_cs", outcome="fallback")
    registry.observe_seconds(
        obs.STORE_WRITE_LATENCY, 0.012, backend="sqlite", channel="wecom_cs", outcome="ok"
    )
    registry.set_gauge(obs.BREAKER_STATE, 1, backend="sqlite")
    labels = {"backend": "sqlite", "channel": "wecom_cs"}
    assert prom.get_sample_value("agent_history_store_write_failures_total", labels) == 1.0
    assert prom.get_sample_value("agent_history_fallbacks_total", labels) == 1.0
    ok = {**labels, "outcome": "ok"}
    seconds = "agent_history_store_write_duration_seconds"
    assert prom.get_sample_value(f"{seconds}_count", ok) == 1.0
    assert prom.get_sample_value(f"{seconds}_sum", ok) == pytest.approx(0.012)
    assert prom.get_sample_value(f"{seconds}_bucket", {**ok, "le": "0.01"}) == 0.0
    assert prom.get_sample_value(f"{seconds}_bucket", {**ok, "le": "0.025"}) == 1.0
    assert prom.get_sample_value(f"{seconds}_bucket", {**ok, "le": "+Inf"}) == 1.0
    assert prom.get_sample_value("agent_history_breaker_state", {"backend": "sqlite"}) == 1.0
    text = generate_latest(prom).decode()
    assert 'outcome="other"' not in text and "_ms" not in text
    assert "# TYPE agent_history_store_write_duration_seconds histogram" in text


def test_enable_prometheus_on_the_default_registry_twice() -> None:
    assert enable_prometheus() is True
    assert enable_prometheus() is True


def test_two_registries_in_one_prometheus_registry_are_summed() -> None:
    first, second, prom = MetricsRegistry(), MetricsRegistry(), CollectorRegistry()
    enable_prometheus(prom, first)
    enable_prometheus(prom, second)
    first.inc(obs.SHADOW_DIFFERENCES, backend="memory")
    second.inc(obs.SHADOW_DIFFERENCES, 2, backend="memory")
    labels = {"backend": "memory"}
    assert prom.get_sample_value("agent_history_shadow_differences_total", labels) == 3.0


def test_listeners_see_updates_and_a_failing_one_never_fails_the_caller(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = MetricsRegistry()
    seen: list[tuple[str, str, float, dict[str, str]]] = []

    def broken(*_: object) -> None:
        raise RuntimeError("exporter down")

    registry.add_listener(
        lambda kind, name, value, labels: seen.append((kind, name, value, dict(labels)))
    )
    registry.add_listener(broken)
    registry.observe_seconds(
        obs.STORE_READ_LATENCY, 0.25, backend="sqlite", outcome="ok", key="secret"
    )
    registry.inc(obs.FALLBACKS, backend="sqlite")
    assert seen == [
        ("histogram", obs.STORE_READ_LATENCY, 0.25, {"backend": "sqlite", "outcome": "ok"}),
        ("counter", obs.FALLBACKS, 1.0, {"backend": "sqlite"}),
    ]
    failures = [r for r in caplog.records if r.__dict__.get("event") == "metric_listener_failed"]
    assert len(failures) == 1  # said once, not on every update
    registry.remove_listener(broken)
    registry.inc(obs.FALLBACKS, backend="sqlite")
    assert len(seen) == 3
