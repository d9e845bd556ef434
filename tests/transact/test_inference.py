"""transact.inference: the fast scorer equals RankingModel.forward; the batched encoder equals TransAct.forward.

Tolerance (written down, as STYLE.md habit 6 asks): both paths are float32. The fast path computes the same
function with re-associated sums: folded products ``Wq^T Wk`` and ``Wv^T Wo^T`` (formed in float64, then
rounded once), the layer-1 scores as ``A + B`` instead of ``(s+e)M(s+e)^T``, and no padded columns. Each
re-association moves a float32 result by a few ulps (~1e-7 relative); LayerNorm (÷ std) and the DCN's
multiplicative cross can amplify that by ~10-100x. Measured worst case on these models: ~1.5e-7 on logits
(random init, and with attention scores sharpened 4x and 9x; 2 heads; 3 layers; a daily vector). We allow ``|fast - reference| <= 1e-4 + 1e-4 |ref|``
on logits: ~100x the measured error, and ~100x below a difference that could reorder two candidates whose
probabilities differ in the third decimal. Any real bug (a missed term, a padded column, a wrong bias)
shows up at 1e-2 or more, as the mutation check below confirms.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from streams.items import MemoryItemStore
from streams.sequence import Act
from transact.features import build_batch
from transact.inference import (
    Encoder,
    Int8Linear,
    Scorer,
    bf16_for,
    bf16_native,
    int8_available,
    serving_sequence,
)
from transact.model import RankingConfig, RankingModel, TransAct, TransActConfig, save_checkpoint

REQ = 1_700_000_000_000
ATOL = RTOL = 1e-4


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    """Tiny tensors: one intra-op thread (2 OpenMP threads on busy shared cores spin-wait: ~2.5x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def items() -> MemoryItemStore:
    rng = np.random.default_rng(0)
    return MemoryItemStore(32, [(f"i{k}", rng.standard_normal(32).astype(np.float32)) for k in range(300)])


def make_seq(n: int, seed: int = 0) -> list[Act]:
    """n actions, newest first; ids i0..i399 so ~25% have no vector (hashed-id fallback)."""
    rng = np.random.default_rng(seed)
    return [(REQ - 1_000 - k * 60_000, k, int(rng.integers(1, 8)), 0, 0, f"i{rng.integers(0, 400)}") for k in range(n)]


def cands(n: int, seed: int = 1) -> list[str]:
    return [f"i{k}" for k in np.random.default_rng(seed).integers(0, 400, n)]


def model(**kw: object) -> RankingModel:
    torch.manual_seed(0)
    tkw = {k: kw.pop(k) for k in list(kw) if k in TransActConfig.__dataclass_fields__}
    return RankingModel(RankingConfig(transact=TransActConfig(**tkw), **kw)).eval()  # type: ignore[arg-type]


def assert_parity(scorer: Scorer, seq: list[Act], cs: list[str], daily: np.ndarray | None = None) -> float:
    fast = scorer.score_logits(seq, cs, REQ, daily)
    ref = scorer.reference_logits(seq, cs, REQ, daily)
    assert fast.shape == ref.shape == (len(cs), len(scorer.heads))
    torch.testing.assert_close(fast, ref, atol=ATOL, rtol=RTOL)
    return float((fast - ref).abs().max())


@pytest.mark.parametrize("length", [100, 37, 10, 3, 1, 0])
def test_fast_scoring_matches_forward(items: MemoryItemStore, length: int) -> None:
    scorer = Scorer(model(), items, threads=1, chunk=16)
    assert scorer.fused is not None
    assert_parity(scorer, make_seq(length), cands(75))  # 75: chunks of 16 plus a partial one


@pytest.mark.parametrize(("threads", "n"), [(2, 75), (2, 20), (3, 100), (2, 1)])
def test_parallel_candidate_slices_match_forward(items: MemoryItemStore, threads: int, n: int) -> None:
    """threads > 1 scores contiguous slices of whole chunks on pool threads; order and values unchanged."""
    scorer = Scorer(model(daily_dim=16), items, threads=threads, chunk=8)
    daily = np.random.default_rng(4).standard_normal(16).astype(np.float32)
    assert_parity(scorer, make_seq(50), cands(n), daily)
    one = Scorer(scorer.model, items, threads=1, chunk=8)
    torch.testing.assert_close(scorer.score_logits(make_seq(50), cands(n), REQ, daily),
                               one.score_logits(make_seq(50), cands(n), REQ, daily), atol=1e-6, rtol=0)


@pytest.mark.parametrize("kw", [
    {"nhead": 2},  # the official code's 2 heads
    {"first_k": 3, "use_max_pool": False},
    {"use_first_k": False},
    {"num_layers": 3, "dim_feedforward": 64},
    {"sequence_encoder": "average"},
    {"sequence_encoder": "none"},
    {"realtime_input": True},
    {"daily_dim": 16},
])
def test_fast_scoring_variants(items: MemoryItemStore, kw: dict[str, object]) -> None:
    m = model(**kw)
    scorer = Scorer(m, items, threads=1, chunk=8)
    daily = np.random.default_rng(3).standard_normal(16).astype(np.float32) if m.cfg.daily_dim else None
    assert_parity(scorer, make_seq(60), cands(20), daily)


def test_fast_scoring_with_sharp_attention(items: MemoryItemStore) -> None:
    """Trained models have peakier attention than a random init: scale Q/K up 4x and check again."""
    m = model()
    assert m.transact is not None
    with torch.no_grad():
        for layer in m.transact.encoder.layers:
            layer.self_attn.in_proj_weight[:192] *= 2.0  # Q and K rows: scores x4
    scorer = Scorer(m, items, threads=1)
    assert_parity(scorer, make_seq(100, seed=5), cands(100, seed=6))


def test_parity_check_catches_a_wrong_term(items: MemoryItemStore) -> None:
    """Mutation check: drop the candidate-value term of layer 1 and parity must fail."""
    scorer = Scorer(model(), items, threads=1)
    assert scorer.fused is not None
    first = scorer.fused.layers[0]
    object.__setattr__(first, "n", first.n.clone())
    first.n[:, -32:] = 0  # the candidate slot's value rows
    with pytest.raises(AssertionError):
        assert_parity(scorer, make_seq(50), cands(10))


def test_candidate_order_and_duplicates(items: MemoryItemStore) -> None:
    scorer = Scorer(model(), items, threads=1, chunk=4)
    seq, cs = make_seq(40), cands(9)
    p = scorer.score(seq, cs, REQ)
    assert p.dtype == np.float32 and p.shape == (9, 3) and ((p > 0) & (p < 1)).all()
    rev = scorer.score(seq, cs[::-1], REQ)
    np.testing.assert_allclose(p[::-1], rev, atol=1e-6)
    dup = scorer.score(seq, [cs[0], cs[0]], REQ)
    np.testing.assert_allclose(dup[0], dup[1], atol=1e-6)
    assert scorer.score(seq, [], REQ).shape == (0, 3)


def test_scores_do_not_depend_on_request_time(items: MemoryItemStore) -> None:
    scorer = Scorer(model(), items, threads=1)
    seq, cs = make_seq(30), cands(5)
    # not bitwise: MKL's kernels are not run-to-run reproducible on every CPU (the same call twice differed
    # by 3e-8 on an AMD EPYC); a request-time dependence would move the logits far more than 1e-6
    torch.testing.assert_close(scorer.score_logits(seq, cs, REQ), scorer.score_logits(seq, cs, REQ + 3_600_000),
                               rtol=0, atol=1e-6)


def test_scorer_from_checkpoint(tmp_path: Path, items: MemoryItemStore) -> None:
    m = model()
    save_checkpoint(tmp_path / "m.pt", m, m.cfg, {"model_version": "v7"})
    scorer = Scorer.from_checkpoint(tmp_path / "m.pt", items, threads=1)
    assert scorer.model_version == "v7" and scorer.heads == ("click", "save", "hide")
    seq, cs = make_seq(20), cands(6)
    direct = Scorer(m, items, threads=1)
    assert torch.equal(scorer.score_logits(seq, cs, REQ), direct.score_logits(seq, cs, REQ))
    enc = TransAct(TransActConfig(early_fusion=False))
    save_checkpoint(tmp_path / "e.pt", enc, enc.cfg, {})
    with pytest.raises(ValueError, match="RankingModel"):
        Scorer.from_checkpoint(tmp_path / "e.pt", items)


def test_scorer_rejects_wrong_daily_size(items: MemoryItemStore) -> None:
    scorer = Scorer(model(daily_dim=16), items, threads=1)
    with pytest.raises(ValueError, match="daily vector has 8 values"):
        scorer.score(make_seq(5), cands(2), REQ, np.zeros(8, np.float32))


def test_encoder_matches_forward(items: MemoryItemStore) -> None:
    torch.manual_seed(0)
    enc_model = TransAct(TransActConfig(early_fusion=False)).eval()
    encoder = Encoder(enc_model, items, threads=1)
    seqs = [make_seq(n, seed=n) for n in (100, 50, 7, 1, 0)]
    out = encoder.encode(seqs, REQ)
    assert out.shape == (5, 704) and out.dtype == np.float32
    assert not out[4].any()  # no history: zeros
    from transact.features import build_batch

    batch = build_batch(seqs, [REQ], items, 100)  # the untruncated reference batch
    with torch.no_grad():
        ref = enc_model(batch).numpy()
    np.testing.assert_allclose(out, ref, atol=ATOL, rtol=RTOL)
    # batching does not change a user's vector
    np.testing.assert_allclose(encoder.encode([seqs[2]], REQ)[0], out[2], atol=ATOL, rtol=RTOL)
    assert encoder.encode([], REQ).shape == (0, 704)


@pytest.mark.parametrize("nhead", [1, 2])
def test_fast_encoder_chunks_match_forward(items: MemoryItemStore, nhead: int) -> None:
    """Users sorted by length, chunks of varying size each cut to its longest sequence, padded keys masked:
    every user's vector equals the model's forward on the whole padded batch, in the caller's order."""
    torch.manual_seed(1)
    enc_model = TransAct(TransActConfig(early_fusion=False, nhead=nhead)).eval()
    rng = np.random.default_rng(5)
    lengths = [int(n) for n in rng.integers(0, 101, 37)] + [100, 3, 0, 12, 12]
    seqs = [make_seq(n, seed=k) for k, n in enumerate(lengths)]
    fast = Encoder(enc_model, items, threads=1, chunk=2)  # 200-row chunks: 2 full users, 66 of length 3
    slow = Encoder(enc_model, items, threads=1, fast=False)
    assert fast.fast is not None and slow.fast is None
    out = fast.encode(seqs, REQ)
    from transact.features import build_batch

    with torch.no_grad():
        ref = enc_model(build_batch(seqs, [REQ], items, 100)).numpy()
    np.testing.assert_allclose(out, ref, atol=ATOL, rtol=RTOL)
    np.testing.assert_allclose(slow.encode(seqs, REQ), ref, atol=ATOL, rtol=RTOL)
    assert not out[np.array(lengths) == 0].any()
    assert not fast.encode([[], []], REQ).any()


def test_encoder_from_checkpoints(tmp_path: Path, items: MemoryItemStore) -> None:
    rt = model(realtime_input=True)
    save_checkpoint(tmp_path / "rt.pt", rt, rt.cfg, {"model_version": "rt1"})
    enc = Encoder.from_checkpoint(tmp_path / "rt.pt", items, threads=1)
    assert enc.out_dim == 704 and enc.model_version == "rt1"
    early = model()
    save_checkpoint(tmp_path / "early.pt", early, early.cfg, {})
    with pytest.raises(ValueError, match="candidate-free"):
        Encoder.from_checkpoint(tmp_path / "early.pt", items)


needs_int8 = pytest.mark.skipif(not int8_available(), reason="this torch build has no CPU int8 GEMM")


@needs_int8
def test_int8_linear_within_its_quantization_bound() -> None:
    """Rounding x and W to int8 moves each product by at most half a step of either factor:
    |Δy_j| <= sx/2 sum|w_j| + sw_j/2 sum|x| + sx sw_j n/4 per row (x scale sx per row, W scale sw_j per output)."""
    g = torch.Generator().manual_seed(0)
    lin = torch.nn.Linear(300, 200)
    x = torch.randn(64, 300, generator=g) * torch.rand(64, 1, generator=g) * 5  # rows of different scales
    q = Int8Linear.of(lin)
    with torch.no_grad():
        ref = lin(x)
        w = lin.weight
    got = q(x)
    sx = x.abs().amax(1, keepdim=True) / 127
    sw = w.abs().amax(1) / 127
    bound = sx / 2 * w.abs().sum(1) + sw / 2 * x.abs().sum(1, keepdim=True) + sx * sw * 300 / 4
    assert ((got - ref).abs() <= bound + 1e-5).all()
    err = ((got - ref).norm() / ref.norm()).item()
    assert 1e-5 < err < 0.02  # really quantized, and close
    # one scale per row: a row's result does not depend on the rest of its batch
    torch.testing.assert_close(q(x[5:6]), got[5:6], atol=0, rtol=0)


@needs_int8
def test_int8_dcn_scores_close_to_float(items: MemoryItemStore) -> None:
    """The int8 cross layers on a model whose cross terms matter (weights 30x a random init's): the
    probabilities move, but by far less than a ranking-relevant amount; float32 stays exact (parity)."""
    m = model()
    with torch.no_grad():
        for layer in m.cross:
            layer.linear.weight *= 30
    exact = Scorer(m, items, threads=1)
    int8 = Scorer(m, items, threads=2, int8_cross=True)
    assert exact.cross8 is None and int8.cross8 is not None
    seq, cs = make_seq(100, seed=7), cands(200, seed=8)
    assert_parity(exact, seq, cs)
    p32, p8 = exact.score(seq, cs, REQ), int8.score(seq, cs, REQ)
    dp = np.abs(p32 - p8)
    assert 0 < dp.max() < 0.01
    assert np.corrcoef(p32[:, 0], p8[:, 0])[0, 1] > 0.999


BF16_ATOL = 1e-2  # logits; bf16 operands carry 8 significant bits (~4e-3 relative); measured ~5e-4 here


@pytest.mark.parametrize("sharpen", [1.0, 2.0])
@pytest.mark.parametrize("length", [100, 23])
def test_bf16_gemms_stay_close_to_float(items: MemoryItemStore, sharpen: float, length: int) -> None:
    """The bf16 path really runs in bf16 (its logits differ from float32) and stays within BF16_ATOL of
    the model's forward, with padding cut, chunks, two candidate slices and peakier attention (Q, K x2).
    It runs on any CPU (emulated where the CPU has no bf16 instructions, only slower)."""
    m = model()
    assert m.transact is not None
    with torch.no_grad():
        for layer in m.transact.encoder.layers:
            layer.self_attn.in_proj_weight[:192] *= sharpen
    bf16 = Scorer(m, items, threads=2, chunk=8, bf16=True)
    assert bf16.bf16
    seq, cs = make_seq(length, seed=9), cands(40, seed=10)
    fast, ref = bf16.score_logits(seq, cs, REQ), bf16.reference_logits(seq, cs, REQ)
    diff = float((fast - ref).abs().max())
    assert 0 < diff < BF16_ATOL
    for h in range(fast.shape[1]):  # the candidates' order per head is what ranking uses
        assert np.corrcoef(fast[:, h], ref[:, h])[0, 1] > 0.999


def test_bf16_falls_back_to_float_for_two_heads(items: MemoryItemStore) -> None:
    scorer = Scorer(model(nhead=2), items, threads=1, bf16=True)
    assert not scorer.bf16
    assert_parity(scorer, make_seq(30), cands(10))


@pytest.mark.parametrize("bf16", [False, True])
def test_serving_sequence_is_the_scorers_path_row_by_row(items: MemoryItemStore, bf16: bool) -> None:
    """``serving_sequence`` (the eval's --bf16 check) gives each (user, candidate) row what the Scorer computes
    for that user and candidate."""
    m = model()
    scorer = Scorer(m, items, threads=1, bf16=bf16)
    seqs, cs = [make_seq(n, seed=n) for n in (30, 7, 0)], cands(3)
    batch = build_batch(seqs, [REQ] * 3, items, m.cfg.encoder_config.seq_len, cs)
    with torch.inference_mode():
        got = m.head_logits(m.features(batch, serving_sequence(m, bf16=bf16)))
    want = torch.cat([scorer.score_logits(s, [c], REQ) for s, c in zip(seqs, cs, strict=True)])
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_bf16_for_resolves_the_setting() -> None:
    """ACTIONSTREAM_SCORE_BF16: auto follows the CPU, on / off force it."""
    assert bf16_for("auto") is bf16_native()
    assert bf16_for("on") is True and bf16_for("off") is False
    with pytest.raises(ValueError, match="auto, on or off"):
        bf16_for("yes")
