"""Hybrid features end to end on the real broker (issue 5 acceptance): a worker subprocess with a ranking
checkpoint, a realtime checkpoint and an item file; simulated traffic; the daily PinnerFormer job run on the
worker's own event archive; then ``features`` shows ``daily`` and a ``realtime`` vector that changes after a
new action, ``score`` answers one probability per head per candidate using both the sequence and the daily
vector, the realtime freshness histogram has observations, and a new realtime checkpoint is rolled in with
SIGHUP without losing state.

The models are randomly initialised, not trained: this test is about wiring (checkpoints loaded from
settings, vectors computed and stored, records routed, answers equal to the same models run offline), not
about quality, which the training/evaluation commands measure.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import torch

from embeddings.daily_job import run_daily
from embeddings.pinnerformer import PinnerFormer, PinnerFormerConfig
from embeddings.pinnerformer import save_checkpoint as save_pinnerformer
from embeddings.settings import DailySettings
from streams.events import Event, encode_event, now_ms
from streams.items import MemoryItemStore
from streams.sequence import decode
from streams.settings import WorkerSettings
from tests.streams.harness import (
    ACTIONS,
    WorkerProc,
    create_topics,
    event_keys,
    http_get,
    make_events,
    produce,
    read_dlq,
    read_topic,
    wait_until,
)
from transact.inference import Encoder, Scorer, bf16_for
from transact.model import RankingConfig, RankingModel, TransAct, TransActConfig, save_checkpoint

pytestmark = pytest.mark.kafka

ITEM_DIM, DAILY_DIM, PARTITIONS = 8, 16, 4


def write_models(root: Path) -> dict[str, Path]:
    """Items JSONL (200 of the 5000 item ids have a vector), ranking + realtime + PinnerFormer checkpoints."""
    rng = np.random.default_rng(0)
    items = root / "items.jsonl"
    items.write_bytes(b"".join(orjson.dumps({"item_id": f"i{k}", "vector": rng.normal(size=ITEM_DIM).round(4).tolist()})
                               + b"\n" for k in range(200)))
    torch.manual_seed(0)
    t = TransActConfig(item_dim=ITEM_DIM, action_emb_dim=8, dim_feedforward=16, hash_buckets=1001)
    vocab = {"actions": list(ACTIONS)}
    ranking = RankingConfig(transact=t, daily_dim=DAILY_DIM, mlp_dims=(16,))
    save_checkpoint(root / "ranking.pt", RankingModel(ranking), ranking, {**vocab, "model_version": "rank-e2e"})
    rt = TransActConfig(item_dim=ITEM_DIM, action_emb_dim=8, dim_feedforward=16, hash_buckets=1001, early_fusion=False)
    save_checkpoint(root / "realtime.pt", TransAct(rt), rt, {**vocab, "model_version": "rt-e2e"})
    pf = PinnerFormer(PinnerFormerConfig(item_dim=ITEM_DIM, id_buckets=101, max_len=32, width=32, n_layers=1,
                                         n_heads=2, emb_dim=DAILY_DIM))
    save_pinnerformer(root / "pinnerformer.pt", pf, {"model_version": "pf-e2e", "input_exclude": ["impression"]})
    return {"items": items, "ranking": root / "ranking.pt", "realtime": root / "realtime.pt",
            "pinnerformer": root / "pinnerformer.pt"}


def get_json(url: str) -> dict[str, Any]:
    status, body = http_get(url)
    assert status == 200, (status, body[:300])
    return orjson.loads(body)


def post_json(url: str, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(url, data=orjson.dumps(payload), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - loopback test URL
            return resp.status, orjson.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())


def stored_sequence(bootstrap: str, changelog: str, user: str) -> list[Any]:
    """The user's latest blob in the sequences changelog (what the worker stored), decoded."""
    latest = None
    for r in read_topic(bootstrap, changelog):
        if r.key == user.encode():
            latest = r.value
    assert latest is not None, f"{user} not in {changelog}"
    return decode(latest)


def settled_sequence(bootstrap: str, changelog: str, url: str) -> list[Any]:
    """The user's stored sequence once the changelog (flushed at each ~1 s commit) agrees with the API."""
    user = url.rsplit("/", 1)[1]
    for _ in range(50):
        seq = stored_sequence(bootstrap, changelog, user)
        feats = get_json(url + "/features")
        if len(seq) == feats["sequence_length"] and seq[0][0] == feats["last_action_ts"]:
            return seq
        time.sleep(0.2)
    raise AssertionError(f"the changelog of {user} did not catch up with the API")


def test_hybrid_features_end_to_end(kafka: Any, unique_topic: Callable[[str], str], unique_group: Callable[[], str],
                                    tmp_path: Path) -> None:
    bootstrap = kafka.bootstrap
    actions, dlq, emb = unique_topic("act"), unique_topic("dlq"), unique_topic("emb")
    create_topics(bootstrap, [actions, dlq], PARTITIONS)
    paths = write_models(tmp_path)
    archive = tmp_path / "archive"
    w = WorkerProc(bootstrap, tmp_path / "w1", topic=actions, dlq=dlq, worker_id=unique_group(),
                   partitions=PARTITIONS, archive_dir=archive,
                   env={"ACTIONSTREAM_TOPIC_EMBEDDINGS": emb,
                        "ACTIONSTREAM_TRANSACT_CHECKPOINT": str(paths["ranking"]),
                        "ACTIONSTREAM_REALTIME_CHECKPOINT": str(paths["realtime"]),
                        "ACTIONSTREAM_ITEMS_PATH": str(paths["items"]),
                        "ACTIONSTREAM_ENCODER_INTERVAL_MS": "20"})
    try:
        w.start()
        w.wait_ready(90)
        m = w.metrics()
        assert m['actionstream_model_loaded{model="transact"}'] == 1
        assert m['actionstream_model_loaded{model="transact_realtime"}'] == 1
        assert m['actionstream_model_loaded{model="pinnerformer_daily"}'] == 0
        assert m['actionstream_model_info{model="transact",version="rank-e2e"}'] == 1

        # 1. simulated traffic (skewed users, out-of-order times within the last hour), keyed by user
        events = make_events(3000, 60, seed=7)
        produce(bootstrap, actions, [encode_event(e) for e in events], keys=event_keys(events))
        def handled() -> float:  # applied, or valid but changing nothing (older than a full 100-action sequence)
            m = w.metrics()
            return m.get("actionstream_events_accepted_total", 0) + m.get("actionstream_events_duplicate_total", 0)

        wait_until(lambda: handled() >= len(events), 60, "all events handled")
        user = "u0"  # the heaviest user of make_events
        url = f"{w.url}/v1/users/{user}"

        def realtime_of() -> list[float]:
            return get_json(url + "/features")["realtime"]

        encoder = Encoder.from_checkpoint(paths["realtime"], MemoryItemStore.from_file(paths["items"]))
        changelog = w.changelog_topic
        seq = settled_sequence(bootstrap, changelog, url)
        expected = encoder.encode([seq], now_ms())[0]

        def serves(vector: np.ndarray) -> bool:  # the realtime encoder run offline on the stored sequence
            got = realtime_of()
            return len(got) == len(vector) and np.allclose(got, vector, rtol=1e-4, atol=1e-5)

        def serves_latest() -> bool:
            # the latest changelog value each time: a late event can change a capped sequence without
            # changing its length or newest action, so one "settled" read may still be an older value
            nonlocal seq
            seq = stored_sequence(bootstrap, changelog, user)
            return serves(encoder.encode([seq], now_ms())[0])

        if not serves(expected):
            wait_until(serves_latest, 90, "u0's realtime vector of its final sequence", interval_s=1.0)
        feats = get_json(url + "/features")
        assert feats["sequence_length"] == len(seq) and feats["model_version"] == "rt-e2e"
        assert feats["daily"] is None and feats["daily_date"] is None

        # 2. the daily job on the worker's own archive publishes PinnerFormer records to the embeddings topic
        wait_until(lambda: sum(1 for p in archive.rglob("*.jsonl") for _ in p.open("rb")) >= len(events), 20,
                   "the archive flushed")
        today = dt.datetime.now(dt.timezone.utc).date()
        daily_settings = DailySettings.load(
            daily_archive=archive, daily_snapshots=tmp_path / "snapshots", daily_checkpoint=paths["pinnerformer"],
            daily_items=paths["items"], daily_threads=1, kafka_bootstrap_servers=bootstrap, topic_actions=actions,
            topic_dlq=dlq, topic_embeddings=emb, partitions=PARTITIONS)
        manifest = run_daily(daily_settings, today)
        assert manifest["published"] and manifest["published_records"] >= 50
        published = {r.key: orjson.loads(r.value) for r in read_topic(bootstrap, emb)}
        record = published[user.encode()]
        wait_until(lambda: get_json(url + "/features")["daily"] is not None, 30, "u0's daily vector served")
        feats = get_json(url + "/features")
        assert feats["daily_date"] == today.isoformat() and feats["daily_model_version"] == "pf-e2e"
        np.testing.assert_allclose(feats["daily"], record["vector"], rtol=1e-6)

        # 3. a bad daily record goes to the DLQ, changes nothing
        other = next(k for k in sorted(published) if k != user.encode())
        produce(bootstrap, emb, [orjson.dumps({**published[other], "vector": ["a"]}), b"not json"],
                keys=[other, b"u-bad"])
        wait_until(lambda: len(read_dlq(bootstrap, dlq)) >= 2, 20, "daily rejects in the DLQ")
        assert sorted(d["reason"] for d in read_dlq(bootstrap, dlq)) == ["daily_invalid_json", "daily_invalid_record"]
        assert get_json(f"{w.url}/v1/users/{other.decode()}/features")["daily"] == published[other]["vector"]

        # 4. a new action for u0 changes its realtime vector
        before = realtime_of()
        fresh = Event("e-new-u0", user, "i3", "save", now_ms(), "homefeed", None)
        produce(bootstrap, actions, [encode_event(fresh)], keys=[user.encode()])
        wait_until(lambda: realtime_of() != before, 30, "u0's realtime vector to change after a new action")
        seq = settled_sequence(bootstrap, changelog, url)
        assert seq[0][5] == "i3"
        wait_until(lambda: serves(encoder.encode([seq], now_ms())[0]), 10, "u0's vector of the new sequence")

        # 5. score: one probability per head per candidate, from the sequence AND the daily vector
        candidates = ["i1", "i150", "i4999", "never-seen"]
        status, body = post_json(url + "/score", {"candidates": candidates})
        assert status == 200, body
        assert body["model_version"] == "rank-e2e"
        assert [row["item_id"] for row in body["scores"]] == candidates
        heads = ("click", "save", "hide")
        for row in body["scores"]:
            assert set(row) == {"item_id", *heads} and all(0.0 <= row[h] <= 1.0 for h in heads)
        assert WorkerSettings.model_fields["score_bf16"].default == "auto"
        scorer = Scorer.from_checkpoint(paths["ranking"], MemoryItemStore.from_file(paths["items"]),
                                        int8_cross=WorkerSettings.model_fields["score_int8_dcn"].default,
                                        bf16=bf16_for(WorkerSettings.model_fields["score_bf16"].default))
        daily_vec = np.asarray(record["vector"], np.float32)
        served = np.array([[row[h] for h in heads] for row in body["scores"]])
        np.testing.assert_allclose(served, scorer.score(seq, candidates, now_ms(), daily_vec), rtol=1e-4, atol=1e-6)
        assert not np.allclose(served, scorer.score(seq, candidates, now_ms(), None), atol=1e-6)
        assert not np.allclose(served, scorer.score([], candidates, now_ms(), daily_vec), atol=1e-6)

        # 6. metrics: realtime freshness observed under load, encoder batches, table sizes, daily model
        m = w.metrics()
        assert m['actionstream_freshness_seconds_count{stage="realtime"}'] > 0
        assert m["actionstream_encoder_batch_size_count"] > 0
        assert m["actionstream_encoder_batch_size_sum"] >= 60  # every user encoded at least once
        assert m["actionstream_encoder_seconds_count"] == m["actionstream_encoder_batch_size_count"]
        assert m['actionstream_model_loaded{model="pinnerformer_daily"}'] == 1
        assert m['actionstream_model_info{model="pinnerformer_daily",version="pf-e2e"}'] == 1
        assert m['actionstream_table_keys{table="realtime"}'] > 0
        assert m['actionstream_table_keys{table="daily"}'] > 0
        assert m['actionstream_events_rejected_total{reason="daily_invalid_json"}'] == 1

        # 7. roll in a new realtime checkpoint without a restart: replace the file, SIGHUP
        torch.manual_seed(1)
        rt = TransActConfig(item_dim=ITEM_DIM, action_emb_dim=8, dim_feedforward=16, hash_buckets=1001,
                            early_fusion=False)
        save_checkpoint(tmp_path / "realtime-2.pt", TransAct(rt), rt, {"actions": list(ACTIONS), "model_version": "rt-2"})
        (tmp_path / "realtime-2.pt").replace(paths["realtime"])
        assert w.proc is not None
        os.kill(w.proc.pid, signal.SIGHUP)
        wait_until(lambda: get_json(url + "/features")["model_version"] == "rt-2", 20, "the new model served")
        encoder2 = Encoder.from_checkpoint(paths["realtime"], MemoryItemStore.from_file(paths["items"]))
        wait_until(lambda: serves(encoder2.encode([seq], now_ms())[0]), 10, "u0's vector under the new model")
        assert get_json(url + "/features")["sequence_length"] == len(seq)  # no state lost
        m = w.metrics()
        assert m['actionstream_model_info{model="transact_realtime",version="rt-2"}'] == 1
        assert 'actionstream_model_info{model="transact_realtime",version="rt-e2e"}' not in m
    finally:
        w.stop()
