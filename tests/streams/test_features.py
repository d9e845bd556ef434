"""Table-driven tests of the pure feature functions (streams/features.py); no Kafka, no Faust."""

from __future__ import annotations

from array import array

import orjson
import pytest

from streams.features import DAY_MS, HOUR_MS, assemble_features, sequence_stats, vector_from_bytes
from streams.sequence import Act, SequenceCodec, event_key, update

NOW = 1_700_000_000_000
MIN = 60_000
CODEC = SequenceCodec(("impression", "click", "save", "hide"), ("homefeed", "search"), max_len=100,
                      window_ms=30 * DAY_MS)


def act(ago_ms: int, action: str, item: str = "i1", eid: str | None = None) -> Act:
    ts = NOW - ago_ms
    return (ts, event_key(eid or f"{action}-{ts}-{item}"), CODEC.action_code(action), 1, 0, item)


def seq_of(*acts: Act) -> list[Act]:
    return update([], acts, max_len=CODEC.max_len, window_ms=CODEC.window_ms)


def zeros() -> dict[str, int]:
    return dict.fromkeys(CODEC.actions, 0)


CASES = [
    pytest.param([], {"1h": {}, "24h": {}, "window": {}}, None, {}, id="empty"),
    pytest.param([act(5 * MIN, "click")], {"1h": {"click": 1}, "24h": {"click": 1}, "window": {"click": 1}},
                 300.0, {"click": 300.0}, id="one-recent-click"),
    pytest.param([act(2 * HOUR_MS, "save"), act(30 * MIN, "click"), act(10 * MIN, "click")],
                 {"1h": {"click": 2}, "24h": {"click": 2, "save": 1}, "window": {"click": 2, "save": 1}},
                 600.0, {"click": 600.0, "save": 7200.0}, id="1h-vs-24h"),
    pytest.param([act(3 * DAY_MS, "hide"), act(25 * HOUR_MS, "impression")],
                 {"1h": {}, "24h": {}, "window": {"hide": 1, "impression": 1}},
                 90_000.0, {"impression": 90_000.0, "hide": 259_200.0}, id="older-than-24h"),
    # stored actions are kept relative to the sequence's newest action; relative to "now" some fall outside
    pytest.param([act(40 * DAY_MS, "save"), act(35 * DAY_MS, "click")],
                 {"1h": {}, "24h": {}, "window": {}},
                 35 * 86_400.0, {"click": 35 * 86_400.0, "save": 40 * 86_400.0}, id="inactive-beyond-window"),
    # future tolerance: an event 2 min ahead of "now" counts everywhere, recency clamps to 0
    pytest.param([act(-2 * MIN, "click"), act(HOUR_MS + 1, "click")],
                 {"1h": {"click": 1}, "24h": {"click": 2}, "window": {"click": 2}},
                 0.0, {"click": 0.0}, id="future-ts-clamped"),
    pytest.param([act(HOUR_MS, "click")], {"1h": {"click": 1}, "24h": {"click": 1}, "window": {"click": 1}},
                 3600.0, {"click": 3600.0}, id="1h-boundary-inclusive"),
]


@pytest.mark.parametrize(("acts", "counts", "since_last", "since_by_action"), CASES)
def test_sequence_stats(acts: list[Act], counts: dict[str, dict[str, int]], since_last: float | None,
                        since_by_action: dict[str, float]) -> None:
    seq = seq_of(*acts)
    got = sequence_stats(seq, NOW, CODEC)
    assert got["sequence_length"] == len(acts)
    assert got["last_action_ts"] == (max(a[0] for a in acts) if acts else None)
    assert got["seconds_since_last_action"] == since_last
    for window, expected in counts.items():
        assert got["counts"][window] == {**zeros(), **expected}, window
    assert got["seconds_since_last"] == {**dict.fromkeys(CODEC.actions), **since_by_action}


def test_stats_count_only_the_stored_last_n() -> None:
    codec = SequenceCodec(CODEC.actions, CODEC.surfaces, max_len=3, window_ms=CODEC.window_ms)
    seq = update([], [act(i * MIN, "click") for i in range(10)], max_len=3, window_ms=codec.window_ms)
    got = sequence_stats(seq, NOW, codec)
    assert got["sequence_length"] == 3
    assert got["counts"]["1h"]["click"] == 3  # saturates at N: documented behaviour


def test_unknown_action_code_counts_in_length_only() -> None:
    seq = seq_of(act(MIN, "click"))
    seq.append((NOW - 2 * MIN, 7, 99, 0, 0, "x"))  # code 99: vocabulary shrank after it was stored
    got = sequence_stats(seq, NOW, CODEC)
    assert got["sequence_length"] == 2
    assert sum(got["counts"]["window"].values()) == 1


DAILY = {"user_id": "u1", "model_version": "pf-2026-11-20", "date": "2026-11-20", "vector": [0.5, -0.25]}


@pytest.mark.parametrize(("seq", "realtime", "daily", "expected"), [
    pytest.param([], None, None,
                 {"realtime": [], "daily": None, "daily_date": None, "daily_model_version": None,
                  "sequence_length": 0, "last_action_ts": None}, id="new-user-empty"),
    pytest.param(seq_of(act(MIN, "save")), [0.1, 0.2], None,
                 {"realtime": [0.1, 0.2], "daily": None, "daily_date": None, "sequence_length": 1,
                  "last_action_ts": NOW - MIN}, id="realtime-only"),
    pytest.param([], None, DAILY,
                 {"realtime": [], "daily": [0.5, -0.25], "daily_date": "2026-11-20",
                  "daily_model_version": "pf-2026-11-20", "sequence_length": 0}, id="daily-only"),
])
def test_assemble_features(seq: list[Act], realtime: list[float] | None, daily: dict[str, object] | None,
                           expected: dict[str, object]) -> None:
    got = assemble_features("u1", seq, realtime, daily, "transact-v3", NOW, CODEC)
    assert got["user_id"] == "u1"
    assert got["model_version"] == "transact-v3"
    for key, value in expected.items():
        assert got[key] == value, key
    contract = {"user_id", "realtime", "daily", "daily_date", "sequence_length", "last_action_ts", "model_version"}
    assert contract <= got.keys()
    assert orjson.loads(orjson.dumps(got)) == got  # JSON-serialisable as is


def test_vector_from_bytes_roundtrip_and_errors() -> None:
    values = [0.5, -1.25, 3.0]
    assert vector_from_bytes(array("f", values).tobytes()) == values
    assert vector_from_bytes(None) is None
    assert vector_from_bytes(b"") == []
    with pytest.raises(ValueError, match="multiple of 4"):
        vector_from_bytes(b"\x00" * 6)
