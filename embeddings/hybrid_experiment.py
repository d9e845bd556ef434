"""`actionstream experiment hybrid`: daily PinnerFormer vs realtime TransAct vs both, on ONE time split.

Papers: TransAct (Xia et al., KDD 2023) Table 2, the hybrid ablation (removing PinnerFormer or TransAct
from Pinnability both hurt; ``shared/reference/transact.md``), and PinnerFormer (Pancha et al., KDD 2022)
Table 2, daily vs realtime inference (Recall@10 0.243 daily vs 0.264 realtime, −8.3 %;
``shared/reference/pinnerformer.md``).

What one run does, all on the same events and the same time split:

1. Point-in-time TransAct examples (:func:`transact.train.load_data`) and their split
   (:meth:`~transact.data.PointInTimeData.split`); the cut ``t`` = the first eval request time.
2. PinnerFormer (:func:`embeddings.train.train_model`) on the events up to ``t`` (its global cut), users
   of its own held-out split never trained on.
3. The DAILY embedding of each request, as the daily job serves it at request time: the snapshot of the
   UTC day before the request's day, i.e. the user's input actions with ``ts <`` 00:00 UTC of that day,
   embedded by :func:`embeddings.evaluate.embed_users` (the daily job's function; batches padded to the
   full M, so a vector does not depend on its batch). A user inactive on a day keeps the vector of the
   last day they were active, which is the same vector because the inputs did not change. Users with no
   action before that day have no daily vector (``daily_mask`` 0, like ``"daily": null`` from the API).
   ``tests/embeddings/test_hybrid_experiment.py`` checks these vectors against a real
   :func:`embeddings.daily_job.run_daily` snapshot.
4. The TransAct ranking model (:func:`transact.train.train_model`, same seed, examples, steps) in the
   variants of :data:`VARIANTS`: candidate only, daily only (``sequence_encoder="none"``, ``daily_dim``),
   realtime only (TransAct, no daily) and hybrid (both); HIT@3 and AUC per head
   (:func:`transact.evaluate.evaluate`).
5. PinnerFormer's daily-vs-realtime analysis: Recall@10 on its held-out users with the embedding taken
   at the cut (realtime), from the snapshot served at the cut (end of the previous UTC day) and one full
   day before the cut; the relative gap to realtime.

Outputs under ``--out``: ``hybrid.md`` (both tables, also printed), ``hybrid.json`` (every metric,
settings, data statistics), ``hybrid.png`` (HIT@3 per head and variant; Recall@10 by embedding delay),
``pinnerformer.pt`` (the daily model, loadable by ``actionstream daily``), ``hybrid.log``.

Where we differ from the papers: one seed and a small synthetic or MovieLens split, not production
traffic, so gaps of a few per cent can be noise (the JSON keeps request counts); the ranker has no other
user features (the paper's Table 2 row "TransAct and PinnerFormer only" is the closest); PinnerFormer is
trained on the same days the ranker trains on, so its training-period vectors have seen those users'
near future (as a production daily model trained on history would), while eval-period vectors have not;
the Recall@10 window after the cut is what the data has left (up to ``pf_eval_horizon_days``).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import field_validator

from embeddings.data import Corpus
from embeddings.evaluate import DAY_MS, embed_users, recall_report, split_users
from embeddings.pinnerformer import PinnerFormer, save_checkpoint
from embeddings.settings import PinnerFormerSettings
from embeddings.train import load_corpus, pyplot, save_figure
from embeddings.train import train_model as train_pinnerformer
from streams.errors import ConfigError
from streams.settings import CsvTuple, _split_csv
from transact.data import PointInTimeData
from transact.evaluate import markdown_table, paired_delta
from transact.model import RankingConfig
from transact.settings import TrainSettings
from transact.train import (
    PRESETS,
    file_log,
    load_data,
    model_config,
    pick_device,
    settings_from_args,
    subsample,
    subsample_requests,
)
from transact.train import add_arguments as add_train_arguments
from transact.train import train_model as train_ranker

__all__ = ["VARIANTS", "DailyPointInTimeData", "HybridSettings", "daily_vectors", "delay_recall", "run_experiment"]

log = logging.getLogger(__name__)

HELP = "HIT@3 of daily PinnerFormer vs realtime TransAct vs hybrid on one split; PinnerFormer daily-vs-realtime gap"


class HybridSettings(TrainSettings, PinnerFormerSettings):
    """``actionstream experiment hybrid``: the TransAct training settings plus the ``ACTIONSTREAM_PF_*`` ones."""

    out: Path = Path("runs/hybrid")
    config: Literal["tiny", "small", "default"] = "small"
    variants: CsvTuple = ()  # empty = all of VARIANTS

    @field_validator("variants", mode="before")
    @classmethod
    def _csv_variants(cls, v: Any) -> Any:
        return _split_csv(v)


# key -> (table name, how the base config changes given the daily vector size)
VARIANTS: dict[str, tuple[str, Callable[[RankingConfig, int], RankingConfig]]] = {
    "candidate": ("candidate only (no user features)", lambda c, d: replace(c, sequence_encoder="none", daily_dim=0)),
    "daily": ("daily PinnerFormer only", lambda c, d: replace(c, sequence_encoder="none", daily_dim=d)),
    "realtime": ("realtime TransAct only", lambda c, d: replace(c, sequence_encoder="transact", daily_dim=0)),
    "hybrid": ("hybrid (TransAct + daily PinnerFormer)",
               lambda c, d: replace(c, sequence_encoder="transact", daily_dim=d)),
}


@dataclass
class DailyPointInTimeData(PointInTimeData):
    """:class:`~transact.data.PointInTimeData` plus each request's daily vector.

    Attributes:
        daily (R, Dp) float32: the PinnerFormer snapshot served at the request (zeros where none).
        daily_mask (R,) bool: the user had a daily vector at that time.
    """

    daily: np.ndarray | None = None
    daily_mask: np.ndarray | None = None

    @classmethod
    def attach(cls, data: PointInTimeData, daily: np.ndarray, mask: np.ndarray) -> DailyPointInTimeData:
        if daily.shape[0] != len(data.request_ts) or mask.shape != (len(data.request_ts),):
            raise ValueError(f"daily {daily.shape} / mask {mask.shape} do not match {len(data.request_ts)} requests")
        return cls(**{f.name: getattr(data, f.name) for f in fields(PointInTimeData)}, daily=daily, daily_mask=mask)

    def batch(self, idx: np.ndarray, seq_len: int | None = None) -> dict[str, torch.Tensor]:
        b = super().batch(idx, seq_len)
        if self.daily is not None and self.daily_mask is not None:
            r = self.ex_request[idx]
            b["daily"] = torch.from_numpy(np.ascontiguousarray(self.daily[r]))
            b["daily_mask"] = torch.from_numpy(np.ascontiguousarray(self.daily_mask[r]))
        return b


def snapshot_end(ts_ms: np.ndarray | int) -> np.ndarray:
    """Exclusive end (ms) of the daily snapshot served at ``ts_ms``: 00:00 UTC of that day."""
    return (np.asarray(ts_ms, np.int64) // DAY_MS) * DAY_MS


def daily_vectors(model: PinnerFormer, corpus: Corpus, users: list[str], request_user: np.ndarray,
                  request_ts: np.ndarray, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """The served daily vector of every request (module docstring, step 3).

    Args:
        users: user ids; request_user (R,) int index into ``users``; request_ts (R,) int64 ms.
    Returns:
        daily (R, Dp) float32 (zeros where none), mask (R,) bool, counts.
    """
    ends = snapshot_end(request_ts)
    key_of: dict[tuple[int, int], int] = {}
    rows: list[tuple[int, int]] = []
    slot = np.full(len(request_ts), -1, np.int64)
    for r, (ui, end) in enumerate(zip(request_user.tolist(), ends.tolist(), strict=True)):
        cu = corpus.user_index.get(users[ui])
        if cu is None:
            continue
        stop = corpus.end_at(cu, end - 1)          # input actions with ts < 00:00 UTC of the request day
        if stop == corpus.offsets[cu]:
            continue
        k = key_of.get((cu, stop))
        if k is None:
            k = key_of[(cu, stop)] = len(rows)
            rows.append((cu, stop))
        slot[r] = k
    vecs = embed_users(model, corpus, rows, batch_size) if rows else np.zeros((0, model.cfg.emb_dim), np.float32)
    mask = slot >= 0
    out = np.zeros((len(request_ts), model.cfg.emb_dim), np.float32)
    out[mask] = vecs[slot[mask]]
    return out, mask, {"requests": int(len(request_ts)), "with_daily": int(mask.sum()), "embedded": len(rows)}


# name -> (label, as-of time of the embedding given the cut t)
DELAYS: dict[str, tuple[str, Callable[[int], int]]] = {
    "realtime": ("realtime (embedded at t)", lambda t: t),
    "daily_served": ("daily snapshot served at t (end of previous UTC day)", lambda t: int(snapshot_end(t)) - 1),
    "daily_1d": ("1-day delay (embedded at t − 24 h)", lambda t: t - DAY_MS),
}


def delay_recall(model: PinnerFormer, corpus: Corpus, eval_users: np.ndarray, cut_ms: int | None,
                 horizon_ms: int) -> dict[str, Any]:
    """Recall@10 / P90 coverage@10 per embedding delay (:data:`DELAYS`), same users and positives; gap vs realtime."""
    out: dict[str, Any] = {}
    for name, (label, as_of) in DELAYS.items():
        rep = recall_report(model, corpus, eval_users, cut_ms, horizon_ms, as_of=as_of)
        rep["label"] = label
        out[name] = rep
    base = out["realtime"]["recall_at_k"]
    for rep in out.values():
        rep["gap_vs_realtime"] = (rep["recall_at_k"] - base) / base if base > 0 else float("nan")
    return out


def run_experiment(s: HybridSettings, *, progress: bool = True) -> dict[str, Any]:
    """Data, PinnerFormer, daily vectors, the ranker variants, the delay analysis -> results dict."""
    unknown = [v for v in s.variants if v not in VARIANTS]
    if unknown:
        raise ConfigError(f"ACTIONSTREAM_VARIANTS: unknown {unknown}; choose from {list(VARIANTS)}")
    if s.config not in PRESETS:
        raise ConfigError(f"ACTIONSTREAM_CONFIG: {s.config!r} is not one of {list(PRESETS)}")
    names = [k for k in VARIANTS if k in s.variants or not s.variants]
    if s.threads:
        torch.set_num_threads(s.threads)
    device = pick_device(s.device)
    t0 = time.perf_counter()
    seq_len = s.seq_len or PRESETS[s.config]["transact"]["seq_len"]
    data = load_data(s, seq_len=seq_len, hash_buckets=s.hash_buckets, progress=progress)
    train_idx, eval_idx = data.split()
    if len(train_idx) == 0 or len(eval_idx) == 0:
        raise ValueError(f"{s.events}: the time split leaves {len(train_idx)} train / {len(eval_idx)} eval examples")
    cut = int(data.request_ts[data.ex_request[eval_idx]].min())
    train_idx = subsample(train_idx, s.max_train_examples, s.seed)
    eval_idx = subsample_requests(data, eval_idx, s.max_eval_examples, s.seed)

    corpus = load_corpus(s, s.events, s.items)
    pf_s = s.model_copy(update={"pf_eval_cut": "global"})
    log.info("PinnerFormer: %d users, %d input actions, trained on events up to the cut %s", len(corpus.users),
             len(corpus.ts), time.strftime("%Y-%m-%d %H:%M", time.gmtime(cut / 1000)))
    t_pf = time.perf_counter()
    pf_model, pf_metrics = train_pinnerformer(pf_s, corpus, cut_ms=cut, progress=progress)
    pf_seconds = time.perf_counter() - t_pf
    save_checkpoint(s.out / "pinnerformer.pt", pf_model,
                    {"settings": pf_s.model_dump(mode="json"), "cut_ms": cut, "input_exclude": ["impression"],
                     "recall_at_10": pf_metrics["recall_at_k"]})

    daily, mask, dstats = daily_vectors(pf_model, corpus, data.users, data.request_user, data.request_ts)
    hdata = DailyPointInTimeData.attach(data, daily, mask)
    dstats["eval_requests_with_daily"] = int(mask[np.unique(data.ex_request[eval_idx])].sum())
    log.info("daily vectors: %s", dstats)

    base = model_config(s, n_actions=len(s.actions) + 1, item_dim=data.table.dim)
    results: dict[str, Any] = {}
    for key in names:
        name, change = VARIANTS[key]
        cfg = change(base, pf_model.cfg.emb_dim)
        t1 = time.perf_counter()
        res = train_ranker(cfg, hdata, train_idx, eval_idx, epochs=s.epochs, batch_size=s.batch_size, lr=s.lr,
                           weight_decay=s.weight_decay, warmup_fraction=s.warmup_fraction, seed=s.seed,
                           device=device, negative_heads=tuple(s.negative_heads), progress=progress, desc=key,
                           eval_each_epoch=False)
        m = res.summary(time.perf_counter() - t1)
        results[name] = m
        log.info("%s: HIT@3 %s (%.0f s)", name, {h: round(v["hit@3"], 4) for h, v in m["heads"].items()},
                 m["train_seconds"])

    _, pf_eval_users = split_users(corpus.users, s.pf_eval_fraction, s.pf_seed)
    horizon = int(s.pf_eval_horizon_days * DAY_MS)
    delays = delay_recall(pf_model, corpus, pf_eval_users, cut if s.pf_eval_cut == "global" else None, horizon)
    pf_metrics.pop("history", None)
    return {"variants": results, "keys": {VARIANTS[k][0]: k for k in names}, "heads": list(data.heads),
            "negative_heads": list(s.negative_heads), "data": data.stats, "daily": dstats, "cut_ms": cut,
            "train_examples": int(len(train_idx)), "eval_examples": int(len(eval_idx)),
            "eval_requests": int(len(np.unique(data.ex_request[eval_idx]))),
            "pinnerformer": {**pf_metrics, "train_seconds": pf_seconds, "emb_dim": pf_model.cfg.emb_dim},
            "delay_recall": delays, "pf_eval_cut": s.pf_eval_cut, "data_end_ms": int(corpus.ts.max()), "total_seconds": time.perf_counter() - t0,
            "settings": {k: str(v) if isinstance(v, Path) else v for k, v in s.masked().items()}}


def verdict(res: dict[str, Any]) -> list[str]:
    """One line per positive head: does the hybrid beat daily-only and realtime-only on HIT@3?"""
    v = res["variants"]
    by_key = {k: n for n, k in res["keys"].items()}
    if not all(k in by_key for k in ("daily", "realtime", "hybrid")):
        return []
    lines = []
    for h in res["heads"]:
        if h in res["negative_heads"]:
            continue
        hy, d, r = (v[by_key[k]]["heads"][h]["hit@3"] for k in ("hybrid", "daily", "realtime"))
        ok = hy > d and hy > r
        rnd = v[by_key["hybrid"]]["heads"][h]["random_hit@3"]
        paired = ""
        if "hit@3_per_request" in v[by_key["hybrid"]]["heads"][h]:
            dd = paired_delta(v[by_key["hybrid"]], v[by_key["daily"]], h)
            dr = paired_delta(v[by_key["hybrid"]], v[by_key["realtime"]], h)
            paired = (f" [paired over requests: hybrid − daily {dd[0]:+.4f} ± {dd[1]:.4f}, hybrid − realtime "
                      f"{dr[0]:+.4f} ± {dr[1]:.4f} (± 1 SE)]")
        lines.append(f"- HIT@3 {h}: hybrid {hy:.4f} vs daily {d:.4f} ({(hy - d) / d:+.1%}) and realtime {r:.4f} "
                     f"({(hy - r) / r:+.1%}), random order {rnd:.4f}: "
                     f"{'hybrid beats each part' if ok else 'hybrid does NOT beat each part'}{paired}")
    return lines


def delay_table(res: dict[str, Any]) -> str:
    d = res["delay_recall"]
    first = d["realtime"]
    if res["pf_eval_cut"] == "global":
        left = (res["data_end_ms"] - res["cut_ms"]) / DAY_MS
        window = f"the {min(first['horizon_days'], left):.1f} d between the cut and the end of the data"
    else:
        window = f"the {first['horizon_days']:g} d after each user's median action"
    lines = [f"PinnerFormer daily vs realtime: {first['users']} held-out users ({res['pf_eval_cut']} cut), positives "
             f"in {window}, index {first['index_size']} items", "", "| embedding | Recall@10 | gap vs realtime | P90 coverage@10 | users with no action yet (recall 0) |",
             "|---|---:|---:|---:|---:|"]
    for rep in d.values():
        lines.append(f"| {rep['label']} | {rep['recall_at_k']:.4f} | {rep['gap_vs_realtime']:+.1%} | "
                     f"{rep['coverage_p90_at_k']:.4f} | {rep.get('users_without_embedding', 0)} |")
    lines.append(f"| popularity (top 10 training positives) | {first['popularity_recall_at_k']:.4f} | – | – | – |"
                 if "popularity_recall_at_k" in first else "")
    lines.append("\nPaper (PinnerFormer Table 2): realtime 0.264, daily (1-day delay) 0.243, −8.3 %.")
    return "\n".join(x for x in lines if x is not None)


def report(res: dict[str, Any], title: str) -> str:
    dl = res["daily"]
    head = (f"## {title}\n\n{res['train_examples']} train / {res['eval_examples']} eval examples "
            f"({res['eval_requests']} eval requests; {dl['eval_requests_with_daily']} of them with a daily vector), "
            f"cut {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(res['cut_ms'] / 1000))}, "
            f"config {res['settings']['config']}, {res['settings']['epochs']} epoch(s), seed {res['settings']['seed']}, "
            f"PinnerFormer {res['settings']['pf_steps']} steps (D = {res['pinnerformer']['emb_dim']}), "
            f"{res['total_seconds'] / 60:.1f} min\n\n")
    parts = [head + markdown_table(res["variants"], res["heads"])]
    v = verdict(res)
    if v:
        parts.append("\n".join(v))
    parts.append(delay_table(res))
    return "\n\n".join(parts) + "\n"


def plot(res: dict[str, Any], path: Path, title: str) -> None:
    """HIT@3 per head (bars per variant, dashed = random order) and Recall@10 per embedding delay."""
    plt = pyplot()
    heads, names = res["heads"], list(res["variants"])
    fig, axes = plt.subplots(1, len(heads) + 1, figsize=(4.2 * (len(heads) + 1), 4.6), squeeze=False)
    colors = {"candidate": "tab:gray", "daily": "tab:green", "realtime": "tab:blue", "hybrid": "tab:purple"}
    for ax, h in zip(axes[0], heads, strict=False):
        vals = [res["variants"][n]["heads"][h]["hit@3"] for n in names]
        ax.bar(range(len(names)), vals, color=[colors[res["keys"][n]] for n in names])
        rnd = res["variants"][names[0]]["heads"][h]["random_hit@3"]
        ax.axhline(rnd, ls="--", color="k", lw=1, label="random order")
        ax.set_xticks(range(len(names)), [res["keys"][n] for n in names])
        lo, hi = min([*vals, rnd]), max([*vals, rnd])
        ax.set_ylim(max(0.0, lo - 0.2 * (hi - lo + 1e-9)), hi + 0.2 * (hi - lo + 1e-9))
        better = res["variants"][names[0]]["heads"][h]["better"]
        ax.set_title(f"HIT@3 {h} ({better} is better)")
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    ax = axes[0][-1]
    d = res["delay_recall"]
    bars = ax.bar(list(d), [r["recall_at_k"] for r in d.values()], color="#4C72B0")
    ax.bar_label(bars, labels=[f"{r['recall_at_k']:.3f}\n{r['gap_vs_realtime']:+.1%}" for r in d.values()], fontsize=8)
    ax.set_title("PinnerFormer Recall@10 by embedding delay")
    fig.suptitle(title)
    save_figure(fig, path)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_train_arguments(p)
    p.add_argument("--variants", default=None, help="comma-separated subset of: "
                   + ", ".join(f"{k} ({n})" for k, (n, _) in VARIANTS.items()) + " (default: all)")
    p.add_argument("--max-eval-examples", type=int, default=None, help="score about this many eval examples "
                   "(whole requests, seeded)")
    p.add_argument("--pf-steps", type=int, default=None, help="PinnerFormer optimizer steps (ACTIONSTREAM_PF_STEPS)")
    p.add_argument("--pf-eval-cut", choices=("global", "per_user"), default=None,
                   help="Recall@10 users cut at the split time (global) or at their median action (per_user, "
                        "MovieLens); PinnerFormer always trains on events up to the split time")
    p.add_argument("--title", default=None, help="heading of the Markdown report")


def run(args: argparse.Namespace) -> int:
    s = settings_from_args(HybridSettings, args, variants=args.variants, max_eval_examples=args.max_eval_examples,
                           pf_steps=args.pf_steps, pf_eval_cut=args.pf_eval_cut)
    s.out.mkdir(parents=True, exist_ok=True)
    with file_log(s.out / "hybrid.log"):
        log.info("settings: %s", s.masked())
        res = run_experiment(s, progress=not args.no_progress)
        title = args.title or f"Hybrid features on `{Path(s.events).name}`"
        text = report(res, title)
        (s.out / "hybrid.md").write_text(text)
        (s.out / "hybrid.json").write_text(json.dumps(res, indent=2, default=str))
        plot(res, s.out / "hybrid.png", title.replace("`", ""))
        print(text)  # noqa: T201
        print(f"wrote {s.out / 'hybrid.md'}, {s.out / 'hybrid.json'}, {s.out / 'hybrid.png'}")  # noqa: T201
    return 0
