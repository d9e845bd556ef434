"""`actionstream ablate transact`: the TransAct paper's comparisons, trained and evaluated on ONE split.

Paper (Xia et al., KDD 2023): Table 1/3 (no realtime sequence vs. average pooling vs. TransAct), §5.3
(random time-window mask), Fig. 4 (early fusion), Table 4 (output compression: first K, max pool,
both) and Fig. 5 (sequence length). Every variant here is trained from the same seed, on the same
train examples, for the same number of steps, and scored on the same eval requests with the HIT@3
definition of :mod:`transact.evaluate` (and AUC).

Outputs under ``--out``: ``ablation.md`` (the Markdown table, also printed), ``ablation.json`` (every
metric, the settings and the data statistics), ``ablation.png`` (HIT@3 per head and variant, with the
random-order level as a dashed line).

Differences from the paper: one seed and one small synthetic or MovieLens split instead of billions
of Homefeed instances, so differences of a few per cent may be noise (the JSON keeps the per-request
counts to judge); the "no fusion" variant feeds the candidate-free encoder (the realtime vector the
stream computes) to the same DCN, where the paper compares concat vs. append fusion; BST baselines and
CNN/RNN encoders are not reproduced.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from transact.evaluate import markdown_table, paired_delta
from transact.model import RankingConfig
from transact.settings import AblateSettings
from transact.train import (
    PRESETS,
    file_log,
    load_data,
    model_config,
    pick_device,
    settings_from_args,
    subsample,
    subsample_requests,
    train_model,
)
from transact.train import add_arguments as add_train_arguments

__all__ = ["VARIANTS", "run_ablation"]

log = logging.getLogger(__name__)

HELP = "run the TransAct paper's ablations on one split (Markdown table + PNG + JSON)"


def _t(**kw: Any) -> Callable[[RankingConfig], RankingConfig]:
    return lambda c: replace(c, sequence_encoder="transact", transact=replace(c.transact, **kw))


# key -> (table name, how the base changes). Base: TransAct, early fusion, first-K + max-pool, the settings'
# time-window mask (off by default, see transact.train), S = the preset's sequence length.
VARIANTS: dict[str, tuple[str, Callable[[RankingConfig], RankingConfig]]] = {
    "none": ("no sequence", lambda c: replace(c, sequence_encoder="none")),
    "average": ("average pooling", lambda c: replace(c, sequence_encoder="average")),
    "transact": ("TransAct", _t()),
    "window": ("TransAct, 24 h time-window mask (paper)", _t(time_window_mask=True, time_window_ms=86_400_000)),
    "no-fusion": ("TransAct, no early fusion", _t(early_fusion=False)),
    "first-k": ("TransAct, first-K only", _t(use_max_pool=False)),
    "max-pool": ("TransAct, max-pool only", _t(use_first_k=False)),
    "s25": ("TransAct, S=25", _t(seq_len=25)),
    "s50": ("TransAct, S=50", _t(seq_len=50)),
}


def selected_variants(s: AblateSettings) -> list[str]:
    """The variant keys to run, in table order (= :data:`VARIANTS` order); all when none are named.
    Raises :class:`~streams.errors.ConfigError` on an unknown name."""
    unknown = [n for n in s.variants if n not in VARIANTS]
    if unknown:
        from streams.errors import ConfigError
        raise ConfigError(f"ACTIONSTREAM_VARIANTS: unknown {unknown}; choose from {list(VARIANTS)}")
    return [k for k in VARIANTS if k in s.variants or not s.variants]


def run_ablation(s: AblateSettings, *, progress: bool = True) -> dict[str, Any]:
    """Build the data once, train + evaluate every selected variant; returns the results dict."""
    names = selected_variants(s)
    if s.threads:
        torch.set_num_threads(s.threads)
    device = pick_device(s.device)
    base_len = s.seq_len or PRESETS[s.config]["transact"]["seq_len"]
    data = load_data(s, seq_len=base_len, hash_buckets=s.hash_buckets, progress=progress)
    base = model_config(s, n_actions=len(s.actions) + 1, item_dim=data.table.dim)
    train_idx, eval_idx = data.split()
    train_idx = subsample(train_idx, s.max_train_examples, s.seed)
    eval_idx = subsample_requests(data, eval_idx, s.max_eval_examples, s.seed)
    log.info("ablation on %s: %d train / %d eval examples (%d eval requests), variants %s", s.events,
             len(train_idx), len(eval_idx), len(np.unique(data.ex_request[eval_idx])), names)
    results: dict[str, Any] = {}
    for key in names:
        name, change = VARIANTS[key]
        cfg = change(base)
        if cfg.transact.seq_len > base_len:
            raise ValueError(f"{name}: seq_len {cfg.transact.seq_len} > the data's {base_len}")
        t0 = time.perf_counter()
        res = train_model(cfg, data, train_idx, eval_idx, epochs=s.epochs, batch_size=s.batch_size, lr=s.lr,
                          weight_decay=s.weight_decay, warmup_fraction=s.warmup_fraction, seed=s.seed,
                          device=device, negative_heads=tuple(s.negative_heads), progress=progress, desc=name,
                          eval_each_epoch=False)
        m = res.summary(time.perf_counter() - t0)
        results[name] = m
        log.info("%s done in %.0f s", name, m["train_seconds"])
    return {"variants": results, "data": data.stats, "train_examples": int(len(train_idx)),
            "eval_examples": int(len(eval_idx)), "heads": list(data.heads),
            "settings": {k: str(v) if isinstance(v, Path) else v for k, v in s.masked().items()}}


def paired_table(results: dict[str, Any], base: str = "TransAct") -> str:
    """Markdown: HIT@3 of every other variant minus ``base``, paired over the same eval requests (± 1 SE);
    empty when the results carry no per-request hits (older runs)."""
    v, heads = results["variants"], results["heads"]
    if base not in v or any("hit@3_per_request" not in v[base]["heads"][h] for h in heads):
        return ""
    lines = ["", "", f"HIT@3 minus {base}, paired over the same eval requests (± 1 SE; the sign that is better: "
             + ", ".join(f"{h} {'−' if v[base]['heads'][h]['better'] == 'lower' else '+'}" for h in heads) + ")",
             "", "| model | " + " | ".join(f"Δ HIT@3 {h}" for h in heads) + " |", "|---|" + "---:|" * len(heads)]
    for name, r in v.items():
        if name == base:
            continue
        cells = []
        for h in heads:
            d, se = paired_delta(r, v[base], h)
            cells.append(f"{d:+.4f} ± {se:.4f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path, title: str) -> None:
    """Grouped bars: HIT@3 per head (one panel each) for every variant; dashed line = random order."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    heads = results["heads"]
    names = list(results["variants"])
    fig, axes = plt.subplots(1, len(heads), figsize=(4.2 * len(heads), 4.8), squeeze=False)
    for ax, h in zip(axes[0], heads, strict=True):
        vals = [results["variants"][n]["heads"][h]["hit@3"] for n in names]
        better = results["variants"][names[0]]["heads"][h]["better"]
        colors = ["tab:gray" if not n.startswith("TransAct") else "tab:blue" for n in names]
        ax.barh(range(len(names)), vals, color=colors)
        rnd = results["variants"][names[0]]["heads"][h]["random_hit@3"]
        ax.axvline(rnd, ls="--", color="k", lw=1, label="random order")
        ax.set_yticks(range(len(names)), names if ax is axes[0][0] else [""] * len(names))
        ax.invert_yaxis()
        lo, hi = min(vals + [rnd]), max(vals + [rnd])
        ax.set_xlim(max(0.0, lo - 0.15 * (hi - lo + 1e-9)), hi + 0.15 * (hi - lo + 1e-9))
        ax.set_title(f"HIT@3 {h} ({better} is better)")
        ax.grid(axis="x", alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_train_arguments(p)
    p.add_argument("--variants", default=None, help="comma-separated subset of: "
                   + ", ".join(f"{k} ({n})" for k, (n, _) in VARIANTS.items()) + " (default: all)")
    p.add_argument("--max-eval-examples", type=int, default=None, help="score about this many eval examples "
                   "(whole requests, seeded; default: the whole eval split)")
    p.add_argument("--jobs", type=int, default=1, help="train the variants in this many processes at once "
                   "(each builds the same split; --threads is then per process, default 1)")


def _child_argv(argv: list[str], variants: list[str], out: Path, threads: int) -> list[str]:
    """``argv`` of this command with --jobs/--variants/--out/--threads replaced (both ``--x v`` and ``--x=v``)."""
    drop = {"--jobs", "--variants", "--out", "--threads"}
    kept: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in drop:
            skip = True
            continue
        if a.split("=", 1)[0] in drop:
            continue
        kept.append(a)
    return kept + ["--jobs", "1", "--variants", ",".join(variants), "--out", str(out), "--threads", str(threads)]


def run_parallel(s: AblateSettings, argv: list[str], jobs: int, threads: int) -> dict[str, Any]:
    """Split the variants over ``jobs`` child processes (``actionstream ablate transact`` on the same split,
    slow TransAct variants spread first), wait for all, and merge their ``ablation.json`` in table order."""
    import subprocess
    import sys

    names = selected_variants(s)
    cheap = [k for k in names if k in ("none", "average")]
    order = [k for k in names if k not in cheap] + cheap
    parts: list[list[str]] = [[] for _ in range(min(jobs, len(order)))]
    for i, k in enumerate(order):
        parts[i % len(parts)].append(k)
    procs = []
    for i, part in enumerate(parts):
        out = s.out / f"part-{i}"
        cmd = [sys.executable, "-m", "streams.cli", "ablate", "transact",
               *_child_argv(argv, part, out, threads), "--no-progress"]
        log.info("job %d: %s -> %s", i, ",".join(part), out)
        procs.append((subprocess.Popen(cmd), out))
    failed = [str(out) for p, out in procs if p.wait() != 0]
    if failed:
        raise RuntimeError(f"ablation jobs failed, see their ablate.log: {failed}")
    merged: dict[str, Any] | None = None
    for _, out in procs:
        part_res = json.loads((out / "ablation.json").read_text())
        if merged is None:
            merged = part_res
            continue
        for key in ("data", "train_examples", "eval_examples", "heads"):
            if part_res[key] != merged[key]:
                raise RuntimeError(f"ablation jobs disagree on {key}: {out}")
        merged["variants"].update(part_res["variants"])
    assert merged is not None
    table_order = [VARIANTS[k][0] for k in names]
    merged["variants"] = {n: merged["variants"][n] for n in table_order}
    merged["settings"]["variants"] = names
    merged["jobs"] = jobs
    return merged


def run(args: argparse.Namespace) -> int:
    s = settings_from_args(AblateSettings, args, variants=args.variants, max_eval_examples=args.max_eval_examples)
    s.out.mkdir(parents=True, exist_ok=True)
    with file_log(s.out / "ablate.log"):
        t0 = time.perf_counter()
        if args.jobs > 1:
            results = run_parallel(s, list(args.command_argv), args.jobs, args.threads or 1)
        else:
            results = run_ablation(s, progress=not args.no_progress)
        results["total_seconds"] = time.perf_counter() - t0
        table = markdown_table(results["variants"], results["heads"]) + paired_table(results)
        header = (f"TransAct ablation on `{Path(s.events).name}` ({results['train_examples']} train / "
                  f"{results['eval_examples']} eval examples, {s.epochs} epoch(s), config {s.config}, seed {s.seed}, "
                  f"{results['total_seconds'] / 60:.1f} min; HIT@3 ± its standard error over requests)\n\n")
        (s.out / "ablation.md").write_text(header + table + "\n")
        (s.out / "ablation.json").write_text(json.dumps(results, indent=2, default=str))
        plot(results, s.out / "ablation.png", f"TransAct ablation: {Path(s.events).name}")
        print(header + table)  # noqa: T201
        print(f"\nwrote {s.out / 'ablation.md'}, {s.out / 'ablation.json'}, {s.out / 'ablation.png'}")  # noqa: T201
    return 0
