"""Hybrid features without a broker: model loading from settings, the realtime store and encoder task on a
real RocksDB-backed Faust table, daily-record validation, and the platform wiring (streams.hybrid)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import faust
import numpy as np
import orjson
import pytest
import torch
from prometheus_client import CollectorRegistry

from streams.daily import DailyRejection, parse_daily_record
from streams.errors import ConfigError
from streams.metrics import WorkerMetrics
from streams.models import load_models, set_model_gauges
from streams.realtime import NO_TS, RealtimeEncoder, RealtimeStore, pause_after
from streams.sequence import SequenceCodec
from streams.settings import DEFAULT_ACTIONS, WorkerSettings
from streams.tables import SequenceStore, create_sequences_table
from transact.inference import Encoder
from transact.model import RankingConfig, RankingModel, TransAct, TransActConfig, save_checkpoint

NOW = 1_700_000_000_000
RT = TransActConfig(item_dim=4, action_emb_dim=4, dim_feedforward=8, hash_buckets=101, early_fusion=False)


def rt_checkpoint(path: Path, version: str = "rt-1", actions: tuple[str, ...] = DEFAULT_ACTIONS,
                  cfg: TransActConfig = RT) -> Path:
    torch.manual_seed(0)
    save_checkpoint(path, TransAct(cfg), cfg, {"actions": list(actions), "model_version": version})
    return path


def ranking_checkpoint(path: Path) -> Path:
    cfg = RankingConfig(transact=TransActConfig(item_dim=4, action_emb_dim=4, dim_feedforward=8, hash_buckets=101),
                        daily_dim=3, mlp_dims=(8,))
    torch.manual_seed(0)
    save_checkpoint(path, RankingModel(cfg), cfg, {"actions": list(DEFAULT_ACTIONS), "model_version": "rank-1"})
    return path


def settings(tmp_path: Path, **kw: object) -> WorkerSettings:
    return WorkerSettings.load(data_dir=tmp_path / "state", archive_dir="", **kw)


# ---------------------------------------------------------------------------------------------- models

def test_no_checkpoint_runs_without_models_and_says_so(tmp_path: Path) -> None:
    models = load_models(settings(tmp_path))
    assert models.scorer is None and models.encoder is None and models.items is None
    registry = CollectorRegistry()
    set_model_gauges(WorkerMetrics.create(registry), models)
    for model in ("transact", "transact_realtime", "pinnerformer_daily"):
        assert registry.get_sample_value("actionstream_model_loaded", {"model": model}) == 0


def test_checkpoints_load_and_export_their_versions(tmp_path: Path) -> None:
    items = tmp_path / "items.jsonl"
    items.write_bytes(orjson.dumps({"item_id": "i1", "vector": [0.1, 0.2, 0.3, 0.4]}) + b"\n")
    s = settings(tmp_path, transact_checkpoint=ranking_checkpoint(tmp_path / "rank.pt"),
                 realtime_checkpoint=rt_checkpoint(tmp_path / "rt.pt"), items_path=items)
    models = load_models(s)
    assert models.scorer.model_version == "rank-1" and models.encoder.model_version == "rt-1"
    assert models.items is not None and models.items.dim == 4
    registry = CollectorRegistry()
    set_model_gauges(WorkerMetrics.create(registry), models)
    assert registry.get_sample_value("actionstream_model_loaded", {"model": "transact"}) == 1
    assert registry.get_sample_value("actionstream_model_loaded", {"model": "transact_realtime"}) == 1
    assert registry.get_sample_value("actionstream_model_info", {"model": "transact", "version": "rank-1"}) == 1


def test_score_threads_slice_candidates_and_pin_torch_to_one_thread(tmp_path: Path) -> None:
    import torch
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        # a ranking model only (no realtime encoder): the thread setting must not depend on one
        models = load_models(settings(tmp_path, transact_checkpoint=ranking_checkpoint(tmp_path / "rank.pt"),
                                      score_threads=2))
        assert models.scorer is not None and models.scorer.workers == 2 and models.encoder is None
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_missing_checkpoint_fails_at_start_up(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ACTIONSTREAM_REALTIME_CHECKPOINT: file .* does not exist"):
        settings(tmp_path, realtime_checkpoint=tmp_path / "nope.pt")
    with pytest.raises(ConfigError, match="ACTIONSTREAM_ITEMS_PATH"):
        settings(tmp_path, items_path=tmp_path / "nope.jsonl")


@pytest.mark.parametrize("case", ["corrupt", "early_fusion", "vocab", "item_dim", "items_file"])
def test_unusable_checkpoint_is_a_clear_config_error(tmp_path: Path, case: str) -> None:
    items = tmp_path / "items.jsonl"
    items.write_bytes(orjson.dumps({"item_id": "i1", "vector": [0.1, 0.2, 0.3, 0.4]}) + b"\n")
    kw: dict[str, object] = {"items_path": items}
    if case == "corrupt":
        (tmp_path / "rt.pt").write_bytes(b"not a checkpoint")
        kw["realtime_checkpoint"], expected = tmp_path / "rt.pt", "REALTIME_CHECKPOINT: cannot load"
    elif case == "early_fusion":
        kw["realtime_checkpoint"] = rt_checkpoint(tmp_path / "rt.pt", cfg=TransActConfig(item_dim=4, hash_buckets=101))
        expected = "candidate-free"
    elif case == "vocab":
        kw["realtime_checkpoint"] = rt_checkpoint(tmp_path / "rt.pt", actions=("click", "save"))
        expected = "trained with actions"
    elif case == "item_dim":
        kw["realtime_checkpoint"] = rt_checkpoint(tmp_path / "rt.pt", cfg=TransActConfig(
            item_dim=8, hash_buckets=101, early_fusion=False))
        expected = "expects 8-d item vectors"
    else:
        items.write_bytes(b"{broken\n")
        kw["realtime_checkpoint"], expected = rt_checkpoint(tmp_path / "rt.pt"), "ITEMS_PATH: cannot load"
    with pytest.raises(ConfigError, match=expected):
        load_models(settings(tmp_path, **kw))


# ---------------------------------------------------------------------------------------------- realtime

@pytest.fixture
def sequences(tmp_path: Path) -> SequenceStore:
    """A real RocksDB-backed ``sequences`` table (not started: blobs are written straight into RocksDB)."""
    s = settings(tmp_path)
    app = faust.App("hybrid-test", store="rocksdb://", datadir=str(tmp_path / "faust"), key_serializer="raw",
                    value_serializer="raw")
    return SequenceStore(create_sequences_table(app, s), SequenceCodec(), s.partitions)


def put_history(store: SequenceStore, user: str, n: int, start: int = 0) -> bytes:
    key = user.encode()
    db = store._db(store.owner(key))
    seq = store.codec.update([] if db.get(key) is None else _decode(db.get(key)),
                             [_event(user, k) for k in range(start, start + n)])
    from streams.sequence import encode
    blob = encode(seq)
    db.put(key, blob)
    return blob


def _decode(blob: bytes) -> list:
    from streams.sequence import decode
    return decode(blob)


def _event(user: str, k: int):  # noqa: ANN202
    from streams.events import Event
    return Event(f"{user}-e{k}", user, f"i{k % 5}", DEFAULT_ACTIONS[k % 7], NOW - 60_000 * (50 - k), "homefeed", None)


def test_realtime_store_validates_model_and_sequence(tmp_path: Path, sequences: SequenceStore) -> None:
    pending: dict[bytes, int] = {}
    store = RealtimeStore(tmp_path / "rt", sequences, "v1", pending)
    assert store.get(b"nobody") is None and pending == {}  # no history: nothing to compute
    blob = put_history(sequences, "u1", 3)
    assert store.get(b"u1") is None and pending == {b"u1": NO_TS}  # history, no vector yet: queued
    pending.clear()
    vec = np.arange(6, dtype=np.float32)
    store.put_many([b"u1"], [blob], vec.reshape(1, -1))
    assert np.frombuffer(store.get(b"u1"), np.float32).tolist() == vec.tolist() and pending == {}
    put_history(sequences, "u1", 1, start=3)  # the sequence moved on: stale vector served, recompute queued
    assert np.frombuffer(store.get(b"u1"), np.float32).tolist() == vec.tolist() and pending == {b"u1": NO_TS}
    store.close()
    same = RealtimeStore(tmp_path / "rt", sequences, "v1", {})
    assert same.get(b"u1") is not None  # kept across a restart with the same model
    same.close()
    pending2: dict[bytes, int] = {}
    other = RealtimeStore(tmp_path / "rt", sequences, "v2", pending2)
    assert other.get(b"u1") is None and pending2 == {b"u1": NO_TS}  # new model: old vectors wiped
    other.close()


def test_encoder_task_coalesces_and_stores_what_the_model_computes(tmp_path: Path,
                                                                   sequences: SequenceStore) -> None:
    registry = CollectorRegistry()
    metrics = WorkerMetrics.create(registry)
    encoder = Encoder.from_checkpoint(rt_checkpoint(tmp_path / "rt.pt"), None)
    store = RealtimeStore(tmp_path / "rt", sequences, encoder.model_version, {})
    service = RealtimeEncoder(encoder, sequences, store, metrics, batch_max=2, interval_s=0.001)
    blobs = {u: put_history(sequences, u, n) for u, n in (("a", 4), ("b", 1), ("c", 7))}
    now_s = NOW / 1000
    for _ in range(5):  # five events of "a" before the next batch: one encode
        service.pending.setdefault(b"a", NOW - 2_000)
    service.pending.setdefault(b"b", NOW - 1_000)
    service.pending.setdefault(b"c", NO_TS)  # marked by a read: no freshness observation
    service.pending.setdefault(b"gone", NOW)  # no history here (partition moved away): skipped

    async def drive() -> None:
        task = asyncio.create_task(service.run())
        for _ in range(500):
            if not service.pending and service.encoded_total >= 3:
                break
            await asyncio.sleep(0.01)
        service.stopped = True
        await task

    asyncio.run(drive())
    service.executor.shutdown()
    assert service.encoded_total == 3
    for user, blob in blobs.items():
        want = encoder.encode([_decode(blob)], NOW)[0]
        np.testing.assert_allclose(np.frombuffer(store.get(user.encode()), np.float32), want, rtol=1e-5, atol=1e-6)
    assert registry.get_sample_value("actionstream_encoder_batch_size_sum") == 3
    assert registry.get_sample_value("actionstream_encoder_batch_size_count") == 2  # batch_max 2: 2 + 1
    assert registry.get_sample_value("actionstream_freshness_seconds_count", {"stage": "realtime"}) == 2
    ages = registry.get_sample_value("actionstream_freshness_seconds_sum", {"stage": "realtime"})
    # stored now, events of NOW - 2 s and NOW - 1 s (in 2023): the ages are measured from the event times
    assert ages is not None and ages == pytest.approx(2 * (time.time() - now_s) + 3, abs=120)
    store.close()


@pytest.mark.parametrize(("busy", "pending", "max_busy", "expected"), [
    (0.0, 0, 0.5, 0.05),    # idle: the interval
    (0.2, 10, 1.0, 0.05),   # no cap: the interval
    (0.2, 10, 0.5, 0.2),    # cap 50 %: wait as long as the batch took
    (0.3, 10, 0.25, 0.9),   # cap 25 %: three times as long
    (0.2, 256, 1.0, 0.0),   # a full batch waiting and no cap: at once
    (0.2, 256, 0.5, 0.2),   # a full batch waiting: the cap still holds
])
def test_encoder_pause_keeps_the_busy_cap(busy: float, pending: int, max_busy: float, expected: float) -> None:
    assert pause_after(busy, pending, 256, 0.05, max_busy) == pytest.approx(expected)


# ---------------------------------------------------------------------------------------------- daily

GOOD = {"user_id": "u1", "model_version": "pf-1", "date": "2026-11-20", "vector": [0.5, -1, 2.25]}


def test_daily_record_is_normalised() -> None:
    rec = parse_daily_record(b"u1", orjson.dumps({**GOOD, "extra": 1}))
    assert rec == {**GOOD, "vector": [0.5, -1.0, 2.25]}


@pytest.mark.parametrize(("key", "value", "reason", "message"), [
    (b"u1", b"{not json", "daily_invalid_json", "not valid JSON"),
    (b"u1", b"[1, 2]", "daily_invalid_json", "JSON object"),
    (b"u1", orjson.dumps({**GOOD, "user_id": ""}), "daily_invalid_record", "'user_id'"),
    (b"u1", orjson.dumps({k: v for k, v in GOOD.items() if k != "model_version"}), "daily_invalid_record",
     "'model_version'"),
    (b"u1", orjson.dumps({**GOOD, "date": "20.11.2026"}), "daily_invalid_record", "YYYY-MM-DD"),
    (b"u1", orjson.dumps({**GOOD, "vector": []}), "daily_invalid_record", "'vector'"),
    (b"u1", orjson.dumps({**GOOD, "vector": [1.0, True]}), "daily_invalid_record", r"vector\[1\]"),
    (b"u1", orjson.dumps({**GOOD, "vector": [1.0, "2"]}), "daily_invalid_record", r"vector\[1\]"),
    (b"u1", b'{"user_id": "u1", "model_version": "m", "date": "2026-11-20", "vector": [1e999]}',
     "daily_invalid_json", "not valid JSON"),
    (None, orjson.dumps(GOOD), "daily_missing_key", "key"),
    (b"u2", orjson.dumps(GOOD), "daily_key_mismatch", "differs"),
])
def test_bad_daily_records_are_rejected_with_a_reason(key: bytes | None, value: bytes, reason: str,
                                                      message: str) -> None:
    with pytest.raises(DailyRejection, match=message) as info:
        parse_daily_record(key, value)
    assert info.value.reason == reason


# ---------------------------------------------------------------------------------------------- wiring

def test_platform_wiring(tmp_path: Path) -> None:
    from streams.app import create_platform

    s = settings(tmp_path, transact_checkpoint=ranking_checkpoint(tmp_path / "rank.pt"),
                 realtime_checkpoint=rt_checkpoint(tmp_path / "rt.pt"))
    platform = create_platform(s)
    assert platform.scorer.model_version == "rank-1" and platform.encoder.model_version == "rt-1"
    assert isinstance(platform.tables.realtime, RealtimeStore)
    assert platform.handler.dirty is platform.tables.realtime.pending
    assert platform.tables.daily is not None and {"sequences", "daily"} <= set(platform.app.agents)
    platform.tables.realtime.close()
    bare = create_platform(settings(tmp_path / "bare"))
    assert bare.scorer is None and bare.encoder is None and bare.tables.realtime is None
    assert bare.handler.dirty is None


def test_marking_happens_only_for_changed_sequences(tmp_path: Path) -> None:
    """The hot path adds one dict entry per changed sequence (kept to the first event time), none for dups."""
    from streams.app import create_platform
    from streams.events import Event, encode_event, now_ms

    platform = create_platform(settings(tmp_path, realtime_checkpoint=rt_checkpoint(tmp_path / "rt.pt")))
    handler = platform.handler
    dirty = handler.dirty
    assert dirty is not None
    t = now_ms()
    e1 = Event("x1", "u9", "i1", "click", t - 5_000, "homefeed", None)
    e2 = Event("x2", "u9", "i2", "save", t - 1_000, "homefeed", None)
    key = b"u9"

    async def handle_all() -> list[str]:  # Faust queues the changelog records on the (unstarted) producer
        return [handler.handle(key, encode_event(e), platform.settings.topic_actions,
                               platform.sequences.owner(key), i) for i, e in enumerate((e1, e2, e1))]

    outcomes = asyncio.run(handle_all())
    assert outcomes == ["applied", "applied", "duplicate"]
    assert dirty == {key: e1.ts}
    platform.tables.realtime.close()


@pytest.mark.kafka
def test_embeddings_topic_is_created_compacted_and_checked(kafka: object, unique_topic: object) -> None:
    from streams.daily import ensure_embeddings_topic
    from streams.topics import describe_topics

    name = unique_topic("emb")  # type: ignore[operator]
    s = WorkerSettings.load(kafka_bootstrap_servers=kafka.bootstrap, topic_embeddings=name,  # type: ignore[attr-defined]
                            partitions=3)
    ensure_embeddings_topic(s)
    ensure_embeddings_topic(s)  # idempotent
    info = describe_topics(s, [name])[0]
    assert info.partitions == 3 and info.configs["cleanup.policy"] == "compact"
    with pytest.raises(ConfigError, match="has 3 partitions but ACTIONSTREAM_PARTITIONS=4"):
        ensure_embeddings_topic(s.model_copy(update={"partitions": 4}))


def test_sighup_reload_swaps_models_and_keeps_them_on_a_bad_file(tmp_path: Path) -> None:
    from streams.app import create_platform
    from streams.hybrid import reload_models

    rt = rt_checkpoint(tmp_path / "rt.pt", version="rt-1")
    platform = create_platform(settings(tmp_path, realtime_checkpoint=rt))
    registry, store = platform.registry, platform.tables.realtime
    rt_checkpoint(tmp_path / "rt-new.pt", version="rt-2").replace(rt)  # atomic replace, as documented
    assert asyncio.run(reload_models(platform)) is True
    assert platform.encoder.model_version == "rt-2" and store.model_version == "rt-2"
    assert platform.extras["realtime"].encoder is platform.encoder
    assert registry.get_sample_value("actionstream_model_info", {"model": "transact_realtime", "version": "rt-2"}) == 1
    assert registry.get_sample_value("actionstream_model_info", {"model": "transact_realtime", "version": "rt-1"}) is None
    rt.write_bytes(b"half-written")
    assert asyncio.run(reload_models(platform)) is False
    assert platform.encoder.model_version == "rt-2"  # still serving the last good model
    assert registry.get_sample_value("actionstream_model_loaded", {"model": "transact_realtime"}) == 1
    store.close()
