"""The stream worker: a Faust app built from :class:`~streams.settings.WorkerSettings`.

    platform = create_platform(WorkerSettings.load())      # builds, does not start
    faust.Worker(platform.app).execute_from_commandline()  # what `actionstream worker` does

What it wires (the logic lives in small modules beside this one):

* topics: ``user-actions`` (input) and the internal reroute topic ``<worker_id>-user-actions-by-user``,
  both consumed by one agent (:mod:`streams.agents`); ``user-actions-dlq`` for rejects;
* tables (:mod:`streams.tables`): ``sequences`` (user_id -> packed blob, RocksDB, changelog);
* the archive sink (:class:`streams.archive.ArchiveWriter`), flushed every ``archive_flush_interval_s``
  and before every offset commit;
* metrics (:mod:`streams.metrics`) against an injected registry, gauges refreshed every second;
* the HTTP API (:func:`streams.api.register_api`) on Faust's web server (``web_host:web_port``).

Faust settings chosen (why: ``WorkerSettings`` docstring and ``shared/reference/measurements.md``):
short session/heartbeat/rebalance timeouts so a worker is ready and takes over in seconds,
``stream_recovery_delay=0`` (Faust waits 3 s before recovery by default), commit every second,
``topic_disable_leader`` (no leader topic: nothing here needs a leader), no standbys by default.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass, field
from typing import Any

import faust
from prometheus_client import CollectorRegistry

from streams.agents import EventHandler
from streams.archive import ArchiveWriter
from streams.events import EventParser
from streams.heap import GcPauseRecorder, freeze_heap
from streams.metrics import WorkerMetrics, probe_loop_lag
from streams.outbox import Outbox
from streams.sequence import SequenceCodec
from streams.settings import WorkerSettings
from streams.tables import SequenceStore, create_sequences_table

__all__ = ["Platform", "Tables", "create_platform"]

log = logging.getLogger(__name__)


@dataclass
class Tables:
    """The worker's tables: ``sequences``, ``daily`` (Faust) and ``realtime`` (:mod:`streams.hybrid`).

    ``realtime`` is a :class:`streams.realtime.RealtimeStore` (derived state, no changelog; ``.get(user_key)``
    -> float32 bytes), None without a realtime checkpoint.
    """

    sequences: faust.Table
    realtime: Any = None
    daily: faust.Table | None = None


@dataclass
class Platform:
    """Everything one worker process holds; passed to the API (:func:`streams.api.register_api`).

    Fields:
        app: the :class:`faust.App` (``app.page`` for views, ``app.tables`` for table_route).
        settings: the frozen :class:`WorkerSettings` of this process.
        metrics / registry: the metrics container and the registry ``/metrics`` must expose.
        codec: converts stored acts to JSON (``codec.to_json``) and knows the vocabularies.
        parser: the Event v1 parser (validation, as used by the agent).
        tables: the Faust tables (``tables.sequences``).
        sequences: :class:`SequenceStore` - ``sequences.get_blob(user_id)`` reads a user's stored blob on
            this worker (``streams.sequence.decode`` it); ``sequences.owner(user_id.encode())`` is the
            owning partition.
        handler: the agent's per-message logic; archive: the archive sink or None.
        outbox: records the agent produces (changelog, reroute, DLQ), flushed before each commit.
        scorer / encoder: :class:`transact.inference.Scorer` / ``Encoder`` loaded from settings, or None
            (:mod:`streams.hybrid`).
    """

    app: faust.App
    settings: WorkerSettings
    metrics: WorkerMetrics
    registry: CollectorRegistry
    codec: SequenceCodec
    parser: EventParser
    tables: Tables
    sequences: SequenceStore
    handler: EventHandler
    outbox: Outbox
    archive: ArchiveWriter | None = None
    scorer: Any = None
    encoder: Any = None
    extras: dict[str, Any] = field(default_factory=dict)

    def is_ready(self) -> bool:
        """True once table recovery finished and no recovery is running (``/readyz``)."""
        recovery = self.app.tables.recovery  # type: ignore[attr-defined]
        return bool(recovery.completed.is_set() and not recovery.in_recovery)


def _broker_urls(settings: WorkerSettings) -> list[str]:
    return [f"kafka://{hp.strip()}" for hp in settings.kafka_bootstrap_servers.split(",") if hp.strip()]


def _credentials(settings: WorkerSettings) -> Any:
    proto = settings.kafka_security_protocol
    if proto == "PLAINTEXT":
        return None
    context: ssl.SSLContext | None = None
    if proto.endswith("SSL"):
        context = ssl.create_default_context(
            cafile=str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None)
        if settings.kafka_ssl_certfile:
            context.load_cert_chain(str(settings.kafka_ssl_certfile),
                                    str(settings.kafka_ssl_keyfile) if settings.kafka_ssl_keyfile else None)
    if proto.startswith("SASL"):
        return faust.SASLCredentials(username=settings.kafka_sasl_username,
                                     password=settings.kafka_sasl_password.get_secret_value(),
                                     mechanism=settings.kafka_sasl_mechanism, ssl_context=context)
    return faust.SSLCredentials(context)


def create_app(settings: WorkerSettings) -> faust.App:
    """The :class:`faust.App` configured from settings (not started)."""
    state_dir = settings.state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    conf: dict[str, Any] = dict(
        broker=_broker_urls(settings),
        broker_credentials=_credentials(settings),
        store="rocksdb://",
        datadir=str(state_dir),
        autodiscover=False,
        key_serializer="raw",  # every topic and table here carries bytes we encode ourselves
        value_serializer="raw",
        web_enabled=True,
        web_host=settings.web_host,
        web_bind=settings.web_host,
        web_port=settings.web_port,
        canonical_url=f"http://{settings.web_host}:{settings.web_port}",
        topic_partitions=settings.partitions,
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=settings.heartbeat_interval_s,
        broker_rebalance_timeout=settings.rebalance_timeout_s,
        broker_max_poll_interval=settings.max_poll_interval_s,
        broker_commit_interval=settings.commit_interval_s,
        broker_max_poll_records=settings.max_poll_records,
        # changelog/DLQ/reroute records: 5 ms linger batches them into few produce requests (profiled:
        # with no linger, socket writes of tiny produce requests took ~12% of the worker's CPU)
        producer_linger=settings.producer_linger_s,
        # the outbox sends one batch per partition per flush: 512 KB batches (under the broker's 1 MB
        # message limit) instead of 16 KB cut ~2,000 changelog records into a few produce requests
        producer_max_batch_size=524_288,
        stream_recovery_delay=0.0,
        stream_buffer_maxsize=settings.stream_buffer_maxsize,
        table_standby_replicas=settings.standby_replicas,
        web_tables_enabled=False,  # no table dumps over HTTP; the API owns the routes
        web_graph_enabled=False,
        web_stats_enabled=False,
    )
    if settings.blocking_timeout_s:
        conf["blocking_timeout"] = settings.blocking_timeout_s
    app = faust.App(settings.worker_id, **conf)
    from streams.drain import install
    install(app, fast_drain=settings.fast_drain, fetch_max_wait_ms=settings.fetch_max_wait_ms)
    return app


def create_platform(settings: WorkerSettings, registry: CollectorRegistry | None = None) -> Platform:
    """Build the worker (app, tables, agent, timers, API); nothing connects until the app starts."""
    registry = registry if registry is not None else CollectorRegistry()
    metrics = WorkerMetrics.create(registry)
    app = create_app(settings)
    codec = SequenceCodec.from_settings(settings)
    parser = EventParser.from_settings(settings)
    sequences_table = create_sequences_table(app, settings)
    outbox = Outbox(app, sequences_table)
    store = SequenceStore(sequences_table, codec, settings.partitions, outbox)
    archive = ArchiveWriter(settings.archive_dir) if settings.archive_dir is not None else None

    raw: dict[str, Any] = dict(key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
    source = app.topic(settings.topic_actions, settings.reroute_topic, partitions=settings.partitions, **raw)

    def send_dlq(key: bytes | None, value: bytes, partition: int | None) -> None:
        outbox.send(settings.topic_dlq, partition, key, value)

    def send_reroute(key: bytes | None, value: bytes, partition: int | None) -> None:
        outbox.send(settings.reroute_topic, partition, key, value)

    handler = EventHandler(parser, codec, store, metrics, send_dlq, send_reroute, settings.reroute_topic, archive)
    platform = Platform(app=app, settings=settings, metrics=metrics, registry=registry, codec=codec,
                        parser=parser, tables=Tables(sequences=sequences_table), sequences=store,
                        handler=handler, outbox=outbox, archive=archive)

    @app.agent(source, name="sequences")
    async def sequence_agent(stream: faust.StreamT) -> None:
        handle = handler.handle
        async for _ in stream:  # not stream.events(): one async-generator hop less per event
            m = stream.current_event.message  # type: ignore[union-attr]
            handle(m.key, m.value, m.topic, m.partition, m.offset, m.timestamp)

    _install_commit_hook(platform)
    _install_timers(platform)

    from streams.hybrid import install_hybrid  # models, realtime vectors, daily table (issue 5)
    install_hybrid(platform)

    from streams.api import register_api  # B2's module; imported here so `--help` stays light
    register_api(platform)
    return platform


def _install_commit_hook(platform: Platform) -> None:
    """Before Faust commits offsets: hand the outbox to the producer, write the archive, then flush.

    Faust's ``Consumer._commit_offsets`` (and its rebalance and stop paths) await ``app.producer.flush()``
    right before committing; we wrap that one method of this app's producer instance, so a committed
    input offset always has its changelog/reroute/DLQ records acknowledged and its archive lines on disk.
    """
    archive, outbox = platform.archive, platform.outbox
    producer = platform.app.producer
    flush = producer.flush

    async def flush_outbox_archive_then_producer() -> None:
        await outbox.flush()
        if archive is not None:
            archive.flush()
        await flush()

    producer.flush = flush_outbox_archive_then_producer  # type: ignore[method-assign]


def _install_timers(platform: Platform) -> None:
    app, m = platform.app, platform.metrics
    settings = platform.settings
    watched = {settings.topic_actions, settings.reroute_topic}

    if platform.archive is not None:
        archive = platform.archive

        @app.timer(settings.archive_flush_interval_s, name="archive-flush")
        async def flush_archive() -> None:
            archive.flush()

        @app.on_before_shutdown.connect  # type: ignore[arg-type]
        async def _flush_on_stop(app_: Any, **kwargs: Any) -> None:
            n = archive.flush()
            log.info("archive flushed on stop (%d lines, %d total)", n, archive.lines_written)

    gc_pause = {g: m.gc_pause_seconds.labels(generation=str(g)) for g in range(3)}

    @app.task
    async def loop_lag_probe() -> None:
        # the GC recorder lives as long as the running app (tests build several platforms in one process)
        recorder = GcPauseRecorder(lambda gen, s: gc_pause[min(gen, 2)].observe(s)).install()
        try:
            await probe_loop_lag(m.event_loop_lag_seconds.observe)
        finally:
            recorder.uninstall()

    frozen = [not platform.settings.gc_freeze]  # True once done (or when turned off)

    def freeze_once() -> None:
        heap = freeze_heap()
        frozen[0] = True
        m.gc_frozen_objects.set(heap.objects)
        log.info("ready: froze the start-up heap, %d objects out of the garbage collector's reach "
                 "(one full collection first: %.0f ms; ACTIONSTREAM_GC_FREEZE=false turns this off)",
                 heap.objects, heap.seconds * 1e3)

    handoff_waits_seen = [0]

    @app.timer(1.0, name="metrics-gauges")
    async def refresh_gauges() -> None:
        ready = platform.is_ready()
        m.recovery_ready.set(1 if ready else 0)
        if ready and not frozen[0]:
            freeze_once()
        m.recovery_remaining_records.set(app.tables.recovery.active_remaining_total())  # type: ignore[attr-defined]
        m.table_keys.labels(table="sequences").set(platform.sequences.count_keys())
        consumer = app.consumer
        waits = getattr(consumer, "handoff_waits", 0)  # streams.drain.FastDrainConsumer
        if waits > handoff_waits_seen[0]:
            m.consumer_handoff_waits_total.inc(waits - handoff_waits_seen[0])
            handoff_waits_seen[0] = waits
        m.consumer_lag_messages.clear()
        read = getattr(consumer, "_read_offset", {})
        for tp in consumer.assignment():
            if tp.topic not in watched:
                continue
            try:
                hw = consumer.highwater(tp)
            except Exception:  # noqa: BLE001 - partition not fetched yet
                continue
            if hw is None:
                continue
            pos = read.get(tp)
            m.consumer_lag_messages.labels(topic=tp.topic, partition=str(tp.partition)).set(
                max(0, hw - (pos + 1 if pos is not None else 0)))
