"""Smoke: `actionstream train transact` then `eval transact` end to end on a tiny config, in seconds."""

from __future__ import annotations

import json
import random
from pathlib import Path

import orjson
import pytest
import torch

from streams.cli import main as cli_main
from transact.model import RankingModel, load_checkpoint

T0 = 1_760_000_000_000 - 1_760_000_000_000 % 60_000


def write_tiny_dataset(d: Path, *, users: int = 12, requests: int = 30, seed: int = 0) -> tuple[Path, Path]:
    """Users like one of 3 item topics; each request shows 6 items; clicks/saves on liked topics, hides else."""
    rng = random.Random(seed)
    items = {f"i{k}": k % 3 for k in range(60)}
    with open(d / "items.jsonl", "wb") as f:
        for i, topic in items.items():
            vec = [rng.gauss(0, 0.1) for _ in range(6)]
            vec[topic] += 1.0
            if i != "i0":  # one item without a vector: hashed fallback
                f.write(orjson.dumps({"item_id": i, "vector": vec}) + b"\n")
    n = 0
    with open(d / "events.jsonl", "wb") as f:
        for u in range(users):
            topic = u % 3
            for r in range(requests):
                t = T0 + (r * 7 + u) * 60_000 * 3
                for i in rng.sample(list(items), 6):
                    n += 1
                    f.write(orjson.dumps({"event_id": f"e{n}", "user_id": f"u{u}", "item_id": i,
                                          "action": "impression", "ts": t, "surface": "homefeed"}) + b"\n")
                    p = rng.random()
                    act = ("click" if p < 0.6 else "save" if p < 0.8 else None) if items[i] == topic else \
                        ("hide" if p < 0.3 else None)
                    if act:
                        n += 1
                        f.write(orjson.dumps({"event_id": f"e{n}", "user_id": f"u{u}", "item_id": i,
                                              "action": act, "ts": t + rng.randrange(1_000, 60_000)}) + b"\n")
    return d / "events.jsonl", d / "items.jsonl"


def test_train_then_eval_tiny(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    events, items = write_tiny_dataset(tmp_path, users=9, requests=16)
    out = tmp_path / "run"
    argv = ["train", "transact", "--events", str(events), "--items", str(items), "--out", str(out),
            "--config", "tiny", "--epochs", "2", "--batch-size", "128", "--seed", "3", "--device", "cpu",
            "--no-progress"]
    assert cli_main(argv) == 0
    for name in ("model.pt", "loss.png", "metrics.json", "history.json", "train.log"):
        assert (out / name).stat().st_size > 0, name
    blob = torch.load(out / "model.pt", weights_only=True)  # plain containers only
    assert blob["vocab"]["heads"] == ["click", "save", "hide"] and blob["vocab"]["item_dim"] == 6
    model, cfg, vocab = load_checkpoint(out / "model.pt")
    assert isinstance(model, RankingModel) and cfg.transact.seq_len == 20
    history = json.loads((out / "history.json").read_text())
    assert len(history["epochs"]) == 2 and history["data"]["examples"] == 9 * 16 * 6
    assert "epoch 2: train loss" in (out / "train.log").read_text()
    assert all(e["train_loss"] > 0 for e in history["epochs"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["heads"]) == {"click", "save", "hide"}
    capsys.readouterr()

    assert cli_main(["eval", "transact", "--checkpoint", str(out / "model.pt"), "--events", str(events),
                     "--out", str(tmp_path / "eval.json"), "--device", "cpu", "--log-level", "WARNING"]) == 0
    printed = capsys.readouterr().out
    assert "HIT@3 click ↑" in printed and "HIT@3 hide ↓" in printed
    again = json.loads((tmp_path / "eval.json").read_text())
    # eval reproduces the training run's final metrics (same split, same seed-free scoring)
    for h in ("click", "save", "hide"):
        assert again["heads"][h]["auc"] == pytest.approx(metrics["heads"][h]["auc"], abs=1e-6)

    # --int8-dcn / --bf16: rows scored with the serving path's int8 cross layers and its bf16 transformer
    # GEMMs, and how far each moved
    assert cli_main(["eval", "transact", "--checkpoint", str(out / "model.pt"), "--events", str(events),
                     "--out", str(tmp_path / "eval8.json"), "--device", "cpu", "--int8-dcn", "--bf16",
                     "--log-level", "WARNING"]) == 0
    printed = capsys.readouterr().out
    assert "| int8 DCN (serving) |" in printed and "int8 - float32 HIT@3 click" in printed
    assert "| bf16 transformer (serving) |" in printed and "bf16 - float32 HIT@3 hide" in printed
    for key in ("int8_dcn", "bf16"):
        q = json.loads((tmp_path / "eval8.json").read_text())[key]
        assert 0 < q["max_abs_dp"] < 0.05 and 0 <= q["top3_changed"] <= 1, key


def test_training_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    events, items = write_tiny_dataset(tmp_path, users=6, requests=10)
    sd = []
    for k in range(2):
        out = tmp_path / f"r{k}"
        assert cli_main(["train", "transact", "--events", str(events), "--items", str(items), "--out", str(out),
                         "--config", "tiny", "--epochs", "1", "--batch-size", "64", "--seed", "11",
                         "--device", "cpu", "--no-progress", "--log-level", "WARNING"]) == 0
        sd.append(torch.load(out / "model.pt", weights_only=True)["state_dict"])
    assert sd[0].keys() == sd[1].keys()
    assert all(torch.equal(sd[0][k], sd[1][k]) for k in sd[0])


def test_bad_settings_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["train", "transact", "--events", str(tmp_path / "missing.jsonl")]) == 2
    assert "ACTIONSTREAM_EVENTS" in capsys.readouterr().err


def test_ablate_tiny_writes_table_png_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    events, items = write_tiny_dataset(tmp_path, users=6, requests=12)
    out = tmp_path / "abl"
    assert cli_main(["ablate", "transact", "--events", str(events), "--items", str(items), "--out", str(out),
                     "--config", "tiny", "--epochs", "1", "--batch-size", "64", "--device", "cpu", "--no-progress",
                     "--variants", "transact,none"]) == 0
    printed = capsys.readouterr().out
    assert "| no sequence |" in printed and "| TransAct |" in printed
    assert printed.index("| no sequence |") < printed.index("| TransAct |")  # canonical order
    results = json.loads((out / "ablation.json").read_text())
    assert list(results["variants"]) == ["no sequence", "TransAct"]
    assert results["variants"]["TransAct"]["parameters"] > results["variants"]["no sequence"]["parameters"]
    assert (out / "ablation.png").stat().st_size > 0 and (out / "ablation.md").read_text().count("\n|") >= 3
    assert "| no sequence | " in printed.split("paired over the same eval requests")[1]  # the paired table
    assert cli_main(["ablate", "transact", "--events", str(events), "--variants", "bogus"]) == 2


def test_ablate_jobs_2_merges_the_children_in_table_order(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    events, items = write_tiny_dataset(tmp_path, users=6, requests=12)
    out = tmp_path / "abl"
    args = ["--events", str(events), "--items", str(items), "--config", "tiny", "--epochs", "1", "--batch-size",
            "64", "--device", "cpu", "--no-progress"]
    assert cli_main(["ablate", "transact", *args, "--out", str(out), "--variants", "transact,average,none",
                     "--jobs", "2"]) == 0
    merged = json.loads((out / "ablation.json").read_text())
    assert list(merged["variants"]) == ["no sequence", "average pooling", "TransAct"]
    assert merged["jobs"] == 2 and sorted(p.name for p in out.glob("part-*")) == ["part-0", "part-1"]
    # same split and seed in one process: the same figures
    single = tmp_path / "single"
    assert cli_main(["ablate", "transact", *args, "--out", str(single), "--variants", "none,average,transact",
                     "--threads", "1"]) == 0
    one = json.loads((single / "ablation.json").read_text())
    for name in merged["variants"]:
        for head, m in merged["variants"][name]["heads"].items():
            assert m["auc"] == pytest.approx(one["variants"][name]["heads"][head]["auc"], abs=1e-6), (name, head)
