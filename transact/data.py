"""Point-in-time training examples for TransAct from the event archive (or any Event v1 JSONL file).

Paper (Xia et al., KDD 2023, §3-4): one training instance per (user, request, candidate) from Homefeed
logs; the user's realtime sequence is the latest 100 actions *at request time*; labels are the actions
taken on the candidate; 2 weeks train / 1 week eval (time split).

Our definitions (all configurable in :class:`DataConfig`):

* **Request** = a user's ``impression`` events from ``t_req`` to ``t_req + request_ms`` (exclusive), where
  ``t_req`` (the request time) is the first impression not in an earlier request. Event v1 has no request
  id, so this is the proxy; default 2 s fits the simulator (a request's impressions lie within 1 s,
  requests are >= 5 s apart); MovieLens uses 24 h (a user's ratings from the first of the day on).
  Each distinct item impressed in the request is one example (candidate).
* **Label** of impression ``(user, item, t)``: head ``h`` (default click, save, hide) is 1 iff the user
  did action ``h`` on that item at a time ``t' in [t, t + label_window_ms]`` (default 10 min). Repeated
  impressions of one item in a request are one example whose labels are OR-ed.
* **Sequence** = the user's stored sequence as the worker held it STRICTLY BEFORE ``t_req``: all the
  user's events with ``ts < t_req`` (every action type, impressions included, like the worker) replayed
  through THE SAME :func:`streams.sequence.update` with the worker's ``max_len``/``window_ms``
  (:class:`~streams.sequence.SequenceCodec` from :class:`~streams.settings.EventSettings`). ``update``
  depends only on the set of events, so feeding each gap between requests in one call equals the
  worker's one-event-at-a-time ``update_blob`` (``tests/transact/test_parity.py``).
* **Split** by time: requests whose ``t_req`` lies in the last ``eval_fraction`` of request times are
  eval; train requests closer than ``label_window_ms`` to the cut are dropped, so no train label looks at
  eval-period actions (a "purge gap").

Layout (compact, one pass): sequences are stored once per *request* (``(R, S)`` arrays of action codes,
item rows, times), examples point at their request; item rows index one :class:`~transact.features.ItemTable`
(row 0 = padding). :meth:`PointInTimeData.batch` gathers a batch through
:func:`transact.features.gather_batch`, the same function serving uses.

Differences from the paper: no negative downsampling; no user weights (``w_u = 1``); sequences
include impressions because the worker stores them (parity beats paper fidelity here).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from streams.events import Event
from streams.items import ItemLookup
from streams.sequence import Act, SequenceCodec, update
from transact.features import DEFAULT_HASH_BUCKETS, ItemTable, gather_batch

__all__ = ["DataConfig", "PointInTimeData", "build_examples", "replay_sequences", "requests_of"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataConfig:
    """How requests, labels and the split are defined (module docstring)."""

    heads: tuple[str, ...] = ("click", "save", "hide")
    impression_action: str = "impression"
    request_ms: int = 2_000
    label_window_ms: int = 600_000
    seq_len: int = 100  # S of the arrays (<= the worker's max_len; longer stored sequences are truncated)
    eval_fraction: float = 0.2
    hash_buckets: int = DEFAULT_HASH_BUCKETS

    def __post_init__(self) -> None:
        if not self.heads:
            raise ValueError("at least one head")
        if self.request_ms < 1 or self.label_window_ms < 0 or self.seq_len < 1:
            raise ValueError("request_ms >= 1, label_window_ms >= 0, seq_len >= 1")
        if not 0.0 < self.eval_fraction < 1.0:
            raise ValueError("eval_fraction must be in (0, 1)")


def requests_of(impressions: Sequence[tuple[int, str]], request_ms: int) -> list[tuple[int, list[tuple[int, str]]]]:
    """Group one user's impressions ``(ts, item_id)`` (sorted by ts) into requests ``(t_req, impressions)``:
    a request starts at the first impression not yet grouped and takes every impression up to
    ``t_req + request_ms - 1``."""
    out: list[tuple[int, list[tuple[int, str]]]] = []
    end = None
    for ts, item in impressions:
        if end is None or ts >= end:
            end = ts + request_ms
            out.append((ts, []))
        out[-1][1].append((ts, item))
    return out


def replay_sequences(acts: Sequence[Act], request_times: Iterable[int], *, max_len: int,
                     window_ms: int) -> Iterator[list[Act]]:
    """Point-in-time sequences: for each request time (ascending), the sequence built from ``acts`` with
    ``ts < t_req`` by :func:`streams.sequence.update` (``acts`` sorted ascending by ``(ts, key)``)."""
    seq: list[Act] = []
    p = 0
    n = len(acts)
    for t_req in request_times:
        q = p
        while q < n and acts[q][0] < t_req:
            q += 1
        if q > p:
            seq = update(seq, acts[p:q], max_len=max_len, window_ms=window_ms)
            p = q
        yield seq


@dataclass
class PointInTimeData:
    """Examples as numpy arrays. R requests, N examples, S = ``cfg.seq_len``, H heads.

    Attributes:
        table: item rows (row 0 = padding) with vectors, has-vector flags and hash buckets.
        seq_action (R,S) uint8, seq_item (R,S) int32, seq_ts (R,S) int64: sequences, newest first.
        request_ts (R,) int64; request_user (R,) int32 (index into ``users``).
        ex_request (N,) int32; cand_row (N,) int32; labels (N,H) uint8.
    """

    cfg: DataConfig
    actions: tuple[str, ...]
    users: list[str]
    table: ItemTable
    seq_action: np.ndarray
    seq_item: np.ndarray
    seq_ts: np.ndarray
    request_ts: np.ndarray
    request_user: np.ndarray
    ex_request: np.ndarray
    cand_row: np.ndarray
    labels: np.ndarray
    stats: dict[str, float] = field(default_factory=dict)

    @property
    def heads(self) -> tuple[str, ...]:
        return self.cfg.heads

    def __len__(self) -> int:
        return int(self.ex_request.shape[0])

    def split(self) -> tuple[np.ndarray, np.ndarray]:
        """Example indices ``(train, eval)`` by request time (module docstring: last fraction + purge gap)."""
        if len(self.request_ts) == 0:
            raise ValueError("no requests: the events hold no impressions")
        cut = int(np.quantile(self.request_ts, 1.0 - self.cfg.eval_fraction, method="higher"))
        ts = self.request_ts[self.ex_request]
        eval_idx = np.flatnonzero(ts >= cut)
        train_idx = np.flatnonzero(ts < cut - self.cfg.label_window_ms)
        return train_idx, eval_idx

    def batch(self, idx: np.ndarray, seq_len: int | None = None) -> dict[str, torch.Tensor]:
        """The model batch for examples ``idx`` (contract shapes; ``seq_len`` <= ``cfg.seq_len`` truncates)."""
        s = self.cfg.seq_len if seq_len is None else seq_len
        r = self.ex_request[idx]
        return gather_batch(self.table, self.seq_action[r, :s], self.seq_item[r, :s], self.seq_ts[r, :s],
                            self.request_ts[r], self.cand_row[idx], labels=self.labels[idx])

    def positive_rate(self, idx: np.ndarray | None = None) -> dict[str, float]:
        lab = self.labels if idx is None else self.labels[idx]
        return {h: float(lab[:, k].mean()) if len(lab) else 0.0 for k, h in enumerate(self.heads)}


def build_examples(events: Iterable[Event], codec: SequenceCodec, items: ItemLookup | None,
                   cfg: DataConfig = DataConfig(), *, item_dim: int | None = None,
                   progress: bool = True) -> PointInTimeData:
    """One pass over the events -> :class:`PointInTimeData`.

    Args:
        events: accepted events in any order (e.g. :func:`streams.archive.read_events`, deduplicated).
        codec: the worker's sequence codec (vocabularies, ``max_len``, ``window_ms``).
        items: item vectors (or None: hashed-id fallback only, then ``item_dim`` is required).
    Raises:
        ValueError: a head or the impression action is not in the action vocabulary.
    """
    for name in (*cfg.heads, cfg.impression_action):
        if name not in codec.actions:
            raise ValueError(f"action {name!r} is not in the vocabulary {list(codec.actions)}")
    if cfg.seq_len > codec.max_len:
        log.warning("seq_len %d > the worker's max_len %d: rows are padded past %d", cfg.seq_len,
                    codec.max_len, codec.max_len)
    imp_code = codec.action_code(cfg.impression_action)
    head_of = {codec.action_code(h): k for k, h in enumerate(cfg.heads)}

    per_user: dict[str, list[Act]] = {}
    n_events = 0
    for e in tqdm(events, desc="read events", unit="ev", disable=not progress, mininterval=1.0):
        per_user.setdefault(e.user_id, []).append(codec.to_act(e))
        n_events += 1

    item_index: dict[str, int] = {}
    users: list[str] = []
    rows_action: list[list[int]] = []
    rows_item: list[list[int]] = []
    rows_ts: list[list[int]] = []
    req_ts: list[int] = []
    req_user: list[int] = []
    ex_req: list[int] = []
    ex_item: list[int] = []
    ex_lab: list[tuple[int, ...]] = []
    s = cfg.seq_len
    h = len(cfg.heads)

    def row_of(item: str) -> int:
        r = item_index.get(item)
        if r is None:
            r = item_index[item] = len(item_index) + 1
        return r

    for user in tqdm(sorted(per_user), desc="point-in-time", unit="user", disable=not progress, mininterval=1.0):
        acts = per_user.pop(user)
        acts.sort()
        impressions = [(a[0], a[5]) for a in acts if a[2] == imp_code]
        if not impressions:
            continue
        outcomes: dict[str, list[tuple[int, int]]] = {}  # item -> [(ts, head index)]
        for a in acts:
            k = head_of.get(a[2])
            if k is not None:
                outcomes.setdefault(a[5], []).append((a[0], k))
        reqs = requests_of(impressions, cfg.request_ms)
        uidx = len(users)
        users.append(user)
        for (t_req, imps), seq in zip(reqs, replay_sequences(acts, [r[0] for r in reqs], max_len=codec.max_len,
                                                             window_ms=codec.window_ms), strict=True):
            r = len(req_ts)
            req_ts.append(t_req)
            req_user.append(uidx)
            head = seq[:s]
            rows_action.append([a[2] for a in head])
            rows_ts.append([a[0] for a in head])
            rows_item.append([row_of(a[5]) for a in head])
            labels: dict[str, list[int]] = {}
            for t, item in imps:
                lab = labels.setdefault(item, [0] * h)
                for t2, k in outcomes.get(item, ()):
                    if t <= t2 <= t + cfg.label_window_ms:
                        lab[k] = 1
            for item, lab in labels.items():
                ex_req.append(r)
                ex_item.append(row_of(item))
                ex_lab.append(tuple(lab))

    n_req = len(req_ts)
    seq_action = np.zeros((n_req, s), np.uint8)
    seq_item = np.zeros((n_req, s), np.int32)
    seq_ts = np.zeros((n_req, s), np.int64)
    for r in range(n_req):
        n = len(rows_action[r])
        if n:
            seq_action[r, :n] = rows_action[r]
            seq_item[r, :n] = rows_item[r]
            seq_ts[r, :n] = rows_ts[r]
    table = ItemTable.build(list(item_index), items, item_dim=item_dim, hash_buckets=cfg.hash_buckets)
    data = PointInTimeData(
        cfg=cfg, actions=tuple(codec.actions), users=users, table=table, seq_action=seq_action,
        seq_item=seq_item, seq_ts=seq_ts, request_ts=np.asarray(req_ts, np.int64),
        request_user=np.asarray(req_user, np.int32), ex_request=np.asarray(ex_req, np.int32),
        cand_row=np.asarray(ex_item, np.int32), labels=np.asarray(ex_lab, np.uint8).reshape(-1, h))
    data.stats = {"events": n_events, "users": len(users), "requests": n_req, "examples": len(data),
                  "items": len(item_index), "items_with_vector": int(table.has_vec[1:].sum()),
                  "mean_sequence_length": float((seq_action > 0).sum(1).mean()) if n_req else 0.0,
                  **{f"positive_rate_{k}": v for k, v in data.positive_rate().items()}}
    log.info("point-in-time data: %s", {k: round(v, 4) if isinstance(v, float) else v for k, v in data.stats.items()})
    return data
