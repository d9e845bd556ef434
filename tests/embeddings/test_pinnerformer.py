"""PinnerFormer model: shapes, L2 norms, causality, padding invariance, weights-only checkpoints."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from embeddings.pinnerformer import (
    ABS_PERIODS_S,
    PinnerFormer,
    PinnerFormerConfig,
    Time2Vec,
    load_checkpoint,
    log_spaced_periods,
    save_checkpoint,
)

CFG = PinnerFormerConfig(item_dim=8, id_buckets=101, max_len=16, width=32, n_layers=2, n_heads=4, emb_dim=16,
                         dropout=0.0)
T0 = 1_700_000_000_000


def make_batch(B: int = 3, S: int = 10, lengths: tuple[int, ...] = (10, 4, 1), seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    action = torch.randint(1, CFG.n_actions, (B, S), generator=g)
    gaps = torch.randint(1_000, 3_600_000, (B, S), generator=g)
    batch = {"action": action, "surface": torch.randint(0, CFG.n_surfaces, (B, S), generator=g),
             "duration_ms": torch.randint(0, 60_000, (B, S), generator=g).float(),
             "ts_ms": T0 + gaps.cumsum(1), "item_vec": torch.randn(B, S, CFG.item_dim, generator=g),
             "item_bucket": torch.randint(1, CFG.id_buckets, (B, S), generator=g)}
    for b, n in enumerate(lengths):                     # left padding
        batch["action"][b, :S - n] = 0
        batch["item_bucket"][b, :S - n] = 0
        batch["item_vec"][b, :S - n] = 0
    return batch


@pytest.fixture
def model() -> PinnerFormer:
    torch.manual_seed(0)
    return PinnerFormer(CFG).eval()


def test_shapes_and_unit_norms(model: PinnerFormer) -> None:
    batch = make_batch()
    with torch.no_grad():
        seq = model.encode_sequence(batch)
        user = model.user_embedding(batch)
        items = model.encode_items(torch.randn(5, CFG.item_dim), torch.arange(1, 6))
    assert seq.shape == (3, 10, CFG.emb_dim) and user.shape == (3, CFG.emb_dim) and items.shape == (5, CFG.emb_dim)
    assert torch.isfinite(seq).all()
    torch.testing.assert_close(user.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(items.norm(dim=-1), torch.ones(5))
    torch.testing.assert_close(user, seq[:, -1])


@pytest.mark.parametrize("field", ["action", "surface", "duration_ms", "item_vec", "item_bucket", "ts_ms"])
def test_later_action_never_changes_earlier_positions(model: PinnerFormer, field: str) -> None:
    """Causality: change the action in slot 6 (not the newest, whose timestamp every slot sees by design)."""
    batch = make_batch()
    changed = {k: v.clone() for k, v in batch.items()}
    if field == "ts_ms":
        changed[field][0, 6] = (changed[field][0, 5] + changed[field][0, 7]) // 2 + 7
    elif field in ("action", "surface", "item_bucket"):
        changed[field][0, 6] = changed[field][0, 6] % (2 if field == "action" else 3) + 1 + 3
    else:
        changed[field][0, 6] = changed[field][0, 6] * 3 + 30_000.0
    with torch.no_grad():
        a, b = model.encode_sequence(batch), model.encode_sequence(changed)
    torch.testing.assert_close(a[:, :6], b[:, :6], rtol=0, atol=1e-6)
    assert not torch.allclose(a[0, 6:], b[0, 6:], atol=1e-4)   # and the change is seen from slot 6 on


def test_newest_action_content_is_invisible_to_earlier_positions(model: PinnerFormer) -> None:
    batch = make_batch()
    changed = {k: v.clone() for k, v in batch.items()}
    changed["item_vec"][:, -1] += 3.0
    changed["action"][:, -1] = changed["action"][:, -1] % (CFG.n_actions - 1) + 1
    with torch.no_grad():
        a, b = model.encode_sequence(batch), model.encode_sequence(changed)
    torch.testing.assert_close(a[:, :-1], b[:, :-1], rtol=0, atol=1e-6)


def test_strictly_causal_without_time_since_latest() -> None:
    torch.manual_seed(0)
    m = PinnerFormer(PinnerFormerConfig(**{**CFG.__dict__, "time_since_latest": False})).eval()
    batch = make_batch()
    changed = {k: v.clone() for k, v in batch.items()}
    changed["ts_ms"][:, -1] += 86_400_000
    with torch.no_grad():
        torch.testing.assert_close(m.encode_sequence(batch)[:, :-1], m.encode_sequence(changed)[:, :-1],
                                   rtol=0, atol=1e-6)


def test_more_left_padding_changes_nothing(model: PinnerFormer) -> None:
    """The user embedding depends on the actions only, not on the padded length of its batch."""
    batch = make_batch(S=10)
    wide = {k: torch.cat([torch.zeros_like(v[:, :6]), v], dim=1) if k != "ts_ms"
            else torch.cat([v[:, :1].expand(-1, 6), v], dim=1) for k, v in batch.items()}
    with torch.no_grad():
        torch.testing.assert_close(model.user_embedding(batch), model.user_embedding(wide), rtol=0, atol=1e-5)


def test_time2vec_periods_and_phase() -> None:
    assert len(ABS_PERIODS_S) == 12 and ABS_PERIODS_S[0] == 900 and ABS_PERIODS_S[-1] == 365 * 86_400
    rel = log_spaced_periods()
    assert len(rel) == 32 and rel[0] == pytest.approx(1.0) and rel[-1] == pytest.approx(28 * 86_400)
    t2v = Time2Vec((3600.0,))
    out = t2v(torch.tensor([0.0, 900.0], dtype=torch.float64))
    assert out.shape == (2, 3)
    torch.testing.assert_close(out[1, :2], torch.tensor([0.0, 1.0]), atol=1e-6, rtol=0)   # quarter period
    assert out[1, 2].item() == pytest.approx(math.log1p(900.0))
    # epoch-scale times keep full precision (reduced in float64 before the float32 cast)
    big = t2v(torch.tensor([1.7e9, 1.7e9 + 900.0], dtype=torch.float64))
    torch.testing.assert_close(big[1, :2], torch.tensor([-big[0, 1].item(), big[0, 0].item()]), atol=1e-5, rtol=0)


def test_checkpoint_roundtrip_weights_only(model: PinnerFormer, tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "m.pt", model, {"cut_ms": 5, "settings": {"pf_objective": "next_action"}})
    again, meta = load_checkpoint(tmp_path / "m.pt")
    assert meta["cut_ms"] == 5 and not again.training
    batch = make_batch()
    with torch.no_grad():
        torch.testing.assert_close(model.user_embedding(batch), again.user_embedding(batch))


def test_not_a_checkpoint_is_refused(tmp_path: Path) -> None:
    torch.save({"something": torch.zeros(1)}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="not a PinnerFormer checkpoint"):
        load_checkpoint(tmp_path / "x.pt")
