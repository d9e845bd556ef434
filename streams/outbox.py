"""The worker's outbox: every record the agent produces (changelog, reroute, DLQ), batched per partition.

Why not Faust's ``topic.send_soon`` (what ``table[k] = v`` uses): it costs one coroutine, one
``FutureMessage`` and one aiokafka ``send`` per record, and its buffer flush before an offset commit
gives up after 0.1 s with records still queued (``ProducerBuffer.flush_atmost``), which under load can
commit input offsets whose derived records were not yet handed to the producer. Here the agent only
appends to dicts; :meth:`Outbox.flush` hands everything to aiokafka as one ``send_batch`` per partition
and is awaited before every offset commit (``streams.app._install_commit_hook``), on rebalance and at
stop, and runs in the background when ``max_pending`` records are waiting.

Table writes are batched too: the pending changelog dict of a partition IS the write buffer of its
RocksDB file. :class:`~streams.tables.SequenceStore` reads a user's blob from it first, then from RocksDB;
:meth:`Outbox.flush` writes each partition's pending values with one RocksDB ``WriteBatch`` and sends them
as changelog records. It yields to the event loop after each partition's batch (all of them at once held
the loop 10-20 ms per flush, which HTTP requests waited behind); until its batch is written, a partition's
values stay readable in :attr:`Outbox.writing`, so a read always finds the newest value in the buffer, in
``writing`` or in RocksDB (``pending_value``; ``SequenceStore.apply`` reads in that order). A user written several times between flushes costs one RocksDB write and one
changelog record (the changelog is compacted; only the latest value per key matters). After a batch is
acknowledged, the partition's persisted offset (Faust's ``__faust\\0offset__`` key in that RocksDB file)
is advanced to the batch's last offset, as ``Table._on_changelog_sent`` does: every value in the batch
was written to RocksDB first, so a restart with the dir kept may skip those records. A crash loses the
unflushed buffer, never committed input: offsets are committed only after a flush.

Delivery: at-least-once, like Faust. Ordering between flushes is kept per partition (aiokafka sends one
batch per partition at a time, in order).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from rocksdict import WriteBatch

__all__ = ["Outbox"]

log = logging.getLogger(__name__)


class Outbox:
    """Pending records of one worker.

    Args:
        app: the Faust app (its aiokafka producer sends the batches).
        table: the ``sequences`` table (changelog topic name, persisted offsets).
        max_pending: start a background flush when this many records wait.
    """

    def __init__(self, app: Any, table: Any, *, max_pending: int = 2000) -> None:
        self.app = app
        self.table = table
        self.max_pending = max_pending
        self.changelog: dict[int, tuple[Any, dict[bytes, bytes]]] = {}  # partition -> (RocksDB, pending)
        self.records: dict[tuple[str, int], list[tuple[bytes | None, bytes]]] = {}
        self.unpartitioned: list[tuple[str, bytes | None, bytes]] = []
        self.writing: dict[int, dict[bytes, bytes]] = {}  # partition -> values a flush has not written yet
        self.pending = 0
        self._flushing: asyncio.Task[None] | None = None
        self._lock: asyncio.Lock | None = None
        self.sent_batches = 0

    # ------------------------------------------------------------------ called by the agent (sync, cheap)

    def table_pending(self, partition: int, open_db: Callable[[int], Any]) -> tuple[Any, dict[bytes, bytes]]:
        """(RocksDB handle, pending key -> value) of a partition; the caller adds, then calls :meth:`added`."""
        entry = self.changelog.get(partition)
        if entry is None:
            entry = self.changelog[partition] = (open_db(partition), {})
        return entry

    def pending_value(self, partition: int, key: bytes) -> bytes | None:
        """The newest value of ``key`` not yet in RocksDB: pending, else taken by a flush and not yet written."""
        entry = self.changelog.get(partition)
        value = None if entry is None else entry[1].get(key)
        if value is None and self.writing:
            kv = self.writing.get(partition)
            value = None if kv is None else kv.get(key)
        return value

    def send(self, topic: str, partition: int | None, key: bytes | None, value: bytes) -> None:
        """Queue one record; ``partition=None`` lets the producer's partitioner choose (DLQ)."""
        if partition is None:
            self.unpartitioned.append((topic, key, value))
        else:
            lst = self.records.get((topic, partition))
            if lst is None:
                lst = self.records[(topic, partition)] = []
            lst.append((key, value))
        self.added()

    def added(self) -> None:
        self.pending += 1
        if self.pending >= self.max_pending and (self._flushing is None or self._flushing.done()):
            self._flushing = asyncio.ensure_future(self.flush())

    # ------------------------------------------------------------------ flushing

    async def flush(self) -> None:
        """Hand every pending record to the producer (awaiting the enqueue, not the broker's ack)."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            changelog, self.changelog = self.changelog, {}
            records, self.records = self.records, {}
            unpartitioned, self.unpartitioned = self.unpartitioned, []
            self.pending = 0
            # one WriteBatch per partition, yielding to the loop in between (one batch of ~250 2-KB values
            # holds the loop ~2 ms; all of them at once held it 10-20 ms, the features API's p99). Until its
            # batch is written, a partition's values stay readable in ``writing`` (pending_value, and
            # SequenceStore.apply reads pending, then writing, then RocksDB)
            self.writing = {partition: kv for partition, (_, kv) in changelog.items() if kv}
            try:
                for partition, (db, kv) in changelog.items():
                    if kv:
                        wb = WriteBatch(raw_mode=True)
                        for k, v in kv.items():
                            wb.put(k, v)
                        db.write(wb)
                        del self.writing[partition]
                        await asyncio.sleep(0)
            finally:
                self._requeue_unwritten(changelog)
            if not (changelog or records or unpartitioned):
                return
            producer = self.app.producer._ensure_producer()  # the app's aiokafka producer
            topic = self.table.changelog_topic.get_topic_name()
            for partition, (db, kv) in changelog.items():
                if kv:
                    await self._send_batches(producer, topic, partition, kv.items(), db=db)
            for (t, partition), items in records.items():
                await self._send_batches(producer, t, partition, items)
            for t, key, value in unpartitioned:
                await producer.send(t, value, key=key)

    def _requeue_unwritten(self, changelog: dict[int, tuple[Any, dict[bytes, bytes]]]) -> None:
        """A flush stopped before writing every partition (cancelled at a stop): its unwritten values go back
        to the pending buffer, under any newer value written meanwhile, so the next flush writes them."""
        writing, self.writing = self.writing, {}
        for partition, kv in writing.items():
            entry = self.changelog.get(partition)
            if entry is None:
                self.changelog[partition] = (changelog[partition][0], kv)
                self.pending += len(kv)
                continue
            newer = entry[1]
            for k, v in kv.items():
                if k not in newer:
                    newer[k] = v
                    self.pending += 1

    async def _send_batches(self, producer: Any, topic: str, partition: int, items: Any, *, db: Any = None) -> None:
        batch = producer.create_batch()
        n = 0
        for key, value in items:
            if batch.append(key=key, value=value, timestamp=None) is None:
                await self._submit(producer, batch, topic, partition, n, db)
                batch = producer.create_batch()
                n = 0
                if batch.append(key=key, value=value, timestamp=None) is None:
                    raise ValueError(f"record of {len(value)} bytes does not fit one batch of {topic}")
            n += 1
        if n:
            await self._submit(producer, batch, topic, partition, n, db)

    async def _submit(self, producer: Any, batch: Any, topic: str, partition: int, n: int, db: Any) -> None:
        batch.close()
        fut = await producer.send_batch(batch, topic, partition=partition)
        self.sent_batches += 1
        fut.add_done_callback(lambda f: self._on_acked(f, topic, partition, n, db))

    def _on_acked(self, fut: asyncio.Future[Any], topic: str, partition: int, n: int, db: Any) -> None:
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is not None:
            # aiokafka retried until its request timeout: stop before committing offsets past lost records
            log.error("could not deliver %d records to %s[%d]: %r; stopping the worker", n, topic, partition, exc)
            asyncio.ensure_future(self.app.crash(exc))
            return
        if db is not None:  # changelog batch: advance the persisted offset in that partition's RocksDB
            db.put(self.table.data.offset_key, str(fut.result().offset + n - 1).encode())
