"""(a) Ceilings: what the bare clients and the bare store can do, with no framework around them.

* Kafka: read the pre-filled topic with aiokafka and with kafka-python (no consumer group: all
  partitions assigned, from the beginning) and ``orjson.loads`` every value; events/s until all N read.
* RocksDB: a read-modify-write loop (get the user's sequence, add one action, put it back) on rocksdict,
  users with full 100-action sequences, in two stored forms: a JSON list of event dicts (what a naive
  app stores) and the packed :mod:`streams.sequence` blob (``update_blob``). Reports ops/s and
  bytes per stored value: the "measure the compact form" question of issue 3.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson

from bench.workload import Workload, make_events
from streams.sequence import SequenceCodec, update_blob

__all__ = ["aiokafka_consume", "kafka_python_consume", "rocksdb_rmw"]


async def _aiokafka(bootstrap: str, topic: str, n: int) -> float:
    from aiokafka import AIOKafkaConsumer, TopicPartition
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest",
                         max_partition_fetch_bytes=4 << 20, fetch_max_bytes=64 << 20)
    await c.start()
    try:
        from bench.env import topic_end_offsets
        parts = topic_end_offsets(bootstrap, topic)  # aiokafka's metadata only knows topics it was started with
        tps = [TopicPartition(topic, p) for p in parts]
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        loads = orjson.loads
        got = 0
        t0 = time.perf_counter()
        while got < n:
            batches = await c.getmany(timeout_ms=1000, max_records=10_000)
            for msgs in batches.values():
                for m in msgs:
                    loads(m.value)
                got += len(msgs)
        return time.perf_counter() - t0
    finally:
        await c.stop()


def aiokafka_consume(bootstrap: str, topic: str, n: int) -> float:
    """Seconds for aiokafka to consume + orjson-decode ``n`` messages (connection set-up excluded)."""
    return asyncio.run(_aiokafka(bootstrap, topic, n))


def kafka_python_consume(bootstrap: str, topic: str, n: int) -> float:
    """Seconds for kafka-python to consume + orjson-decode ``n`` messages."""
    from kafka import KafkaConsumer, TopicPartition
    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest",
                      max_partition_fetch_bytes=4 << 20, fetch_max_bytes=64 << 20)
    try:
        parts = c.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in parts]
        c.assign(tps)
        c.seek_to_beginning(*tps)
        loads = orjson.loads
        got = 0
        t0 = time.perf_counter()
        while got < n:
            for msgs in c.poll(timeout_ms=1000, max_records=10_000).values():
                for m in msgs:
                    loads(m.value)
                got += len(msgs)
        return time.perf_counter() - t0
    finally:
        c.close()


def rocksdb_rmw(path: Path, *, users: int, ops: int, fmt: str, seed: int = 3) -> dict[str, float]:
    """Read-modify-write ``ops`` actions into ``users`` sequences already at the 100-action cap.

    ``fmt`` = ``"json"`` (list of event dicts, ``orjson``) or ``"blob"`` (packed, ``update_blob``).
    Returns ops/s of the measured loop and the mean stored bytes per user afterwards.
    """
    from rocksdict import Options, Rdict
    max_len = 100
    codec = SequenceCodec(max_len=max_len)
    warm = make_events(users * max_len, users, seed=seed, uniform_users=True, span_s=3600)
    work = make_events(ops, users, seed=seed + 1, uniform_users=True, span_s=60,
                       end_ms=max(orjson.loads(v)["ts"] for v in warm.values) + 120_000)
    opts = Options(raw_mode=True)
    db = Rdict(str(path), opts)
    try:
        if fmt == "json":
            per_user: dict[bytes, list[dict[str, object]]] = {}
            for k, v in zip(warm.keys, warm.values, strict=True):
                per_user.setdefault(k, []).append(orjson.loads(v))
            for k, lst in per_user.items():
                db[k] = orjson.dumps(lst[-max_len:])
            loads, dumps = orjson.loads, orjson.dumps
            evs = [loads(v) for v in work.values]
            t0 = time.perf_counter()
            for k, ev in zip(work.keys, evs, strict=True):
                raw = db.get(k)
                lst = loads(raw) if raw is not None else []
                lst.append(ev)
                if len(lst) > max_len:
                    del lst[0]
                db[k] = dumps(lst)
            dt = time.perf_counter() - t0
        elif fmt == "blob":
            blobs: dict[bytes, bytes | None] = {}
            for k, v in zip(warm.keys, warm.values, strict=True):
                e = _event(v)
                blobs[k] = update_blob(blobs.get(k), codec.to_act(e), max_len=max_len) or blobs.get(k)
            for k, b in blobs.items():
                db[k] = b
            acts = [codec.to_act(_event(v)) for v in work.values]
            t0 = time.perf_counter()
            for k, a in zip(work.keys, acts, strict=True):
                new = update_blob(db.get(k), a, max_len=max_len)
                if new is not None:
                    db[k] = new
            dt = time.perf_counter() - t0
        else:
            raise ValueError(f"unknown format {fmt!r}")
        sizes = [len(v) for _, v in db.items()]
        return {"ops_per_s": ops / dt, "bytes_per_user": sum(sizes) / max(1, len(sizes)), "users": len(sizes)}
    finally:
        db.close()
        Rdict.destroy(str(path), opts)


def _event(raw: bytes):  # type: ignore[no-untyped-def]
    from streams.events import EventParser, Rejection
    e = EventParser().parse(raw)
    if isinstance(e, Rejection):
        raise ValueError(f"benchmark workload produced an invalid event: {e}")
    return e


def workload_note(w: Workload) -> str:
    return f"{w.n:,} events, {w.users:,} users, mean {w.mean_bytes:.0f} B"
