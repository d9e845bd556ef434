"""Offline evaluation of PinnerFormer (`actionstream eval pinnerformer`): Recall@10 and P90 coverage@10.

Protocol (paper section 4.1, ``shared/reference/pinnerformer.md``): users disjoint from training (a stable
hash of the user id puts ``pf_eval_fraction`` of them aside); each is embedded at the cut time ``t`` from
the actions up to ``t``; Recall@10 = share of the user's distinct positive items in ``(t, t + 14 d]`` found
in the top 10 of an index of ALL items (dot product), averaged over users. P90 coverage@10 = the share of
the index that makes up 90 % of all top-10 slots (small = collapse onto a few items).

Where we differ: the index is every item of the data set (the paper samples 1M pins); the cut ``t`` is one
global time (``last event − horizon`` unless given), or with ``pf_eval_cut=per_user`` each user's median
action (MovieLens: users rate in bursts months apart, so a global cut leaves ~2 % of them evaluable). A popularity baseline (the 10 items with most
training positives) is reported next to the model for context.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from embeddings.data import Corpus, make_batch
from embeddings.pinnerformer import PinnerFormer

__all__ = ["coverage_at_k", "embed_users", "encode_all_items", "eval_targets", "recall_report", "split_users"]

log = logging.getLogger(__name__)
DAY_MS = 86_400_000
HELP = "evaluate a PinnerFormer checkpoint: Recall@10 and P90 coverage@10 on held-out users"


def split_users(users: list[str], eval_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, eval) user indices by a stable hash of (seed, user id): the same split in every process."""
    h = np.array([int.from_bytes(hashlib.blake2b(f"{seed}:{u}".encode(), digest_size=8).digest(), "little")
                  for u in users], dtype=np.uint64)
    is_eval = (h % np.uint64(1_000_000)).astype(np.float64) < eval_fraction * 1_000_000
    return np.flatnonzero(~is_eval), np.flatnonzero(is_eval)


def default_cut(c: Corpus, horizon_ms: int) -> int:
    """The evaluation cut: ``horizon`` before the last event."""
    return int(c.ts.max()) - horizon_ms


def user_cut(c: Corpus, u: int, cut_ms: int | None) -> int:
    """The cut of user ``u``: the global ``cut_ms``, or (None) the time of the user's median input action."""
    if cut_ms is not None:
        return cut_ms
    a, b = c.span(u)
    return int(c.ts[a + max(1, (b - a) // 2) - 1]) if b > a else 0


def eval_targets(c: Corpus, users: np.ndarray, cut_ms: int | None,
                 horizon_ms: int) -> tuple[list[int], list[np.ndarray], list[int]]:
    """Users with history up to their cut and ≥ 1 positive in ``(cut, cut + horizon]``: (users, positives, cuts).

    ``cut_ms=None`` cuts each user at their median action (data sets such as MovieLens, where users are
    active at very different times and a global cut leaves few users with both history and a future).
    """
    keep, targets, cuts = [], [], []
    for u in users:
        a, b = c.span(int(u))
        cut = user_cut(c, int(u), cut_ms)
        e = c.end_at(int(u), cut)
        if e == a:
            continue
        f = e + int(np.searchsorted(c.ts[e:b], cut + horizon_ms, side="right"))
        pos = np.unique(c.item[e:f][c.positive[e:f]])
        if pos.size:
            keep.append(int(u))
            targets.append(pos)
            cuts.append(cut)
    return keep, targets, cuts


@torch.inference_mode()
def embed_users(model: PinnerFormer, c: Corpus, rows: list[tuple[int, int]], batch_size: int = 128) -> np.ndarray:
    """(n, D) float32 user embeddings (e_1) for ``rows = [(user, end_exclusive)]``, in order.

    Every batch is padded to the model's full ``max_len``, so a user's vector does not depend on which
    other users share its batch (the daily job relies on this for idempotence).
    """
    model.eval()
    out = np.zeros((len(rows), model.cfg.emb_dim), dtype=np.float32)
    for i in range(0, len(rows), batch_size):
        batch, _ = make_batch(c, rows[i:i + batch_size], model.cfg.max_len)
        out[i:i + batch_size] = model.user_embedding(batch).numpy()
    return out


@torch.inference_mode()
def encode_all_items(model: PinnerFormer, c: Corpus, batch_size: int = 8192) -> np.ndarray:
    """(I, D) float32 item-tower embeddings of every corpus item (row 0, padding, is zeros)."""
    model.eval()
    out = np.zeros((c.n_items, model.cfg.emb_dim), dtype=np.float32)
    for i in range(1, c.n_items, batch_size):
        j = min(i + batch_size, c.n_items)
        out[i:j] = model.encode_items(torch.from_numpy(c.item_vec[i:j]), torch.from_numpy(c.item_bucket[i:j])).numpy()
    return out


def coverage_at_k(topk: np.ndarray, index_size: int, share: float = 0.9) -> float:
    """P90 coverage: fewest items covering ``share`` of all top-k slots, over the index size."""
    counts = np.sort(np.bincount(topk.ravel()))[::-1]
    need = int(np.searchsorted(np.cumsum(counts), share * topk.size) + 1)
    return need / index_size


def _recall(topk: np.ndarray, targets: list[np.ndarray]) -> np.ndarray:
    return np.array([np.isin(t, top).mean() for top, t in zip(topk, targets, strict=True)], dtype=np.float64)


def recall_report(model: PinnerFormer, c: Corpus, eval_users: np.ndarray, cut_ms: int | None,
                  horizon_ms: int = 14 * DAY_MS,
                  k: int = 10, popularity: np.ndarray | None = None, progress: bool = False,
                  as_of: Callable[[int], int] | None = None) -> dict[str, Any]:
    """Recall@k and P90 coverage@k of ``model`` (and of a popularity ranking, if counts are given).

    ``as_of`` maps a user's cut to the time their embedding is taken (default: the cut itself), for the
    daily-vs-realtime analysis: same users and positives, an older embedding. A user with no action by
    then has no embedding (nothing a daily store could serve) and counts as recall 0.
    """
    users, targets, cuts = eval_targets(c, eval_users, cut_ms, horizon_ms)
    if not users:
        raise ValueError("no evaluation user has history before the cut and a positive after it")
    rows = [(u, c.end_at(u, cut if as_of is None else as_of(cut))) for u, cut in zip(users, cuts, strict=True)]
    empty = np.array([end == c.offsets[u] for u, end in rows], dtype=bool)
    emb = embed_users(model, c, rows)
    emb[empty] = 0.0
    items = encode_all_items(model, c)
    tops = []
    for i in tqdm(range(0, len(users), 512), desc="recall", disable=not progress, leave=False):
        scores = emb[i:i + 512] @ items[1:].T                                      # (n, I-1)
        tops.append(np.argpartition(-scores, k, axis=1)[:, :k] + 1)
    topk = np.concatenate(tops)
    recall = _recall(topk, targets)
    recall[empty] = 0.0
    rep: dict[str, Any] = {"recall_at_k": float(recall.mean()), "k": k, "users": len(users),
                           "users_without_embedding": int(empty.sum()),
                           "coverage_p90_at_k": coverage_at_k(topk, c.n_items - 1), "index_size": c.n_items - 1,
                           "cut_ms": cut_ms, "horizon_days": horizon_ms / DAY_MS}
    if popularity is not None:
        top_pop = np.argsort(-popularity[1:], kind="stable")[:k] + 1
        rep["popularity_recall_at_k"] = float(_recall(np.tile(top_pop, (len(users), 1)), targets).mean())
    return rep


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", type=Path, required=True, help="model.pt written by `train pinnerformer`")
    p.add_argument("--events", type=Path, required=True, help="events JSONL file or archive directory")
    p.add_argument("--items", type=Path, default=None, help="item vectors JSONL (as used in training)")
    p.add_argument("--cut", type=int, default=None, help="cut time t in ms (default: the training run's cut)")
    p.add_argument("--out", type=Path, default=None, help="write eval.json + eval.png here")


def run(args: argparse.Namespace) -> int:
    from embeddings.pinnerformer import load_checkpoint
    from embeddings.settings import PinnerFormerSettings
    from embeddings.train import load_corpus, plot_bars

    model, meta = load_checkpoint(args.checkpoint)
    s = PinnerFormerSettings.load(**meta["settings"])
    torch.set_num_threads(s.pf_threads)
    corpus = load_corpus(s, args.events, args.items)
    train_u, eval_u = split_users(corpus.users, s.pf_eval_fraction, s.pf_seed)
    cut = args.cut if args.cut is not None else meta["cut_ms"]
    rep = recall_report(model, corpus, eval_u, cut, int(s.pf_eval_horizon_days * DAY_MS),
                        popularity=corpus.positive_counts(train_u, until_ms=cut), progress=True)
    print(json.dumps(rep, indent=2))  # noqa: T201
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "eval.json").write_text(json.dumps(rep, indent=2))
        plot_bars(args.out / "eval.png", {"PinnerFormer": rep["recall_at_k"],
                                           "popularity": rep["popularity_recall_at_k"]}, "Recall@10 (held-out users)")
        log.info("wrote %s/eval.json and eval.png", args.out)
    return 0
