"""transact.model: shapes, masking (padding never leaks, time window only in training), determinism,
loss weighting and the weights-only checkpoint round-trip."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from transact.model import (
    RankingConfig,
    RankingModel,
    TransAct,
    TransActConfig,
    default_label_weights,
    label_weight_matrix,
    load_checkpoint,
    save_checkpoint,
)

S, DI, HOUR = 100, 32, 3_600_000
REQ = 1_700_000_000_000


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    """Tiny tensors: one intra-op thread (2 OpenMP threads on busy shared cores spin-wait: ~2.5x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_batch(lens: list[int], *, seed: int = 0, daily_dim: int = 0, spacing_ms: int = 60_000) -> dict[str, torch.Tensor]:
    """A batch following the transact.features contract: newest first, padding (code 0) at the end."""
    g = torch.Generator().manual_seed(seed)
    b = len(lens)
    action = torch.zeros(b, S, dtype=torch.long)
    for r, n in enumerate(lens):
        action[r, :n] = torch.randint(1, 8, (n,), generator=g)
    real = action != 0
    batch = {
        "action": action,
        "item_vec": torch.randn(b, S, DI, generator=g) * real.unsqueeze(-1),
        "item_has_vec": (torch.rand(b, S, generator=g) > 0.3) & real,
        "item_hash": torch.randint(1, 1000, (b, S), generator=g) * real,
        "action_ts": (REQ - 1000 - torch.arange(S) * spacing_ms).repeat(b, 1) * real,
        "request_ts": torch.full((b,), REQ),
        "cand_vec": torch.randn(b, DI, generator=g),
        "cand_has_vec": torch.rand(b, generator=g) > 0.3,
        "cand_hash": torch.randint(1, 1000, (b,), generator=g),
        "labels": torch.randint(0, 2, (b, 3), generator=g).float(),
    }
    if daily_dim:
        batch["daily"] = torch.randn(b, daily_dim, generator=g)
        batch["daily_mask"] = torch.tensor([r % 2 == 0 for r in range(b)])
    return batch


def scramble_padding(batch: dict[str, torch.Tensor], seed: int = 99) -> dict[str, torch.Tensor]:
    """Garbage in every padded position: item vectors, has_vec flags, hashes and timestamps."""
    g = torch.Generator().manual_seed(seed)
    pad = batch["action"] == 0
    out = dict(batch)
    out["item_vec"] = torch.where(pad.unsqueeze(-1), torch.randn(batch["item_vec"].shape, generator=g) * 50,
                                  batch["item_vec"])
    out["item_has_vec"] = torch.where(pad, torch.rand(pad.shape, generator=g) > 0.5, batch["item_has_vec"])
    out["item_hash"] = torch.where(pad, torch.randint(1, 1000, pad.shape, generator=g), batch["item_hash"])
    out["action_ts"] = torch.where(pad, torch.randint(0, 2 * REQ, pad.shape, generator=g), batch["action_ts"])
    return out


def run(model: torch.nn.Module, batch: dict[str, torch.Tensor], *, train: bool, seed: int = 7) -> torch.Tensor:
    model.train(train)
    torch.manual_seed(seed)
    with torch.no_grad():
        return model(batch)


VARIANTS = [
    ("transact", False, 0, 3),
    ("transact", True, 0, 3),
    ("transact", False, 16, 3),
    ("average", False, 16, 3),
    ("none", False, 0, 3),
]


@pytest.mark.parametrize("encoder,realtime,daily,heads", VARIANTS)
def test_ranking_shapes_and_in_dim(encoder: str, realtime: bool, daily: int, heads: int) -> None:
    torch.manual_seed(0)
    cfg = RankingConfig(sequence_encoder=encoder, realtime_input=realtime, daily_dim=daily)  # type: ignore[arg-type]
    model = RankingModel(cfg)
    batch = make_batch([100, 7, 1, 0], daily_dim=daily)
    seq_dim = {"transact": 11 * (64 if realtime else 96), "average": 64, "none": 0}[encoder]
    assert model.in_dim == seq_dim + DI + (daily + 1 if daily else 0)
    for train in (True, False):
        logits = run(model, batch, train=train)
        assert logits.shape == (4, heads)
        assert torch.isfinite(logits).all()


@pytest.mark.parametrize("cfg,out", [
    (TransActConfig(), 11 * 96),  # the paper's 1,056 floats
    (TransActConfig(early_fusion=False), 11 * 64),
    (TransActConfig(use_max_pool=False), 10 * 96),
    (TransActConfig(use_first_k=False), 96),
    (TransActConfig(early_fusion=False, first_k=3), 4 * 64),
])
def test_transact_output_shapes(cfg: TransActConfig, out: int) -> None:
    torch.manual_seed(0)
    enc = TransAct(cfg)
    batch = make_batch([100, 2, 0])
    cand = batch["cand_vec"] if cfg.early_fusion else None
    assert enc.out_dim == out
    assert enc(batch, cand).shape == (3, out)


def test_early_fusion_needs_candidate() -> None:
    with pytest.raises(ValueError, match="candidate"):
        TransAct(TransActConfig())(make_batch([3]))


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("encoder", ["transact", "average"])
def test_padding_never_leaks(train: bool, encoder: str) -> None:
    """Changing padded positions (vectors, flags, hashes, timestamps) changes nothing, train or eval."""
    torch.manual_seed(0)
    model = RankingModel(RankingConfig(sequence_encoder=encoder))  # type: ignore[arg-type]
    batch = make_batch([100, 37, 5, 1, 0])
    a = run(model, batch, train=train)
    b = run(model, scramble_padding(batch), train=train)
    assert torch.equal(a, b)
    # and the realtime (candidate-free) encoder
    enc = TransAct(TransActConfig(early_fusion=False))
    assert torch.equal(run(enc, batch, train=train), run(enc, scramble_padding(batch), train=train))


def test_padding_is_not_a_no_op_check() -> None:
    """Guard for the test above: changing a REAL position does change the output."""
    torch.manual_seed(0)
    model = RankingModel(RankingConfig())
    batch = make_batch([5])
    other = dict(batch, item_vec=batch["item_vec"].clone())
    other["item_vec"][0, 4] += 1.0
    assert not torch.equal(run(model, batch, train=False), run(model, other, train=False))


def test_empty_and_padded_outputs_are_zero() -> None:
    torch.manual_seed(0)
    enc = TransAct(TransActConfig(early_fusion=False)).eval()
    batch = make_batch([0, 3])
    with torch.no_grad():
        out = enc(batch).view(2, 11, 64)
    assert torch.equal(out[0], torch.zeros(11, 64))  # empty sequence: all zeros, no NaN
    assert torch.equal(out[1, 3:10], torch.zeros(7, 64))  # first-K columns past the length are zeros
    assert (out[1, :3] != 0).any(-1).all()


def test_time_window_mask_only_in_training() -> None:
    """Eval: no random masking, so outputs are deterministic and do not depend on the request time."""
    torch.manual_seed(0)
    enc = TransAct(TransActConfig(early_fusion=False))
    batch = make_batch([100, 50, 3], spacing_ms=10 * 60_000)  # 100 actions over ~16 h: inside the 24 h window
    later = dict(batch, request_ts=batch["request_ts"] + 5 * HOUR)
    e1, e2 = run(enc, batch, train=False, seed=1), run(enc, later, train=False, seed=2)
    assert torch.equal(e1, e2)
    # training draws a window per example: different seeds mask differently, dropout off to isolate it
    enc_nodrop = TransAct(TransActConfig(early_fusion=False, dropout=0.0))
    t1, t2 = run(enc_nodrop, batch, train=True, seed=1), run(enc_nodrop, batch, train=True, seed=2)
    assert not torch.equal(t1, t2)
    off = TransAct(dataclasses.replace(enc_nodrop.cfg, time_window_mask=False))
    off.load_state_dict(enc_nodrop.state_dict())
    assert torch.equal(run(off, batch, train=True, seed=1), run(off, batch, train=True, seed=2))
    assert torch.equal(run(off, batch, train=True, seed=1), run(off, batch, train=False))


def test_time_window_hides_recent_actions() -> None:
    """An action older than the whole window is never hidden; recent ones are hidden for some draws."""
    from transact.model import window_keep

    action = torch.tensor([[1, 2, 3, 0]]).repeat(2000, 1)
    ts = torch.tensor([[REQ - 1_000, REQ - 2 * HOUR, REQ - 30 * HOUR, 0]]).repeat(2000, 1)
    torch.manual_seed(0)
    keep = window_keep(action, ts, torch.full((2000,), REQ), 24 * HOUR)
    assert keep[:, 2].all() and not keep[:, 3].any()
    frac_hidden = 1 - keep[:, 1].float().mean().item()  # P(T > 2 h) = 22/24
    assert 0.87 < frac_hidden < 0.96


@pytest.mark.parametrize("lens", [[1], [1, 1, 1], [100, 2]])
def test_never_a_whole_masked_row(lens: list[int]) -> None:
    """All actions inside the window (1 s old): every draw would hide all; the newest stays, no NaN."""
    from transact.model import window_keep

    torch.manual_seed(0)
    batch = make_batch(lens, spacing_ms=1)
    keep = window_keep(batch["action"], batch["action_ts"], batch["request_ts"], 24 * HOUR)
    assert keep.any(1).all()
    model = RankingModel(RankingConfig())
    for seed in range(5):
        out = run(model, batch, train=True, seed=seed)
        assert torch.isfinite(out).all()


def test_determinism_with_seed() -> None:
    def build() -> torch.Tensor:
        torch.manual_seed(123)
        model = RankingModel(RankingConfig(daily_dim=8))
        return run(model, make_batch([100, 20, 0], daily_dim=8), train=True, seed=5)

    assert torch.equal(build(), build())


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = RankingConfig(daily_dim=8, heads=("click", "save", "hide"), mlp_dims=(32,))
    model = RankingModel(cfg).eval()
    batch = make_batch([100, 9, 0], daily_dim=8)
    vocab = {"actions": ["impression", "click"], "model_version": "t1"}
    path = tmp_path / "ckpt" / "m.pt"
    save_checkpoint(path, model, cfg, vocab)
    loaded, cfg2, vocab2 = load_checkpoint(path)
    assert cfg2 == cfg and vocab2 == vocab and not loaded.training
    with torch.no_grad():
        assert torch.equal(model(batch), loaded(batch))
    # the candidate-free encoder alone
    enc_cfg = TransActConfig(early_fusion=False)
    enc = TransAct(enc_cfg).eval()
    save_checkpoint(tmp_path / "e.pt", enc, enc_cfg, {})
    enc2, c2, _ = load_checkpoint(tmp_path / "e.pt")
    assert c2 == enc_cfg
    with torch.no_grad():
        assert torch.equal(enc(batch), enc2(batch))


def test_checkpoint_rejects_foreign_files(tmp_path: Path) -> None:
    torch.save({"weights": torch.zeros(1)}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="not an actionstream"):
        load_checkpoint(tmp_path / "x.pt")
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path / "y.pt", TransAct(TransActConfig()), RankingConfig(), {})


def test_hide_upweights_positive_heads_negatives() -> None:
    heads = ("click", "save", "hide")
    m = torch.tensor(default_label_weights(heads))
    labels = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    w = label_weight_matrix(labels, m)
    assert torch.equal(w[0], torch.ones(3))  # no engagement: weight 1 everywhere
    assert torch.equal(w[1], torch.ones(3))
    assert w[2, 0] == 100 and w[2, 1] == 100 and w[2, 2] == 1  # a hide: click/save negatives x100
    # and the loss follows: a confident click/save prediction on a hidden item costs ~100x more
    model = RankingModel(RankingConfig(heads=heads))
    logits = torch.tensor([[3.0, 3.0, -3.0]])
    hidden = torch.tensor([[0.0, 0.0, 1.0]])
    plain = torch.tensor([[0.0, 0.0, 0.0]])
    assert model.loss(logits, hidden) > 50 * model.loss(logits, plain, torch.ones(1, 3))


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        TransActConfig(nhead=5)
    with pytest.raises(ValueError):
        TransActConfig(use_first_k=False, use_max_pool=False)
    with pytest.raises(ValueError):
        RankingConfig(heads=("click", "hide"), label_weights=((1.0,),))
    assert RankingConfig(realtime_input=True).encoder_config.early_fusion is False
