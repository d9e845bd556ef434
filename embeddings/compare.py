"""Objective comparison (paper Table 3): dense all-action vs next-action (and K = 14 vs 28 days) on ONE split.

``python -m embeddings.compare --events E --items I --out DIR`` trains each variant with the same
settings, seed, user split and cut, evaluates Recall@10 / P90 coverage@10 on the held-out users and
writes ``comparison.md`` (the Markdown table, also printed), ``comparison.json`` and ``comparison.png``.
With several ``--seeds`` the table shows mean ± std over seeds (each seed = another split and init).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from embeddings.settings import PinnerFormerSettings
from embeddings.train import load_corpus, pyplot, save_figure, train_model

__all__ = ["VARIANTS", "compare", "markdown_table"]

log = logging.getLogger(__name__)
HELP = "train dense all-action vs next-action (K 14 vs 28 d) on one split; Markdown table + JSON + PNG"

# name -> (objective, label window days)
VARIANTS: dict[str, tuple[str, float]] = {
    "dense_all_action_28d": ("dense_all_action", 28.0),
    "dense_all_action_14d": ("dense_all_action", 14.0),
    "all_action_28d": ("all_action", 28.0),
    "sasrec": ("sasrec", 28.0),
    "next_action": ("next_action", 28.0),
}
DEFAULT_VARIANTS = ("dense_all_action_28d", "dense_all_action_14d", "next_action")


def compare(base: PinnerFormerSettings, events: Path, items: Path | None, variants: list[str],
            seeds: list[int]) -> dict[str, Any]:
    corpus = load_corpus(base, events, items)
    log.info("corpus: %d users, %d input actions, %d items", len(corpus.users), len(corpus.ts), corpus.n_items - 1)
    runs: dict[str, list[dict[str, Any]]] = {}
    for name in variants:
        objective, window = VARIANTS[name]
        for seed in seeds:
            s = base.model_copy(update={"pf_objective": objective, "pf_label_window_days": window, "pf_seed": seed})
            t0 = time.perf_counter()
            _, m = train_model(s, corpus)
            m.pop("history")
            m["seconds"] = time.perf_counter() - t0
            runs.setdefault(name, []).append(m)
            log.info("%s seed %d: Recall@10 %.4f, P90 coverage@10 %.4f (%.0f s)", name, seed, m["recall_at_k"],
                     m["coverage_p90_at_k"], m["seconds"])
    first = next(iter(runs.values()))[0]
    return {"events": str(events), "items": str(items) if items else None, "seeds": seeds,
            "settings": {k: v for k, v in base.model_dump(mode="json").items() if k.startswith("pf_")},
            "corpus": {"users": len(corpus.users), "input_actions": int(len(corpus.ts)), "items": corpus.n_items - 1},
            "eval_users": first["users"], "popularity_recall_at_k": first["popularity_recall_at_k"], "runs": runs}


def _stat(vals: list[float]) -> str:
    return f"{np.mean(vals):.4f}" if len(vals) == 1 else f"{np.mean(vals):.4f} ± {np.std(vals):.4f}"


def markdown_table(res: dict[str, Any]) -> str:
    lines = [f"Held-out users: {res['eval_users']} · index: {res['corpus']['items']} items · seeds: "
             f"{', '.join(map(str, res['seeds']))} · steps: {res['settings']['pf_steps']}", "",
             "| objective | label window | Recall@10 | P90 coverage@10 | train s |", "|---|---|---|---|---|"]
    for name, ms in res["runs"].items():
        obj, window = VARIANTS[name]
        win = f"{window:g} d" if obj in ("dense_all_action", "all_action") else "next positive"
        lines.append(f"| {obj} | {win} | {_stat([m['recall_at_k'] for m in ms])} | "
                     f"{_stat([m['coverage_p90_at_k'] for m in ms])} | {np.mean([m['seconds'] for m in ms]):.0f} |")
    lines.append(f"| popularity (top 10 training positives) | – | {res['popularity_recall_at_k']:.4f} | – | – |")
    return "\n".join(lines)


def plot(path: Path, res: dict[str, Any]) -> None:
    plt = pyplot()
    names = list(res["runs"])
    fig, ax = plt.subplots(1, 2, figsize=(11, 3.8))
    for a, key, title in ((ax[0], "recall_at_k", "Recall@10 (held-out users)"),
                          (ax[1], "coverage_p90_at_k", "P90 coverage@10")):
        vals = [[m[key] for m in res["runs"][n]] for n in names]
        bars = a.bar(names, [np.mean(v) for v in vals], yerr=[np.std(v) for v in vals], color="#4C72B0", capsize=4)
        a.bar_label(bars, fmt="%.3f")
        if key == "recall_at_k":
            a.axhline(res["popularity_recall_at_k"], color="grey", ls="--", label="popularity")
            a.legend()
        a.set(title=title)
        plt.setp(a.get_xticklabels(), rotation=15, ha="right")
    save_figure(fig, path)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--events", type=Path, required=True, help="events JSONL file or archive directory")
    p.add_argument("--items", type=Path, default=None, help="item vectors JSONL")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    p.add_argument("--seeds", default="0", help="comma list of seeds (split + init)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per variant")
    p.add_argument("--title", default="PinnerFormer objectives", help="heading of the Markdown table")


def run(args: argparse.Namespace) -> int:
    base = PinnerFormerSettings.load(pf_steps=args.steps)
    torch.set_num_threads(base.pf_threads)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        print(f"unknown variants {unknown}; choose from {list(VARIANTS)}", file=sys.stderr)  # noqa: T201
        return 2
    res = compare(base, args.events, args.items, variants, [int(x) for x in args.seeds.split(",")])
    args.out.mkdir(parents=True, exist_ok=True)
    table = f"### {args.title}\n\n{markdown_table(res)}\n"
    (args.out / "comparison.md").write_text(table)
    (args.out / "comparison.json").write_text(json.dumps(res, indent=2))
    plot(args.out / "comparison.png", res)
    print(table)  # noqa: T201
    print(f"wrote {args.out}/comparison.md, comparison.json, comparison.png")  # noqa: T201
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m embeddings.compare", description=HELP,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--log-level", default="INFO")
    add_arguments(p)
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
