"""`actionstream train pinnerformer`: train the daily user-embedding model on the event archive.

Data: events (archive dir or JSONL) + item vectors (JSONL); users are split by a stable hash (held-out
users are never trained on), and with the global cut (default) training only reads events up to ``t`` (so the item
popularity of the evaluation window does not leak into training). Objective, window, negatives and model
size come from :class:`~embeddings.settings.PinnerFormerSettings` (``ACTIONSTREAM_PF_*`` or options).

Writes ``<out>/model.pt`` (plain tensors, ``torch.load(weights_only=True)``), ``metrics.json`` and
``training.png`` (loss, temperature and, with ``--eval-every``, Recall@10 on the held-out users).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from embeddings.data import Corpus, PositiveRule, build_corpus, make_batch
from embeddings.evaluate import DAY_MS, default_cut, recall_report, split_users
from embeddings.loss import Temperature, mixed_logits, sample_pairs, sampled_softmax_loss
from embeddings.pinnerformer import PinnerFormer, PinnerFormerConfig, save_checkpoint
from embeddings.settings import PinnerFormerSettings
from streams.archive import read_events
from streams.items import MemoryItemStore

__all__ = ["load_corpus", "model_config", "train_model"]

log = logging.getLogger(__name__)
HELP = "train the PinnerFormer user-embedding model (dense all-action loss by default)"


def load_corpus(s: PinnerFormerSettings, events: Path, items: Path | None) -> Corpus:
    store = MemoryItemStore.from_file(items) if items else None
    return build_corpus(read_events(events), store, actions=s.actions, surfaces=s.surfaces,
                        rule=PositiveRule(min_dwell_ms=s.pf_min_dwell_ms), id_buckets=s.pf_id_buckets)


def model_config(s: PinnerFormerSettings, c: Corpus) -> PinnerFormerConfig:
    return PinnerFormerConfig(item_dim=c.item_vec.shape[1], n_actions=len(c.actions) + 1,
                              n_surfaces=len(c.surfaces) + 1, id_buckets=s.pf_id_buckets, max_len=s.pf_max_len,
                              width=s.pf_width, n_layers=s.pf_layers, n_heads=s.pf_heads, emb_dim=s.pf_emb_dim,
                              dropout=s.pf_dropout, time_since_latest=s.pf_time_since_latest)


def train_model(s: PinnerFormerSettings, c: Corpus, *, cut_ms: int | None = None,
                progress: bool = True) -> tuple[PinnerFormer, dict[str, Any]]:
    """Train on the non-held-out users' events up to the cut; return the model and a history/metrics dict."""
    torch.manual_seed(s.pf_seed)
    rng = np.random.default_rng(s.pf_seed)
    horizon = int(s.pf_eval_horizon_days * DAY_MS)
    cut: int | None = (default_cut(c, horizon) if cut_ms is None else cut_ms) if s.pf_eval_cut == "global" else None
    train_u, eval_u = split_users(c.users, s.pf_eval_fraction, s.pf_seed)
    counts = c.positive_counts(train_u, until_ms=cut)
    if counts.sum() == 0:
        raise ValueError("no positive actions among training users before the cut: nothing to learn")
    freq = torch.from_numpy((counts + 1) / (counts + 1).sum())                       # (I,) smoothed share
    model = PinnerFormer(model_config(s, c))
    temp = Temperature()
    opt = torch.optim.AdamW(list(model.parameters()) + list(temp.parameters()), lr=s.pf_lr,
                            weight_decay=s.pf_weight_decay)
    n_items = c.n_items
    hist: dict[str, list[float]] = {"step": [], "loss": [], "tau": [], "eval_step": [], "eval_recall": []}
    t0 = time.perf_counter()
    bar = tqdm(range(1, s.pf_steps + 1), desc=f"train {s.pf_objective}", disable=not progress)
    for step in bar:
        lr = s.pf_lr * min(1.0, step / 50) * 0.5 * (1 + math.cos(math.pi * step / s.pf_steps))   # warmup + cosine
        for g in opt.param_groups:
            g["lr"] = lr
        model.train()
        users = rng.choice(train_u, size=min(s.pf_batch_size, len(train_u)), replace=False)
        rows, pairs = sample_pairs(c, users, s.pf_max_len, s.pf_objective, rng,
                                   window_ms=int(s.pf_label_window_days * DAY_MS), positions=s.pf_positions,
                                   until_ms=cut)
        if len(pairs) < 2:
            continue
        seq = min(s.pf_max_len, max(e - int(c.offsets[u]) for u, e in rows))         # shortest padding
        batch, _ = make_batch(c, rows, seq)
        slot = torch.from_numpy(pairs.slot - (s.pf_max_len - seq))
        user = model.project(model.hidden(batch)[torch.from_numpy(pairs.row), slot])  # (N, D)
        pos_item = torch.from_numpy(pairs.item)
        pos = model.encode_items(torch.from_numpy(c.item_vec[pairs.item]), torch.from_numpy(c.item_bucket[pairs.item]))
        rand_item = torch.from_numpy(rng.integers(1, n_items, size=s.pf_random_negatives))
        rand = model.encode_items(torch.from_numpy(c.item_vec[rand_item.numpy()]),
                                  torch.from_numpy(c.item_bucket[rand_item.numpy()]))
        n = len(pairs)
        lq_pos = torch.log(n * freq[pos_item]).float() if s.pf_logq else None
        lq_rand = torch.full((len(rand_item),), math.log(max(len(rand_item), 1) / (n_items - 1))) if s.pf_logq else None
        tau = temp()
        logits = mixed_logits(user, pos, pos_item, torch.from_numpy(pairs.row), rand, rand_item, lq_pos, lq_rand, tau)
        loss = sampled_softmax_loss(logits, torch.from_numpy(pairs.row))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        hist["step"].append(step)
        hist["loss"].append(loss.item())
        hist["tau"].append(tau.item())
        bar.set_postfix(loss=f"{hist['loss'][-1]:.3f}", tau=f"{tau.item():.3f}", pairs=n)
        if s.pf_eval_every and step % s.pf_eval_every == 0 and step < s.pf_steps:
            r = recall_report(model, c, eval_u, cut, horizon)["recall_at_k"]
            hist["eval_step"].append(step)
            hist["eval_recall"].append(r)
            log.info("step %d: loss %.4f, held-out Recall@10 %.4f", step, hist["loss"][-1], r)
    report = recall_report(model, c, eval_u, cut, horizon, popularity=counts, progress=progress)
    hist["eval_step"].append(s.pf_steps)
    hist["eval_recall"].append(report["recall_at_k"])
    metrics = {"objective": s.pf_objective, "label_window_days": s.pf_label_window_days, **report,
               "train_users": len(train_u), "eval_users_total": len(eval_u), "train_seconds": time.perf_counter() - t0,
               "final_loss": float(np.mean(hist["loss"][-20:])) if hist["loss"] else float("nan"),
               "temperature": temp().item(), "history": hist}
    return model, metrics


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (PNG files, no display)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot().close(fig)


def plot_training(path: Path, hist: dict[str, list[float]], title: str) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(1, 3, figsize=(13, 3.5))
    ax[0].plot(hist["step"], hist["loss"], lw=0.6)
    ax[0].set(title="sampled-softmax loss", xlabel="step")
    ax[1].plot(hist["step"], hist["tau"])
    ax[1].set(title="temperature τ", xlabel="step")
    ax[2].plot(hist["eval_step"], hist["eval_recall"], marker="o")
    ax[2].set(title="held-out Recall@10", xlabel="step")
    fig.suptitle(title)
    save_figure(fig, path)


def plot_bars(path: Path, values: dict[str, float], title: str) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(values), 3.6))
    bars = ax.bar(list(values), list(values.values()), color="#4C72B0")
    ax.bar_label(bars, fmt="%.3f")
    ax.set(title=title)
    plt.setp(ax.get_xticklabels(), rotation=20, ha="right")
    save_figure(fig, path)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--events", type=Path, required=True, help="events JSONL file or archive directory")
    p.add_argument("--items", type=Path, default=None, help="item vectors JSONL ({item_id, vector})")
    p.add_argument("--out", type=Path, default=Path("runs/pinnerformer"), help="output directory")
    p.add_argument("--objective", choices=["dense_all_action", "all_action", "next_action", "sasrec"], default=None,
                   help="training objective (default dense_all_action)")
    p.add_argument("--window-days", type=float, default=None, help="K: label window of (dense) all-action (28)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (600)")
    p.add_argument("--batch-size", type=int, default=None, help="sequences per step (64)")
    p.add_argument("--eval-every", type=int, default=None, help="held-out Recall@10 every N steps for the plot")
    p.add_argument("--seed", type=int, default=None)


def settings_from_args(args: argparse.Namespace) -> PinnerFormerSettings:
    return PinnerFormerSettings.load(pf_objective=args.objective, pf_label_window_days=args.window_days,
                                     pf_steps=args.steps, pf_batch_size=args.batch_size,
                                     pf_eval_every=args.eval_every, pf_seed=args.seed)


def run(args: argparse.Namespace) -> int:
    s = settings_from_args(args)
    torch.set_num_threads(s.pf_threads)
    c = load_corpus(s, args.events, args.items)
    log.info("corpus: %d users, %d input actions, %d items (vector dim %d)", len(c.users), len(c.ts), c.n_items - 1,
             c.item_vec.shape[1])
    model, metrics = train_model(s, c)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"settings": s.model_dump(mode="json"), "cut_ms": metrics["cut_ms"], "input_exclude": ["impression"],
            "recall_at_10": metrics["recall_at_k"]}
    save_checkpoint(args.out / "model.pt", model, meta)
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    plot_training(args.out / "training.png", metrics["history"], f"PinnerFormer ({s.pf_objective})")
    print(f"held-out Recall@10 {metrics['recall_at_k']:.4f} (popularity {metrics['popularity_recall_at_k']:.4f}), "  # noqa: T201
          f"P90 coverage@10 {metrics['coverage_p90_at_k']:.4f}, {metrics['users']} users; "
          f"wrote {args.out}/model.pt, metrics.json, training.png")
    return 0
