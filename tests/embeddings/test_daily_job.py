"""Daily job: shard hashing, merge rules, snapshot idempotence and sharding (no broker); publishing against
the real Kafka broker (marker ``kafka``)."""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path

import numpy as np
import orjson
import pytest
import torch

from embeddings.daily_job import Snapshot, load_snapshot, merge, parse_shard, run_daily, shard_of
from embeddings.pinnerformer import PinnerFormer, PinnerFormerConfig, save_checkpoint
from embeddings.settings import DailySettings
from streams.archive import archive_path, day_of
from streams.errors import ConfigError
from streams.events import Event, encode_event
from tests.embeddings.conftest import DAY, T0, make_events

DAY1 = day_of(T0 + 9 * DAY)          # the toy data covers days T0 .. T0 + 9
DAY2 = DAY1 + dt.timedelta(days=1)


def write_archive(root: Path, events: list[Event]) -> Path:
    files: dict[Path, list[bytes]] = {}
    for e in events:
        files.setdefault(archive_path(root, day_of(e.ts), 0), []).append(encode_event(e) + b"\n")
    for path, lines in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab") as fh:
            fh.writelines(lines)
    return root


@pytest.fixture
def daily_setup(tmp_path: Path) -> DailySettings:
    events, vectors = make_events(n_users=40, n_items=80, days=10, seed=3)
    write_archive(tmp_path / "archive", events)
    (tmp_path / "items.jsonl").write_bytes(b"".join(orjson.dumps({"item_id": k, "vector": v}) + b"\n"
                                                    for k, v in vectors.items()))
    torch.manual_seed(0)
    model = PinnerFormer(PinnerFormerConfig(item_dim=8, id_buckets=101, max_len=32, width=32, n_layers=1, n_heads=2,
                                            emb_dim=16))
    save_checkpoint(tmp_path / "model.pt", model, {"model_version": "pf-test-1", "input_exclude": ["impression"]})
    return DailySettings.load(daily_archive=tmp_path / "archive", daily_snapshots=tmp_path / "snaps",
                              daily_checkpoint=tmp_path / "model.pt", daily_items=tmp_path / "items.jsonl",
                              daily_threads=1)


def test_shards_are_stable_and_balanced() -> None:
    users = [f"u{i}" for i in range(4000)]
    counts = np.bincount([shard_of(u, 4) for u in users], minlength=4)
    assert counts.min() > 850 and [shard_of(u, 4) for u in users[:50]] == [shard_of(u, 4) for u in users[:50]]
    assert parse_shard("2/3") == (2, 3)
    for bad in ("3/3", "1", "a/b", "-1/2"):
        with pytest.raises(ConfigError):
            parse_shard(bad)


def snap(users: list[str], vecs: list[list[float]], dates: list[str], version: str = "v1") -> Snapshot:
    return Snapshot(users, np.asarray(vecs, dtype=np.float32), dates, version)


def test_merge_keeps_inactive_users_and_reports_changes() -> None:
    prev = snap(["a", "b", "c"], [[1, 0], [0, 1], [1, 1]], ["2024-01-01"] * 3)
    new_vecs = np.asarray([[0.5, 0.5], [1, 1 + 1e-9], [2, 2]], dtype=np.float32)
    out, changed = merge(prev, prev, ["b", "c", "d"], new_vecs, "2024-01-02", "v1", atol=1e-6)
    assert out.user_ids == ["a", "b", "c", "d"]
    assert changed == ["b", "d"]                                  # c is within atol: unchanged
    assert out.dates == ["2024-01-01", "2024-01-02", "2024-01-01", "2024-01-02"]
    np.testing.assert_array_equal(out.vectors[0], [1, 0])         # inactive a keeps yesterday's vector
    np.testing.assert_array_equal(out.vectors[2], [1, 1])         # c keeps the stored value exactly


def test_merge_after_a_model_change_drops_the_old_space() -> None:
    prev = snap(["a", "b"], [[1, 0], [0, 1]], ["2024-01-01"] * 2, version="old")
    out, changed = merge(prev, prev, ["b"], np.asarray([[0, 1]], np.float32), "2024-01-02", "new", atol=1e-6)
    assert out.user_ids == ["b"] and changed == ["b"] and out.model_version == "new"


def test_snapshot_is_idempotent_and_merges_days(daily_setup: DailySettings) -> None:
    s = daily_setup
    first = run_daily(s, DAY1, publish_records=False)
    a = load_snapshot(s.daily_snapshots, DAY1, (0, 1))
    assert a is not None and first["full_refresh"] and first["users"] == len(a.user_ids) == 40
    np.testing.assert_allclose(np.linalg.norm(a.vectors, axis=1), 1.0, atol=1e-5)
    again = run_daily(s, DAY1, publish_records=False)
    b = load_snapshot(s.daily_snapshots, DAY1, (0, 1))
    assert b is not None and again["users"] == first["users"]
    assert a.user_ids == b.user_ids and a.dates == b.dates
    np.testing.assert_array_equal(a.vectors, b.vectors)
    # day 2: one user acts again, another user is new; everyone else keeps day-1 vectors
    extra = [Event("late-1", "u7", "i3", "save", T0 + 10 * DAY + 3_600_000, "homefeed"),
             Event("late-2", "newbie", "i4", "click", T0 + 10 * DAY + 7_200_000, "search", 20_000)]
    write_archive(s.daily_archive, extra)
    second = run_daily(s, DAY2, publish_records=False)
    c = load_snapshot(s.daily_snapshots, DAY2, (0, 1))
    assert c is not None and not second["full_refresh"] and second["embedded"] == 2 and second["changed"] == 2
    assert c.user_ids == sorted(a.user_ids + ["newbie"])
    day = dict(zip(c.user_ids, c.dates, strict=True))
    assert day["u7"] == day["newbie"] == DAY2.isoformat()
    assert {d for u, d in day.items() if u not in ("u7", "newbie")} == {DAY1.isoformat()}
    ia, ic = a.user_ids.index("u3"), c.user_ids.index("u3")
    np.testing.assert_array_equal(a.vectors[ia], c.vectors[ic])
    assert not np.allclose(a.vectors[a.user_ids.index("u7")], c.vectors[c.user_ids.index("u7")])


def test_shards_partition_the_users(daily_setup: DailySettings, tmp_path: Path) -> None:
    whole = run_daily(daily_setup.model_copy(update={"daily_snapshots": tmp_path / "one"}), DAY1, publish_records=False)
    parts = [run_daily(daily_setup.model_copy(update={"daily_snapshots": tmp_path / "two"}), DAY1, (i, 2),
                       publish_records=False) for i in range(2)]
    one = load_snapshot(tmp_path / "one", DAY1, (0, 1))
    halves = [load_snapshot(tmp_path / "two", DAY1, (i, 2)) for i in range(2)]
    assert one is not None and all(h is not None and h.user_ids for h in halves)
    assert sum(p["users"] for p in parts) == whole["users"]
    assert sorted(halves[0].user_ids + halves[1].user_ids) == one.user_ids      # type: ignore[union-attr]
    # reading with another shard count works: the two-part snapshot seen as one shard is the whole one
    merged = load_snapshot(tmp_path / "two", DAY1, (0, 1))
    assert merged is not None and merged.user_ids == one.user_ids
    np.testing.assert_allclose(merged.vectors, one.vectors, atol=1e-6)


def test_checkpoint_item_dim_mismatch_is_a_clear_error(daily_setup: DailySettings, tmp_path: Path) -> None:
    (tmp_path / "bad_items.jsonl").write_bytes(orjson.dumps({"item_id": "i1", "vector": [1.0, 2.0]}) + b"\n")
    with pytest.raises(ConfigError, match="expects 8"):
        run_daily(daily_setup.model_copy(update={"daily_items": tmp_path / "bad_items.jsonl"}), DAY1,
                  publish_records=False)


def consume_all(bootstrap: str, topic: str) -> list[tuple[bytes, dict]]:
    from kafka import KafkaConsumer, TopicPartition
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, consumer_timeout_ms=3000)
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        end = consumer.end_offsets(parts)
        out = []
        while any(consumer.position(tp) < end[tp] for tp in parts):
            for recs in consumer.poll(timeout_ms=1000).values():
                out.extend((r.key, orjson.loads(r.value)) for r in recs)
        return out
    finally:
        consumer.close()


@pytest.mark.kafka
def test_publishes_changed_users_once(daily_setup: DailySettings, kafka: object) -> None:
    bootstrap = kafka.bootstrap  # type: ignore[attr-defined]
    topic = f"emb-{uuid.uuid4().hex[:8]}"
    s = daily_setup.model_copy(update={"kafka_bootstrap_servers": bootstrap, "topic_embeddings": topic,
                                       "topic_actions": f"act-{topic}", "topic_dlq": f"dlq-{topic}", "partitions": 2})
    first = run_daily(s, DAY1)
    assert first["published"] and first["published_records"] == 40
    records = consume_all(bootstrap, topic)
    snap1 = load_snapshot(s.daily_snapshots, DAY1, (0, 1))
    assert snap1 is not None and len(records) == 40
    for key, rec in records:
        assert key == rec["user_id"].encode() and set(rec) == {"user_id", "model_version", "date", "vector"}
        assert rec["model_version"] == "pf-test-1" and rec["date"] == DAY1.isoformat()
        np.testing.assert_allclose(rec["vector"], snap1.vectors[snap1.user_ids.index(rec["user_id"])], atol=1e-7)
    rerun = run_daily(s, DAY1)                                   # same day again: nothing new on the topic
    assert rerun["published"] and rerun["published_records"] == 0
    assert len(consume_all(bootstrap, topic)) == 40
    write_archive(s.daily_archive, [Event("late-9", "u5", "i9", "share", T0 + 10 * DAY + 60_000, "homefeed")])
    nxt = run_daily(s, DAY2)
    assert nxt["published_records"] == 1
    tail = consume_all(bootstrap, topic)[40:]
    assert [(k, r["date"]) for k, r in tail] == [(b"u5", DAY2.isoformat())]
