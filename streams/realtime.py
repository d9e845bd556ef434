"""Realtime TransAct user vectors: dirty users -> micro-batched encoder (off the event loop) -> local store.

TransAct (Xia et al., KDD 2023) encodes the user's latest actions at request time; the candidate-free
variant (``early_fusion=False``) gives one vector per user that the worker keeps fresh as actions arrive
and serves in ``GET /v1/users/{id}/features`` as ``realtime`` (PinnerFormer's "realtime" half of the hybrid,
Pancha et al., KDD 2022, sec. 5).

Flow (:class:`RealtimeEncoder`):

1. the sequence agent marks a user dirty after each sequence update that changed something:
   ``pending.setdefault(user_key, event_ts)`` on the event loop (one dict operation, nothing else);
2. a background task (``app.task``) takes up to ``encoder_batch_max`` dirty users every
   ``encoder_interval_ms`` (at once when more are waiting), so several events of one user between two
   batches cost ONE encode (coalescing), and many users share one forward pass (micro-batching); the
   encoder computes at most ``encoder_max_busy`` of the wall time, so under overload it coalesces more
   instead of taking CPU from the sequence path;
3. it reads their blobs on the loop (RocksDB gets, microseconds), then, in a one-thread executor, has them
   decoded and encoded (:meth:`transact.inference.Encoder.encode_blobs`, by default in a niced child
   process: :mod:`streams.encoder_process`) and writes the vectors: torch never runs on the event loop;
4. per user it observes ``actionstream_freshness_seconds{stage="realtime"}`` = time the vector was stored
   minus the event time of the first event that made the user dirty (the oldest unencoded change in arrival
   order), plus ``actionstream_encoder_batch_size`` / ``actionstream_encoder_seconds`` per batch.

Store (:class:`RealtimeStore`): a rocksdict beside the Faust data dir (``<state_dir>/realtime-vectors``), NOT a
changelogged Faust table. A realtime vector is a pure function of (sequence, model): the sequence is
already durable in RocksDB + its changelog, so a changelog of vectors would double the produce traffic for
state we can recompute, and would replay vectors of an old model after a checkpoint change. Each value is
``<model-version crc32><sequence-blob crc32>`` + the float32 vector; on read the store checks both:

* another model version (or nothing stored): answer "none yet" and mark the user dirty;
* another sequence (the partition moved here from another worker, the worker restarted, or an update is
  queued): serve the stored vector (stale by at most one encode cycle) and mark the user dirty.

So after recovery, a restart, a rebalance or a new checkpoint, vectors are recomputed lazily: on the
user's next action or on the first read (that read answers ``realtime: []`` or the previous vector). The
whole store is wiped at start-up when the model version changed (old vectors are useless).

Where we differ from the paper: Pinterest computes TransAct inside the ranking model at request time; we
also precompute the candidate-free vector per user so it is a servable feature (the hybrid experiment's
``realtime_input`` model). Backpressure: if encoding is slower than the input, ``pending`` holds at most one
entry per active user and batches grow to ``encoder_batch_max``; freshness shows the delay.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import shutil
import struct
import time
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from streams.events import now_ms
from streams.metrics import WorkerMetrics
from streams.tables import SequenceStore

__all__ = ["HEADER", "NO_TS", "RealtimeEncoder", "RealtimeStore", "fingerprint", "pause_after"]

log = logging.getLogger(__name__)

HEADER = struct.Struct("<II")  # model-version crc32, sequence-blob crc32
NO_TS = -1  # a user marked dirty by a read, not by an event: no freshness observation
_META_VERSION = b"\x00meta:model_version"


def fingerprint(data: bytes) -> int:
    """crc32 of a sequence blob or a model version string (cheap; collisions only delay a recompute)."""
    return zlib.crc32(data) & 0xFFFFFFFF


class RealtimeStore:
    """user_id (UTF-8 bytes) -> float32 realtime vector, validated against the model and the sequence.

    Args:
        path: the rocksdict directory (created; wiped when it holds another model version's vectors).
        sequences: the worker's sequence store (the fingerprint of the current blob is checked on read).
        model_version: version of the encoder writing the vectors.
        pending: the encoder's dirty map; reads that find a missing or outdated vector mark the user there.
    """

    def __init__(self, path: Path, sequences: SequenceStore, model_version: str, pending: dict[bytes, int]) -> None:
        from rocksdict import Options, Rdict

        self.path = Path(path)
        self.sequences = sequences
        self.model_version = model_version
        self.version_crc = fingerprint(model_version.encode())
        self.pending = pending
        opts = Options(raw_mode=True)
        opts.create_if_missing(True)
        db = Rdict(str(self.path), opts)
        stored = db.get(_META_VERSION)
        if stored is not None and stored != model_version.encode():
            db.close()
            log.info("realtime vectors in %s are of model %s, now %s: wiped (recomputed lazily)", self.path,
                     stored.decode(errors="replace"), model_version)
            shutil.rmtree(self.path)
            db = Rdict(str(self.path), opts)
        db[_META_VERSION] = model_version.encode()
        self._db = db

    def get(self, key: bytes) -> bytes | None:
        """The user's vector as float32 bytes (what ``streams.api`` reads), or None; see the module docstring."""
        blob = self.sequences.get_blob(key.decode("utf-8", "surrogatepass"))
        if blob is None:  # no history on this worker: nothing to encode
            return None
        raw = self._db.get(key)
        if raw is None or len(raw) < HEADER.size:
            self.pending.setdefault(key, NO_TS)
            return None
        version_crc, blob_crc = HEADER.unpack_from(raw)
        if version_crc != self.version_crc:
            self.pending.setdefault(key, NO_TS)
            return None
        if blob_crc != fingerprint(blob):
            self.pending.setdefault(key, NO_TS)
        return raw[HEADER.size:]

    def put_many(self, keys: Sequence[bytes], blobs: Sequence[bytes], vectors: np.ndarray,
                 version_crc: int | None = None) -> None:
        """Store U vectors (U, D) float32 computed from ``blobs`` (one write batch).

        ``version_crc``: the model that computed them (default: the store's current one); a batch finished
        after :meth:`set_model_version` keeps its old tag, so its vectors count as outdated.
        """
        from rocksdict import WriteBatch

        crc = self.version_crc if version_crc is None else version_crc
        wb = WriteBatch(raw_mode=True)
        data = np.ascontiguousarray(vectors, dtype="<f4")
        for key, blob, row in zip(keys, blobs, data, strict=True):
            wb.put(key, HEADER.pack(crc, fingerprint(blob)) + row.tobytes())
        self._db.write(wb)

    def set_model_version(self, model_version: str) -> None:
        """A new model serves from now on: every stored vector of another version reads as missing."""
        self.model_version = model_version
        self.version_crc = fingerprint(model_version.encode())
        self._db[_META_VERSION] = model_version.encode()

    def count_keys(self) -> int:
        """Stored vectors (RocksDB estimate, minus the meta key)."""
        try:
            return max(0, int(self._db.property_int_value("rocksdb.estimate-num-keys") or 0) - 1)
        except Exception:  # noqa: BLE001 - closing
            return 0

    def close(self) -> None:
        self._db.close()


def pause_after(busy_s: float, pending: int, batch_max: int, interval_s: float, max_busy: float) -> float:
    """Seconds to wait after a batch that computed ``busy_s``: the busy cap, and the interval unless a full
    batch is already waiting."""
    rest = busy_s * (1 - max_busy) / max_busy
    return rest if pending >= batch_max else max(rest, interval_s)


class RealtimeEncoder:
    """The dirty-user map and the background micro-batching task (see the module docstring).

    Args:
        encoder: a :class:`transact.inference.Encoder` (``encode(seqs, request_ts) -> (U, D)``).
        sequences: where the users' blobs are read.
        store: where vectors are written.
        metrics: the worker's metrics (encoder batch size/seconds, realtime freshness).
        batch_max: users per micro-batch; interval_s: wait between batches when fewer are pending.
        max_busy: the most of the wall time the encoder thread may compute (0 < f <= 1): after a batch of
            t seconds it waits at least ``t (1 - f) / f``. It shares the CPU (and, for the Python parts of
            decoding and batch building, the GIL) with the event loop; when encoding cannot keep up, this
            keeps the sequence path's throughput and lets batches grow (more coalescing) instead.
    """

    def __init__(self, encoder: Any, sequences: SequenceStore, store: RealtimeStore, metrics: WorkerMetrics,
                 batch_max: int, interval_s: float, max_busy: float = 1.0) -> None:
        if not 0 < max_busy <= 1:
            raise ValueError("max_busy must be in (0, 1]")
        self.encoder = encoder
        self.sequences = sequences
        self.store = store
        self.pending = store.pending
        self.batch_max = batch_max
        self.interval_s = interval_s
        self.max_busy = max_busy
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="actionstream-encode")
        self._batch_size = metrics.encoder_batch_size
        self._seconds = metrics.encoder_seconds
        self._freshness = metrics.freshness_seconds.labels(stage="realtime")
        self.encoded_total = 0
        self.stopped = False

    def take(self) -> tuple[list[bytes], list[bytes], list[int]]:
        """Pop up to ``batch_max`` dirty users (oldest first); return (keys, blobs, event ts) of those with history."""
        pending = self.pending
        keys = list(itertools.islice(pending, self.batch_max))
        out_keys, blobs, tss = [], [], []
        get_blob = self.sequences.get_blob
        for key in keys:
            ts = pending.pop(key)
            blob = get_blob(key.decode("utf-8", "surrogatepass"))
            if blob is not None:  # None: the partition moved away (rebalance); its new owner encodes it
                out_keys.append(key)
                blobs.append(blob)
                tss.append(ts)
        return out_keys, blobs, tss

    def swap(self, encoder: Any) -> None:
        """Serve a new model (on the event loop, between batches; a running batch keeps its old tag). The old
        encoder is closed (its process, if any, stopped) on the encoder thread, after any running batch."""
        old, self.encoder = self.encoder, encoder
        self.store.set_model_version(str(encoder.model_version))
        if old is not encoder and hasattr(old, "close") and not self.stopped:
            self.executor.submit(old.close)

    def encode_and_store(self, keys: list[bytes], blobs: list[bytes], tss: list[int],
                         encoder: Any = None, version_crc: int | None = None) -> int:
        """Executor thread: decode, encode (torch), store, observe metrics. Returns the users stored.

        ``encoder`` / ``version_crc``: the model taken with the batch (default: the current one).
        """
        encoder = self.encoder if encoder is None else encoder
        t0 = time.perf_counter()
        vectors = encoder.encode_blobs(blobs, now_ms())  # (U, D) float32: decode + forward, maybe in a child process
        self._seconds.observe(time.perf_counter() - t0)
        self._batch_size.observe(len(keys))
        self.store.put_many(keys, blobs, vectors, version_crc)
        now = time.time()
        for ts in tss:
            if ts != NO_TS:
                self._freshness.observe(max(0.0, now - ts / 1000))
        self.encoded_total += len(keys)
        return len(keys)

    async def run(self) -> None:
        """The background task: forever take a batch, encode it in the executor, wait ``interval_s``."""
        loop = asyncio.get_running_loop()
        idle = self.interval_s if self.interval_s > 0 else 0.01
        log.info("realtime encoder running (batch_max %d, interval %.0f ms, max busy %.0f%%, model %s)",
                 self.batch_max, self.interval_s * 1000, 100 * self.max_busy, self.store.model_version)
        while not self.stopped:
            if not self.pending:
                await asyncio.sleep(idle)
                continue
            keys, blobs, tss = self.take()
            busy = 0.0
            if keys:
                t0 = time.monotonic()
                try:
                    await loop.run_in_executor(self.executor, self.encode_and_store, keys, blobs, tss,
                                               self.encoder, self.store.version_crc)
                except Exception:  # noqa: BLE001 - a bad batch must not stop the encoder
                    if self.stopped:  # the executor was shut down: the worker is stopping
                        return
                    log.exception("realtime encoder batch of %d users failed; they are retried on their "
                                  "next action or read", len(keys))
                busy = time.monotonic() - t0
            await asyncio.sleep(pause_after(busy, len(self.pending), self.batch_max, self.interval_s, self.max_busy))

    def stop(self) -> None:
        """Stop taking batches and wait for the running one (at most one batch of encoding)."""
        self.stopped = True
        self.executor.shutdown(wait=True, cancel_futures=True)
        if hasattr(self.encoder, "close"):
            self.encoder.close()
