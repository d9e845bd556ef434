"""`actionstream daily`: the daily PinnerFormer job (paper section 5, "incremental daily inference").

For day D (UTC) and shard i/n it:

1. reads the event archive up to the end of D (``end = D+1 00:00 UTC``) and keeps the users of its shard
   (``blake2b(user_id) mod n``, stable across runs and machines);
2. embeds only users with an input action in the last 24 h before ``end`` (``--active-hours``), each from
   their full history up to ``end`` (the most recent M actions);
3. merges with the previous snapshot (the latest earlier date; users not active keep yesterday's vector
   and its date). If the model version changed since that snapshot, every user of the shard is re-embedded,
   so one snapshot never mixes two embedding spaces;
4. writes ``<snapshots>/date=D/part-<i>-of-<n>.npz`` (``user_ids`` (U,) str, ``vectors`` (U,Dp) float32,
   ``dates`` (U,) str: the day each vector was computed) plus a manifest ``part-<i>-of-<n>.json``;
5. publishes each CHANGED user's record (contract: ``{"user_id", "model_version", "date", "vector"}``,
   key = user_id) to the compacted ``topic_embeddings`` with kafka-python, then marks the manifest
   ``"published": true``.

Idempotent: inference is deterministic (every batch padded to the full M) and a vector within
``daily_atol`` of the stored one counts as unchanged and keeps the stored value, so re-running a day gives
the same snapshot and publishes nothing new once that day was published (a crash before the manifest says
``published`` re-sends the same records: harmless on a compacted topic). A snapshot of another shard
count is still read correctly (all parts of the day are read and filtered by shard).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import torch

from embeddings.data import PositiveRule, build_corpus
from embeddings.evaluate import embed_users
from embeddings.pinnerformer import load_checkpoint
from embeddings.settings import DailySettings
from streams.archive import read_events
from streams.errors import ConfigError, DeliveryError

__all__ = ["Snapshot", "load_snapshot", "merge", "parse_shard", "previous_date", "run_daily", "shard_of"]

log = logging.getLogger(__name__)
HELP = "daily job: embed users active in the last 24 h, merge into a dated snapshot, publish changed users"
DAY_MS = 86_400_000
_PART = re.compile(r"part-(\d+)-of-(\d+)\.npz$")


def shard_of(user_id: str, n: int) -> int:
    """Stable shard of a user (blake2b-64 mod n)."""
    return int.from_bytes(hashlib.blake2b(user_id.encode("utf-8", "surrogatepass"), digest_size=8,
                                          person=b"daily-shard").digest(), "little") % n


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` → (i, n) with 0 <= i < n."""
    m = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if not m or not 0 <= int(m.group(1)) < int(m.group(2)):
        raise ConfigError(f"--shard must look like i/n with 0 <= i < n (got {text!r})")
    return int(m.group(1)), int(m.group(2))


@dataclass
class Snapshot:
    """One shard's embeddings: user ids (sorted), vectors (U, D) float32, and the day each was computed."""

    user_ids: list[str]
    vectors: np.ndarray
    dates: list[str]
    model_version: str

    def as_dict(self) -> dict[str, tuple[np.ndarray, str]]:
        return {u: (self.vectors[i], self.dates[i]) for i, u in enumerate(self.user_ids)}


def _day_dir(snapshots: Path, day: dt.date) -> Path:
    return Path(snapshots) / f"date={day.isoformat()}"


def previous_date(snapshots: Path, day: dt.date) -> dt.date | None:
    """The latest snapshot day before ``day`` that has at least one complete part."""
    days = []
    for d in Path(snapshots).glob("date=*"):
        try:
            dd = dt.date.fromisoformat(d.name[5:])
        except ValueError:
            continue
        if dd < day and any(d.glob("part-*.json")):
            days.append(dd)
    return max(days) if days else None


def load_snapshot(snapshots: Path, day: dt.date, shard: tuple[int, int]) -> Snapshot | None:
    """All parts of ``day`` (any shard count) restricted to users of ``shard``; None if there are none."""
    d = _day_dir(snapshots, day)
    users: list[str] = []
    vecs: list[np.ndarray] = []
    dates: list[str] = []
    version = ""
    for f in sorted(d.glob("part-*.npz")):
        if not f.with_suffix(".json").exists():           # a part whose manifest is missing was never finished
            continue
        with np.load(f, allow_pickle=False) as z:
            ids, v, ds = z["user_ids"].tolist(), z["vectors"], z["dates"].tolist()
            version = str(z["model_version"])
        for j, u in enumerate(ids):
            if shard_of(u, shard[1]) == shard[0]:
                users.append(u)
                vecs.append(v[j])
                dates.append(ds[j])
    if not version:
        return None
    order = np.argsort(users, kind="stable") if users else np.zeros(0, dtype=np.int64)
    dim = vecs[0].shape[0] if vecs else 0
    return Snapshot([users[i] for i in order], np.stack([vecs[i] for i in order]) if vecs else
                    np.zeros((0, dim), np.float32), [dates[i] for i in order], version)


def merge(prev: Snapshot | None, base: Snapshot | None, users: list[str], vectors: np.ndarray, day: str,
          model_version: str, atol: float) -> tuple[Snapshot, list[str]]:
    """New snapshot = ``prev`` overwritten by the freshly embedded ``users``; return it and the changed users.

    ``base`` is what consumers already have (the same day's published snapshot on a re-run, else ``prev``):
    a fresh vector within ``atol`` of the base vector keeps the base value and date and is not "changed".
    """
    out = prev.as_dict() if prev is not None and prev.model_version == model_version else {}
    known = base.as_dict() if base is not None and base.model_version == model_version else {}
    changed = []
    for u, v in zip(users, vectors, strict=True):
        old = known.get(u)
        if old is not None and old[0].shape == v.shape and np.allclose(old[0], v, rtol=0, atol=atol):
            out[u] = old
        else:
            out[u] = (v.astype(np.float32), day)
            changed.append(u)
    ids = sorted(out)
    dim = vectors.shape[1] if len(vectors) else (next(iter(out.values()))[0].shape[0] if out else 0)
    vecs = np.stack([out[u][0] for u in ids]).astype(np.float32) if ids else np.zeros((0, dim), np.float32)
    return Snapshot(ids, vecs, [out[u][1] for u in ids], model_version), sorted(changed)


def write_snapshot(snapshots: Path, day: dt.date, shard: tuple[int, int], snap: Snapshot,
                   manifest: dict[str, Any]) -> Path:
    """Atomically write the part file, then its manifest (a part without a manifest is ignored by readers)."""
    d = _day_dir(snapshots, day)
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"part-{shard[0]}-of-{shard[1]}.npz"
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, user_ids=np.array(snap.user_ids, dtype=str), vectors=snap.vectors,
             dates=np.array(snap.dates, dtype=str), model_version=np.array(snap.model_version))
    os.replace(tmp, path)
    write_manifest(path, manifest)
    return path


def write_manifest(part: Path, manifest: dict[str, Any]) -> None:
    tmp = part.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    os.replace(tmp, part.with_suffix(".json"))


def model_version_of(checkpoint: Path, meta: dict[str, Any]) -> str:
    if meta.get("model_version"):
        return str(meta["model_version"])
    return "pinnerformer-" + hashlib.sha256(Path(checkpoint).read_bytes()).hexdigest()[:12]


def publish(s: DailySettings, snap: Snapshot, users: list[str]) -> int:
    """Send one record per user in ``users`` to ``topic_embeddings`` (key = user_id); wait for every ack."""
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    from streams.topics import ensure_topics

    ensure_topics(s)
    rows = {u: i for i, u in enumerate(snap.user_ids)}
    producer = KafkaProducer(bootstrap_servers=s.kafka_bootstrap_servers.split(","), acks="all", linger_ms=20,
                             **s.kafka_python_security())
    try:
        futures = [producer.send(s.topic_embeddings, key=u.encode("utf-8"),
                                 value=orjson.dumps({"user_id": u, "model_version": snap.model_version,
                                                     "date": snap.dates[rows[u]],
                                                     "vector": snap.vectors[rows[u]].tolist()}))
                   for u in users]
        producer.flush(timeout=60)
        for f in futures:
            f.get(timeout=30)
    except KafkaError as exc:
        raise DeliveryError(f"publishing embeddings to {s.topic_embeddings!r} failed: {exc}") from exc
    finally:
        producer.close(timeout=10)
    return len(users)


def run_daily(s: DailySettings, day: dt.date, shard: tuple[int, int] = (0, 1), publish_records: bool = True,
              progress: bool = False) -> dict[str, Any]:
    """Run the job for ``day``; return the manifest (counts, paths, published)."""
    torch.set_num_threads(s.daily_threads)
    model, meta = load_checkpoint(s.daily_checkpoint)
    version = model_version_of(s.daily_checkpoint, meta)
    ms = meta.get("settings", {})
    end_ms = int(dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), dt.timezone.utc).timestamp() * 1000)
    items = None
    if s.daily_items is not None:
        from streams.items import ItemStore, MemoryItemStore
        items = ItemStore(s.daily_items, read_only=True) if Path(s.daily_items).is_dir() \
            else MemoryItemStore.from_file(s.daily_items)
        if items.dim != model.cfg.item_dim:
            raise ConfigError(f"item vectors have {items.dim} values, the checkpoint expects {model.cfg.item_dim}")
    cache: dict[str, bool] = {}

    def mine(e: Any) -> bool:
        hit = cache.get(e.user_id)
        if hit is None:
            hit = cache[e.user_id] = shard_of(e.user_id, shard[1]) == shard[0]
        return hit

    events = (e for e in read_events(s.daily_archive, end=day) if mine(e))
    corpus = build_corpus(events, items, actions=tuple(ms.get("actions", s.actions)),
                          surfaces=tuple(ms.get("surfaces", s.surfaces)),
                          rule=PositiveRule(min_dwell_ms=int(ms.get("pf_min_dwell_ms", 10_000))),
                          input_exclude=tuple(meta.get("input_exclude", ("impression",))),
                          id_buckets=model.cfg.id_buckets, item_dim=model.cfg.item_dim, before_ms=end_ms)
    prev_day = previous_date(s.daily_snapshots, day)
    prev = load_snapshot(s.daily_snapshots, prev_day, shard) if prev_day else None
    full_refresh = prev is None or prev.model_version != version
    since = end_ms - int(s.daily_active_hours * 3_600_000)
    todo = [u for u in range(len(corpus.users))
            if corpus.offsets[u + 1] > corpus.offsets[u] and (full_refresh or corpus.ts[corpus.offsets[u + 1] - 1] >= since)]
    todo.sort(key=lambda u: corpus.users[u])
    vectors = embed_users(model, corpus, [(u, int(corpus.offsets[u + 1])) for u in todo], s.daily_batch_size)
    names = [corpus.users[u] for u in todo]
    same_day = load_snapshot(s.daily_snapshots, day, shard)
    manifest_path = _day_dir(s.daily_snapshots, day) / f"part-{shard[0]}-of-{shard[1]}.json"
    already = manifest_path.exists() and json.loads(manifest_path.read_text()).get("published", False)
    base = same_day if (already and same_day is not None) else prev
    snap, changed = merge(prev, base, names, vectors, day.isoformat(), version, s.daily_atol)
    manifest: dict[str, Any] = {
        "date": day.isoformat(), "shard": f"{shard[0]}/{shard[1]}", "model_version": version,
        "checkpoint": str(s.daily_checkpoint), "previous_date": prev_day.isoformat() if prev_day else None,
        "full_refresh": full_refresh, "users": len(snap.user_ids), "embedded": len(names), "changed": len(changed),
        "published": False, "published_records": 0, "topic": s.topic_embeddings}
    part = write_snapshot(s.daily_snapshots, day, shard, snap, manifest)
    log.info("%s shard %d/%d: %d users in snapshot, %d active re-embedded, %d changed; wrote %s", day, *shard,
             len(snap.user_ids), len(names), len(changed), part)
    if publish_records:
        manifest["published_records"] = publish(s, snap, changed) if changed else 0
        manifest["published"] = True
        write_manifest(part, manifest)
        log.info("published %d records to %s", manifest["published_records"], s.topic_embeddings)
    manifest["path"] = str(part)
    return manifest


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--archive", type=Path, required=True, help="event archive dir (date=YYYY-MM-DD/part-*.jsonl) or file")
    p.add_argument("--date", required=True, help="the UTC day D to process (YYYY-MM-DD); users active in its last 24 h")
    p.add_argument("--checkpoint", type=Path, required=True, help="model.pt from `train pinnerformer`")
    p.add_argument("--snapshots", type=Path, required=True, help="snapshot root (date=D/part-i-of-n.npz)")
    p.add_argument("--items", type=Path, default=None, help="item vectors: JSONL file or ItemStore dir")
    p.add_argument("--shard", default="0/1", help="i/n: this run handles users with hash mod n == i")
    p.add_argument("--no-publish", action="store_true", help="write the snapshot only, publish nothing")
    p.add_argument("--bootstrap", default=None, help="Kafka bootstrap (env ACTIONSTREAM_KAFKA_BOOTSTRAP_SERVERS)")
    p.add_argument("--topic", default=None, help="embeddings topic (env ACTIONSTREAM_TOPIC_EMBEDDINGS)")


def run(args: argparse.Namespace) -> int:
    try:
        day = dt.date.fromisoformat(args.date)
    except ValueError:
        raise ConfigError(f"--date must be YYYY-MM-DD (got {args.date!r})") from None
    s = DailySettings.load(daily_archive=args.archive, daily_checkpoint=args.checkpoint, daily_snapshots=args.snapshots,
                           daily_items=args.items, kafka_bootstrap_servers=args.bootstrap,
                           topic_embeddings=args.topic, daily_publish=False if args.no_publish else None)
    if not s.daily_checkpoint.is_file():
        raise ConfigError(f"no checkpoint at {s.daily_checkpoint}")
    manifest = run_daily(s, day, parse_shard(args.shard), publish_records=s.daily_publish)
    print(json.dumps(manifest, indent=2))  # noqa: T201
    return 0
