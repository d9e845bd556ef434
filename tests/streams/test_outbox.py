"""streams.outbox.Outbox: a flush writes RocksDB one partition at a time and yields to the loop in between,
while every value stays readable. Real RocksDB (Faust's rocksdb store) and a real Kafka producer."""

from __future__ import annotations

import asyncio
from pathlib import Path

import faust
from kafka import KafkaAdminClient
from kafka.admin import NewTopic

from streams.outbox import Outbox
from streams.sequence import SequenceCodec, decode
from streams.settings import WorkerSettings
from streams.tables import SequenceStore, create_sequences_table, owner_partition

ACT_TS = 1_700_000_000_000


def _user_of(partition: int, partitions: int) -> bytes:
    return next(k for k in (f"u{i}".encode() for i in range(1000)) if owner_partition(k, partitions) == partition)


def _act(k: int) -> tuple[int, int, int, int, int, str]:
    return (ACT_TS + k, k, 1, 0, 0, f"item{k}")  # ts, seq, action, surface, dwell, item (streams.sequence.Act)


def test_flush_writes_partition_by_partition_and_keeps_unwritten_values_readable(tmp_path: Path, kafka,
                                                                                 unique_topic) -> None:
    settings = WorkerSettings.load(data_dir=tmp_path / "state", archive_dir="", partitions=2)
    app_id = unique_topic("outbox")
    app = faust.App(app_id, broker=f"kafka://{kafka.bootstrap}", store="rocksdb://", datadir=str(tmp_path / "faust"),
                    key_serializer="raw", value_serializer="raw")
    table = create_sequences_table(app, settings)
    changelog = table.changelog_topic.get_topic_name()
    admin = KafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    try:
        admin.create_topics([NewTopic(changelog, 2, 1)])
    finally:
        admin.close()
    outbox = Outbox(app, table)
    store = SequenceStore(table, SequenceCodec(), 2, outbox)
    u0, u1 = _user_of(0, 2), _user_of(1, 2)
    db0, db1 = store._db(0), store._db(1)

    async def scenario() -> None:
        await app.producer.start()
        try:
            assert store.apply(0, u0, _act(1)) is not None
            assert store.apply(1, u1, _act(2)) is not None
            flush = asyncio.ensure_future(outbox.flush())
            await asyncio.sleep(0)  # the flush runs up to its first yield: one partition written
            written = [db0.get(u0) is not None, db1.get(u1) is not None]
            assert written.count(True) == 1, f"one partition per loop turn, got {written}"
            late, late_p = (u1, 1) if written[0] else (u0, 0)
            # the partition not written yet: readable by the API and the next update builds on it
            assert store.get_blob(late.decode()) is not None
            assert store.apply(late_p, late, _act(3)) is not None
            assert len(decode(store.get_blob(late.decode()))) == 2
            await flush
            assert outbox.writing == {}
            assert db0.get(u0) is not None and db1.get(u1) is not None
            assert len(decode(outbox.pending_value(late_p, late))) == 2  # the newer value waits for the next flush
            await outbox.flush()
            assert len(decode(store._db(late_p).get(late))) == 2
            await app.producer.flush()
        finally:
            await app.producer.stop()

    asyncio.run(scenario())


def test_a_flush_cancelled_between_partitions_hands_unwritten_values_to_the_next(tmp_path: Path) -> None:
    settings = WorkerSettings.load(data_dir=tmp_path / "state", archive_dir="", partitions=2)
    app = faust.App("outbox-cancel", broker="kafka://127.0.0.1:1", store="rocksdb://",  # never connects
                    datadir=str(tmp_path / "faust"), key_serializer="raw", value_serializer="raw")
    table = create_sequences_table(app, settings)
    outbox = Outbox(app, table)
    store = SequenceStore(table, SequenceCodec(), 2, outbox)
    u0, u1 = _user_of(0, 2), _user_of(1, 2)

    async def scenario() -> None:
        store.apply(0, u0, _act(1))
        store.apply(1, u1, _act(2))
        flush = asyncio.ensure_future(outbox.flush())
        await asyncio.sleep(0)  # one partition written, the flush waits at its yield
        late, late_p = (u1, 1) if store._db(0).get(u0) is not None else (u0, 0)
        store.apply(late_p, late, _act(3))  # a newer value of the unwritten user meanwhile
        flush.cancel()
        await asyncio.gather(flush, return_exceptions=True)
        assert outbox.writing == {}
        assert store._db(late_p).get(late) is None
        assert len(decode(store.get_blob(late.decode()))) == 2  # the newer value, not the cancelled one
        assert outbox.pending >= 1

    asyncio.run(scenario())
