"""Evaluation pieces: user split, targets after the cut, P90 coverage, recall against a known ranking."""

from __future__ import annotations

import numpy as np

from embeddings.data import build_corpus
from embeddings.evaluate import _recall, coverage_at_k, eval_targets, split_users
from streams.events import Event

DAY = 86_400_000
T = 1_700_000_000_000


def corpus():
    spec = {"a": [(0, "save", "x"), (1, "save", "y"), (5, "save", "z"), (30, "save", "w")],
            "b": [(0, "save", "x"), (20, "hide", "y")]}
    ev = [Event(f"{u}{k}", u, it, act, T + d * DAY, None, None) for u, rows in spec.items()
          for k, (d, act, it) in enumerate(rows)]
    return build_corpus(ev, None, item_dim=2, id_buckets=0)


def test_split_is_stable_and_disjoint() -> None:
    users = [f"u{i}" for i in range(1000)]
    tr, ev = split_users(users, 0.2, seed=0)
    assert set(tr).isdisjoint(ev) and len(tr) + len(ev) == 1000 and 150 < len(ev) < 250
    assert (split_users(users, 0.2, seed=0)[1] == ev).all()
    assert not np.array_equal(split_users(users, 0.2, seed=1)[1], ev)


def test_targets_are_positives_within_the_horizon() -> None:
    c = corpus()
    ids = {i: k for k, i in enumerate(c.item_ids)}
    users, targets, cuts = eval_targets(c, np.arange(2), T + 2 * DAY, 14 * DAY)
    assert [c.users[u] for u in users] == ["a"]                  # b's only later action is a hide
    assert targets[0].tolist() == [ids["z"]] and cuts == [T + 2 * DAY]   # w (day 30) is past the horizon
    users, targets, cuts = eval_targets(c, np.arange(2), None, 14 * DAY)   # per-user: cut at the median action
    assert [c.users[u] for u in users] == ["a"] and cuts == [T + 1 * DAY] and targets[0].tolist() == [ids["z"]]


def test_coverage_and_recall() -> None:
    collapsed = np.tile(np.arange(1, 11), (50, 1))               # every user gets the same 10 items
    assert coverage_at_k(collapsed, index_size=1000) == 9 / 1000
    diverse = np.arange(1, 501).reshape(50, 10)
    assert coverage_at_k(diverse, index_size=1000) == 450 / 1000
    rec = _recall(np.array([[1, 2, 3], [4, 5, 6]]), [np.array([1, 9]), np.array([7])])
    assert rec.tolist() == [0.5, 0.0]
