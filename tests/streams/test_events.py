"""Event v1 validation (DESIGN.md contract): one bad input per rejection reason, plus property tests."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.events import Event, EventParser, Rejection, encode_event
from streams.settings import DEFAULT_ACTIONS, EventSettings

NOW = 1_750_000_000_000
VALID = {"event_id": "e1", "user_id": "u1", "item_id": "i1", "action": "click", "ts": NOW - 1000,
         "surface": "homefeed", "duration_ms": 1200}


def _with(**changes: object) -> bytes:
    d = dict(VALID)
    for k, v in changes.items():
        if v is _DROP:
            d.pop(k)
        else:
            d[k] = v
    return orjson.dumps(d)


_DROP = object()
parser = EventParser()

BAD_INPUTS = [
    # (case, raw bytes, exact reason)
    ("too large", _with(item_id="i" * 100, surface="x" * 17_000), "too_large"),
    ("not json", b"{not json", "invalid_json"),
    ("not utf-8", b'{"event_id": "\xff\xfe"}', "invalid_json"),
    ("empty", b"", "invalid_json"),
    ("a list", b"[1, 2, 3]", "not_an_object"),
    ("a number", b"42", "not_an_object"),
    ("no event_id", _with(event_id=_DROP), "missing_field:event_id"),
    ("no user_id", _with(user_id=_DROP), "missing_field:user_id"),
    ("null user_id", _with(user_id=None), "missing_field:user_id"),
    ("no item_id", _with(item_id=_DROP), "missing_field:item_id"),
    ("no action", _with(action=_DROP), "missing_field:action"),
    ("no ts", _with(ts=_DROP), "missing_field:ts"),
    ("numeric user_id", _with(user_id=42), "invalid_type:user_id"),
    ("list item_id", _with(item_id=["i1"]), "invalid_type:item_id"),
    ("string ts", _with(ts="1750000000000"), "invalid_type:ts"),
    ("float ts", _with(ts=1.75e12), "invalid_type:ts"),
    ("bool ts", _with(ts=True), "invalid_type:ts"),
    ("numeric surface", _with(surface=3), "invalid_type:surface"),
    ("string duration", _with(duration_ms="5"), "invalid_type:duration_ms"),
    ("empty user_id", _with(user_id=""), "invalid_value:user_id"),
    ("user_id too long", _with(user_id="u" * 129), "invalid_value:user_id"),
    ("NUL in item_id", _with(item_id="a\x00b"), "invalid_value:item_id"),
    ("surface too long", _with(surface="s" * 129), "invalid_value:surface"),
    ("negative duration", _with(duration_ms=-1), "invalid_value:duration_ms"),
    ("unknown action", _with(action="like"), "unknown_action"),
    ("ts 6 min ahead", _with(ts=NOW + 6 * 60_000), "ts_in_future"),
    ("ts 31 days old", _with(ts=NOW - 31 * 86_400_000), "ts_too_old"),
]


@pytest.mark.parametrize(("case", "raw", "reason"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_each_bad_input_is_rejected_with_its_reason(case: str, raw: bytes, reason: str) -> None:
    result = parser.parse(raw, now=NOW)
    assert isinstance(result, Rejection), case
    assert result.reason == reason
    assert result.error  # a human explanation comes with every reason


def test_every_documented_reason_has_a_case() -> None:
    documented = {"too_large", "invalid_json", "not_an_object", "missing_field", "invalid_type", "invalid_value",
                  "unknown_action", "ts_in_future", "ts_too_old"}
    assert {reason.split(":")[0] for _, _, reason in BAD_INPUTS} == documented


def test_valid_event_parses_and_unknown_fields_are_kept_out() -> None:
    raw = _with(extra="x", nested={"a": [1, 2]})
    e = parser.parse(raw, now=NOW)
    assert e == Event("e1", "u1", "i1", "click", NOW - 1000, "homefeed", 1200)
    assert orjson.loads(encode_event(e)) == VALID  # extras are not carried forward


def test_optional_fields_may_be_absent_and_limits_are_inclusive() -> None:
    e = parser.parse(_with(surface=_DROP, duration_ms=_DROP, ts=NOW + 300_000, user_id="u" * 128), now=NOW)
    assert isinstance(e, Event) and e.surface is None and e.duration_ms is None
    assert isinstance(parser.parse(_with(ts=NOW - 30 * 86_400_000), now=NOW), Event)


def test_vocabulary_and_limits_come_from_settings() -> None:
    s = EventSettings(actions=("view", "buy"), future_tolerance_ms=0, window_days=1, max_event_bytes=512)
    p = EventParser.from_settings(s)
    assert isinstance(p.parse(_with(action="view", ts=NOW), now=NOW), Event)
    assert p.parse(_with(action="click", ts=NOW), now=NOW).reason == "unknown_action"  # type: ignore[union-attr]
    assert p.parse(_with(action="buy", ts=NOW + 1), now=NOW).reason == "ts_in_future"  # type: ignore[union-attr]
    assert p.parse(_with(action="buy", ts=NOW - 2 * 86_400_000), now=NOW).reason == "ts_too_old"  # type: ignore[union-attr]
    assert p.parse(_with(action="buy", ts=NOW, extra="z" * 600), now=NOW).reason \
        == "too_large"  # type: ignore[union-attr]


chars = st.characters(blacklist_categories=("Cs",))  # lone surrogates are not UTF-8: no producer can send them
text = st.text(chars, min_size=1, max_size=128)
events = st.builds(Event, event_id=text, user_id=text, item_id=text.filter(lambda s: "\x00" not in s), action=st.sampled_from(DEFAULT_ACTIONS),
                   ts=st.integers(NOW - 30 * 86_400_000, NOW + 300_000),
                   surface=st.none() | st.text(chars, max_size=128), duration_ms=st.none() | st.integers(0, 2**40))


@settings(max_examples=300, deadline=None)
@given(events)
def test_round_trip_encode_parse(e: Event) -> None:
    raw = encode_event(e)
    if len(raw) > parser.max_bytes:  # 4 fields of 128 4-byte chars can exceed 16 KiB only in theory
        return
    assert parser.parse(raw, now=NOW) == e


json_values = st.recursive(st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False) | st.text(chars),
                           lambda children: st.lists(children, max_size=4)
                           | st.dictionaries(st.text(chars, max_size=10), children, max_size=4), max_leaves=12)
event_like = st.fixed_dictionaries({}, optional={k: json_values | st.just(v) for k, v in VALID.items()})


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512) | st.builds(orjson.dumps, json_values) | st.builds(orjson.dumps, event_like))
def test_arbitrary_input_never_raises(raw: bytes) -> None:
    result = parser.parse(raw, now=NOW)
    assert isinstance(result, Event | Rejection)
    if isinstance(result, Rejection):
        assert result.reason and result.error
