"""The pure sequence update: table-driven cases and the properties the worker and offline rebuild rely on."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.events import Event
from streams.sequence import (
    ITEM,
    KEY,
    TS,
    Act,
    SequenceCodec,
    blob_head_ts,
    blob_len,
    decode,
    encode,
    event_key,
    max_blob_bytes,
    max_sequence_length,
    rebuild,
    update,
    update_blob,
)


def act(ts: int, key: int, item: str = "", action: int = 1) -> Act:
    return (ts, key, action, 1, 0, item or f"i{key}")


def keys(seq: list[Act]) -> list[int]:
    return [a[KEY] for a in seq]


CASES = [
    # (case, state, new acts, max_len, window_ms, expected keys newest first)
    ("append to empty", [], [act(10, 1)], 5, 1000, [1]),
    ("append newest", [act(10, 1)], [act(20, 2)], 5, 1000, [2, 1]),
    ("late event inserted at its place", [act(30, 3), act(10, 1)], [act(20, 2)], 5, 1000, [3, 2, 1]),
    ("late event older than all", [act(30, 3), act(20, 2)], [act(10, 1)], 5, 1000, [3, 2, 1]),
    ("duplicate changes nothing", [act(20, 2), act(10, 1)], [act(10, 1)], 5, 1000, [2, 1]),
    ("duplicate within one batch", [], [act(10, 1), act(10, 1), act(20, 2)], 5, 1000, [2, 1]),
    ("truncated to N, oldest dropped", [act(30, 3), act(20, 2)], [act(40, 4)], 2, 1000, [4, 3]),
    ("late event below the N-th is dropped", [act(30, 3), act(20, 2)], [act(10, 1)], 2, 1000, [3, 2]),
    ("window drops actions older than head - window", [act(100, 1)], [act(1200, 2)], 5, 1000, [2]),
    ("window boundary is inclusive", [act(200, 1)], [act(1200, 2)], 5, 1000, [2, 1]),
    ("too-old late event is dropped", [act(5000, 2)], [act(100, 1)], 5, 1000, [2]),
    ("equal ts ordered by key, larger key first", [], [act(10, 5), act(10, 9), act(10, 7)], 5, 1000, [9, 7, 5]),
]


@pytest.mark.parametrize(("case", "state", "new", "max_len", "window", "expected"), CASES, ids=[c[0] for c in CASES])
def test_update_cases(case: str, state: list[Act], new: list[Act], max_len: int, window: int,
                      expected: list[int]) -> None:
    before = list(state)
    out = update(state, new, max_len=max_len, window_ms=window)
    assert keys(out) == expected, case
    assert state == before  # the input is not modified
    blob = encode(state)
    for a in new:  # the stored-blob path agrees, one action at a time
        blob = update_blob(blob, a, max_len=max_len, window_ms=window) or blob
    assert keys(decode(blob)) == expected


def test_blob_helpers_and_empty() -> None:
    assert decode(None) == [] and decode(b"") == [] and decode(encode([])) == []
    seq = [act(30, 3, "ä"), act(10, 1, "b")]
    blob = encode(seq)
    assert blob_len(blob) == 2 and blob_head_ts(blob) == 30 and blob_len(None) == 0 and blob_head_ts(None) is None
    assert update_blob(blob, act(10, 1, "b")) is None  # duplicate: nothing to write
    with pytest.raises(ValueError, match="version"):
        decode(b"\x09" + blob[1:])


def test_codec_maps_events_and_back() -> None:
    codec = SequenceCodec(max_len=3)
    e = Event("e1", "u1", "i9", "save", 1_000, "search", 2500)
    a = codec.to_act(e)
    assert a == (1_000, event_key("e1"), codec.action_code("save"), codec.surfaces.index("search") + 1, 2500, "i9")
    assert codec.to_json(a) == {"ts": 1_000, "action": "save", "item_id": "i9", "surface": "search",
                                "duration_ms": 2500, "event_key": f"{event_key('e1'):016x}"}
    assert codec.to_act(Event("e2", "u1", "i9", "click", 1, "unknown-surface", None))[3] == 0
    assert codec.action_name(0) is None and codec.action_code("impression") == 1


def test_rebuild_per_user_matches_incremental_update() -> None:
    codec = SequenceCodec(max_len=2, window_ms=10_000)
    evs = [Event(f"e{i}", f"u{i % 2}", f"i{i}", "click", 1000 * i, None, None) for i in range(6)]
    built = rebuild(evs + evs[:2], codec)  # duplicates allowed
    assert set(built) == {"u0", "u1"}
    for user, seq in built.items():
        online: list[Act] = []
        for e in reversed([e for e in evs if e.user_id == user]):
            online = codec.update(online, [e])
        assert seq == online and len(seq) == 2 and seq[0][TS] > seq[1][TS]


# ---- properties -------------------------------------------------------------------------------------
item_ids = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)
acts = st.builds(lambda ts, key, a, s, d, i: (ts, key, a, s, d, i),
                 st.integers(0, 50_000), st.integers(0, 2**64 - 1), st.integers(0, 255), st.integers(0, 255),
                 st.integers(0, 2**32 - 1), item_ids)
# a set of distinct events (distinct keys) with a few small-key collisions on ts to exercise tie order
event_sets = st.lists(acts, max_size=40, unique_by=lambda a: a[KEY])
params = st.tuples(st.integers(1, 12), st.integers(1, 60_000))


@settings(max_examples=200, deadline=None)
@given(event_sets, st.randoms(use_true_random=False), params)
def test_order_independence(events: list[Act], rnd: object, p: tuple[int, int]) -> None:
    max_len, window = p
    all_at_once = update([], events, max_len=max_len, window_ms=window)
    shuffled = list(events)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    one_by_one: list[Act] = []
    for a in shuffled:
        one_by_one = update(one_by_one, [a], max_len=max_len, window_ms=window)
    assert one_by_one == all_at_once
    assert len(all_at_once) <= max_len
    assert all(a[TS] >= all_at_once[0][TS] - window for a in all_at_once)
    assert all_at_once == sorted(all_at_once, reverse=True)


@settings(max_examples=200, deadline=None)
@given(event_sets, params)
def test_idempotence(events: list[Act], p: tuple[int, int]) -> None:
    max_len, window = p
    once = update([], events, max_len=max_len, window_ms=window)
    assert update(once, events, max_len=max_len, window_ms=window) == once
    assert update(once, once, max_len=max_len, window_ms=window) == once


@settings(max_examples=300, deadline=None)
@given(event_sets, acts, params)
def test_update_blob_equals_reference(events: list[Act], new: Act, p: tuple[int, int]) -> None:
    max_len, window = p
    state = update([], events, max_len=max_len, window_ms=window)
    blob = encode(state)
    expected = update(state, [new], max_len=max_len, window_ms=window)
    got = update_blob(blob, new, max_len=max_len, window_ms=window)
    assert (got if got is not None else blob) == encode(expected)
    assert (got is None) == (expected == state)


@settings(max_examples=200, deadline=None)
@given(st.lists(acts, max_size=60, unique_by=lambda a: a[KEY]))
def test_encode_decode_round_trip(seq: list[Act]) -> None:
    seq = sorted(seq, reverse=True)
    assert decode(encode(seq)) == seq
    assert [a[ITEM] for a in decode(encode(seq))] == [a[ITEM] for a in seq]


@pytest.mark.parametrize("n", [0, 1, 7, 1869])
def test_max_blob_bytes_is_the_worst_case_encoding(n: int) -> None:
    """128 four-byte characters per item id: the largest blob the parser lets through, byte for byte."""
    seq = [(10_000 - k, k, 1, 0, 0, "\U0001F600" * 128) for k in range(n)]
    assert len(encode(seq)) == max_blob_bytes(n, 128)


def test_max_sequence_length_fits_one_kafka_record() -> None:
    n = max_sequence_length(128, 1_000_000)
    assert max_blob_bytes(n, 128) <= 1_000_000 < max_blob_bytes(n + 1, 128)
