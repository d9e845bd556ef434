"""The worker's Prometheus metrics: one typed container built against an injected registry.

Names are a contract (``tasks/metrics_contract.md``, DESIGN.md "Metrics"): Prometheus rules, the Grafana
dashboard and the benchmarks read them. Base units, ``_total`` counters, no ``user_id`` label.

    metrics = WorkerMetrics.create(CollectorRegistry())
    metrics.events_accepted_total.inc()

Tests build a fresh ``CollectorRegistry()`` each time (registering a name twice in one registry raises
"Duplicated timeseries") and read values with ``registry.get_sample_value(...)``.
"""

from __future__ import annotations

from typing import NamedTuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["FRESHNESS_BUCKETS", "PREFIX", "WorkerMetrics", "parse_exposition"]

PREFIX = "actionstream_"
# event time -> state stored: 5 ms ... 60 s
FRESHNESS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# per-event handling time: 10 µs ... 100 ms
PROCESSING_BUCKETS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 1e-2, 0.1)
HTTP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
ENCODER_SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class WorkerMetrics(NamedTuple):
    """Every metric one worker exports (see the module docstring for the naming rules)."""

    events_consumed_total: Counter
    events_accepted_total: Counter
    events_rejected_total: Counter            # {reason}
    events_duplicate_total: Counter
    events_rerouted_total: Counter
    processing_seconds: Histogram
    freshness_seconds: Histogram              # {stage}: "sequence", "realtime"
    table_keys: Gauge                         # {table}: "sequences", "realtime", "daily"
    recovery_ready: Gauge
    recovery_remaining_records: Gauge
    consumer_lag_messages: Gauge              # {topic, partition}
    consumer_handoff_waits_total: Counter
    http_request_duration_seconds: Histogram  # {route, method, status}
    encoder_batch_size: Histogram
    encoder_seconds: Histogram
    model_loaded: Gauge                       # {model}
    model_info: Gauge                         # {model, version}
    last_event_timestamp_seconds: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry) -> WorkerMetrics:
        """Register every metric in ``registry`` (one call per registry)."""
        p, r = PREFIX, registry
        return cls(
            events_consumed_total=Counter(
                p + "events_consumed", "Messages read from the input topic (and the reroute topic).",
                registry=r),
            events_accepted_total=Counter(
                p + "events_accepted", "Valid events applied to the sequence table.", registry=r),
            events_rejected_total=Counter(
                p + "events_rejected", "Rejected messages sent to the dead-letter topic, by reason code.",
                ["reason"], registry=r),
            events_duplicate_total=Counter(
                p + "events_duplicate", "Valid events that changed nothing (duplicate event_id or too old "
                "to enter the stored sequence).", registry=r),
            events_rerouted_total=Counter(
                p + "events_rerouted", "Valid events that arrived on a partition not owning their user and "
                "were forwarded to the owner (not part of the contract; explains a second pass).", registry=r),
            processing_seconds=Histogram(
                p + "processing_seconds", "Worker time to handle one event (parse, route, update, store).",
                buckets=PROCESSING_BUCKETS, registry=r),
            freshness_seconds=Histogram(
                p + "freshness_seconds", "Event time to state stored, by stage (sequence, realtime).",
                ["stage"], buckets=FRESHNESS_BUCKETS, registry=r),
            table_keys=Gauge(p + "table_keys", "Keys in a table on this worker.", ["table"], registry=r),
            recovery_ready=Gauge(
                p + "recovery_ready", "1 once table recovery finished (mirrors /readyz), else 0.", registry=r),
            recovery_remaining_records=Gauge(
                p + "recovery_remaining_records", "Changelog records left to replay.", registry=r),
            consumer_lag_messages=Gauge(
                p + "consumer_lag_messages", "End offset minus consumer position, per assigned partition.",
                ["topic", "partition"], registry=r),
            consumer_handoff_waits_total=Counter(
                p + "consumer_handoff_waits", "Messages the consumer could not hand to the agent at once "
                "(agent buffer full, flow suspended for a rebalance): back-pressure.", registry=r),
            http_request_duration_seconds=Histogram(
                p + "http_request_duration_seconds", "HTTP request latency by route template, method, status.",
                ["route", "method", "status"], buckets=HTTP_BUCKETS, registry=r),
            encoder_batch_size=Histogram(
                p + "encoder_batch_size", "Sequences per TransAct encoder micro-batch.",
                buckets=BATCH_SIZE_BUCKETS, registry=r),
            encoder_seconds=Histogram(
                p + "encoder_seconds", "Wall time of one TransAct encoder micro-batch.",
                buckets=ENCODER_SECONDS_BUCKETS, registry=r),
            model_loaded=Gauge(p + "model_loaded", "1 when the model is loaded, else 0.", ["model"], registry=r),
            model_info=Gauge(p + "model_info", "Loaded model version (value is always 1).",
                             ["model", "version"], registry=r),
            last_event_timestamp_seconds=Gauge(
                p + "last_event_timestamp_seconds", "Event time of the newest applied event, epoch seconds.",
                registry=r),
        )


def parse_exposition(text: str) -> dict[str, float]:
    """Prometheus text format -> ``{'name{labels}': value}`` (comments and unparsable lines skipped).

    The value is the last field, so label values may hold spaces or braces (``route="/v1/users/{user_id}"``).
    Used by the tests' worker harness and the benchmarks to read ``/metrics``."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        try:
            out[name] = float(value)
        except ValueError:
            continue
    return out
