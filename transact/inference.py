"""Serving inference for TransAct: batched realtime user vectors and fast one-user x many-candidate scoring.

The worker calls these from an executor thread, never on the event loop. Both classes are cheap to build
from a checkpoint, hold no per-request state (safe for one caller at a time; concurrent callers would
share torch's thread pool), and build every batch through :func:`transact.features.build_batch`.

* :class:`Encoder`: the candidate-free TransAct (``early_fusion=False``) over many users at once:
  ``encode(seqs, request_ts) -> (U, out_dim)``, with the scorer's folded layers (2 and 6 below) on users
  sorted by length, in chunks each cut to its own longest sequence (:class:`_FastEncoder`; padded keys get
  -inf, as the reference's key padding mask). 256 users x 100 actions, 1 thread: ~75-135 ms vs ~140-215 ms
  for the model's own forward on the batch cut to its longest sequence (``fast=False``, the reference);
  256 users of a fresh stream (~7 actions each): ~25 vs ~66 ms.
* :class:`Scorer`: ``score(seq, candidates) -> (C, H)`` probabilities with the early-fusion
  :class:`~transact.model.RankingModel`. A direct evaluation runs the transformer on C copies of the
  user's sequence, each with one candidate glued to every row: ~5 GMAC and ~1 GB of memory traffic at
  C = 500, S = 100, d = 96. This implementation computes exactly the same function (eval mode: no
  dropout, no time-window mask) with much less work:

  1. **Skip padding**: the sequence is cut to its real length L (padding is masked out of attention and
     output, so it contributes nothing).
  2. **Fold the attention weights** (1 head, or per head): softmax rows are invariant to terms that do
     not depend on the key, so ``q.k = (x Wq^T Wk + bq Wk) . x'`` + const: one (d x d) matrix
     ``M = Wq^T Wk / sqrt(dh)`` replaces the Q and K projections; and ``P (x Wv^T + bv) Wo^T + bo =
     P (x N) + c`` with ``N = Wv^T Wo^T`` replaces the V and output projections (rows of P sum to 1).
  3. **Linear decomposition of early fusion in layer 1**: its input row is ``s_j + e_c`` (sequence part
     + candidate part in disjoint slots), so the layer-1 scores are ``A[i,j] + B[c,j]`` with the
     (L x L) sequence term ``A`` computed once per request and the candidate term ``B = cand M_c s^T``
     a (C x L) product; values are ``P (s N) + (e_c N + c)``: the sequence projection is done once.
  4. **Cache-sized chunks of candidates**: every later tensor is (chunk, L, d) and stays in cache
     instead of streaming 19 MB tensors through memory for each elementwise step.

  Reduced precision depends on the CPU. On a Xeon with AVX-512 + VNNI but without BF16/AMX (1 thread):
  bf16 matmuls ran 3-4x SLOWER than fp32 and fp16 ~40x slower; an int8 GEMM (``torch._int_mm``, VNNI)
  ran 3.5-4x faster than fp32, but quantizing the (C L, 96) activations of the transformer's small GEMMs
  costs as much as it saves: there only the **DCN cross layers** are worth it (see 7). On a CPU with
  AVX512-BF16 (AMD EPYC) the transformer's GEMMs are worth it in bf16 (see 8).
  ``F.scaled_dot_product_attention`` for
  the later layers measured no faster than bmm + softmax at these sizes, and ``torch.compile`` of a
  layer took 89 s to compile and ran no faster (6.9 vs 6.3 ms per 32-candidate chunk): neither is used.
  The parity test ``tests/transact/test_inference.py`` pins fast == ``RankingModel.forward`` within a
  written tolerance.

  5. **Parallel candidate slices** (``threads > 1``): candidates are independent rows all the way to
     the heads, so a request is cut into ``threads`` contiguous slices of whole chunks, each scored on
     its own pool thread with torch single-threaded. No per-op OpenMP barrier: 2 intra-op threads on a
     2-core box were measured slower than 1 when the cores were busy with other work (every op waited
     for a descheduled thread: 1 x 100 candidates ~1.2 s instead of ~0.15 s at load 12), while 2 slices
     ran 1 x 500 2.0x faster than the previous single-threaded path (p50 126 vs 245 ms, paired A/B).
  6. **No broadcast-bias copies**: the attention GEMM has no bias (torch copies a broadcast bias into
     the output before an addmm): the query bias is added in place to the query half, the value-output
     constant goes into the residual in x's own memory, and the FFN accumulates into ``y + b2`` in place
     (1.17x single-threaded). The FFN's output bias ``b2`` is folded into LN1's shift (``b1`` becomes
     ``b1 - W1 b2``), so ``y + b2`` costs no pass of its own (with the in-place residual, 1 x 500 took 4-5%
     less CPU, paired A/B, 1 and 2 threads). Scoring threads **flush denormals to zero**: a peaked softmax yields denormal
     probabilities and a GEMM over them ran 4-5x slower here.
  7. **int8 DCN cross layers** (``int8_cross=True``, the worker's default; ``ACTIONSTREAM_SCORE_INT8_DCN``):
     the two full-rank (1088 x 1088) cross layers are the largest GEMMs of a request. Their weights are
     int8 with one scale per output, their inputs int8 with one scale per row (computed per call, so a
     candidate's result does not depend on its batch), int32 accumulation, float32 everywhere else. The
     accuracy check (``actionstream eval transact --int8-dcn``) compares HIT@3 / AUC and the probabilities
     with the float32 path on a trained model; the parity test pins ``int8_cross=False``.
  8. **bf16 GEMMs in the transformer** (``bf16=True``; the worker's ``ACTIONSTREAM_SCORE_BF16=auto`` turns
     them on where :func:`bf16_native`): every GEMM of the two layers (QK/V projection, scores, P V, the
     FFN, layer 1's P (s N)) takes bfloat16 operands; x, the residual sums, LayerNorm and layer 1's softmax
     stay float32, because torch's CPU LayerNorm, softmax, max-pool and adds ran slower on bf16 tensors
     than on float32 ones (all-bf16 was no faster overall). Measured on an AMD EPYC with AVX512-BF16,
     1 x 500, 1 thread: the transformer part 113 -> 92 ms; 2 slices p50 / p99 65 / 80 -> 58 / 65 ms. The
     accuracy check (``actionstream eval transact --bf16``) compares HIT@3 / AUC and the probabilities with
     float32 on a trained model; ``tests/transact/test_inference.py`` pins bf16 to the model's forward
     within 1e-2 on logits (and requires it to differ from float32, so the bf16 path is the one tested).
"""

from __future__ import annotations

import logging
import math
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from streams.items import ItemLookup
from streams.sequence import Act
from transact.features import build_batch, build_batch_from_blobs
from transact.model import RankingModel, TransAct, TransActConfig, load_checkpoint

__all__ = ["Encoder", "Int8Linear", "Scorer", "bf16_for", "bf16_native", "int8_available", "int8_cross_layers",
           "serving_sequence"]

log = logging.getLogger(__name__)

DEFAULT_CHUNK = 16  # candidates per chunk: (16, 100, 96) float32 = 0.6 MB per tensor, half this CPU's 1.25 MB L2
# (1 x 500, 2 threads, paired: chunk 16 p50 91.6 ms, 8: 99.6, 24: 97.2, 32: 107.8)


@dataclass(frozen=True)
class Int8Linear:
    """``x W^T + b`` (an ``nn.Linear``) as an int8 GEMM with int32 accumulation (``torch._int_mm``: VNNI).

    Weights: symmetric int8, one scale per output feature. Inputs: symmetric int8, one scale per ROW,
    computed on each call from the row's largest magnitude (a row's result does not depend on the other
    rows of its batch). Output float32: ``(xq @ wq) * x_scale * w_scale + b``.
    """

    wq: Tensor  # (in, out) int8
    w_scale: Tensor  # (out,) float32
    bias: Tensor  # (out,) float32

    @classmethod
    def of(cls, linear: nn.Linear) -> Int8Linear:
        w = linear.weight.detach().float()  # (out, in)
        scale = w.abs().amax(1).clamp_min(1e-30) / 127.0
        wq = torch.round(w / scale[:, None]).to(torch.int8).T.contiguous()
        bias = linear.bias.detach().float() if linear.bias is not None else torch.zeros(w.shape[0])
        return cls(wq=wq, w_scale=scale.contiguous(), bias=bias)

    def __call__(self, x: Tensor) -> Tensor:
        """x (B, in) float32 -> (B, out) float32."""
        x_scale = x.abs().amax(1, keepdim=True).clamp_min_(1e-30).div_(127.0)  # (B, 1)
        xq = torch.div(x, x_scale).round_().to(torch.int8)
        return torch._int_mm(xq, self.wq).float().mul_(x_scale).mul_(self.w_scale).add_(self.bias)


def int8_cross_layers(model: RankingModel) -> list[Int8Linear]:
    """One :class:`Int8Linear` per DCN cross layer of ``model`` (for ``RankingModel.head_logits``)."""
    return [Int8Linear.of(layer.linear) for layer in model.cross]  # type: ignore[arg-type]


def bf16_native() -> bool:
    """This CPU has bf16 dot-product instructions (AVX512-BF16 or AMX), so oneDNN's bf16 GEMMs beat float32.

    Without them torch emulates bf16 and its GEMMs ran 3-4x slower than float32 (Xeon with AVX-512 + VNNI).
    """
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # a torch without these probes
        return False


def bf16_for(choice: str) -> bool:
    """``ACTIONSTREAM_SCORE_BF16`` -> the Scorer's ``bf16``: ``auto`` = :func:`bf16_native`, ``on``, ``off``.
    ``on`` without native bf16 logs a warning (emulated bf16 GEMMs are slower than float32)."""
    if choice not in ("auto", "on", "off"):
        raise ValueError(f"bf16 choice {choice!r}: auto, on or off")
    native = bf16_native()
    if choice == "on" and not native:
        log.warning("ACTIONSTREAM_SCORE_BF16=on on a CPU without AVX512-BF16 / AMX: torch emulates bf16 and "
                    "scoring gets slower, not faster")
    return choice == "on" or (choice == "auto" and native)


def int8_available() -> bool:
    """``torch._int_mm`` runs on this build's CPU (checked once with a tiny product)."""
    try:
        a = torch.ones(1, 8, dtype=torch.int8)
        return bool(torch._int_mm(a, a.T.contiguous()).item() == 8)
    except (AttributeError, RuntimeError):
        return False


@dataclass(frozen=True)
class _Layer:
    """One post-LN encoder layer with folded attention weights (see module docstring).

    m: (H, d, d) query-key matrices incl. 1/sqrt(dh); u: (H, d) query bias term; n: (H, d, d) value-output
    matrices; c: (d,) constant attention output; the rest are the layer's own LayerNorm and FFN tensors.
    """

    m: Tensor
    u: Tensor
    n: Tensor
    c: Tensor
    mn: Tensor  # (d, 2d) = [M | N] for nhead == 1: one GEMM for both (q = x M + u, v = x N + c)
    ln1: tuple[Tensor, Tensor, float]
    ln2: tuple[Tensor, Tensor, float]
    w1t: Tensor  # (d, F)
    b1: Tensor
    w2t: Tensor  # (F, d); the FFN's output bias is in ln1's shift (see fold)
    half: dict[str, Tensor] | None = None  # bf16 copies of the GEMM weights (:meth:`with_bf16`), or None

    @classmethod
    def fold(cls, layer: nn.TransformerEncoderLayer) -> _Layer:
        if layer.norm_first or layer.activation_relu_or_gelu != 1:
            raise ValueError("fast scoring supports the post-LN ReLU encoder layer of transact.model only")
        attn = layer.self_attn
        d, h = attn.embed_dim, attn.num_heads
        dh = d // h
        w = attn.in_proj_weight.detach().double()
        b = attn.in_proj_bias.detach().double()
        wq, wk, wv = w[:d], w[d:2 * d], w[2 * d:]
        bq, bv = b[:d], b[2 * d:]
        wo, bo = attn.out_proj.weight.detach().double(), attn.out_proj.bias.detach().double()
        ms, us, ns = [], [], []
        c = bo.clone()
        for k in range(h):
            sl = slice(k * dh, (k + 1) * dh)
            ms.append(wq[sl].T @ wk[sl] / math.sqrt(dh))  # (d, d)
            us.append(bq[sl] @ wk[sl] / math.sqrt(dh))  # (d,)
            ns.append(wv[sl].T @ wo[:, sl].T)  # (d, d)
            c = c + bv[sl] @ wo[:, sl].T
        m, u, n = torch.stack(ms).float(), torch.stack(us).float(), torch.stack(ns).float()
        # FFN output bias folded into LN1's shift: y' = y + b2 makes the residual y' + FFN(y) need no bias pass,
        # and FFN(y) = relu((y' - b2) W1^T + b1) W2^T = relu(y' W1^T + (b1 - W1 b2)) W2^T
        w1, b2 = layer.linear1.weight.detach().double(), layer.linear2.bias.detach().double()
        return cls(m=m, u=u, n=n, c=c.float(), mn=torch.cat([m[0], n[0]], 1).contiguous(),
                   ln1=(layer.norm1.weight.detach(), (layer.norm1.bias.detach().double() + b2).float(),
                        layer.norm1.eps),
                   ln2=(layer.norm2.weight.detach(), layer.norm2.bias.detach(), layer.norm2.eps),
                   w1t=w1.T.float().contiguous(), b1=(layer.linear1.bias.detach().double() - w1 @ b2).float(),
                   w2t=layer.linear2.weight.detach().T.contiguous())

    def with_bf16(self) -> _Layer:
        """The same layer with its GEMMs in bfloat16 (inputs cast per call, float32 everywhere else)."""
        if self.m.shape[0] != 1:
            raise ValueError("bf16 GEMMs are implemented for nhead == 1")
        half = {"mn": self.mn, "u": self.u[0], "w1t": self.w1t, "b1": self.b1, "w2t": self.w2t}
        return replace(self, half={k: v.to(torch.bfloat16) for k, v in half.items()})

    def finish(self, pre: Tensor) -> Tensor:
        """pre = x + attention(x), (C, L, d) -> LN1, FFN + residual, LN2 -> (C, L, d). ``pre`` is reused."""
        shape, d = pre.shape, pre.shape[-1]
        y = F.layer_norm(pre, (d,), *self.ln1[:2], self.ln1[2]).view(-1, d)  # (C*L, d): y + b2 (see fold)
        if self.half is not None:
            hf = self.half
            h = torch.addmm(hf["b1"], y.to(torch.bfloat16), hf["w1t"]).relu_()  # (C*L, F) bf16
            z = y.add_(torch.mm(h, hf["w2t"]))
        else:
            h = torch.addmm(self.b1, y, self.w1t).relu_()  # (C*L, F)
            z = y.addmm_(h, self.w2t)  # residual + FFN, the GEMM accumulating into y in place
        return F.layer_norm(z, (d,), *self.ln2[:2], self.ln2[2]).view(shape)

    def forward(self, x: Tensor, key_bias: Tensor | None = None) -> Tensor:
        """A general layer on (C, L, d). ``key_bias``: None when every position is real (padding cut off),
        else (C, 1, L) with 0 at real keys and -inf at padded ones. ``x`` is overwritten."""
        heads, (n, length, d) = self.m.shape[0], x.shape
        if self.half is not None:  # the same steps with bf16 GEMM operands; x, the residual and LN in float32
            hf = self.half
            xb = x.to(torch.bfloat16)
            q, v = torch.mm(xb.view(-1, d), hf["mn"]).view(n, length, 2 * d).split(d, -1)
            q.add_(hf["u"])
            s = torch.bmm(q, xb.transpose(1, 2))  # (C, L, L) bf16
            if key_bias is not None:
                s.add_(key_bias)
            pre = x.add_(self.c).add_(torch.bmm(torch.softmax(s, -1), v))
        elif heads == 1:
            # no bias in the GEMM (torch copies a broadcast bias into the output first): u goes into the q
            # half in place, c into the residual (rows of P sum to 1: P (x N + c) = P x N + c)
            q, v = torch.mm(x.view(-1, d), self.mn).view(n, length, 2 * d).split(d, -1)
            q.add_(self.u[0])
            s = torch.bmm(q, x.transpose(1, 2))  # (C, L, L)
            if key_bias is not None:
                s.add_(key_bias)
            pre = x.add_(self.c).baddbmm_(torch.softmax(s, -1), v)  # x + P (x N + c), in x's memory
        else:
            xt = x.transpose(1, 2)  # (C, d, L)
            pre = x + self.c
            for k in range(heads):
                q = torch.matmul(x, self.m[k]) + self.u[k]
                s = torch.bmm(q, xt)
                if key_bias is not None:
                    s.add_(key_bias)
                pre = torch.baddbmm(pre, torch.softmax(s, -1), torch.matmul(x, self.n[k]))
        return self.finish(pre)


@dataclass(frozen=True)
class _Request:
    """Layer-1 tensors of one request's sequence (:meth:`_FusedTransAct.prepare`), shared by its parts."""

    length: int
    a: list[Tensor]
    g: list[Tensor]
    sn: list[Tensor]
    nc: list[Tensor]
    sn16: list[Tensor]
    s_rep: Tensor


class _FusedTransAct:
    """TransAct with early fusion, evaluated for one sequence x many candidates (see module docstring)."""

    def __init__(self, enc: TransAct, chunk: int, bf16: bool = False) -> None:
        self.cfg = enc.cfg
        if not self.cfg.early_fusion:
            raise ValueError("the fused path is for early fusion")
        self.layers = [_Layer.fold(layer) for layer in enc.encoder.layers]  # type: ignore[arg-type]
        if bf16:  # (module docstring, 8)
            self.layers = [layer.with_bf16() for layer in self.layers]
        self.di = self.cfg.item_dim
        self.chunk = chunk

    def __call__(self, s: Tensor, cand: Tensor) -> Tensor:
        """s: (L, d - Di) real sequence rows ``[action_emb; item]``; cand: (C, Di) -> (C, out_dim)."""
        return self.run(self.prepare(s, cand.shape[0]), cand)

    def prepare(self, s: Tensor, candidates: int) -> _Request | None:
        """The candidate-independent part of layer 1, once per request of ``candidates`` candidates
        (None for an empty sequence)."""
        d, di = self.cfg.d_model, self.di
        length = s.shape[0]
        if length == 0:
            return None
        first = self.layers[0]
        s = F.pad(s, (0, di))  # (L, d): zeros in the candidate slot
        heads = first.m.shape[0]
        sn = [s @ first.n[k] for k in range(heads)]
        return _Request(
            length=length,
            a=[(s @ first.m[k] + first.u[k]) @ s.T for k in range(heads)],  # (L, L): sequence-only scores
            g=[first.m[k][d - di:] @ s.T for k in range(heads)],  # (Di, L): candidate x sequence scores
            sn=sn,  # (L, d): sequence values
            nc=[first.n[k][d - di:] for k in range(heads)],  # (Di, d): candidate values
            sn16=[t.to(torch.bfloat16) for t in sn] if first.half is not None else [],  # bf16 GEMMs: sn in bf16
            s_rep=s.repeat(min(candidates, self.chunk), 1))  # (chunk L, d)

    def run(self, req: _Request | None, cand: Tensor) -> Tensor:
        """Candidates (C, Di) of a prepared request -> (C, out_dim); any slice of the request's candidates."""
        c, d, di = cand.shape[0], self.cfg.d_model, self.di
        if req is None:
            return cand.new_zeros(c, self.cfg.out_dim)
        first, length = self.layers[0], req.length
        out = []
        for lo in range(0, c, self.chunk):
            cc = cand[lo:lo + self.chunk]  # (c', Di)
            n = cc.shape[0]
            # pre = x + attention(x) = P (s N) + s + (e + e N + c): the residual and the candidate
            # terms are per-chunk rows, the sequence terms are the once-per-request (L, d) tensors
            cand_term = F.pad(cc, (d - di, 0)) + first.c  # (c', d)
            pre = req.s_rep[: n * length]  # (c' L, d): s repeated (never written: addmm makes a new tensor)
            for k in range(len(req.a)):
                p = torch.softmax(req.a[k] + (cc @ req.g[k]).unsqueeze(1), -1)  # (c', L, L)
                if req.sn16:
                    pre = pre + torch.mm(p.view(n * length, length).to(torch.bfloat16), req.sn16[k])
                else:
                    pre = torch.addmm(pre, p.view(n * length, length), req.sn[k])
                cand_term += cc @ req.nc[k]
            x = first.finish(pre.view(n, length, d).add_(cand_term.unsqueeze(1)))
            for layer in self.layers[1:]:
                x = layer.forward(x)
            out.append(_compress(self.cfg, x))
        return torch.cat(out)


def _compress(cfg: TransActConfig, o: Tensor) -> Tensor:
    """o (C, L, d), no padding -> (C, out_dim): first K (zero-padded when L < K) + max-pool."""
    parts = []
    if cfg.use_first_k:
        first = o[:, : cfg.first_k]
        if first.shape[1] < cfg.first_k:
            first = F.pad(first, (0, 0, 0, cfg.first_k - first.shape[1]))
        parts.append(first.flatten(1))
    if cfg.use_max_pool:
        parts.append(o.amax(1))
    return torch.cat(parts, 1)


class _FastEncoder:
    """Candidate-free TransAct over many users (the realtime vectors), with the folded layers of the scorer.

    Users are sorted by sequence length and cut into chunks of about ``chunk`` x ``seq_len`` rows (``chunk``
    full sequences, proportionally more short ones); each chunk is cut to ITS longest sequence, so a batch
    of mostly short sequences (a fresh worker, new users) costs what their actions cost, not what the
    batch's longest user costs. Shapes: a chunk is (n, L, d), n users of at most L actions. Within a chunk, padded keys get a -inf score (the reference's
    ``src_key_padding_mask``) and padded outputs are left out of first-K and max-pool, as in
    :meth:`transact.model.TransAct.compress`; users without history get zeros without any compute.
    """

    def __init__(self, enc: TransAct, chunk: int) -> None:
        if enc.cfg.early_fusion:
            raise ValueError("the fast encoder is candidate-free (early_fusion=False)")
        self.enc = enc
        self.cfg = enc.cfg
        self.layers = [_Layer.fold(layer) for layer in enc.encoder.layers]  # type: ignore[arg-type]
        self.chunk = chunk

    def __call__(self, batch: dict[str, Tensor]) -> Tensor:
        """batch: :func:`transact.features.build_batch` tensors, padding at the end -> (B, out_dim)."""
        cfg = self.cfg
        action = batch["action"]
        lengths = (action != 0).sum(1)  # (B,): real actions come first (the batch contract)
        out = torch.zeros(action.shape[0], cfg.out_dim)
        order = torch.argsort(lengths, descending=True, stable=True)
        n_real = int((lengths > 0).sum())
        if n_real == 0:
            return out
        seq_keys = [k for k, v in batch.items() if v.dim() > 1 and v.shape[:2] == action.shape]
        sorted_lens = lengths[order].tolist()
        budget = self.chunk * self.cfg.seq_len  # rows per chunk: `chunk` full sequences, more short ones
        lo = 0
        while lo < n_real:
            length = sorted_lens[lo]  # the chunk's longest
            hi = min(lo + max(1, budget // length), n_real)
            idx = order[lo:hi]
            lens = lengths[idx]  # descending
            lo = hi
            # the chunk's rows only, cut to its longest sequence: embedding lookups skip the batch's padding too
            x = self.enc.rows({k: batch[k][idx, :length] for k in seq_keys}, None)  # (n, L, d), a new tensor
            keep = torch.arange(length).unsqueeze(0) < lens.unsqueeze(1)  # (n, L)
            bias = None
            if int(lens[-1]) < length:
                bias = torch.zeros(keep.shape).masked_fill_(~keep, -math.inf).unsqueeze(1)  # (n, 1, L)
            for layer in self.layers:
                x = layer.forward(x, bias)
            out[idx] = self.compress(x, keep if bias is not None else None)
        return out

    def compress(self, o: Tensor, keep: Tensor | None) -> Tensor:
        """o (n, L, d) -> (n, out_dim) as ``TransAct.compress``; ``keep`` (n, L) None = no padding (no masks)."""
        if keep is None:
            return _compress(self.cfg, o)
        return self.enc.compress(o, keep)


def _score_thread_init() -> None:
    """Per scoring thread: flush denormals to zero. A peaked softmax yields denormal probabilities, and
    a GEMM over denormals ran 4-5x slower on this CPU (P @ V of one 32-candidate chunk: 4.0 vs 0.86 ms);
    they are below 1.2e-38, far under float32's relative precision of any sum they join."""
    torch.set_flush_denormal(True)


def _sequence_rows(model: RankingModel, tr: TransAct, batch: dict[str, Tensor], r: int, n: int) -> Tensor:
    """Row ``r``'s first ``n`` sequence rows ``[action_emb; item]`` -> (n, d - Di): the fused path's input."""
    return torch.cat([tr.action_emb(batch["action"][r, :n]),
                      model.items(batch["item_vec"][r, :n], batch["item_has_vec"][r, :n], batch["item_hash"][r, :n])],
                     -1)


def serving_sequence(model: RankingModel, *, bf16: bool) -> Callable[[dict[str, Tensor], Tensor], Tensor]:
    """The scorer's sequence features for a batch of (user, candidate) rows, one row at a time (accuracy
    checks: :class:`transact.evaluate.ServingPath`): ``(batch, cand (B, Di)) -> (B, seq_dim)``, with the
    fused early-fusion path (bf16 GEMMs when ``bf16``) that :class:`Scorer` runs per request."""
    tr = model.transact
    if tr is None or not tr.cfg.early_fusion or (bf16 and tr.cfg.nhead != 1):
        raise ValueError("the fused path needs an early-fusion TransAct (1 head for bf16)")
    fused = _FusedTransAct(tr, DEFAULT_CHUNK, bf16)

    def run(batch: dict[str, Tensor], cand: Tensor) -> Tensor:
        out = []
        for r in range(cand.shape[0]):
            n = int((batch["action"][r] != 0).sum())  # real actions come first (the batch contract)
            out.append(fused.run(fused.prepare(_sequence_rows(model, tr, batch, r, n), 1), cand[r:r + 1]))
        return torch.cat(out)

    return run


def _real_length(batch: dict[str, Tensor]) -> int:
    return int((batch["action"] != 0).sum(1).max()) if batch["action"].numel() else 0


class Scorer:
    """One user x many candidates with a :class:`~transact.model.RankingModel` (eval mode)."""

    def __init__(self, model: RankingModel, item_lookup: ItemLookup | None, *, threads: int = 1,
                 chunk: int = DEFAULT_CHUNK, vocab: dict[str, Any] | None = None, int8_cross: bool = False,
                 bf16: bool = False) -> None:
        """threads: cores one request may use (from the worker's settings). With ``threads > 1`` the
        candidates of a request are split into ``threads`` slices scored on as many pool threads, each
        running torch single-threaded (torch's intra-op pool is process-wide and set to 1 here): the
        slices share nothing, so there is no per-op OpenMP barrier, which made 2 intra-op threads slower
        than 1 on busy cores (module docstring). int8_cross: the DCN cross layers as int8 GEMMs (module
        docstring, 7); float32 (exactly ``RankingModel.forward``) when False or where torch has no int8 GEMM.
        bf16: the transformer's GEMMs with bfloat16 operands (module docstring, 8; pass :func:`bf16_native`
        for "where this CPU multiplies bf16 natively"); float32 when False."""
        if threads < 1 or chunk < 1:
            raise ValueError("threads and chunk must be >= 1")
        torch.set_num_threads(1 if threads > 1 else threads)
        self.workers = threads
        self.fused_chunk = chunk
        # scoring always runs on these threads (flush-to-zero is set per thread, never on the caller's)
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="scorer", initializer=_score_thread_init)
        weakref.finalize(self, self.pool.shutdown, wait=False)  # a replaced scorer (model roll) frees its threads
        self.model = model.eval()
        self.cfg = model.cfg
        self.items = item_lookup
        self.vocab = vocab or {}
        self.heads = self.cfg.heads
        t = self.cfg.encoder_config
        self.seq_len, self.item_dim, self.hash_buckets = t.seq_len, t.item_dim, t.hash_buckets
        tr = model.transact
        if bf16 and (tr is None or not tr.cfg.early_fusion or tr.cfg.nhead != 1):
            log.warning("bf16 GEMMs are implemented for the 1-head early-fusion transformer: this model scores in "
                        "float32")
            bf16 = False
        self.bf16 = bf16
        self.fused = _FusedTransAct(tr, chunk, self.bf16) if tr is not None and tr.cfg.early_fusion else None
        self.cross8: list[Int8Linear] | None = None
        if int8_cross and int8_available():
            self.cross8 = int8_cross_layers(model)
        elif int8_cross:
            log.warning("this torch build has no CPU int8 GEMM (torch._int_mm): the DCN cross layers stay float32")

    def head_logits(self, x0: Tensor) -> Tensor:
        """``RankingModel.head_logits``: x0 (B, in_dim) -> (B, H), with the int8 cross layers when enabled."""
        return self.model.head_logits(x0, self.cross8)

    @classmethod
    def from_checkpoint(cls, path: str | Path, item_store: ItemLookup | None, threads: int = 1,
                        chunk: int = DEFAULT_CHUNK, int8_cross: bool = False, bf16: bool = False) -> Scorer:
        model, _, vocab = load_checkpoint(path)
        if not isinstance(model, RankingModel):
            raise ValueError(f"{path}: a Scorer needs a RankingModel checkpoint, got {type(model).__name__}")
        return cls(model, item_store, threads=threads, chunk=chunk, vocab=vocab, int8_cross=int8_cross, bf16=bf16)

    @property
    def model_version(self) -> str:
        return str(self.vocab.get("model_version", "unversioned"))

    def batches(self, seq: Sequence[Act], candidates: Sequence[str],
                request_ts: int) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """The user's sequence batch (1 row) and the candidates' batch (C rows, empty sequences)."""
        kw: dict[str, Any] = {"item_dim": self.item_dim, "hash_buckets": self.hash_buckets}
        user = build_batch([seq], [request_ts], self.items, self.seq_len, **kw)
        cands = build_batch([[]], [request_ts], self.items, 0, list(candidates), **kw)
        return user, cands

    def score_logits(self, seq: Sequence[Act], candidates: Sequence[str], request_ts: int,
                     daily: np.ndarray | None = None) -> Tensor:
        """Logits (C, H). ``daily``: the user's PinnerFormer vector (Dp,) or None."""
        if not candidates:
            return torch.zeros(0, len(self.heads))
        user, cands = self.batches(seq, candidates, request_ts)
        with torch.inference_mode():
            m = self.model
            cand = m.items(cands["cand_vec"], cands["cand_has_vec"], cands["cand_hash"])  # (C, Di)
            length = _real_length(user) if self.fused is not None else max(_real_length(user), 1)
            user = {k: v[:, :length] if v.dim() > 1 else v for k, v in user.items()}
            req: _Request | None = None
            one: Tensor | None = None
            if self.fused is not None:
                tr = m.transact
                assert tr is not None
                rows = _sequence_rows(m, tr, user, 0, length)
                req = self.fused.prepare(rows, cand.shape[0])  # once per request, shared by every part
            else:
                one = m.sequence(user, cand[:1])  # candidate-free: once per request
            vec: Tensor | None = None
            if self.cfg.daily_dim and daily is not None:
                vec = torch.as_tensor(np.asarray(daily, np.float32)).view(1, -1)
                if vec.shape[1] != self.cfg.daily_dim:
                    raise ValueError(f"daily vector has {vec.shape[1]} values, the model expects {self.cfg.daily_dim}")

            def logits(part: Tensor) -> Tensor:
                """(c', Di) candidates -> (c', H): every step below is per candidate row."""
                with torch.inference_mode():
                    c = part.shape[0]
                    seq_part = self.fused.run(req, part) if self.fused is not None else (
                        None if one is None else one.expand(c, -1))
                    extra: dict[str, Tensor] = {}
                    if vec is not None:
                        extra = {"daily": vec.expand(c, -1), "daily_mask": torch.ones(c, dtype=torch.bool)}
                    return self.head_logits(m.join(seq_part, part, extra))

            # candidates are independent: one contiguous slice per pool thread, whole chunks each. Smaller
            # parts pulled by whichever thread is free were measured slower, not faster: 1 x 500 p50 141 /
            # 153 ms with parts of 2 / 1 chunks vs 124 ms with 2 slices (per-part head GEMMs on fewer rows)
            n = self.workers if cand.shape[0] >= 2 * self.fused_chunk else 1
            per = -(-cand.shape[0] // (n * self.fused_chunk)) * self.fused_chunk
            parts = [cand[lo:lo + per] for lo in range(0, cand.shape[0], per)]
            return torch.cat(list(self.pool.map(logits, parts)))

    def score(self, seq: Sequence[Act], candidates: Sequence[str], request_ts: int,
              daily: np.ndarray | None = None) -> np.ndarray:
        """Probabilities (C, H) float32, columns in ``self.heads`` order."""
        return torch.sigmoid(self.score_logits(seq, candidates, request_ts, daily)).numpy()

    def reference_logits(self, seq: Sequence[Act], candidates: Sequence[str], request_ts: int,
                         daily: np.ndarray | None = None) -> Tensor:
        """The same logits via ``RankingModel.forward`` on C repeated rows (for parity checks)."""
        kw: dict[str, Any] = {"item_dim": self.item_dim, "hash_buckets": self.hash_buckets}
        if self.cfg.daily_dim and daily is not None:
            c = len(candidates)
            kw |= {"daily": np.repeat(np.asarray(daily, np.float32).reshape(1, -1), c, 0),
                   "daily_mask": np.ones(c, bool)}
        batch = build_batch([seq], [request_ts], self.items, self.seq_len, list(candidates), **kw)
        with torch.inference_mode():
            return self.model(batch)


class Encoder:
    """Candidate-free TransAct over many users at once: the realtime user vectors."""

    def __init__(self, model: TransAct, item_lookup: ItemLookup | None, *, threads: int = 1,
                 vocab: dict[str, Any] | None = None, fast: bool = True, chunk: int = DEFAULT_CHUNK) -> None:
        """fast: the folded, length-sorted path (:class:`_FastEncoder`); False = the model's own forward on the
        batch cut to its longest sequence (the reference)."""
        if model.cfg.early_fusion:
            raise ValueError("the realtime encoder needs a candidate-free TransAct (early_fusion=False); "
                             "train one with realtime_input=True or early_fusion=False")
        if threads < 1:
            raise ValueError("threads must be >= 1")
        torch.set_num_threads(threads)
        self.model = model.eval()
        self.cfg = model.cfg
        self.items = item_lookup
        self.vocab = vocab or {}
        self.fast = _FastEncoder(self.model, chunk) if fast else None

    @classmethod
    def from_checkpoint(cls, path: str | Path, item_store: ItemLookup | None, threads: int = 1) -> Encoder:
        """A TransAct checkpoint, or a RankingModel whose sequence encoder is candidate-free."""
        model, _, vocab = load_checkpoint(path)
        enc = model.transact if isinstance(model, RankingModel) else model
        if enc is None:
            raise ValueError(f"{path}: this RankingModel has no TransAct sequence encoder")
        return cls(enc, item_store, threads=threads, vocab=vocab)

    @property
    def out_dim(self) -> int:
        return self.cfg.out_dim

    @property
    def model_version(self) -> str:
        return str(self.vocab.get("model_version", "unversioned"))

    def encode(self, seqs: Sequence[Sequence[Act]], request_ts: Sequence[int] | int) -> np.ndarray:
        """U stored sequences (newest first) -> (U, out_dim) float32 realtime vectors (zeros if empty)."""
        if not seqs:
            return np.zeros((0, self.out_dim), np.float32)
        req = [int(request_ts)] if np.ndim(request_ts) == 0 else list(request_ts)  # type: ignore[arg-type]
        return self._run(build_batch(seqs, req, self.items, self.cfg.seq_len, item_dim=self.cfg.item_dim,
                                     hash_buckets=self.cfg.hash_buckets))

    def encode_blobs(self, blobs: Sequence[bytes], request_ts: int) -> np.ndarray:
        """U stored sequence blobs (:func:`streams.sequence.encode`) -> (U, out_dim) float32 (the worker's path):
        the blobs' records go into the batch as numpy columns (:func:`transact.features.build_batch_from_blobs`,
        the same tensors as decoding them first)."""
        if not blobs:
            return np.zeros((0, self.out_dim), np.float32)
        return self._run(build_batch_from_blobs(blobs, request_ts, self.items, self.cfg.seq_len,
                                                item_dim=self.cfg.item_dim, hash_buckets=self.cfg.hash_buckets))

    def _run(self, batch: dict[str, Tensor]) -> np.ndarray:
        with torch.inference_mode():
            if self.fast is not None:
                return self.fast(batch).numpy()
            length = max(_real_length(batch), 1)
            batch = {k: v[:, :length] if v.dim() > 1 else v for k, v in batch.items()}
            return self.model(batch).numpy()
