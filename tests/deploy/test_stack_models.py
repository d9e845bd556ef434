"""The stack's model bootstrap (streams/stack_models.py): real (tiny) trainings whose files the worker loads,
reused on the next run, and daily vectors joined point in time (no vector from the request's own day or later).

One module-scoped bootstrap of a very small world (~15 s on 2 cores) serves every test.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from embeddings.data import PositiveRule, build_corpus
from embeddings.pinnerformer import load_checkpoint as load_pinnerformer
from streams.archive import read_events
from streams.items import MemoryItemStore
from streams.models import load_models
from streams.settings import WorkerSettings
from streams.stack import Stack, StackSettings
from streams.stack_models import (
    DAY_MS,
    ModelFiles,
    WorldSpec,
    bootstrap_models,
    daily_features,
    transact_settings,
)
from transact.train import load_data

WORLD = WorldSpec(users=40, items=300, seed=3, days=20, events=6000, item_dim=8, pinnerformer_steps=5,
                  pinnerformer_dim=8, transact_epochs=1)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> ModelFiles:
    return bootstrap_models(tmp_path_factory.mktemp("models"), WORLD, progress=False)


def test_bootstrap_writes_models_the_worker_loads(files: ModelFiles) -> None:
    assert files.complete()
    manifest = files.read_manifest()
    assert manifest["world"]["users"] == WORLD.users
    assert manifest["ranking"]["daily_dim"] == WORLD.pinnerformer_dim
    assert set(manifest["ranking"]["hit@3"]) == {"click", "save", "hide"}
    # exactly what `actionstream worker` does with the variables `actionstream up` passes
    settings = WorkerSettings.load(transact_checkpoint=files.ranking, realtime_checkpoint=files.realtime,
                                   items_path=files.items, archive_dir="")
    models = load_models(settings)
    assert models.scorer is not None and models.encoder is not None and models.items is not None
    assert models.scorer.cfg.daily_dim == WORLD.pinnerformer_dim
    assert models.scorer.cfg.encoder_config.early_fusion
    assert not models.encoder.cfg.early_fusion
    assert str(models.scorer.model_version) == manifest["ranking"]["model_version"]
    pf, _ = load_pinnerformer(files.pinnerformer)
    assert pf.cfg.emb_dim == WORLD.pinnerformer_dim and pf.cfg.item_dim == WORLD.item_dim


def test_second_bootstrap_reuses_the_files(files: ModelFiles) -> None:
    stamps = {p: p.stat().st_mtime_ns for p in (files.ranking, files.realtime, files.pinnerformer, files.manifest)}
    again = bootstrap_models(files.root, WORLD, progress=False)
    assert again == files
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_daily_features_are_point_in_time(files: ModelFiles) -> None:
    """A request's daily vector depends only on actions before its UTC day: dropping every action from day D
    on leaves the vectors of requests before D unchanged; requests without earlier actions get no vector."""
    pf, _ = load_pinnerformer(files.pinnerformer)
    ts = transact_settings(files, WORLD)
    data = load_data(ts, seq_len=20, hash_buckets=ts.hash_buckets, progress=False)
    items = MemoryItemStore.from_file(files.items)

    def corpus(before_ms: int | None) -> object:
        return build_corpus(read_events(files.history), items, rule=PositiveRule(), input_exclude=("impression",),
                            id_buckets=pf.cfg.id_buckets, item_dim=pf.cfg.item_dim, before_ms=before_ms)

    full = daily_features(data, pf, corpus(None))
    assert full.daily is not None and full.daily_mask is not None
    days = np.unique(data.request_ts // DAY_MS)
    cut_day = int(days[len(days) // 2]) * DAY_MS
    cut = daily_features(data, pf, corpus(cut_day))
    before = data.request_ts < cut_day
    assert before.any() and (~before).any()
    np.testing.assert_array_equal(cut.daily_mask[before], full.daily_mask[before])
    np.testing.assert_allclose(cut.daily[before], full.daily[before], rtol=0, atol=1e-6)
    assert 0 < full.daily_mask.sum() < len(full.daily_mask)  # the first day of each user has none
    assert not full.daily[~full.daily_mask].any()
    # batches carry them for the ranking model
    b = full.batch(np.arange(8))
    assert b["daily"].shape == (8, WORLD.pinnerformer_dim) and b["daily_mask"].dtype == torch.bool


def test_up_passes_configured_checkpoints_and_trains_nothing(tmp_path: Path, files: ModelFiles) -> None:
    s = StackSettings.load(stack_dir=tmp_path, transact_checkpoint=files.ranking, items_path=files.items)
    env = Stack(s)._prepare_models()
    assert env == {"ACTIONSTREAM_TRANSACT_CHECKPOINT": str(files.ranking), "ACTIONSTREAM_ITEMS_PATH": str(files.items)}
    assert not (tmp_path / "models").exists()
    none = Stack(StackSettings.load(stack_dir=tmp_path, stack_models=False))
    assert none._prepare_models() == {} and none.models == {"source": "none"}


def test_up_reuses_bootstrapped_models(tmp_path: Path, files: ModelFiles) -> None:
    os.symlink(files.root, tmp_path / "models")
    stack = Stack(StackSettings.load(stack_dir=tmp_path))
    env = stack._prepare_models()
    assert env["ACTIONSTREAM_TRANSACT_CHECKPOINT"].endswith("transact/model.pt")
    assert Path(env["ACTIONSTREAM_REALTIME_CHECKPOINT"]).is_file() and Path(env["ACTIONSTREAM_ITEMS_PATH"]).is_file()
    assert stack.models["world"]["seed"] == WORLD.seed  # the demo's traffic defaults to this world
