"""The ``daily`` table: PinnerFormer user embeddings from the compacted ``pinnerformer-embeddings`` topic.

PinnerFormer (Pancha et al., KDD 2022) is computed once a day in batch (:mod:`embeddings.daily_job`) and
combined with realtime features at serving time (paper sec. 5, "realtime + daily"). The daily job publishes
one record per changed user (contract, ``tasks/contracts_topics.md``)::

    key = user_id (UTF-8), value = {"user_id": str, "model_version": str, "date": "YYYY-MM-DD", "vector": [float]}

An agent on that topic validates each record (:func:`parse_daily_record`) and stores its normalised JSON
bytes in the Faust table ``daily`` (key = user_id UTF-8 bytes, RocksDB, changelog), which the API serves as
``daily`` / ``daily_date`` / ``daily_model_version`` and passes to the ranking model when it was trained with
``daily_dim > 0``. A tombstone (null value) deletes the user's record. Last write wins, as on the compacted
topic itself.

Co-partitioning: the daily job publishes with kafka-python, whose keyed partitioner is murmur2 like Java's
and like :func:`streams.tables.owner_partition`, so a user's record arrives on the partition that owns the
user's sequence, and Faust's assignor gives co-subscribed topics with the same partition count to the same
worker. :func:`ensure_embeddings_topic` creates the topic (compacted, ``ACTIONSTREAM_PARTITIONS``
partitions) before the worker starts. A record on another partition (a producer with another partitioner)
is still stored, on the partition it arrived on, and logged: a single worker serves it, several workers
may answer ``daily: null`` for that user. An existing topic with another partition count stops the worker
at start-up (:class:`~streams.errors.ConfigError`), as for the input topic.

Bad records (not JSON, missing/invalid fields, key and user_id disagreeing, non-finite values) go to the
dead-letter topic with a ``daily_*`` reason code (counted in ``actionstream_events_rejected_total{reason}``)
and change nothing. Writes use the same direct RocksDB + ``send_changelog`` path as the sequences table
(:class:`streams.tables.SequenceStore`): a daily run publishes millions of records in a burst.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from typing import Any, cast

import faust
import orjson

from streams.agents import Send, dead_letter
from streams.metrics import WorkerMetrics
from streams.models import MODEL_DAILY
from streams.settings import KafkaSettings, WorkerSettings
from streams.tables import SequenceStore

__all__ = ["MAX_DAILY_DIM", "DailyHandler", "DailyRejection", "DailyStore", "create_daily_table",
           "ensure_embeddings_topic", "parse_daily_record"]

log = logging.getLogger(__name__)

MAX_DAILY_DIM = 4096


class DailyRejection(ValueError):
    """A daily-embedding record that breaks the contract: ``reason`` code + human message."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def parse_daily_record(key: bytes | None, value: bytes) -> dict[str, Any]:
    """Validate one record of the embeddings topic; return it normalised (the four contract fields).

    Raises:
        DailyRejection: reason ``daily_invalid_json``, ``daily_missing_key``, ``daily_invalid_record``
            (message names the field) or ``daily_key_mismatch``.
    """
    try:
        rec = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise DailyRejection("daily_invalid_json", f"not valid JSON: {exc}") from None
    if not isinstance(rec, dict):
        raise DailyRejection("daily_invalid_json", f"expected a JSON object, got {type(rec).__name__}")
    for name in ("user_id", "model_version", "date"):
        v = rec.get(name)
        if not isinstance(v, str) or not v:
            raise DailyRejection("daily_invalid_record", f"field {name!r} must be a non-empty string, got {v!r:.60}")
    try:
        dt.date.fromisoformat(rec["date"])
    except ValueError:
        raise DailyRejection("daily_invalid_record", f"field 'date' must be YYYY-MM-DD, got {rec['date']!r:.40}") from None
    vec = rec.get("vector")
    if not isinstance(vec, list) or not 1 <= len(vec) <= MAX_DAILY_DIM:
        raise DailyRejection("daily_invalid_record",
                             f"field 'vector' must be a list of 1..{MAX_DAILY_DIM} numbers")
    for i, x in enumerate(vec):
        if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
            raise DailyRejection("daily_invalid_record", f"vector[{i}] must be a finite number, got {x!r:.40}")
    if key is None:
        raise DailyRejection("daily_missing_key", "record without a key: the key must be the user_id")
    if key != rec["user_id"].encode("utf-8", "surrogatepass"):
        raise DailyRejection("daily_key_mismatch", f"key {key[:60]!r} differs from user_id {rec['user_id']!r:.60}")
    return {"user_id": rec["user_id"], "model_version": rec["model_version"], "date": rec["date"],
            "vector": [float(x) for x in vec]}


def create_daily_table(app: faust.App, settings: WorkerSettings) -> faust.Table:
    """The changelog-backed RocksDB table of daily records (raw bytes keys and values)."""
    table = app.Table("daily", default=None, partitions=settings.partitions, key_type=bytes, value_type=bytes,
                      help="user_id -> daily PinnerFormer record (JSON bytes, contracts_topics.md)")
    return cast(faust.Table, table)


class DailyStore(SequenceStore):
    """The ``daily`` table through :class:`SequenceStore`'s raw partition access (``get_blob``, ``count_keys``),
    plus :meth:`put` (call inside the daily agent's stream iteration, for a message of ``partition``)."""

    __slots__ = ()

    def put(self, partition: int, key: bytes, value: bytes | None) -> None:
        """Store (or, ``value=None``, delete) one record; queue its changelog record."""
        if self.is_rocksdb:
            db = self._db(partition)
            if value is None:
                db.delete(key)
            else:
                db.put(key, value)
            self.table.send_changelog(partition, key, value, "raw", "raw")
        elif value is None:
            self.table.pop(key, None)
        else:
            self.table[key] = value


class DailyHandler:
    """Handles one message of the embeddings topic (no Faust inside; testable without a broker)."""

    def __init__(self, store: DailyStore, metrics: WorkerMetrics, send_dlq: Send,
                 daily_dim: int = 0) -> None:
        self.store = store
        self.send_dlq = send_dlq
        self.daily_dim = daily_dim  # the ranking model's; 0 = not used
        self._rejected = metrics.events_rejected_total
        self._info = metrics.model_info
        self._loaded = metrics.model_loaded.labels(model=MODEL_DAILY)
        self.version: str | None = None
        self.stored = 0
        self.misrouted = 0
        self._warned_dims: set[int] = set()

    def handle(self, key: bytes | None, value: bytes | None, topic: str, partition: int, offset: int) -> str:
        """Apply one record; return the outcome: stored, deleted or rejected."""
        try:
            if value is None:
                if key is None:
                    raise DailyRejection("daily_missing_key", "tombstone without a key")
                self.store.put(partition, key, None)
                return "deleted"
            rec = parse_daily_record(key, value)
        except DailyRejection as exc:
            self._rejected.labels(reason=exc.reason).inc()
            log.warning("daily record at %s[%d]@%d rejected (%s): %s", topic, partition, offset, exc.reason, exc)
            self.send_dlq(key, dead_letter(exc.reason, str(exc), topic, partition, offset, value), None)
            return "rejected"
        assert key is not None
        owner = self.store.owner(key)
        if owner != partition:
            self.misrouted += 1
            if self.misrouted == 1 or self.misrouted % 1000 == 0:
                log.warning("%d daily records arrived on a partition not owning their user (e.g. %r on %d, owner "
                            "%d): publish with a murmur2 keyed partitioner (Java/kafka-python default)",
                            self.misrouted, rec["user_id"], partition, owner)
        dim = len(rec["vector"])
        if self.daily_dim and dim != self.daily_dim and dim not in self._warned_dims:
            self._warned_dims.add(dim)
            log.warning("daily vectors of model %s have %d values, the ranking model expects %d: scoring these "
                        "users fails until the models agree", rec["model_version"], dim, self.daily_dim)
        self.store.put(partition, key, orjson.dumps(rec))
        self.stored += 1
        if rec["model_version"] != self.version:
            if self.version is not None:
                self._info.remove(MODEL_DAILY, self.version)
            self.version = rec["model_version"]
            self._info.labels(model=MODEL_DAILY, version=self.version).set(1)
            self._loaded.set(1)
        return "stored"


def ensure_embeddings_topic(settings: KafkaSettings) -> None:
    """Create ``topic_embeddings`` (compacted, ``settings.partitions``) if missing; verify it otherwise.

    Raises:
        ConfigError: the topic exists with another partition count (records would not be co-partitioned
            with the users' sequences, and the ``daily`` changelog has ``settings.partitions`` partitions)
            or without ``cleanup.policy=compact`` (old users' records would expire).
        BrokerError: the cluster cannot be reached or refused the creation.
    """
    from streams.errors import BrokerError, ConfigError
    from streams.topics import TOPIC_ALREADY_EXISTS, admin_client, describe_topics

    name = settings.topic_embeddings
    admin = admin_client(settings)
    try:
        info = describe_topics(settings, [name], admin=admin)[0]
        if not info.exists:
            result = admin.create_topics({name: {"num_partitions": settings.partitions, "replication_factor": -1,
                                                 "configs": {"cleanup.policy": "compact"}}}, raise_errors=False)
            for t in result["topics"]:
                if t["error_code"] not in (0, TOPIC_ALREADY_EXISTS):
                    raise BrokerError(f"creating topic {name!r} failed: {t['error_message']}")
            admin.wait_for_topics([name], timeout_ms=30_000)
            log.info("created topic %r (compacted, %d partitions)", name, settings.partitions)
            info = describe_topics(settings, [name], admin=admin)[0]
    finally:
        admin.close()
    problems = []
    if info.partitions != settings.partitions:
        problems.append(f"topic {name!r} has {info.partitions} partitions but ACTIONSTREAM_PARTITIONS="
                        f"{settings.partitions}: daily records must be co-partitioned with the users' sequences. "
                        f"Point ACTIONSTREAM_TOPIC_EMBEDDINGS at a topic with {settings.partitions} partitions or "
                        f"recreate {name!r} (`actionstream topics create`).")
    if info.configs.get("cleanup.policy") != "compact":
        problems.append(f"topic {name!r} has cleanup.policy={info.configs.get('cleanup.policy')} but needs compact: "
                        f"kafka-configs --alter --entity-type topics --entity-name {name} --add-config "
                        "cleanup.policy=compact")
    if problems:
        raise ConfigError("\n".join(problems))
