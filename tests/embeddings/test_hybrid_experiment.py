"""`actionstream experiment hybrid` end to end on tiny simulated data (seconds), and the daily vectors it
uses checked against a real daily-job snapshot."""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path

import numpy as np
import pytest

from embeddings.daily_job import load_snapshot, run_daily
from embeddings.evaluate import DAY_MS
from embeddings.hybrid_experiment import DailyPointInTimeData, daily_vectors, snapshot_end
from embeddings.pinnerformer import load_checkpoint
from embeddings.settings import DailySettings, PinnerFormerSettings
from embeddings.train import load_corpus
from streams.cli import main
from transact.data import DataConfig, build_examples
from transact.settings import DataSettings
from transact.train import load_data

END_MS = 1_767_225_600_000  # 2026-01-01 00:00 UTC
TINY_PF = {"ACTIONSTREAM_PF_WIDTH": "32", "ACTIONSTREAM_PF_HEADS": "2", "ACTIONSTREAM_PF_EMB_DIM": "16",
           "ACTIONSTREAM_PF_MAX_LEN": "32", "ACTIONSTREAM_PF_BATCH_SIZE": "16",
           "ACTIONSTREAM_PF_RANDOM_NEGATIVES": "64", "ACTIONSTREAM_PF_ID_BUCKETS": "512",
           "ACTIONSTREAM_PF_THREADS": "1", "ACTIONSTREAM_PF_EVAL_FRACTION": "0.3"}


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("hybrid-data")
    ev, it = d / "events.jsonl", d / "items.jsonl"
    assert main(["simulate", "--out", str(ev), "--items-out", str(it), "--dim", "8", "--users", "60",
                 "--items", "300", "--clusters", "6", "--events", "12000", "--days", "6", "--end-ms", str(END_MS),
                 "--seed", "3", "--no-progress"]) == 0
    return ev, it


@pytest.fixture(scope="module")
def experiment(sim: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One tiny run of the command (every variant); returns its output dir and what it printed."""
    ev, it = sim
    out = tmp_path_factory.mktemp("hybrid-run")
    with pytest.MonkeyPatch.context() as mp:
        for k, v in TINY_PF.items():
            mp.setenv(k, v)
        assert main(["experiment", "hybrid", "--events", str(ev), "--items", str(it), "--out", str(out),
                     "--config", "tiny", "--epochs", "1", "--batch-size", "128", "--pf-steps", "8",
                     "--threads", "1", "--no-progress"]) == 0
    return out, (out / "hybrid.md").read_text()


def test_experiment_cli(experiment: tuple[Path, str]) -> None:
    out, text = experiment
    for name in ("hybrid.md", "hybrid.json", "hybrid.png", "pinnerformer.pt", "hybrid.log"):
        assert (out / name).stat().st_size > 0
    for row in ("| candidate only", "| daily PinnerFormer only", "| realtime TransAct only", "| hybrid (TransAct",
                "| realtime (embedded at t) | ", "| 1-day delay"):
        assert row in text
    assert "HIT@3 click: hybrid" in text                       # the verdict line per positive head
    res = json.loads((out / "hybrid.json").read_text())
    assert len(res["variants"]) == 4 and res["train_examples"] > 0 and res["eval_examples"] > 0
    for m in res["variants"].values():
        for h in ("click", "save", "hide"):
            assert 0.0 <= m["heads"][h]["hit@3"] <= 3.0
    # daily vectors exist for most requests (users who acted before the request's UTC day)
    assert 0 < res["daily"]["with_daily"] <= res["daily"]["requests"]
    # same eval examples for every variant: identical random-order baselines
    rnd = {m["heads"]["click"]["random_hit@3"] for m in res["variants"].values()}
    assert len(rnd) == 1
    d = res["delay_recall"]
    assert d["realtime"]["gap_vs_realtime"] == 0.0
    assert d["realtime"]["users"] == d["daily_1d"]["users"] == d["daily_served"]["users"] > 0
    assert all(math.isfinite(r["recall_at_k"]) for r in d.values())


def test_daily_vectors_match_the_daily_job(sim: tuple[Path, Path], experiment: tuple[Path, str],
                                           tmp_path: Path) -> None:
    """The experiment's daily vector of a request on day D+1 equals the daily job's snapshot for day D."""
    ev, it = sim
    out, _ = experiment
    ckpt = out / "pinnerformer.pt"
    model, _ = load_checkpoint(ckpt)
    s = DataSettings.load(events=ev, items=it)
    data = load_data(s, seq_len=8, hash_buckets=1000, progress=False)
    corpus = load_corpus(PinnerFormerSettings.load(pf_id_buckets=model.cfg.id_buckets), ev, it)
    daily, mask, _ = daily_vectors(model, corpus, data.users, data.request_user, data.request_ts)

    day = dt.date(2025, 12, 29)                                   # D; requests on D+1 are served its snapshot
    snaps = tmp_path / "snapshots"
    ds = DailySettings.load(daily_archive=ev, daily_checkpoint=ckpt, daily_snapshots=snaps, daily_items=it,
                            daily_publish=False, daily_threads=1)
    run_daily(ds, day, publish_records=False)
    snap = load_snapshot(snaps, day, (0, 1))
    assert snap is not None
    served = snap.as_dict()
    next_day = int(dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), dt.timezone.utc).timestamp() * 1000)
    rows = np.flatnonzero(snapshot_end(data.request_ts) == next_day)
    assert len(rows) > 10
    checked = 0
    for r in rows:
        user = data.users[data.request_user[r]]
        if user in served:
            assert mask[r]
            np.testing.assert_allclose(daily[r], served[user][0], atol=1e-5)
            checked += 1
        else:
            assert not mask[r]                                   # no action before D+1: nothing served
    assert checked > 5


def test_batch_carries_the_daily_vector() -> None:
    from streams.events import Event
    from streams.sequence import SequenceCodec
    t0 = END_MS - 3 * DAY_MS
    events = [Event(f"e{i}", "u1", f"i{i % 5}", "impression" if i % 2 else "click", t0 + i * 60_000, None, None)
              for i in range(40)]
    data = build_examples(events, SequenceCodec(("impression", "click", "save", "hide"), (), max_len=10, window_ms=30 * DAY_MS),
                          None, DataConfig(seq_len=4), item_dim=4, progress=False)
    daily = np.arange(len(data.request_ts) * 3, dtype=np.float32).reshape(-1, 3)
    mask = np.arange(len(data.request_ts)) % 2 == 0
    h = DailyPointInTimeData.attach(data, daily, mask)
    idx = np.arange(len(h))
    b = h.batch(idx)
    np.testing.assert_array_equal(b["daily"].numpy(), daily[data.ex_request])
    np.testing.assert_array_equal(b["daily_mask"].numpy(), mask[data.ex_request])
    with pytest.raises(ValueError):
        DailyPointInTimeData.attach(data, daily[:-1], mask)
