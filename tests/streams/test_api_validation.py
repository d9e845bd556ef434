"""Pure request validation of the feature API (streams/api.py); the HTTP behaviour is in test_api.py."""

from __future__ import annotations

import orjson
import pytest

from streams.api import ApiError, check_user_id, decode_daily, parse_candidates


def body(obj: object) -> bytes:
    return orjson.dumps(obj)


@pytest.mark.parametrize(("raw", "message"), [
    pytest.param(b"", "empty body", id="empty"),
    pytest.param(b"{not json", "not valid JSON", id="not-json"),
    pytest.param(body(["a"]), "must be a JSON object", id="list-not-object"),
    pytest.param(body({"items": ["a"]}), 'missing field "candidates"', id="missing-field"),
    pytest.param(body({"candidates": "a"}), "must be a list", id="string-not-list"),
    pytest.param(body({"candidates": []}), "is empty", id="empty-list"),
    pytest.param(body({"candidates": ["a", ""]}), r"candidates\[1\] must be a non-empty string", id="empty-id"),
    pytest.param(body({"candidates": ["a", 7]}), r"candidates\[1\]", id="number-id"),
    pytest.param(body({"candidates": [None]}), r"candidates\[0\]", id="null-id"),
    pytest.param(body({"candidates": ["x" * 129]}), "at most 128", id="id-too-long"),
    pytest.param(body({"candidates": ["a"] * 11}), r"too many candidates: 11 > 10", id="too-many"),
])
def test_bad_score_bodies_are_400_with_a_message(raw: bytes, message: str) -> None:
    with pytest.raises(ApiError, match=message) as info:
        parse_candidates(raw, max_candidates=10)
    assert info.value.status == 400


@pytest.mark.parametrize("cands", [["a"], ["a", "b", "a"], ["é-ü", "x" * 128], [f"i{i}" for i in range(10)]])
def test_good_score_bodies(cands: list[str]) -> None:
    assert parse_candidates(body({"candidates": cands, "extra": 1}), max_candidates=10) == cands


@pytest.mark.parametrize(("user_id", "ok"), [("u", True), ("x" * 128, True), ("x" * 129, False)])
def test_user_id_length(user_id: str, ok: bool) -> None:
    if ok:
        assert check_user_id(user_id) == user_id
    else:
        with pytest.raises(ApiError, match="1..128 characters") as info:
            check_user_id(user_id)
        assert info.value.status == 400


def test_decode_daily_accepts_record_bytes_and_dicts() -> None:
    rec = {"user_id": "u", "model_version": "v", "date": "2026-11-20", "vector": [0.5]}
    assert decode_daily(orjson.dumps(rec)) == rec
    assert decode_daily(rec) == rec
    assert decode_daily(None) is None
