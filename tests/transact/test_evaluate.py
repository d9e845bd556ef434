"""HIT@k and AUC: table-driven checks of the exact formulas in transact/evaluate.py."""

from __future__ import annotations

import numpy as np
import pytest

from transact.evaluate import auc, hit_at_k


def test_hit_at_3_counts_positives_in_top3_per_request() -> None:
    # request 0: 5 candidates, positives at scores .9 and .1 -> 1 in the top 3
    # request 1: 4 candidates, positives at .8 and .7 -> 2 in the top 3
    # request 2: 3 candidates -> not ranked (every candidate is "top 3")
    scores = np.array([.9, .5, .4, .3, .1, .8, .7, .2, .1, .9, .8, .7])
    labels = np.array([1, 0, 0, 0, 1, 1, 1, 0, 0, 1, 1, 1])
    groups = np.array([0] * 5 + [1] * 4 + [2] * 3)
    hit, rand, n = hit_at_k(scores, labels, groups, k=3)
    assert n == 2
    assert hit == pytest.approx((1 + 2) / 2)
    assert rand == pytest.approx((3 / 5 * 2 + 3 / 4 * 2) / 2)


def test_negative_head_ranks_ascending() -> None:
    # hide: the top 3 are the 3 LEAST likely to be hidden; a good model keeps the hidden item out
    scores = np.array([.9, .1, .2, .3])
    labels = np.array([1, 0, 0, 0])
    groups = np.zeros(4, int)
    assert hit_at_k(scores, labels, groups, descending=False)[0] == 0.0
    assert hit_at_k(-scores, labels, groups, descending=False)[0] == 1.0


def test_ties_are_broken_by_the_seeded_shuffle_not_by_input_order() -> None:
    # a constant model: input order puts the positive first, but the shuffle must make it ~ random
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(2_000), 10)
    labels = np.zeros(20_000, int)
    labels[::10] = 1  # the first candidate of each request is the positive
    hit, rand, _ = hit_at_k(np.zeros(20_000), labels, groups, seed=int(rng.integers(1 << 30)))
    assert rand == pytest.approx(0.3)
    assert hit == pytest.approx(0.3, abs=0.03)  # input order would give 1.0
    assert hit_at_k(np.zeros(20_000), labels, groups, seed=5) == hit_at_k(np.zeros(20_000), labels, groups, seed=5)


def test_groups_need_not_be_contiguous() -> None:
    scores = np.array([.9, .8, .1, .2, .3, .7, .6, .5])
    labels = np.array([1, 0, 0, 0, 1, 1, 0, 0])
    groups = np.array([0, 1, 0, 1, 0, 1, 0, 1])  # 4 candidates each
    hit, _, n = hit_at_k(scores, labels, groups)
    # group 0: scores .9 .1 .3 .6 -> top3 .9 .6 .3 -> positives .9 and .3 = 2; group 1: .8 .2 .7 .5 -> top3 .8 .7 .5 -> .7 = 1
    assert n == 2 and hit == pytest.approx(1.5)


@pytest.mark.parametrize("scores, labels, expected", [
    ([.1, .2, .3, .4], [0, 0, 1, 1], 1.0),
    ([.4, .3, .2, .1], [0, 0, 1, 1], 0.0),
    ([.5, .5, .5, .5], [0, 1, 0, 1], 0.5),   # ties count one half
    ([.1, .4, .35, .8], [0, 0, 1, 1], 0.75),  # the classic sklearn example
])
def test_auc_table(scores: list[float], labels: list[int], expected: float) -> None:
    assert auc(np.array(scores), np.array(labels)) == pytest.approx(expected)


def test_auc_with_one_class_is_nan_and_matches_pairwise_count() -> None:
    assert np.isnan(auc(np.array([.1, .2]), np.array([1, 1])))
    rng = np.random.default_rng(3)
    s, y = rng.integers(0, 20, 300).astype(float), rng.integers(0, 2, 300)
    pos, neg = s[y == 1], s[y == 0]
    pairwise = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (len(pos) * len(neg))
    assert auc(s, y) == pytest.approx(pairwise)


def test_hits_per_request_and_standard_error() -> None:
    from transact.evaluate import hits_per_request, standard_error
    scores = np.array([.9, .5, .4, .3, .1, .8, .7, .2, .1, .9, .8, .7])
    labels = np.array([1, 0, 0, 0, 1, 1, 1, 0, 0, 1, 1, 1])
    groups = np.array([0] * 5 + [1] * 4 + [2] * 3)
    hits, rand = hits_per_request(scores, labels, groups, k=3)
    assert hits.tolist() == [1.0, 2.0] and rand == pytest.approx([3 / 5 * 2, 3 / 4 * 2])
    assert standard_error(hits) == pytest.approx(np.std([1.0, 2.0], ddof=1) / np.sqrt(2))
    assert np.isnan(standard_error(hits[:1]))


def test_markdown_table_shows_standard_error_when_known() -> None:
    from transact.evaluate import markdown_table
    row = {"heads": {"click": {"hit@3": 0.5, "hit@3_se": 0.0123, "random_hit@3": 0.4, "auc": 0.6,
                               "better": "higher"}}}
    table = markdown_table({"m": row}, ["click"])
    assert "| m | 0.5000 ± 0.0123 | 0.6000 |" in table
    del row["heads"]["click"]["hit@3_se"]
    assert "| m | 0.5000 | 0.6000 |" in markdown_table({"m": row}, ["click"])


def test_paired_delta_is_the_mean_difference_with_its_own_standard_error() -> None:
    from transact.evaluate import paired_delta, standard_error
    a = {"heads": {"click": {"hit@3_per_request": [1.0, 2.0, 0.0, 1.0]}}}
    b = {"heads": {"click": {"hit@3_per_request": [0.0, 2.0, 0.0, 0.0]}}}
    d, se = paired_delta(a, b, "click")
    assert d == pytest.approx(0.5) and se == pytest.approx(standard_error(np.array([1.0, 0.0, 0.0, 1.0])))
    with pytest.raises(ValueError):
        paired_delta(a, {"heads": {"click": {"hit@3_per_request": [1.0]}}}, "click")
