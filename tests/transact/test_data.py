"""Point-in-time examples: nothing at or after the request time leaks into its sequence; labels; split."""

from __future__ import annotations

import random

import numpy as np
import pytest

from streams.events import Event
from streams.items import MemoryItemStore
from streams.sequence import SequenceCodec
from transact.data import DataConfig, build_examples, requests_of

MIN = 60_000
T0 = 1_700_000_000_000 - (1_700_000_000_000 % MIN)  # bucket-aligned
CODEC = SequenceCodec(max_len=100)


def ev(n: int, user: str, item: str, action: str, ts: int) -> Event:
    return Event(f"e{n}", user, item, action, ts)


def items(*ids: str) -> MemoryItemStore:
    rng = np.random.default_rng(0)
    return MemoryItemStore(4, [(i, rng.normal(size=4).astype(np.float32)) for i in ids])


def test_requests_start_at_first_impression_and_span_request_ms() -> None:
    imps = [(T0 + 1, "a"), (T0 + 60_000, "b"), (T0 + 60_001, "c"), (T0 + 5 * MIN + 7, "d")]
    assert requests_of(imps, MIN) == [(T0 + 1, [(T0 + 1, "a"), (T0 + 60_000, "b")]),
                                      (T0 + 60_001, [(T0 + 60_001, "c")]), (T0 + 5 * MIN + 7, [(T0 + 5 * MIN + 7, "d")])]


def test_sequence_is_strictly_before_request_time_and_labels_follow_window() -> None:
    events = [
        ev(1, "u", "x", "impression", T0),
        ev(2, "u", "x", "click", T0 + 1_000),            # before request 2
        ev(3, "u", "y", "save", T0 + 5 * MIN - 1),       # 1 ms before request 2: in its sequence
        ev(4, "u", "a", "impression", T0 + 5 * MIN),     # request 2 at T0+5min
        ev(5, "u", "b", "impression", T0 + 5 * MIN + 10),
        ev(6, "u", "a", "click", T0 + 5 * MIN),          # same ms as the request: label, NOT sequence
        ev(7, "u", "b", "hide", T0 + 5 * MIN + 10 + 600_000),   # exactly at the end of b's label window
        ev(8, "u", "a", "save", T0 + 5 * MIN + 600_001),  # 1 ms past a's window: not a label
        ev(9, "v", "a", "click", T0 + 5 * MIN + 1),       # another user's click never labels u
    ]
    random.Random(1).shuffle(events)
    data = build_examples(events, CODEC, items("x", "y", "a"), DataConfig(seq_len=8, request_ms=MIN), progress=False)
    assert data.stats["requests"] == 2 and len(data) == 3
    r2 = int(np.flatnonzero(data.request_ts == T0 + 5 * MIN)[0])
    seq_ts = data.seq_ts[r2][data.seq_action[r2] > 0]
    assert seq_ts.tolist() == [T0 + 5 * MIN - 1, T0 + 1_000, T0]  # newest first, all < t_req
    assert [CODEC.action_name(c) for c in data.seq_action[r2][:3]] == ["save", "click", "impression"]
    inv = {v: k for k, v in data.table.index.items()}
    labels = {inv[int(data.cand_row[i])]: data.labels[i].tolist() for i in np.flatnonzero(data.ex_request == r2)}
    assert labels == {"a": [1, 0, 0], "b": [0, 0, 1]}  # heads click, save, hide
    r1 = int(np.flatnonzero(data.request_ts == T0)[0])
    assert (data.seq_action[r1] == 0).all()  # the first request of a user sees an empty sequence
    x_ex = int(np.flatnonzero(data.ex_request == r1)[0])
    assert data.labels[x_ex].tolist() == [1, 0, 0]
    # b has no vector in the store: hashed fallback only
    assert not data.table.has_vec[data.table.index["b"]] and data.table.hash[data.table.index["b"]] > 0


def test_no_leak_property_on_random_streams() -> None:
    rng = random.Random(7)
    actions = ["impression", "impression", "click", "save", "hide", "closeup"]
    events = [ev(n, f"u{rng.randrange(5)}", f"i{rng.randrange(30)}", rng.choice(actions),
                 T0 + rng.randrange(0, 3 * 3_600_000)) for n in range(3_000)]
    data = build_examples(events, SequenceCodec(max_len=50), None, DataConfig(seq_len=50), item_dim=4,
                          progress=False)
    assert len(data) > 100
    valid = data.seq_action > 0
    assert (np.where(valid, data.seq_ts, -1) < data.request_ts[:, None]).all()
    # each sequence holds exactly the min(50, #events before t_req) newest events of that user (window is 30 d)
    by_user: dict[str, list[int]] = {}
    for e in events:
        by_user.setdefault(e.user_id, []).append(e.ts)
    for r in range(0, len(data.request_ts), 7):
        before = sorted((t for t in by_user[data.users[data.request_user[r]]] if t < data.request_ts[r]), reverse=True)
        assert data.seq_ts[r][valid[r]].tolist() == before[:50]


def test_split_is_by_time_with_purge_gap() -> None:
    events = []
    for k in range(100):
        events.append(ev(k, f"u{k % 3}", f"i{k}", "impression", T0 + k * 20 * MIN))
    data = build_examples(events, CODEC, None, DataConfig(eval_fraction=0.25, label_window_ms=10 * MIN),
                          item_dim=4, progress=False)
    train, evl = data.split()
    t_train, t_eval = data.request_ts[data.ex_request[train]], data.request_ts[data.ex_request[evl]]
    assert t_train.max() < t_eval.min() - 10 * MIN
    assert len(evl) == 25 and len(train) == 75
    b = data.batch(evl[:5], seq_len=4)
    assert b["action"].shape == (5, 4) and b["labels"].shape == (5, 3) and b["cand_vec"].shape == (5, 4)


def test_unknown_head_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="'repin' is not in the vocabulary"):
        build_examples([], CODEC, None, DataConfig(heads=("repin",)), item_dim=4, progress=False)


def test_movielens_conversion_on_a_tiny_copy(tmp_path) -> None:
    from streams.archive import read_events
    from streams.items import MemoryItemStore
    from transact.movielens import ITEM_DIM, convert, rating_action

    src = tmp_path / "ml-100k"
    src.mkdir()
    (src / "ml-100k.inter").write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                                       "1\t10\t5\t881250949\n1\t20\t3\t881250950\n2\t10\t1\t881250000\n"
                                       "2\t20\tbad\t881250001\n1\t30\t4\t881400000\n")
    (src / "ml-100k.item").write_text("item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
                                      "10\tToy Story\t1995\tAnimation Children's Comedy\n20\tOld\t\tDrama\n")
    counts = convert(src, tmp_path / "out")
    assert counts["ratings"] == 4 and counts["events_impression"] == 4 and counts["items"] == 2
    assert [rating_action(r) for r in (5, 4, 3, 2, 1)] == ["save", "save", "click", "hide", "hide"]
    events = list(read_events(tmp_path / "out" / "events.jsonl"))
    assert [e.ts for e in events] == sorted(e.ts for e in events)
    assert ("u1", "m10", "save", 881250949001) in {(e.user_id, e.item_id, e.action, e.ts) for e in events}
    store = MemoryItemStore.from_file(tmp_path / "out" / "items.jsonl")
    assert store.dim == ITEM_DIM
    toy, old = store.get("m10"), store.get("m20")
    assert toy is not None and old is not None and old[-1] == 1.0 and toy[-1] == 0.0  # unknown-year flag
    # a day of ratings is one request; ratings of later days see the earlier ones in their sequence
    data = build_examples(events, CODEC, store, DataConfig(request_ms=86_400_000), progress=False)
    assert data.stats["requests"] == 3 and len(data) == 4
    r_late = int(np.argmax(data.request_ts))
    assert (data.seq_action[r_late] > 0).sum() == 4  # u1's two earlier impressions + save + click
