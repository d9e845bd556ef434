"""Events → per-user timelines → PinnerFormer batches (training, evaluation and the daily job share this).

A :class:`Corpus` holds every user's *input* actions (all actions except ``input_exclude``, by default
impressions), oldest first, in flat arrays with per-user offsets (CSR), plus the item universe (index 0 =
padding) with content vectors and hashed-id buckets. Events are deduplicated by ``event_id`` and ordered by
``(ts, event_key)``, the order of :mod:`streams.sequence`.

Positive (engagement) rule, used for labels (:class:`PositiveRule`):
  * ``save``, ``share``, ``comment``: always positive;
  * ``click``, ``closeup``: positive when ``duration_ms >= min_dwell_ms`` (paper: > 10 s), or when the event
    carries no duration (no evidence against engagement);
  * ``impression``, ``hide`` and anything else: never positive (the paper uses no negative signals as labels).
Hides stay in the *input* sequence as an action type (the paper's input is positive actions only).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from streams.events import Event
from streams.items import ItemLookup, hash_bucket
from streams.sequence import event_key
from streams.settings import DEFAULT_ACTIONS, DEFAULT_SURFACES

__all__ = ["Corpus", "PositiveRule", "build_corpus", "make_batch"]


@dataclass(frozen=True)
class PositiveRule:
    always: tuple[str, ...] = ("save", "share", "comment")
    dwell: tuple[str, ...] = ("click", "closeup")
    min_dwell_ms: int = 10_000

    def is_positive(self, action: str, duration_ms: int | None) -> bool:
        if action in self.always:
            return True
        return action in self.dwell and (duration_ms is None or duration_ms >= self.min_dwell_ms)


@dataclass
class Corpus:
    """Users' input actions, oldest first. Arrays of length A are indexed ``offsets[u]:offsets[u+1]``."""

    users: list[str]
    offsets: np.ndarray                  # (U+1,) int64
    ts: np.ndarray                       # (A,) int64 ms
    item: np.ndarray                     # (A,) int64 index into item_ids
    action: np.ndarray                   # (A,) int64 code, 1-based in ``actions``
    surface: np.ndarray                  # (A,) int64 code, 1-based in ``surfaces``; 0 = unknown/absent
    duration: np.ndarray                 # (A,) float32 ms (0 when absent)
    positive: np.ndarray                 # (A,) bool
    item_ids: list[str]                  # (I,) item_ids[0] = "" (padding)
    item_vec: np.ndarray                 # (I, Di) float32, zeros where an item has no vector
    item_bucket: np.ndarray              # (I,) int64 hashed-id bucket (0 = padding / ids off)
    actions: tuple[str, ...] = DEFAULT_ACTIONS
    surfaces: tuple[str, ...] = DEFAULT_SURFACES
    user_index: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.user_index:
            self.user_index = {u: i for i, u in enumerate(self.users)}

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def span(self, u: int) -> tuple[int, int]:
        return int(self.offsets[u]), int(self.offsets[u + 1])

    def end_at(self, u: int, t_ms: int) -> int:
        """Exclusive end index of user ``u``'s actions with ``ts <= t_ms``."""
        a, b = self.span(u)
        return a + int(np.searchsorted(self.ts[a:b], t_ms, side="right"))

    def positive_counts(self, users: Sequence[int] | np.ndarray | None = None, until_ms: int | None = None) -> np.ndarray:
        """(I,) int64 exact count of positive actions per item (the logQ frequencies)."""
        idx = np.concatenate([np.arange(*self.span(u)) for u in users]) if users is not None \
            else np.arange(len(self.ts))
        mask = self.positive[idx] if idx.size else np.zeros(0, bool)
        if until_ms is not None and idx.size:
            mask &= self.ts[idx] <= until_ms
        return np.bincount(self.item[idx[mask]], minlength=self.n_items).astype(np.int64)


def build_corpus(events: Iterable[Event], items: ItemLookup | None, *, actions: Sequence[str] = DEFAULT_ACTIONS,
                 surfaces: Sequence[str] = DEFAULT_SURFACES, rule: PositiveRule = PositiveRule(),
                 input_exclude: Sequence[str] = ("impression",), id_buckets: int = 32_768,
                 item_dim: int | None = None, before_ms: int | None = None) -> Corpus:
    """Build a :class:`Corpus` from events (any order, duplicates allowed).

    Args:
        items: item vectors (``ItemStore``/``MemoryItemStore``); None = no content vectors (``item_dim`` zeros).
        id_buckets: hashed-id table size of the model (0 = no id buckets).
        before_ms: keep only events with ``ts < before_ms`` (the daily job's end of day).
    Events whose action is outside ``actions`` are skipped (a checkpoint trained on another vocabulary).
    """
    a_code = {a: i + 1 for i, a in enumerate(actions)}
    s_code = {s: i + 1 for i, s in enumerate(surfaces)}
    excluded = set(input_exclude)
    seen: set[str] = set()
    users: dict[str, int] = {}
    item_index: dict[str, int] = {"": 0}
    cols: list[tuple[int, int, int, int, int, int, float, bool]] = []
    for e in events:
        if e.action in excluded or e.action not in a_code or e.event_id in seen:
            continue
        if before_ms is not None and e.ts >= before_ms:
            continue
        seen.add(e.event_id)
        u = users.setdefault(e.user_id, len(users))
        it = item_index.setdefault(e.item_id, len(item_index))
        cols.append((u, e.ts, event_key(e.event_id), it, a_code[e.action], s_code.get(e.surface or "", 0),
                     float(e.duration_ms or 0), rule.is_positive(e.action, e.duration_ms)))
    cols.sort(key=lambda c: (c[0], c[1], c[2]))
    arr: list[Sequence[Any]] = list(zip(*cols, strict=True)) if cols else [[] for _ in range(8)]
    user_col = np.asarray(arr[0], dtype=np.int64)
    offsets = np.zeros(len(users) + 1, dtype=np.int64)
    np.cumsum(np.bincount(user_col, minlength=len(users)), out=offsets[1:])
    item_ids = list(item_index)
    dim = items.dim if items is not None else (item_dim or 1)
    vec = np.zeros((len(item_ids), dim), dtype=np.float32)
    if items is not None and len(item_ids) > 1:
        got, has = items.get_many(item_ids[1:])
        vec[1:][has] = got[has]
    bucket = np.zeros(len(item_ids), dtype=np.int64)
    if id_buckets:
        bucket[1:] = [hash_bucket(i, id_buckets) for i in item_ids[1:]]
    return Corpus(users=list(users), offsets=offsets, ts=np.asarray(arr[1], dtype=np.int64),
                  item=np.asarray(arr[3], dtype=np.int64), action=np.asarray(arr[4], dtype=np.int64),
                  surface=np.asarray(arr[5], dtype=np.int64), duration=np.asarray(arr[6], dtype=np.float32),
                  positive=np.asarray(arr[7], dtype=bool), item_ids=item_ids, item_vec=vec, item_bucket=bucket,
                  actions=tuple(actions), surfaces=tuple(surfaces))


def make_batch(c: Corpus, rows: Sequence[tuple[int, int]], seq_len: int) -> tuple[dict[str, Tensor], np.ndarray]:
    """Left-padded model inputs for ``rows`` = ``[(user, end_exclusive), ...]``: the last ``seq_len`` actions
    of each user before ``end``.

    Returns:
        batch: ``action``/``surface``/``item_bucket``/``ts_ms`` (B,S) long, ``duration_ms`` (B,S) float,
            ``item_vec`` (B,S,Di) float, and ``item`` (B,S) long (corpus item index, for the loss);
        start: (B,) int64 the global action index sitting in slot 0 (slot j holds ``start + j`` for the
            real slots ``j >= S - length``).
    """
    B, S = len(rows), seq_len
    idx = np.zeros((B, S), dtype=np.int64)
    valid = np.zeros((B, S), dtype=bool)
    start = np.zeros(B, dtype=np.int64)
    for b, (u, end) in enumerate(rows):
        lo = max(int(c.offsets[u]), end - S)
        n = end - lo
        if n > 0:
            idx[b, S - n:] = np.arange(lo, end)
            valid[b, S - n:] = True
        start[b] = end - S
    def take(a: np.ndarray, fill: float | int = 0) -> np.ndarray:
        out = a[idx] if len(a) else np.zeros(idx.shape, dtype=a.dtype)
        out[~valid] = fill
        return out
    item = take(c.item)
    batch = {"action": torch.from_numpy(take(c.action)), "surface": torch.from_numpy(take(c.surface)),
             "ts_ms": torch.from_numpy(take(c.ts)), "duration_ms": torch.from_numpy(take(c.duration)),
             "item": torch.from_numpy(item), "item_bucket": torch.from_numpy(c.item_bucket[item]),
             "item_vec": torch.from_numpy(c.item_vec[item])}
    # padding slots of ts take the first real ts, so time features of padding stay small and finite
    first = np.where(valid.any(1), c.ts[idx[np.arange(B), valid.argmax(1)]] if len(c.ts) else 0, 0)
    batch["ts_ms"] = torch.where(torch.from_numpy(valid), batch["ts_ms"], torch.from_numpy(first)[:, None])
    return batch, start
