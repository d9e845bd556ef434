"""The worker's outbox: every record the agent produces (changelog, reroute, DLQ), batched per partition.

Why not Faust's ``topic.send_soon`` (what ``table[k] = v`` uses): it costs one coroutine, one
``FutureMessage`` and one aiokafka ``send`` per record, and its buffer flush before an offset commit
gives up after 0.1 s with records still queued (``ProducerBuffer.flush_atmost``), which under load can
commit input offsets whose derived records were not yet handed to the producer. Here the agent only
appends to dicts; :meth:`Outbox.flush` hands everything to aiokafka as one ``send_batch`` per partition
and is awaited before every offset commit (``streams.app._install_commit_hook``), on rebalance and at
stop, and runs in the background when ``max_pending`` records are waiting.

Table writes are batched too: the pending changelog dict of a partition IS the write buffer of its
RocksDB file. :meth:`Outbox.flush` swaps the buffers for empty ones, writes each partition's swapped-out
values to RocksDB in ``WriteBatch`` es of :data:`WRITE_CHUNK` records, yielding to the event loop between
two, and sends them as changelog records (yielding every :data:`SEND_CHUNK` records). While the values are
being written, the swapped-out dict stays readable (:attr:`Outbox.writing`): :class:`~streams.tables.SequenceStore`
reads a user's blob from the new buffer, then from ``writing``, then from RocksDB, so a read never misses a
value and never sees an older one. One synchronous write of 2,000 records held the loop 6-10 ms (any HTTP
request or event waited behind it); a chunk of 256 takes ~1 ms. A user written several times between flushes costs one RocksDB write and one
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

__all__ = ["SEND_CHUNK", "WRITE_CHUNK", "Outbox"]

log = logging.getLogger(__name__)

WRITE_CHUNK = 256  # records per RocksDB WriteBatch between two yields to the loop (~1 ms at ~1 KB each)
SEND_CHUNK = 512  # records appended to producer batches between two yields to the loop


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
        self.pending = 0
        # partition -> values swapped out by the running flush and not yet all in RocksDB (read them
        # after the partition's new buffer, before RocksDB); empty between flushes
        self.writing: dict[int, dict[bytes, bytes]] = {}
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
        """The newest value of ``key`` not yet known to be in RocksDB (buffer, then the running flush)."""
        entry = self.changelog.get(partition)
        value = None if entry is None else entry[1].get(key)
        if value is None and self.writing:
            kv = self.writing.get(partition)
            if kv is not None:
                value = kv.get(key)
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
            if not (changelog or records or unpartitioned):
                return
            # readable until written (module docstring); set before the first yield, so no read misses a value
            self.writing = {p: kv for p, (_, kv) in changelog.items() if kv}
            try:
                for db, kv in changelog.values():
                    await self._write(db, kv)
            finally:
                self.writing = {}
            producer = self.app.producer._ensure_producer()  # the app's aiokafka producer
            topic = self.table.changelog_topic.get_topic_name()
            for partition, (db, kv) in changelog.items():
                if kv:
                    await self._send_batches(producer, topic, partition, kv.items(), db=db)
            for (t, partition), items in records.items():
                await self._send_batches(producer, t, partition, items)
            for t, key, value in unpartitioned:
                await producer.send(t, value, key=key)

    @staticmethod
    async def _write(db: Any, kv: dict[bytes, bytes]) -> None:
        """kv into RocksDB, :data:`WRITE_CHUNK` records per ``WriteBatch``, yielding between two."""
        items = list(kv.items())
        for lo in range(0, len(items), WRITE_CHUNK):
            if lo:
                await asyncio.sleep(0)
            wb = WriteBatch(raw_mode=True)
            for k, v in items[lo:lo + WRITE_CHUNK]:
                wb.put(k, v)
            db.write(wb)

    async def _send_batches(self, producer: Any, topic: str, partition: int, items: Any, *, db: Any = None) -> None:
        batch = producer.create_batch()
        n = appended = 0
        for key, value in items:
            appended += 1
            if appended % SEND_CHUNK == 0:
                await asyncio.sleep(0)  # appending ~3 us per record: let a waiting request in
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
