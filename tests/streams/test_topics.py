"""`actionstream topics`: creation with the shared partition count and compaction, idempotence, mismatches."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from kafka import KafkaAdminClient

from streams.cli import main
from streams.errors import ConfigError
from streams.settings import KafkaSettings
from streams.topics import describe_topics, ensure_topics, uncommitted

pytestmark = pytest.mark.kafka


def names(unique_topic: Callable[[str], str]) -> dict[str, str]:
    return {"topic_actions": unique_topic("actions"), "topic_dlq": unique_topic("dlq"),
            "topic_embeddings": unique_topic("emb")}


def test_create_sets_partitions_and_compaction_and_is_idempotent(kafka: Any, unique_topic: Callable[[str], str]) -> None:
    n = names(unique_topic)
    s = KafkaSettings.load(kafka_bootstrap_servers=kafka.bootstrap, partitions=5, **n)
    first = ensure_topics(s)
    assert [t.status for t in first] == ["created"] * 3
    again = ensure_topics(s)
    assert [t.status for t in again] == ["exists"] * 3
    infos = {t.name: t for t in describe_topics(s)}
    assert all(t.exists and t.partitions == 5 and t.replication_factor == 1 for t in infos.values())
    assert infos[n["topic_embeddings"]].configs["cleanup.policy"] == "compact"
    assert infos[n["topic_actions"]].configs["cleanup.policy"] == "delete"
    assert infos[n["topic_dlq"]].configs["cleanup.policy"] == "delete"
    # cross-check with a plain admin client: the configs really are on the broker
    admin = KafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    try:
        metas = {m["name"]: m for m in admin.describe_topics(list(n.values()))}
    finally:
        admin.close()
    assert all(len(m["partitions"]) == 5 for m in metas.values())


def test_partition_mismatch_is_an_error_that_explains_the_fix(kafka: Any, unique_topic: Callable[[str], str]) -> None:
    n = names(unique_topic)
    ensure_topics(KafkaSettings.load(kafka_bootstrap_servers=kafka.bootstrap, partitions=2, **n))
    with pytest.raises(ConfigError) as err:
        ensure_topics(KafkaSettings.load(kafka_bootstrap_servers=kafka.bootstrap, partitions=8, **n))
    text = str(err.value)
    assert f"topic {n['topic_actions']!r} has 2 partitions" in text and "configured for 8" in text
    assert "ACTIONSTREAM_PARTITIONS=2" in text and "delete and recreate" in text


def test_existing_uncompacted_embeddings_topic_is_reported(kafka: Any, unique_topic: Callable[[str], str]) -> None:
    n = names(unique_topic)
    admin = KafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    try:
        admin.create_topics({n["topic_embeddings"]: {"num_partitions": 3, "replication_factor": 1}})
    finally:
        admin.close()
    with pytest.raises(ConfigError, match=r"has cleanup.policy=delete but needs cleanup.policy=compact"):
        ensure_topics(KafkaSettings.load(kafka_bootstrap_servers=kafka.bootstrap, partitions=3, **n))


def test_cli_describe_then_create(kafka: Any, unique_topic: Callable[[str], str], monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    n = names(unique_topic)
    for field, value in n.items():
        monkeypatch.setenv(f"ACTIONSTREAM_{field.upper()}", value)
    assert main(["topics", "describe", "--bootstrap", kafka.bootstrap]) == 1
    assert capsys.readouterr().out.count("does not exist") == 3
    assert main(["topics", "create", "--bootstrap", kafka.bootstrap, "--partitions", "3"]) == 0
    out = capsys.readouterr().out
    assert out.count("3 partitions, replication factor 1 [created]") == 3 and "cleanup.policy=compact" in out
    assert main(["topics", "create", "--bootstrap", kafka.bootstrap, "--partitions", "4"]) == 2
    assert "has 3 partitions" in capsys.readouterr().err


def test_uncommitted_counts_end_minus_committed_and_everything_without_a_commit(
        kafka: Any, unique_topic: Callable[[str], str], unique_group: Callable[[], str]) -> None:
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.admin import NewTopic
    from kafka.structs import OffsetAndMetadata

    topic, group = unique_topic("lag"), unique_group()
    admin = KafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap)
    consumer = KafkaConsumer(bootstrap_servers=kafka.bootstrap, group_id=group, enable_auto_commit=False)
    try:
        admin.create_topics([NewTopic(topic, 2, 1)])
        for _ in range(5):
            producer.send(topic, b"x", partition=0)
        for _ in range(3):
            producer.send(topic, b"x", partition=1)
        producer.flush()
        tp0, tp1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
        ends = consumer.end_offsets([tp0, tp1])
        # nothing committed: the whole topic (on a fresh broker the first lookup meets "coordinator not
        # available" while __consumer_offsets is created: uncommitted retries it)
        assert uncommitted(admin, group, ends) == 8
        consumer.assign([tp0, tp1])
        consumer.commit({tp0: OffsetAndMetadata(4, "", -1)})
        assert uncommitted(admin, group, ends) == 1 + 3
        consumer.commit({tp0: OffsetAndMetadata(5, "", -1), tp1: OffsetAndMetadata(3, "", -1)})
        assert uncommitted(admin, group, ends) == 0
    finally:
        consumer.close()
        producer.close()
        admin.close()
