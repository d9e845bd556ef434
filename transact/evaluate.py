"""`actionstream eval transact`: HIT@3 per head inside each request (TransAct paper §5.1) and AUC per head.

HIT@k, exactly as computed here (the paper's wording: "HIT@3 ... within each ranking request, with the
order shuffled to remove position bias, count the positives among the top 3"; its exact formula is not
published, so this is our reading):

    for each eval request r with n_r > k candidates (smaller requests rank nothing: all are "top k"),
    for head h:
        shuffle r's candidates (seeded), then stable-sort them by the model's head-h probability,
        DESCENDING for positive heads (click, save: the top k are the most likely to be engaged) and
        ASCENDING for negative heads (hide: the top k are the least likely to be hidden, i.e. what a
        ranker using that head would show);
        hits_h(r) = number of candidates in the top k with label y_h = 1
    HIT@k_h = (1 / |R|) * sum_r hits_h(r)        (mean positives in the top k per request)

Higher is better for positive heads; lower is better for negative heads. Shuffling first makes ties
(e.g. a model that ignores the candidate) random instead of favouring the logged order. We also report
``random`` = the expected HIT@k of a random order, ``sum_r k/n_r * positives_h(r) / |R|``, and AUC per
head (Mann-Whitney, ties averaged) over all eval examples.

Differences from the paper: lifts in the paper are relative to a production baseline over billions of
requests; we report absolute values and compare models on the same split (see :mod:`transact.ablate`).
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from transact.data import PointInTimeData

__all__ = ["ServingPath", "auc", "evaluate", "hit_at_k", "hits_per_request", "markdown_table", "paired_delta", "precision_report",
           "score", "standard_error"]

log = logging.getLogger(__name__)

HELP = "evaluate a TransAct checkpoint: HIT@3 and AUC per head on the time-split eval requests"


def hit_at_k(scores: np.ndarray, labels: np.ndarray, groups: np.ndarray, *, k: int = 3, descending: bool = True,
             seed: int = 0) -> tuple[float, float, int]:
    """HIT@k of one head (module docstring).

    Args:
        scores (N,) float, labels (N,) 0/1, groups (N,) int request id.
    Returns:
        (hit@k, expected hit@k of a random order, number of requests counted).
    """
    hits, rand = hits_per_request(scores, labels, groups, k=k, descending=descending, seed=seed)
    if len(hits) == 0:
        return float("nan"), float("nan"), 0
    return float(hits.mean()), float(rand.mean()), len(hits)


def hits_per_request(scores: np.ndarray, labels: np.ndarray, groups: np.ndarray, *, k: int = 3,
                     descending: bool = True, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per counted request (more than k candidates): positives in the top k, and a random order's expectation.

    Args:
        scores (N,) float, labels (N,) 0/1, groups (N,) int request id.
    Returns:
        (hits (R,), random (R,)) over the R counted requests, ordered by request id; their means are HIT@k
        and its random baseline, ``hits.std(ddof=1) / sqrt(R)`` its standard error.
    """
    n = len(scores)
    if n == 0:
        return np.zeros(0), np.zeros(0)
    rng = np.random.default_rng(seed)
    shuffle = rng.permutation(n)
    key = -scores if descending else scores
    # sort by group, then by key, ties broken by the random permutation
    order = np.lexsort((shuffle, key, groups))
    g = groups[order]
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    sizes = np.diff(np.r_[starts, n])
    rank = np.arange(n) - np.repeat(starts, sizes)
    counted = sizes > k
    y = labels[order].astype(np.float64)
    hits = np.add.reduceat(y * (rank < k), starts)
    positives = np.add.reduceat(y, starts)
    return hits[counted], (k / sizes[counted] * positives[counted])


def paired_delta(a: dict[str, Any], b: dict[str, Any], head: str, k: int = 3) -> tuple[float, float]:
    """HIT@k of model ``a`` minus model ``b`` on one head and its paired standard error over requests.

    ``a``/``b``: :func:`evaluate` results on the same eval examples. Pairing removes the between-request
    variance both share, so this SE is much smaller than either row's own."""
    x = np.asarray(a["heads"][head][f"hit@{k}_per_request"], np.float64)
    y = np.asarray(b["heads"][head][f"hit@{k}_per_request"], np.float64)
    if x.shape != y.shape:
        raise ValueError("paired_delta needs results on the same eval requests")
    return float((x - y).mean()), standard_error(x - y)


def standard_error(x: np.ndarray) -> float:
    """Standard error of the mean of ``x`` (NaN below two values)."""
    return float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else float("nan")


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC by the rank-sum statistic, tied scores get their average rank; NaN with one class only."""
    y = labels.astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    s = scores[order]
    ranks = np.empty(len(s), np.float64)
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    ends = np.r_[starts[1:], len(s)]
    avg = (starts + ends + 1) / 2.0  # 1-based average rank of each tie block
    ranks[order] = np.repeat(avg, ends - starts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


@torch.inference_mode()
def score(model: torch.nn.Module, data: PointInTimeData, idx: np.ndarray, *, seq_len: int,
          batch_size: int = 2048, device: torch.device | str = "cpu") -> np.ndarray:
    """Head probabilities (len(idx), H) for examples ``idx``; model in eval mode (no time-window mask)."""
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(idx), batch_size):
        b = data.batch(idx[start:start + batch_size], seq_len)
        b.pop("labels")
        b = {k: v.to(device, non_blocking=True) for k, v in b.items()}
        out.append(torch.sigmoid(model(b)).float().cpu().numpy())
    model.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, len(data.heads)), np.float32)


def evaluate(model: torch.nn.Module, data: PointInTimeData, idx: np.ndarray, *, seq_len: int,
             negative_heads: Sequence[str] = ("hide",), k: int = 3, batch_size: int = 2048,
             device: torch.device | str = "cpu", seed: int = 0) -> dict[str, Any]:
    """HIT@k, its random baseline and AUC per head on examples ``idx``; plus a weighted log-loss."""
    probs = score(model, data, idx, seq_len=seq_len, batch_size=batch_size, device=device)
    labels = data.labels[idx]
    groups = data.ex_request[idx].astype(np.int64)
    result: dict[str, Any] = {"examples": int(len(idx)), "requests": int(len(np.unique(groups))), "k": k, "heads": {}}
    for j, h in enumerate(data.heads):
        hits, rands = hits_per_request(probs[:, j], labels[:, j], groups, k=k, descending=h not in negative_heads,
                                       seed=seed)
        hit = float(hits.mean()) if len(hits) else float("nan")
        rand = float(rands.mean()) if len(rands) else float("nan")
        p = np.clip(probs[:, j].astype(np.float64), 1e-7, 1 - 1e-7)
        y = labels[:, j]
        result["heads"][h] = {
            f"hit@{k}": hit, f"hit@{k}_se": standard_error(hits), f"random_hit@{k}": rand,
            # per counted request, in request-id order: two models on the same eval examples compare pairwise
            f"hit@{k}_per_request": hits.tolist(),
            "requests_ranked": len(hits), "auc": auc(probs[:, j], y),
            "logloss": float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean()) if len(y) else float("nan"),
            "positive_rate": float(y.mean()) if len(y) else float("nan"),
            "better": "lower" if h in negative_heads else "higher"}
    return result


class ServingPath(torch.nn.Module):
    """A RankingModel scored with the serving path's reduced precision: ``int8_dcn`` = the int8 DCN cross
    layers of :func:`transact.inference.int8_cross_layers` (``Scorer(int8_cross=True)``), ``bf16`` = the
    fused transformer with bf16 GEMMs, one example at a time (``Scorer(bf16=True)``,
    :func:`transact.inference.serving_sequence`); float32 everywhere else. CPU only."""

    def __init__(self, model: torch.nn.Module, *, int8_dcn: bool = False, bf16: bool = False) -> None:
        from transact.inference import int8_available, int8_cross_layers, serving_sequence
        super().__init__()
        if int8_dcn and not int8_available():
            raise RuntimeError("this torch build has no CPU int8 GEMM (torch._int_mm)")
        self.model = model
        self.cross8 = int8_cross_layers(model) if int8_dcn else None  # type: ignore[arg-type]
        self.sequence = serving_sequence(model, bf16=True) if bf16 else None  # type: ignore[arg-type]

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model.head_logits(self.model.features(batch, self.sequence), self.cross8)  # type: ignore[operator]


def precision_report(model: torch.nn.Module, other: torch.nn.Module, data: PointInTimeData, idx: np.ndarray, *,
                     seq_len: int, k: int = 3) -> dict[str, float]:
    """How far ``other``'s probabilities are from ``model``'s on examples ``idx``: max and mean |Δp| over every
    head, and the share of requests (more than k candidates) whose top-k set changed on any head."""
    a = score(model, data, idx, seq_len=seq_len)
    b = score(other, data, idx, seq_len=seq_len)
    groups = data.ex_request[idx]
    changed, counted = 0, 0
    for g in np.unique(groups):
        rows = np.flatnonzero(groups == g)
        if len(rows) <= k:
            continue
        counted += 1
        changed += any(set(rows[np.argsort(-a[rows, j], kind="stable")[:k]])
                       != set(rows[np.argsort(-b[rows, j], kind="stable")[:k]]) for j in range(a.shape[1]))
    dp = np.abs(a - b)
    return {"max_abs_dp": float(dp.max()) if dp.size else 0.0, "mean_abs_dp": float(dp.mean()) if dp.size else 0.0,
            "top3_changed": changed / counted if counted else 0.0}


def markdown_table(rows: dict[str, dict[str, Any]], heads: Sequence[str], k: int = 3) -> str:
    """One row per model: HIT@k (± its standard error over requests, when known) and AUC per head (arrows say
    which direction is better)."""
    def hit(r: dict[str, Any], h: str) -> str:
        m = r["heads"][h]
        se = m.get(f"hit@{k}_se")
        return f"{m[f'hit@{k}']:.4f}" + (f" ± {se:.4f}" if se is not None and np.isfinite(se) else "")

    def arrow(r: dict[str, Any], h: str) -> str:
        return "↓" if r["heads"][h]["better"] == "lower" else "↑"

    first = next(iter(rows.values()))
    cols = [f"HIT@{k} {h} {arrow(first, h)}" for h in heads] + [f"AUC {h}" for h in heads]
    lines = ["| model | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for name, r in rows.items():
        vals = [hit(r, h) for h in heads] + [f"{r['heads'][h]['auc']:.4f}" for h in heads]
        lines.append(f"| {name} | " + " | ".join(vals) + " |")
    rnd = [f"{first['heads'][h][f'random_hit@{k}']:.4f}" for h in heads] + ["0.5"] * len(heads)
    lines.append("| (random order) | " + " | ".join(rnd) + " |")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, type=Path, help="model.pt written by `train transact`")
    p.add_argument("--events", required=True, type=Path, help="event JSONL file or archive directory")
    p.add_argument("--items", type=Path, default=None, help="item vectors JSONL (default: the one in the "
                   "checkpoint's vocab, if it still exists)")
    p.add_argument("--split", choices=("eval", "all"), default=None,
                   help="examples to score: the time-split eval part (default) or all")
    p.add_argument("--out", type=Path, default=None, help="write metrics JSON here (default: print only)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None)
    p.add_argument("--seed", type=int, default=None, help="seed of the within-request shuffle")
    p.add_argument("--int8-dcn", action="store_true",
                   help="also score with the serving path's int8 DCN cross layers (ACTIONSTREAM_SCORE_INT8_DCN) "
                        "and print both rows, their paired HIT@3 differences and how far the probabilities moved")
    p.add_argument("--bf16", action="store_true",
                   help="also score with the serving path's bf16 transformer GEMMs (ACTIONSTREAM_SCORE_BF16; "
                        "one example at a time, slower) and print the same comparison")


def run(args: argparse.Namespace) -> int:
    from transact.model import RankingConfig, RankingModel, load_checkpoint
    from transact.settings import EvalSettings
    from transact.train import load_data, pick_device

    model, cfg, vocab = load_checkpoint(args.checkpoint)
    if not isinstance(model, RankingModel) or not isinstance(cfg, RankingConfig):
        from streams.errors import ActionstreamError
        raise ActionstreamError(f"{args.checkpoint} holds a bare TransAct encoder, not a ranking model")
    items = args.items
    if items is None and vocab.get("items_file") and Path(vocab["items_file"]).is_file():
        items = Path(vocab["items_file"])
    s = EvalSettings.load(
        checkpoint=args.checkpoint, events=args.events, items=items, out=args.out, split=args.split,
        batch_size=args.batch_size, device=args.device, seed=args.seed,
        heads=tuple(vocab["heads"]), negative_heads=tuple(vocab.get("negative_heads", ("hide",))),
        actions=tuple(vocab["actions"]), request_ms=vocab["request_ms"], label_window_ms=vocab["label_window_ms"],
        eval_fraction=vocab["eval_fraction"], sequence_length=vocab["sequence_max_len"],
        window_days=vocab["window_ms"] / 86_400_000)
    device = pick_device(s.device)
    if s.threads:
        torch.set_num_threads(s.threads)
    seq_len = cfg.transact.seq_len
    data = load_data(s, seq_len=seq_len, hash_buckets=cfg.transact.hash_buckets, item_dim=cfg.transact.item_dim)
    train_idx, eval_idx = data.split()
    idx = eval_idx if s.split == "eval" else np.arange(len(data))
    model.to(device)
    result = evaluate(model, data, idx, seq_len=seq_len, negative_heads=s.negative_heads,
                      batch_size=s.batch_size, device=device, seed=s.seed)
    result["checkpoint"] = str(s.checkpoint)
    result["split"] = s.split
    rows = {vocab.get("model_name", "model"): result}
    variants = [(key, label, kw) for key, label, kw in (("int8_dcn", "int8 DCN (serving)", {"int8_dcn": True}),
                                                       ("bf16", "bf16 transformer (serving)", {"bf16": True}))
                if getattr(args, key, False)]
    if variants and device.type != "cpu":
        model.to("cpu")  # the serving path's int8 / bf16 GEMMs are CPU kernels
        device = torch.device("cpu")
    for key, label, kw in variants:
        other = ServingPath(model, **kw)
        rows[label] = evaluate(other, data, idx, seq_len=seq_len, negative_heads=s.negative_heads,
                               batch_size=s.batch_size, device=device, seed=s.seed)
        result[key] = rows[label] | precision_report(model, other, data, idx, seq_len=seq_len)
    print(markdown_table(rows, data.heads))  # noqa: T201
    print(f"\n{result['examples']} examples in {result['requests']} requests ({s.split} split)")  # noqa: T201
    for key, label, _ in variants:
        q = result[key]
        for h in data.heads:
            d, se = paired_delta(q, result, h)
            print(f"{label.split()[0]} - float32 HIT@3 {h}: {d:+.4f} ± {se:.4f}")  # noqa: T201
        print(f"{label}: probabilities moved: max |Δp| {q['max_abs_dp']:.2e}, mean {q['mean_abs_dp']:.2e}; "  # noqa: T201
              f"requests whose top 3 changed (any head): {q['top3_changed']:.1%}")
    if s.out:
        s.out.parent.mkdir(parents=True, exist_ok=True)
        s.out.write_text(json.dumps(result, indent=2))
        log.info("wrote %s", s.out)
    return 0
