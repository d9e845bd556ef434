"""``streams.api.score_body``: the score route's answer built from a real (small, untrained) TransAct model.

The HTTP route itself is exercised in test_api.py (503 "model not loaded" until a worker loads a model);
this checks the contract shape and that the answer carries exactly the scorer's probabilities.
"""

from __future__ import annotations

import numpy as np
import orjson
import pytest
import torch

from streams.api import score_body
from streams.sequence import Act, event_key
from transact.inference import Scorer
from transact.model import RankingConfig, RankingModel

NOW = 1_700_000_000_000


def scorer(daily_dim: int = 0) -> Scorer:
    torch.manual_seed(0)
    return Scorer(RankingModel(RankingConfig(daily_dim=daily_dim)).eval(), None,
                  vocab={"model_version": "transact-test-1"})


def seq(n: int) -> list[Act]:
    return [(NOW - 1_000 - k * 60_000, event_key(f"e{k}"), 1 + k % 7, 1, 0, f"i{k % 13}") for k in range(n)]


@pytest.mark.parametrize("history", [0, 1, 30])
def test_score_body_has_one_probability_per_head_per_candidate(history: int) -> None:
    s = scorer()
    candidates = ["i1", "i2", "i-unknown", "i1"]
    body = orjson.loads(score_body(s, seq(history), candidates, NOW, None))
    assert body["model_version"] == "transact-test-1"
    assert [row["item_id"] for row in body["scores"]] == candidates  # request order, duplicates kept
    expected = s.score(seq(history), candidates, NOW, None)
    for row, probs in zip(body["scores"], expected.tolist(), strict=True):
        assert set(row) == {"item_id", *s.heads}
        assert [row[h] for h in s.heads] == probs
        assert all(0.0 <= row[h] <= 1.0 for h in s.heads)


def test_score_body_uses_the_daily_vector_and_checks_its_size() -> None:
    s = scorer(daily_dim=8)
    record = {"user_id": "u", "model_version": "pf-1", "date": "2026-11-20",
              "vector": np.linspace(-1, 1, 8).tolist()}
    with_daily = orjson.loads(score_body(s, seq(5), ["i1"], NOW, record))
    without = orjson.loads(score_body(s, seq(5), ["i1"], NOW, None))
    assert with_daily["scores"] != without["scores"]
    with pytest.raises(ValueError, match="daily vector has 3 values"):
        score_body(s, seq(5), ["i1"], NOW, {**record, "vector": [0.1, 0.2, 0.3]})
