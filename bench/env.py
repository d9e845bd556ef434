"""The benchmark's own environment: an embedded Apache Kafka broker in a temp dir, topics, pre-fill.

Every benchmark run starts its own broker (``streams.broker.EmbeddedKafka`` on free loopback ports),
so figures never depend on what else runs on the machine's default ports, and removes it afterwards.
Topics are created with 8 partitions (the platform's shared partition count) and pre-filled with the
workload through aiokafka (linger 50 ms, 1 MB batches: ~40k msg/s here), keyed by user id with the
Java/aiokafka murmur2 partitioner (the same one Faust uses).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import time
import uuid
from pathlib import Path

from bench.workload import Workload
from streams.broker import EmbeddedKafka, free_port
from streams.settings import BrokerSettings

log = logging.getLogger(__name__)

__all__ = ["BenchEnv", "produce", "produce_sync"]


class BenchEnv:
    """Broker + scratch dir for one benchmark run (context manager)."""

    def __init__(self, partitions: int = 8, keep: bool = False, bootstrap: str | None = None) -> None:
        self.partitions = partitions
        self.keep = keep
        self.tmp = Path(tempfile.mkdtemp(prefix="actionstream-bench-"))
        self.broker: EmbeddedKafka | None = None
        self._external = bootstrap

    @property
    def bootstrap(self) -> str:
        if self._external:
            return self._external
        assert self.broker is not None
        return self.broker.bootstrap

    def __enter__(self) -> BenchEnv:
        if not self._external:
            self.broker = EmbeddedKafka(BrokerSettings(
                broker_data_dir=self.tmp / "kafka", broker_port=free_port(), broker_controller_port=free_port(),
                broker_heap="768m")).start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.broker is not None:
            self.broker.stop()
        if not self.keep:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def dir(self, name: str) -> Path:
        p = self.tmp / f"{name}-{uuid.uuid4().hex[:6]}"
        p.mkdir(parents=True)
        return p

    def topic(self, prefix: str, partitions: int | None = None, compact: bool = False) -> str:
        """Create a fresh topic and return its name."""
        from kafka.admin import KafkaAdminClient, NewTopic
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, client_id="bench-admin")
        try:
            configs = {"cleanup.policy": "compact"} if compact else {}
            admin.create_topics([NewTopic(name, partitions or self.partitions, 1, topic_configs=configs)])
        finally:
            admin.close()
        return name

    def prefilled(self, prefix: str, w: Workload) -> str:
        name = self.topic(prefix)
        t0 = time.perf_counter()
        produce_sync(self.bootstrap, name, w.keys, w.values)
        log.info("pre-filled %s with %d events in %.1fs", name, w.n, time.perf_counter() - t0)
        return name


async def produce(bootstrap: str, topic: str, keys: list[bytes], values: list[bytes]) -> None:
    """Publish all (key, value) pairs with acks=all and wait for every delivery."""
    from aiokafka import AIOKafkaProducer
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=50, max_batch_size=1 << 20, acks="all",
                         compression_type=None, max_request_size=4 << 20)
    await p.start()
    try:
        futs = []
        for k, v in zip(keys, values, strict=True):
            futs.append(await p.send(topic, v, key=k))
            if len(futs) >= 20_000:
                await asyncio.gather(*futs)
                futs.clear()
        await asyncio.gather(*futs)
    finally:
        await p.stop()


def produce_sync(bootstrap: str, topic: str, keys: list[bytes], values: list[bytes]) -> None:
    asyncio.run(produce(bootstrap, topic, keys, values))


def topic_end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    from kafka import KafkaConsumer, TopicPartition
    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        parts = c.partitions_for_topic(topic) or set()
        ends = c.end_offsets([TopicPartition(topic, p) for p in parts])
        return {tp.partition: off for tp, off in ends.items()}
    finally:
        c.close()
