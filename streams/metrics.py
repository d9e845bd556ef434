"""The worker's Prometheus metrics: one typed container built against an injected registry.

Names are a contract (``tasks/metrics_contract.md``, DESIGN.md "Metrics"): Prometheus rules, the Grafana
dashboard and the benchmarks read them. Base units, ``_total`` counters, no ``user_id`` label.

    metrics = WorkerMetrics.create(CollectorRegistry())
    metrics.events_accepted_total.inc()

Tests build a fresh ``CollectorRegistry()`` each time (registering a name twice in one registry raises
"Duplicated timeseries") and read values with ``registry.get_sample_value(...)``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

__all__ = ["FRESHNESS_BUCKETS", "PREFIX", "LocalCounter", "LocalHistogram", "WorkerMetrics", "parse_exposition",
           "probe_loop_lag"]

PREFIX = "actionstream_"
# event time -> state stored: 5 ms ... 60 s
FRESHNESS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# per-event handling time: 10 µs ... 100 ms
PROCESSING_BUCKETS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 1e-2, 0.1)
HTTP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
ENCODER_SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
# event-loop lag (a timer's wake-up late by): 0.25 ms ... 1 s
LOOP_LAG_BUCKETS = (0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)
LOOP_LAG_PROBE_INTERVAL_S = 0.02
# one garbage collection: 0.1 ms ... 1 s
GC_PAUSE_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class LocalCounter:
    """A counter for the per-event path: ``inc`` is one float add, without prometheus_client's lock.

    The agent counts and times every event (2 counter increments + 2 histogram observations): 3.95 µs per
    event with prometheus_client's classes (each call takes a lock), 0.48 µs with these. The registry reads
    them at scrape time, so the exported values are exact; the exposition is the same as a ``Counter``'s.
    One thread increments one counter (the worker's event loop), as the GIL alone does not make ``+=``
    atomic across threads.
    """

    __slots__ = ("name", "documentation", "value", "created")

    def __init__(self, name: str, documentation: str, registry: CollectorRegistry) -> None:
        self.name, self.documentation = name, documentation
        self.value = 0.0
        self.created = time.time()
        registry.register(self)

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("counters can only be incremented by non-negative amounts")
        self.value += amount

    def describe(self) -> list[Metric]:
        return [CounterMetricFamily(self.name, self.documentation)]

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation)
        family.add_metric([], self.value, created=self.created)
        yield family


class _LocalHistogramChild:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # first bound >= value: buckets are "le"
        self.sum += value


class LocalHistogram:
    """A histogram for the per-event path (see :class:`LocalCounter`), with optional labels.

    ``observe`` on an unlabelled histogram, ``labels(**values).observe`` on a labelled one. Each child is
    observed from one thread (the agent's ``stage="sequence"`` on the event loop, ``stage="realtime"`` on
    the encoder thread); a scrape copies the bucket counts first, so ``_count`` always equals ``+Inf``.
    """

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = (), *,
                 buckets: Sequence[float], registry: CollectorRegistry) -> None:
        self.name, self.documentation = name, documentation
        self.labelnames = tuple(labelnames)
        self.bounds = tuple(float(b) for b in buckets if b != float("inf"))
        self._children: dict[tuple[str, ...], _LocalHistogramChild] = {}
        self._lock = threading.Lock()
        self._plain = None if self.labelnames else self._child(())
        registry.register(self)

    def _child(self, key: tuple[str, ...]) -> _LocalHistogramChild:
        with self._lock:
            child = self._children.get(key)
            if child is None:
                child = self._children[key] = _LocalHistogramChild(self.bounds)
            return child

    def labels(self, **values: str) -> _LocalHistogramChild:
        if set(values) != set(self.labelnames):
            raise ValueError(f"{self.name}: labels {sorted(values)} != {sorted(self.labelnames)}")
        return self._child(tuple(str(values[n]) for n in self.labelnames))

    def observe(self, value: float) -> None:
        if self._plain is None:
            raise ValueError(f"{self.name} has labels {self.labelnames}: use .labels(...).observe")
        self._plain.observe(value)

    def describe(self) -> list[Metric]:
        return [HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        with self._lock:
            children = list(self._children.items())
        les = [floatToGoString(b) for b in self.bounds] + ["+Inf"]
        for key, child in children:
            counts, total = list(child.counts), child.sum
            cumulative, acc = [], 0
            for le, n in zip(les, counts, strict=True):
                acc += n
                cumulative.append((le, float(acc)))
            family.add_metric(list(key), cumulative, total)
        yield family


class WorkerMetrics(NamedTuple):
    """Every metric one worker exports (see the module docstring for the naming rules)."""

    events_consumed_total: LocalCounter
    events_accepted_total: LocalCounter
    events_rejected_total: Counter            # {reason}
    events_duplicate_total: LocalCounter
    events_rerouted_total: LocalCounter
    processing_seconds: LocalHistogram
    freshness_seconds: LocalHistogram         # {stage}: "sequence", "realtime"
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
    event_loop_lag_seconds: LocalHistogram
    gc_pause_seconds: Histogram               # {generation}: "0", "1", "2"
    gc_frozen_objects: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry) -> WorkerMetrics:
        """Register every metric in ``registry`` (one call per registry)."""
        p, r = PREFIX, registry
        return cls(
            events_consumed_total=LocalCounter(
                p + "events_consumed", "Messages read from the input topic (and the reroute topic).",
                registry=r),
            events_accepted_total=LocalCounter(
                p + "events_accepted", "Valid events applied to the sequence table.", registry=r),
            events_rejected_total=Counter(
                p + "events_rejected", "Rejected messages sent to the dead-letter topic, by reason code.",
                ["reason"], registry=r),
            events_duplicate_total=LocalCounter(
                p + "events_duplicate", "Valid events that changed nothing (duplicate event_id or too old "
                "to enter the stored sequence).", registry=r),
            events_rerouted_total=LocalCounter(
                p + "events_rerouted", "Valid events that arrived on a partition not owning their user and "
                "were forwarded to the owner (not part of the contract; explains a second pass).", registry=r),
            processing_seconds=LocalHistogram(
                p + "processing_seconds", "Worker time to handle one event (parse, route, update, store).",
                buckets=PROCESSING_BUCKETS, registry=r),
            freshness_seconds=LocalHistogram(
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
            event_loop_lag_seconds=LocalHistogram(
                p + "event_loop_lag_seconds", f"How late a {LOOP_LAG_PROBE_INTERVAL_S * 1e3:.0f} ms timer on the "
                "worker's event loop woke up: the wait any ready HTTP request or event had behind running code.",
                buckets=LOOP_LAG_BUCKETS, registry=r),
            gc_pause_seconds=Histogram(
                p + "gc_pause_seconds", "Duration of one Python garbage collection, by generation (it holds "
                "the GIL: the event loop waits for it).", ["generation"], buckets=GC_PAUSE_BUCKETS, registry=r),
            gc_frozen_objects=Gauge(
                p + "gc_frozen_objects", "Objects moved out of the collector's reach once the worker was ready "
                "(streams.heap; 0 = not frozen).", registry=r),
        )


async def probe_loop_lag(observe: Callable[[float], None], interval: float = LOOP_LAG_PROBE_INTERVAL_S,
                         clock: Callable[[], float] = time.perf_counter) -> None:
    """Forever: sleep ``interval`` on the running loop and ``observe`` how late the wake-up came (seconds).

    A callback that holds the loop for B seconds (a RocksDB batch write, a long drain) delays this wake-up
    by up to B, exactly as it delays a ready HTTP request; a loop that is never blocked observes ~0.
    """
    while True:
        t = clock()
        await asyncio.sleep(interval)
        observe(max(0.0, clock() - t - interval))


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
