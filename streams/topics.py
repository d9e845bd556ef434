"""`actionstream topics create|describe`: the platform's Kafka topics (DESIGN.md "Topics" contract).

Three topics, names from :class:`~streams.settings.KafkaSettings` (``ACTIONSTREAM_TOPIC_*``):

==========================  =======================================================================
``topic_actions``           input: Event v1 JSON, key = user_id
``topic_dlq``               dead letters of the worker (reason + original bytes)
``topic_embeddings``        daily PinnerFormer embeddings, key = user_id, ``cleanup.policy=compact``
==========================  =======================================================================

All three share one partition count (``ACTIONSTREAM_PARTITIONS``, default 8) because they are keyed by
user: the worker that owns a user's partition of ``user-actions`` owns the same partition of the other
topics. :func:`ensure_topics` is idempotent: existing topics are reported, not recreated. An existing
topic whose partition count or cleanup policy differs from what the platform needs is an error that
says how to fix it (Kafka can only add partitions, and adding them moves keys to other partitions).
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from kafka import KafkaAdminClient, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType
from kafka.errors import KafkaError

from streams.errors import BrokerError, ConfigError
from streams.settings import KafkaSettings

__all__ = ["TopicInfo", "TopicSpec", "describe_topics", "ensure_topics", "platform_topics", "uncommitted"]

log = logging.getLogger(__name__)

HELP = "create or describe the platform's Kafka topics"
TOPIC_ALREADY_EXISTS = 36
UNKNOWN_TOPIC = 3
# configs worth showing in `describe` even when they are broker defaults
SHOWN_CONFIGS = ("cleanup.policy", "retention.ms", "max.message.bytes", "min.insync.replicas", "compression.type")


@dataclass(frozen=True)
class TopicSpec:
    """What the platform needs of one topic."""

    name: str
    role: str
    partitions: int
    configs: dict[str, str] = field(default_factory=dict)


@dataclass
class TopicInfo:
    """What the cluster says about one topic (``exists=False``: not there)."""

    name: str
    exists: bool
    partitions: int = 0
    replication_factor: int = 0
    configs: dict[str, str] = field(default_factory=dict)
    status: str = ""  # ensure_topics: "created" | "exists"


def platform_topics(settings: KafkaSettings, partitions: int | None = None) -> list[TopicSpec]:
    """The DESIGN.md topics with their required partition count and configs."""
    n = partitions or settings.partitions
    return [TopicSpec(settings.topic_actions, "actions (input, key = user_id)", n),
            TopicSpec(settings.topic_dlq, "dead letters", n),
            TopicSpec(settings.topic_embeddings, "daily embeddings (compacted, key = user_id)", n,
                      {"cleanup.policy": "compact"})]


def uncommitted(admin: KafkaAdminClient, group: str, ends: Mapping[TopicPartition, int],
                retry_s: float = 30.0) -> int:
    """Messages consumer ``group`` has not committed: per partition of ``ends`` (end offsets), the end offset
    minus the group's committed offset (0 where it committed nothing), summed.

    Retriable broker errors (a fresh broker creates ``__consumer_offsets`` on the first group lookup and
    answers "coordinator not available" meanwhile; a coordinator moving or loading) are retried every 0.5 s
    for up to ``retry_s`` seconds, then raised."""
    deadline = time.monotonic() + retry_s
    while True:
        try:
            committed = admin.list_group_offsets({group: None}).get(group, {})
            break
        except KafkaError as exc:
            if not getattr(exc, "retriable", False) or time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    lag = 0
    for tp, end in ends.items():
        c = committed.get(tp)
        lag += end - (c.offset if c is not None and c.offset >= 0 else 0)
    return lag


def admin_client(settings: KafkaSettings, timeout_ms: int = 15_000) -> KafkaAdminClient:
    """A kafka-python admin client; :class:`BrokerError` when the cluster cannot be reached."""
    try:
        return KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers, client_id="actionstream-topics",
                                request_timeout_ms=timeout_ms, bootstrap_timeout_ms=timeout_ms,
                                **settings.kafka_python_security())
    except KafkaError as exc:
        raise BrokerError(f"cannot reach Kafka at {settings.kafka_bootstrap_servers}: {exc} "
                          "(is the broker up? check ACTIONSTREAM_KAFKA_BOOTSTRAP_SERVERS)") from exc


def _describe(admin: KafkaAdminClient, names: list[str]) -> dict[str, TopicInfo]:
    out: dict[str, TopicInfo] = {}
    metas = admin.describe_topics(names)
    existing = []
    for meta in metas:
        name = meta["name"]
        if meta["error_code"] == UNKNOWN_TOPIC:
            out[name] = TopicInfo(name, exists=False)
            continue
        if meta["error_code"] != 0:
            raise BrokerError(f"describing topic {name!r} failed with Kafka error code {meta['error_code']}")
        parts = meta["partitions"]
        rf = max((len(p["replica_nodes"]) for p in parts), default=0)
        out[name] = TopicInfo(name, exists=True, partitions=len(parts), replication_factor=rf)
        existing.append(name)
    if existing:
        resources = [ConfigResource(ConfigResourceType.TOPIC, n) for n in existing]
        described = admin.describe_configs(resources, config_filter="all").get("topic", {})
        for name in existing:
            configs = described.get(name, {})
            out[name].configs = {k: str(v["value"]) for k, v in sorted(configs.items())
                                 if k in SHOWN_CONFIGS or v.get("config_source") == "DYNAMIC_TOPIC_CONFIG"}
    return out


def describe_topics(settings: KafkaSettings, names: list[str] | None = None,
                    admin: KafkaAdminClient | None = None) -> list[TopicInfo]:
    """Partition count, replication factor and the interesting configs of each topic (platform topics by default)."""
    names = names or [t.name for t in platform_topics(settings)]
    own = admin is None
    admin = admin or admin_client(settings)
    try:
        found = _describe(admin, names)
    finally:
        if own:
            admin.close()
    return [found.get(n, TopicInfo(n, exists=False)) for n in names]


def _mismatches(spec: TopicSpec, info: TopicInfo) -> list[str]:
    problems = []
    if info.partitions != spec.partitions:
        problems.append(
            f"topic {spec.name!r} has {info.partitions} partitions but the platform is configured for "
            f"{spec.partitions}. All user-keyed topics must share one partition count. Either set "
            f"ACTIONSTREAM_PARTITIONS={info.partitions} (or --partitions {info.partitions}) to match the "
            f"cluster, or delete and recreate the topics (adding partitions with kafka-topics --alter "
            f"moves users to other partitions: only do it on empty topics).")
    for key, want in spec.configs.items():
        have = info.configs.get(key)
        if have != want:
            problems.append(f"topic {spec.name!r} has {key}={have} but needs {key}={want}: run "
                            f"kafka-configs --alter --entity-type topics --entity-name {spec.name} "
                            f"--add-config {key}={want}")
    return problems


def ensure_topics(settings: KafkaSettings, *, partitions: int | None = None, replication_factor: int = -1,
                  admin: KafkaAdminClient | None = None, timeout_ms: int = 30_000) -> list[TopicInfo]:
    """Create the platform topics that are missing; verify the ones that exist. Idempotent.

    Args:
        settings: topic names and the shared partition count.
        partitions: overrides ``settings.partitions``.
        replication_factor: -1 = the broker's ``default.replication.factor``.
    Returns:
        one :class:`TopicInfo` per topic, ``status`` "created" or "exists".
    Raises:
        ConfigError: an existing topic has another partition count or lacks a required config.
        BrokerError: the cluster cannot be reached or refused the creation.
    """
    specs = platform_topics(settings, partitions)
    own = admin is None
    admin = admin or admin_client(settings)
    try:
        before = _describe(admin, [s.name for s in specs])
        missing = [s for s in specs if not before[s.name].exists]
        created: set[str] = set()
        if missing:
            request = {s.name: {"num_partitions": s.partitions, "replication_factor": replication_factor,
                                "configs": s.configs} for s in missing}
            result = admin.create_topics(request, timeout_ms=timeout_ms, raise_errors=False)
            for t in result["topics"]:
                if t["error_code"] == 0:
                    created.add(t["name"])
                elif t["error_code"] != TOPIC_ALREADY_EXISTS:  # lost a race with another creator: verify below
                    raise BrokerError(f"creating topic {t['name']!r} failed: {t['error_message']} "
                                      f"(Kafka error code {t['error_code']})")
            admin.wait_for_topics([s.name for s in missing], timeout_ms=timeout_ms)
        after = _describe(admin, [s.name for s in specs])
    finally:
        if own:
            admin.close()
    problems = [p for s in specs for p in _mismatches(s, after[s.name])]
    if problems:
        raise ConfigError("\n".join(problems))
    infos = []
    for s in specs:
        info = after[s.name]
        info.status = "created" if s.name in created else "exists"
        log.info("topic %s %s (%d partitions, rf %d)", s.name, info.status, info.partitions, info.replication_factor)
        infos.append(info)
    return infos


def format_topic(info: TopicInfo) -> str:
    if not info.exists:
        return f"{info.name}: does not exist (run `actionstream topics create`)"
    configs = ", ".join(f"{k}={v}" for k, v in info.configs.items())
    head = f"{info.name}: {info.partitions} partitions, replication factor {info.replication_factor}"
    return f"{head}{' [' + info.status + ']' if info.status else ''}\n    {configs}"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "create: create the platform topics (actions, dead letters, compacted embeddings) with one shared "
        "partition count; existing topics are verified, not recreated, and a partition-count or "
        "cleanup-policy mismatch is an error explaining the fix (exit 2). "
        "describe: print partitions and configs of each topic.")
    p.add_argument("action", choices=("create", "describe"))
    p.add_argument("--bootstrap", help="Kafka bootstrap servers host:port (env ACTIONSTREAM_KAFKA_BOOTSTRAP_SERVERS)")
    p.add_argument("--partitions", type=int, help="shared partition count (env ACTIONSTREAM_PARTITIONS; default 8)")
    p.add_argument("--replication-factor", type=int, default=-1, help="-1 = the broker's default.replication.factor")


def run(args: argparse.Namespace) -> int:
    settings = KafkaSettings.load(kafka_bootstrap_servers=args.bootstrap, partitions=args.partitions)
    if args.action == "create":
        infos = ensure_topics(settings, replication_factor=args.replication_factor)
    else:
        infos = describe_topics(settings)
    for info in infos:
        print(format_topic(info))  # noqa: T201 - command output
    return 0 if all(i.exists for i in infos) else 1
