"""`actionstream worker`: run one Faust stream worker (sequences, feature API, metrics) in the foreground.

No Faust CLI needed: this builds :class:`~streams.settings.WorkerSettings` (environment ``ACTIONSTREAM_*``
plus the options below), checks the topics, builds the platform (:func:`streams.app.create_platform`)
and runs :class:`faust.Worker`, which stops cleanly on SIGTERM or Ctrl-C (commits offsets, flushes the
archive and the changelog). Several workers with the same ``ACTIONSTREAM_WORKER_ID`` form one consumer
group and share the partitions; give each its own ``--port`` and ``--data-dir``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from streams.errors import BrokerError, ConfigError
from streams.settings import WorkerSettings

HELP = "run a Faust stream worker: sequences, features API, metrics"

log = logging.getLogger("streams.worker")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", type=int, help="HTTP port of the API and /metrics (env ACTIONSTREAM_WEB_PORT; 6066)")
    p.add_argument("--host", help="HTTP host to bind and advertise (env ACTIONSTREAM_WEB_HOST; 127.0.0.1)")
    p.add_argument("--data-dir", type=Path,
                   help="RocksDB state dir (env ACTIONSTREAM_DATA_DIR; default .actionstream/worker-<port>)")
    p.add_argument("--archive-dir", help="event archive dir, '' = off (env ACTIONSTREAM_ARCHIVE_DIR; "
                                         "default .actionstream/archive)")
    p.add_argument("--bootstrap", help="Kafka bootstrap servers host:port[,...] "
                                       "(env ACTIONSTREAM_KAFKA_BOOTSTRAP_SERVERS)")
    p.add_argument("--worker-id", help="Faust app id = consumer group (env ACTIONSTREAM_WORKER_ID; actionstream)")
    p.add_argument("--partitions", type=int, help="partition count of the user-keyed topics (env ACTIONSTREAM_PARTITIONS; 8)")
    p.add_argument("--topic-actions", help="input topic (env ACTIONSTREAM_TOPIC_ACTIONS; user-actions)")
    p.add_argument("--topic-dlq", help="dead-letter topic (env ACTIONSTREAM_TOPIC_DLQ; user-actions-dlq)")


def ensure_topics(settings: WorkerSettings) -> None:
    """Create missing topics (input, DLQ, the internal reroute topic) and check partition counts.

    The reroute topic must exist before the consumer group's first assignment (Faust only creates topics
    an agent consumes alone). An existing user-keyed topic with another partition count than configured
    fails fast with :class:`ConfigError`: co-partitioning is what keeps one sequence per user.
    """
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    try:
        admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers.split(","),
                                 client_id=f"{settings.worker_id}-preflight", request_timeout_ms=10_000,
                                 **settings.kafka_python_security())
    except KafkaError as exc:
        raise BrokerError(f"cannot reach Kafka at {settings.kafka_bootstrap_servers}: {exc}") from None
    try:
        brokers = len(admin.describe_cluster().get("brokers") or [1])
        replication = min(3, brokers)
        existing = set(admin.list_topics())
        keyed = (settings.topic_actions, settings.reroute_topic)
        for name in (*keyed, settings.topic_dlq):
            if name in existing:
                continue
            try:
                admin.create_topics([NewTopic(name, settings.partitions, replication)])
                log.info("created topic %r (%d partitions, replication %d)", name, settings.partitions, replication)
            except TopicAlreadyExistsError:
                pass
        for desc in admin.describe_topics(list(keyed)):
            n = len(desc.get("partitions") or [])
            if n and n != settings.partitions:
                raise ConfigError(
                    f"topic {desc['topic']!r} has {n} partitions but ACTIONSTREAM_PARTITIONS={settings.partitions}: "
                    "all user-keyed topics must share one partition count (set ACTIONSTREAM_PARTITIONS="
                    f"{n} or recreate the topic)")
    finally:
        admin.close()


def run(args: argparse.Namespace) -> int:
    settings = WorkerSettings.load(
        web_port=args.port, web_host=args.host, data_dir=args.data_dir, archive_dir=args.archive_dir,
        kafka_bootstrap_servers=args.bootstrap, worker_id=args.worker_id, partitions=args.partitions,
        topic_actions=args.topic_actions, topic_dlq=args.topic_dlq)
    ensure_topics(settings)
    from streams.daily import ensure_embeddings_topic
    ensure_embeddings_topic(settings)  # the daily table's source topic (compacted, co-partitioned)

    import faust

    from streams.app import create_platform

    platform = create_platform(settings)
    log.info("worker %r: Kafka %s, input %r (%d partitions), DLQ %r, state %s, archive %s",
             settings.worker_id, settings.kafka_bootstrap_servers, settings.topic_actions, settings.partitions,
             settings.topic_dlq, settings.state_dir.resolve(),
             settings.archive_dir.resolve() if settings.archive_dir else "off")
    log.info("HTTP API and /metrics on http://%s:%d (ready at /readyz once recovery finished)",
             settings.web_host, settings.web_port)
    # blocking_timeout: Faust's detector (SIGALRM) logs "Blocking detected" with the stack whenever the
    # event loop is held longer than this; the app setting alone does not arm it, the Worker must.
    worker = faust.Worker(platform.app, loglevel=args.log_level, quiet=True, redirect_stdouts=False,
                          override_logging=False, blocking_timeout=settings.blocking_timeout_s)
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 0
        log.info("worker stopped (exit code %d)", code)
        return code
    return 0
