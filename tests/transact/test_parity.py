"""Training/serving parity: offline point-in-time sequences == the worker's stored state, bit for bit.

The worker (``streams/tables.py``) applies ``streams.sequence.update_blob`` once per event, in ARRIVAL
order (late events, producer retries and replays included). :mod:`transact.data` replays the archive in
event-time order through ``streams.sequence.update``. Here both run on the same random streams; for every
request the worker's blob after all events with ``ts < t_req`` is decoded and compared with the offline
row, and the tensors :func:`transact.features.build_batch` makes from the worker's sequences are compared
with :meth:`PointInTimeData.batch`. Tolerance: exact equality (same integers, same float32 vectors).
(A live-worker comparison against real Kafka can be added by the lead on top of this.)
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from streams.events import Event
from streams.items import MemoryItemStore
from streams.sequence import SequenceCodec, decode, encode
from transact.data import DataConfig, build_examples
from transact.features import build_batch, build_batch_from_blobs

T0 = 1_700_000_000_000
ACTIONS = ["impression"] * 4 + ["click", "save", "hide", "closeup", "share"]


def random_stream(seed: int, n: int = 1_500, users: int = 6) -> list[Event]:
    rng = random.Random(seed)
    events = [Event(f"e{k}", f"u{rng.randrange(users)}", f"i{rng.randrange(40)}", rng.choice(ACTIONS),
                    T0 + rng.randrange(0, 6 * 3_600_000), rng.choice([None, "homefeed", "search"]),
                    rng.choice([None, 0, 1500])) for k in range(n)]
    # equal timestamps break ties by event key, exactly like the store
    events += [Event(f"tie{k}", "u0", f"i{k}", "click", T0 + 3_600_000) for k in range(5)]
    return events


def arrival_order(events: list[Event], rng: random.Random) -> list[Event]:
    """Roughly time-ordered with out-of-order delivery (jitter up to 10 min) and 10% duplicates."""
    noisy = sorted(events, key=lambda e: e.ts + rng.randrange(0, 600_000))
    out: list[Event] = []
    for e in noisy:
        out.append(e)
        if rng.random() < 0.1:
            out.append(e)
    return out


@pytest.mark.parametrize("seed, max_len, window_days", [(1, 100, 30.0), (2, 20, 30.0), (3, 30, 0.05)])
def test_offline_sequences_equal_worker_state(seed: int, max_len: int, window_days: float) -> None:
    codec = SequenceCodec(max_len=max_len, window_ms=int(window_days * 86_400_000))
    events = random_stream(seed)
    rng = random.Random(seed)
    store = MemoryItemStore(3, [(f"i{k}", np.float32([k, -k, 0.5])) for k in range(0, 40, 2)])
    data = build_examples(events, codec, store, DataConfig(seq_len=max_len), progress=False)
    arrivals: dict[str, list[Event]] = {}
    for e in arrival_order(events, rng):
        arrivals.setdefault(e.user_id, []).append(e)
    checked = 0
    worker_seqs, rows, worker_blobs = [], [], []
    for r in range(len(data.request_ts)):
        user, t_req = data.users[data.request_user[r]], int(data.request_ts[r])
        blob = None
        for e in arrivals[user]:  # the worker: one update_blob per delivered event of this user before t_req
            if e.ts < t_req:
                new = codec.update_blob(blob, e)
                blob = blob if new is None else new
        worker = decode(blob)
        valid = data.seq_action[r] > 0
        assert [a[0] for a in worker] == data.seq_ts[r][valid].tolist()
        assert [a[2] for a in worker] == data.seq_action[r][valid].tolist()
        inv = {v: k for k, v in data.table.index.items()}
        assert [a[5] for a in worker] == [inv[int(i)] for i in data.seq_item[r][valid]]
        worker_seqs.append(worker)
        worker_blobs.append(blob)
        rows.append(r)
        checked += 1
    assert checked > 50
    # features parity: the serving path (build_batch on the worker's sequences) == the training batch
    ex = np.asarray([int(np.flatnonzero(data.ex_request == r)[0]) for r in rows])
    inv = {v: k for k, v in data.table.index.items()}
    served = build_batch(worker_seqs, data.request_ts[rows].tolist(), store, max_len,
                         cand_ids=[inv[int(c)] for c in data.cand_row[ex]])
    trained = data.batch(ex)
    assert served.keys() == trained.keys() - {"labels"}
    for k, v in served.items():
        assert v.dtype == trained[k].dtype, k
        assert torch.equal(v, trained[k]), k
    # the realtime encoder's path: the worker's blobs read as columns == build_batch on the decoded sequences
    req = data.request_ts[rows].tolist()
    assert_same_batch(build_batch_from_blobs(worker_blobs, req, store, max_len),
                      build_batch(worker_seqs, req, store, max_len))


def assert_same_batch(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys()
    for k, v in got.items():
        assert v.dtype == want[k].dtype and torch.equal(v, want[k]), k


def test_batch_from_blobs_truncates_and_handles_empty_and_unicode() -> None:
    store = MemoryItemStore(2, [("a", np.float32([1, 2])), ("pin-é€😀", np.float32([3, 4]))])
    seqs = [[(300, 1, 2, 1, 5, "a"), (200, 2, 1, 0, 0, "pin-é€😀"), (100, 3, 3, 0, 0, "b")],
            [], [(50, 9, 7, 2, 0, "b")]]
    blobs = [encode(seqs[0]), None, encode(seqs[2])]
    for seq_len in (1, 2, 3, 5):
        assert_same_batch(build_batch_from_blobs(blobs, [400, 500, 600], store, seq_len),
                          build_batch(seqs, [400, 500, 600], store, seq_len))
    assert_same_batch(build_batch_from_blobs([b"", blobs[0]], 7, None, 4, item_dim=2),
                      build_batch([[], seqs[0]], [7], None, 4, item_dim=2))
    with pytest.raises(ValueError, match="version"):
        build_batch_from_blobs([b"\x07" + blobs[0][1:]], 1, store, 3)


def test_build_batch_one_user_many_candidates_and_truncation() -> None:
    store = MemoryItemStore(2, [("a", np.float32([1, 2]))])
    seq = [(300, 1, 2, 0, 0, "a"), (200, 2, 1, 0, 0, "b"), (100, 3, 1, 0, 0, "a")]
    b = build_batch([seq], [400], store, 2, cand_ids=["a", "b", "c"])
    assert b["action"].tolist() == [[2, 1]] * 3          # truncated to the 2 newest, repeated per candidate
    assert b["action_ts"].tolist() == [[300, 200]] * 3
    assert b["item_has_vec"].tolist() == [[True, False]] * 3
    assert b["item_vec"][0, 0].tolist() == [1.0, 2.0] and b["item_vec"][0, 1].tolist() == [0.0, 0.0]
    assert b["cand_has_vec"].tolist() == [True, False, False]
    assert b["request_ts"].tolist() == [400] * 3
    assert (b["item_hash"][:, :2] > 0).all() and b["cand_hash"][1] != b["cand_hash"][2]
    free = build_batch([seq, []], [400, 500], None, 4, item_dim=2)
    assert "cand_vec" not in free and free["action"].tolist() == [[2, 1, 1, 0], [0, 0, 0, 0]]
    assert free["item_hash"][1].tolist() == [0, 0, 0, 0]
    with pytest.raises(ValueError, match="expects 3"):
        build_batch([seq], [400], store, 2, item_dim=3)
