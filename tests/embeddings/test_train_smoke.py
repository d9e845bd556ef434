"""End-to-end in seconds: `actionstream train pinnerformer` then `eval pinnerformer` on the toy data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from embeddings.pinnerformer import load_checkpoint
from streams.cli import main

SMALL = {"ACTIONSTREAM_PF_WIDTH": "32", "ACTIONSTREAM_PF_HEADS": "2", "ACTIONSTREAM_PF_EMB_DIM": "16",
         "ACTIONSTREAM_PF_MAX_LEN": "32", "ACTIONSTREAM_PF_BATCH_SIZE": "16", "ACTIONSTREAM_PF_RANDOM_NEGATIVES": "64",
         "ACTIONSTREAM_PF_ID_BUCKETS": "512", "ACTIONSTREAM_PF_THREADS": "1", "ACTIONSTREAM_PF_EVAL_FRACTION": "0.3"}


@pytest.fixture
def small_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in SMALL.items():
        monkeypatch.setenv(k, v)


def test_train_and_eval_cli(toy_files: tuple[Path, Path], tmp_path: Path, small_env: None,
                            capsys: pytest.CaptureFixture[str]) -> None:
    events, items = toy_files
    out = tmp_path / "run"
    assert main(["train", "pinnerformer", "--events", str(events), "--items", str(items), "--out", str(out),
                 "--steps", "80", "--eval-every", "40"]) == 0
    for name in ("model.pt", "metrics.json", "training.png"):
        assert (out / name).stat().st_size > 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["users"] > 5 and 0.0 <= metrics["recall_at_k"] <= 1.0
    assert 0 < metrics["coverage_p90_at_k"] <= 1.0
    loss = metrics["history"]["loss"]
    assert sum(loss[-15:]) / 15 < sum(loss[:15]) / 15          # it learns something
    torch.load(out / "model.pt", weights_only=True)             # plain tensors only
    model, meta = load_checkpoint(out / "model.pt")
    assert meta["settings"]["pf_objective"] == "dense_all_action" and model.cfg.width == 32
    capsys.readouterr()
    assert main(["eval", "pinnerformer", "--checkpoint", str(out / "model.pt"), "--events", str(events),
                 "--items", str(items), "--out", str(tmp_path / "eval")]) == 0
    rep = json.loads((tmp_path / "eval" / "eval.json").read_text())
    # eval rebuilds the same held-out split and cut from the checkpoint: same figure as at the end of training
    assert rep["users"] == metrics["users"]
    assert rep["recall_at_k"] == pytest.approx(metrics["recall_at_k"], abs=1e-9)
    assert (tmp_path / "eval" / "eval.png").stat().st_size > 0


def test_compare_writes_table(toy_files: tuple[Path, Path], tmp_path: Path, small_env: None,
                              capsys: pytest.CaptureFixture[str]) -> None:
    from embeddings.compare import main as compare_main
    events, items = toy_files
    assert compare_main(["--events", str(events), "--items", str(items), "--out", str(tmp_path), "--steps", "15",
                         "--variants", "dense_all_action_28d,next_action"]) == 0
    table = (tmp_path / "comparison.md").read_text()
    assert "| dense_all_action | 28 d |" in table and "| next_action | next positive |" in table
    res = json.loads((tmp_path / "comparison.json").read_text())
    assert set(res["runs"]) == {"dense_all_action_28d", "next_action"}
    assert (tmp_path / "comparison.png").stat().st_size > 0
    assert "Recall@10" in capsys.readouterr().out
