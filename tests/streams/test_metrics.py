"""The worker's metrics container: every contract name, Prometheus naming rules, an injected registry."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from streams.metrics import WorkerMetrics

CONTRACT = {
    "actionstream_events_consumed_total", "actionstream_events_accepted_total",
    "actionstream_events_rejected_total", "actionstream_events_duplicate_total",
    "actionstream_processing_seconds", "actionstream_freshness_seconds", "actionstream_table_keys",
    "actionstream_recovery_ready", "actionstream_recovery_remaining_records",
    "actionstream_consumer_lag_messages", "actionstream_http_request_duration_seconds",
    "actionstream_encoder_batch_size", "actionstream_encoder_seconds", "actionstream_model_loaded",
    "actionstream_model_info", "actionstream_last_event_timestamp_seconds",
}


def _exposed_names(registry: CollectorRegistry) -> set[str]:
    names = set()
    for metric in registry.collect():
        for sample in metric.samples:
            names.add(sample.name)
        names.add(metric.name + ("_total" if metric.type == "counter" else ""))
    return names


def _touch(m: WorkerMetrics) -> None:
    m.events_rejected_total.labels(reason="invalid_json").inc()
    m.freshness_seconds.labels(stage="sequence").observe(0.02)
    m.table_keys.labels(table="sequences").set(3)
    m.consumer_lag_messages.labels(topic="t", partition="0").set(1)
    m.http_request_duration_seconds.labels(route="/v1/users/{user_id}/features", method="GET",
                                           status="200").observe(0.001)
    m.model_loaded.labels(model="transact").set(1)
    m.model_info.labels(model="transact", version="v1").set(1)


def test_every_contract_name_is_exported() -> None:
    registry = CollectorRegistry()
    m = WorkerMetrics.create(registry)
    _touch(m)
    missing = CONTRACT - _exposed_names(registry)
    assert not missing


def test_naming_rules_no_user_label_and_base_units() -> None:
    registry = CollectorRegistry()
    _touch(WorkerMetrics.create(registry))
    for metric in registry.collect():
        assert metric.name.startswith("actionstream_")
        for sample in metric.samples:
            assert "user_id" not in sample.labels and "user" not in sample.labels
        if metric.type == "counter":
            assert any(s.name.endswith("_total") for s in metric.samples)
        assert not metric.name.endswith(("_ms", "_milliseconds", "_bytes_kb"))


def test_registries_are_independent_and_values_readable() -> None:
    r1, r2 = CollectorRegistry(), CollectorRegistry()
    m1, m2 = WorkerMetrics.create(r1), WorkerMetrics.create(r2)  # no "Duplicated timeseries"
    m1.events_accepted_total.inc(3)
    m1.events_rejected_total.labels(reason="unknown_action").inc()
    m1.freshness_seconds.labels(stage="sequence").observe(0.3)
    assert r1.get_sample_value("actionstream_events_accepted_total") == 3
    assert r2.get_sample_value("actionstream_events_accepted_total") == 0
    assert r1.get_sample_value("actionstream_events_rejected_total", {"reason": "unknown_action"}) == 1
    # 0.3 s lands in the 0.5 s bucket, not the 0.25 s one
    assert r1.get_sample_value("actionstream_freshness_seconds_bucket", {"stage": "sequence", "le": "0.25"}) == 0
    assert r1.get_sample_value("actionstream_freshness_seconds_bucket", {"stage": "sequence", "le": "0.5"}) == 1
    assert b"actionstream_events_accepted_total 3.0" in generate_latest(r1)
    assert m2.events_accepted_total is not m1.events_accepted_total


def test_parse_exposition_keeps_braces_and_spaces_inside_label_values() -> None:
    from streams.metrics import parse_exposition
    text = ('# HELP x y\n'
            'a_total 3.0\n'
            'h_bucket{le="0.1",route="/v1/users/{user_id}/features"} 7.0\n'
            'g{label="with space"} -1.5\n'
            'bad line\n')
    assert parse_exposition(text) == {"a_total": 3.0,
                                      'h_bucket{le="0.1",route="/v1/users/{user_id}/features"}': 7.0,
                                      'g{label="with space"}': -1.5}


def test_local_counter_and_histogram_expose_what_prometheus_clients_own_classes_do() -> None:
    """The per-event metrics (streams.metrics.LocalCounter / LocalHistogram) give the same samples as
    prometheus_client's Counter / Histogram for the same increments and observations (values on bucket
    bounds included: buckets are "less or equal")."""
    from prometheus_client import Counter, Histogram

    from streams.metrics import FRESHNESS_BUCKETS, LocalCounter, LocalHistogram

    ours, theirs = CollectorRegistry(), CollectorRegistry()
    c1, c2 = LocalCounter("x_events", "doc", ours), Counter("x_events", "doc", registry=theirs)
    h1 = LocalHistogram("x_seconds", "doc", ["stage"], buckets=FRESHNESS_BUCKETS, registry=ours)
    h2 = Histogram("x_seconds", "doc", ["stage"], buckets=FRESHNESS_BUCKETS, registry=theirs)
    p1 = LocalHistogram("x_plain_seconds", "doc", buckets=(0.1, 1.0), registry=ours)
    p2 = Histogram("x_plain_seconds", "doc", buckets=(0.1, 1.0), registry=theirs)
    values = [0.0, 0.005, 0.0051, 0.3, 0.25, 1.0, 59.9, 60.0, 61.0, 1e9]
    for v in values:
        c1.inc(v), c2.inc(v)
        for stage in ("sequence", "realtime"):
            h1.labels(stage=stage).observe(v), h2.labels(stage=stage).observe(v)
        p1.observe(v), p2.observe(v)

    def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return {(s.name, tuple(sorted(s.labels.items()))): s.value for m in registry.collect() for s in m.samples
                if not s.name.endswith("_created")}

    assert samples(ours) == samples(theirs)
    assert len(samples(ours)) == 1 + 2 * (len(FRESHNESS_BUCKETS) + 3) + (2 + 3)
    with pytest.raises(ValueError):
        c1.inc(-1)
    with pytest.raises(ValueError):
        h1.observe(1.0)  # labelled: needs .labels(stage=...)


def test_loop_lag_probe_sees_a_blocking_callback() -> None:
    """A callback holding the loop for 30 ms shows up as one ~30 ms lag; an idle loop observes ~0."""
    import asyncio
    import time

    from streams.metrics import probe_loop_lag

    seen: list[float] = []

    async def main() -> None:
        probe = asyncio.ensure_future(probe_loop_lag(seen.append, interval=0.005))
        await asyncio.sleep(0.05)
        idle = len(seen)
        asyncio.get_running_loop().call_soon(time.sleep, 0.03)  # blocks the loop, as a big sync write would
        await asyncio.sleep(0.06)
        probe.cancel()
        assert idle >= 3
        assert max(seen[:idle]) < 0.02

    asyncio.run(main())
    assert 0.02 <= max(seen) < 0.2
