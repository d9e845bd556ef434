"""PinnerFormer training objectives: label sampling (dense all-action, next-action) and the sampled softmax.

Paper: Pancha et al., KDD 2022, sections 3.3-3.4 (see ``shared/reference/pinnerformer.md``).

* **Dense all-action** (paper default): random positions ``s_i`` of each input window each predict ONE
  random positive from the user's next K days (K = 28 in training); the causal mask keeps position s from
  seeing the future. **All-action**: only the most recent position, up to ``labels_per_seq`` random
  positives from the next K days. **Next-action**: only the most recent position predicts the user's next
  positive (no time limit). **SASRec**: random positions each predict their next positive.
* **Sampled softmax with logQ correction**: ``s(u, i) = <u, i> / τ - log Q(i)``. Candidates are mixed:
  the other pairs' positives (in-batch) and ``R`` uniform random items. ``Q(i)`` is the expected number of
  times item i is drawn as a candidate: ``N · f(i)`` for an in-batch item (``f`` = the item's share of
  training positives, exact counts + 1 smoothing) and ``R / |I|`` for a uniform one. Own positives are
  masked: in-batch candidates from the same user and any candidate equal to the target item (other than
  the target itself).
* τ is learned, clamped at a floor (0.01). Every user carries equal weight (the pairs of one user share it).

Where we differ: exact item counts instead of a count-min sketch (our catalogues fit in memory); the
in-batch pool is the batch itself (one process, no all-gather, no 5,000 cap); fewer random negatives.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from embeddings.data import Corpus

__all__ = ["Objective", "Pairs", "Temperature", "mixed_logits", "sample_pairs", "sampled_softmax_loss"]

Objective = Literal["dense_all_action", "all_action", "next_action", "sasrec"]
DAY_MS = 86_400_000


class Temperature(nn.Module):
    """Learned softmax temperature ``τ = max(exp(θ), floor)``."""

    def __init__(self, init: float = 0.05, floor: float = 0.01) -> None:
        super().__init__()
        assert init >= floor > 0
        self.floor = floor
        self.log_tau = nn.Parameter(torch.tensor(math.log(init)))

    def forward(self) -> Tensor:
        return self.log_tau.exp().clamp(min=self.floor)


@dataclass
class Pairs:
    """Training pairs of one batch: sequence row, slot (0..S-1) and positive item (corpus index)."""

    row: np.ndarray    # (N,) int64
    slot: np.ndarray   # (N,) int64
    item: np.ndarray   # (N,) int64

    def __len__(self) -> int:
        return len(self.row)


def sample_pairs(c: Corpus, users: np.ndarray, seq_len: int, objective: Objective, rng: np.random.Generator, *,
                 window_ms: int = 28 * DAY_MS, positions: int = 16, labels_per_seq: int = 32,
                 until_ms: int | None = None) -> tuple[list[tuple[int, int]], Pairs]:
    """Pick an input window per user and the (position → positive) pairs the objective trains on.

    Each user's window ends at a random action (exclusive end ``e``) that has at least one positive after
    it; labels come from the user's whole timeline (up to ``until_ms``), not only the window.

    Returns:
        rows: ``[(user, end_exclusive)]`` for :func:`embeddings.data.make_batch`; users with no usable
            label are dropped.
        pairs: :class:`Pairs` indexing into rows.
    """
    rows: list[tuple[int, int]] = []
    r_row: list[int] = []
    r_slot: list[int] = []
    r_item: list[int] = []
    for u in users:
        a, b = c.span(int(u))
        if until_ms is not None:
            b = c.end_at(int(u), until_ms)
        pos_idx = a + np.flatnonzero(c.positive[a:b])                     # global indices of positives
        if pos_idx.size == 0 or pos_idx[-1] <= a:
            continue
        e = int(rng.integers(a + 1, pos_idx[-1] + 1))                    # window [max(a, e-S), e)
        lo = max(a, e - seq_len)
        if objective in ("dense_all_action", "sasrec"):
            cand = np.arange(lo, e)
            chosen = np.sort(rng.choice(cand, size=min(positions, cand.size), replace=False))
        else:
            chosen = np.array([e - 1])
        row = len(rows)
        added = 0
        for i in chosen:
            after = pos_idx[np.searchsorted(pos_idx, i, side="right"):]   # positives after action i
            if after.size == 0:
                continue
            if objective in ("next_action", "sasrec"):
                picks = after[:1]
            else:
                horizon = after[c.ts[after] <= c.ts[i] + window_ms]
                if horizon.size == 0:
                    continue
                k = 1 if objective == "dense_all_action" else min(labels_per_seq, horizon.size)
                picks = rng.choice(horizon, size=k, replace=False)
            for p in picks:
                r_row.append(row)
                r_slot.append(seq_len - (e - int(i)))                    # left-padded: action e-1 → slot S-1
                r_item.append(int(c.item[p]))
                added += 1
        if added:
            rows.append((int(u), e))
    return rows, Pairs(np.asarray(r_row, np.int64), np.asarray(r_slot, np.int64), np.asarray(r_item, np.int64))


def mixed_logits(user: Tensor, pos: Tensor, pos_item: Tensor, group: Tensor, rand: Tensor, rand_item: Tensor,
                 log_q_pos: Tensor | None, log_q_rand: Tensor | None, tau: Tensor) -> Tensor:
    """Logits over [in-batch candidates | random candidates]; the target of row i is column i.

    Args:
        user: (N, D) user embeddings of the pairs; pos: (N, D) embeddings of their positives.
        pos_item: (N,) long item ids; group: (N,) long user (sequence) of each pair.
        rand: (R, D) random negatives; rand_item: (R,) long.
        log_q_pos: (N,) log expected draws of each in-batch candidate, or None (no correction).
        log_q_rand: (R,) same for the random candidates, or None.
        tau: scalar temperature.
    Returns:
        (N, N + R) float; masked candidates are ``-inf``.
    """
    inb = user @ pos.T / tau                                                    # (N, N)
    rnd = user @ rand.T / tau                                                   # (N, R)
    if log_q_pos is not None:
        inb = inb - log_q_pos[None, :]
    if log_q_rand is not None:
        rnd = rnd - log_q_rand[None, :]
    n = user.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=user.device)
    own = ((group[:, None] == group[None, :]) | (pos_item[:, None] == pos_item[None, :])) & ~eye
    inb = inb.masked_fill(own, float("-inf"))
    rnd = rnd.masked_fill(pos_item[:, None] == rand_item[None, :], float("-inf"))
    return torch.cat([inb, rnd], dim=1)


def sampled_softmax_loss(logits: Tensor, group: Tensor) -> Tensor:
    """Cross-entropy with target = diagonal, each user (group) weighted equally. logits (N, N+R), group (N,)."""
    n = logits.shape[0]
    per_pair = F.cross_entropy(logits, torch.arange(n, device=logits.device), reduction="none")  # (N,)
    _, inv, counts = torch.unique(group, return_inverse=True, return_counts=True)
    weights = 1.0 / counts[inv].float()
    return (per_pair * weights).sum() / weights.sum()
