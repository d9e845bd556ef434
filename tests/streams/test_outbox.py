"""The outbox's chunked flush: values stay readable while written, the loop is never held for the whole
buffer, and the newest value always wins. Real RocksDB (rocksdict); the producer is a recording stand-in
(the broker path is covered by the worker's stream and fault tests)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from rocksdict import Options, Rdict

from streams import outbox as outbox_mod
from streams.outbox import WRITE_CHUNK, Outbox


class _Batch:
    def __init__(self) -> None:
        self.records: list[tuple[bytes | None, bytes]] = []

    def append(self, *, key: bytes | None, value: bytes, timestamp: Any) -> object:
        self.records.append((key, value))
        return object()

    def close(self) -> None:
        pass


class _Producer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, int, list[tuple[bytes | None, bytes]]]] = []

    def create_batch(self) -> _Batch:
        return _Batch()

    async def send_batch(self, batch: _Batch, topic: str, partition: int) -> asyncio.Future[Any]:
        self.sent.append((topic, partition, batch.records))
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        fut.set_result(SimpleNamespace(offset=sum(len(r) for _, _, r in self.sent) - len(batch.records)))
        return fut


def _outbox(producer: _Producer) -> Outbox:
    app = SimpleNamespace(producer=SimpleNamespace(_ensure_producer=lambda: producer))
    table = SimpleNamespace(changelog_topic=SimpleNamespace(get_topic_name=lambda: "w-sequences-changelog"),
                            data=SimpleNamespace(offset_key=b"__faust\x00offset__"))
    return Outbox(app, table)


def _db(path: Path) -> Rdict:
    return Rdict(str(path), Options(raw_mode=True))


def test_flush_writes_in_chunks_and_every_value_stays_readable(tmp_path: Path) -> None:
    db = _db(tmp_path / "p0")
    n = 5 * WRITE_CHUNK + 7
    producer = _Producer()
    box = _outbox(producer)
    _, pending = box.table_pending(0, lambda p: db)
    for i in range(n):
        pending[f"u{i}".encode()] = b"old%d" % i
    db.put(b"u0", b"stale")  # RocksDB holds an older value of one key

    seen_missing: list[bytes] = []
    seen_wrong: list[bytes] = []
    yields_while_writing = 0

    def newest(key: bytes) -> bytes | None:
        value = box.pending_value(0, key)
        return value if value is not None else db.get(key)

    async def main() -> None:
        nonlocal yields_while_writing
        task = asyncio.ensure_future(box.flush())
        updated = False
        while not task.done():
            await asyncio.sleep(0)
            if box.writing:
                yields_while_writing += 1
                if not updated:  # the agent applies a newer value mid-flush: the new buffer takes it
                    _, fresh = box.table_pending(0, lambda p: db)
                    fresh[b"u1"] = b"new1"
                    updated = True
            for i in range(n):
                key = f"u{i}".encode()
                want = b"new1" if (updated and i == 1) else b"old%d" % i
                got = newest(key)
                if got is None:
                    seen_missing.append(key)
                elif got != want:
                    seen_wrong.append(key)
        await task

    asyncio.run(main())
    assert not seen_missing and not seen_wrong
    assert yields_while_writing >= 4  # 6 write batches: the loop ran between them
    assert box.writing == {}
    assert all(db.get(f"u{i}".encode()) == b"old%d" % i for i in range(n))  # all in RocksDB after the flush
    assert box.pending_value(0, b"u1") == b"new1"  # the newer value waits for the next flush
    records = [r for _, p, batch in producer.sent for r in batch if p == 0]
    assert len(records) == n and records[0] == (b"u0", b"old0")
    assert db.get(b"__faust\x00offset__") == str(n - 1).encode()  # persisted offset advanced on ack


def test_send_yields_every_send_chunk(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr(outbox_mod, "SEND_CHUNK", 10)
    producer = _Producer()
    box = _outbox(producer)
    for i in range(35):
        box.send("dlq", 1, b"k", b"v%d" % i)
    ticks = 0

    async def main() -> None:
        nonlocal ticks
        task = asyncio.ensure_future(box.flush())
        while not task.done():
            ticks += 1
            await asyncio.sleep(0)
        await task

    asyncio.run(main())
    assert ticks >= 3
    assert [v for _, _, batch in producer.sent for _, v in batch] == [b"v%d" % i for i in range(35)]
