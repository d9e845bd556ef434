"""Sampled softmax with logQ, masking, temperature floor, and the label samplers of each objective."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from embeddings.data import PositiveRule, build_corpus
from embeddings.loss import Temperature, mixed_logits, sample_pairs, sampled_softmax_loss
from streams.events import Event

DAY = 86_400_000


def unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1)


def test_logq_correction_subtracts_log_expected_draws() -> None:
    g = torch.Generator().manual_seed(0)
    user, pos, rand = unit(torch.randn(4, 8, generator=g)), unit(torch.randn(4, 8, generator=g)), unit(torch.randn(6, 8, generator=g))
    pos_item, group, rand_item = torch.tensor([1, 2, 3, 4]), torch.arange(4), torch.tensor([10, 11, 12, 13, 14, 15])
    tau = torch.tensor(0.1)
    lq_pos = torch.log(torch.tensor([4.0, 0.5, 1.0, 0.1]))
    lq_rand = torch.full((6,), math.log(6 / 1000))
    plain = mixed_logits(user, pos, pos_item, group, rand, rand_item, None, None, tau)
    corrected = mixed_logits(user, pos, pos_item, group, rand, rand_item, lq_pos, lq_rand, tau)
    torch.testing.assert_close(corrected[:, :4] - plain[:, :4], -lq_pos.expand(4, 4))
    torch.testing.assert_close(corrected[:, 4:], plain[:, 4:] - lq_rand)
    torch.testing.assert_close(plain[:, :4], user @ pos.T / tau)
    # a popular item (drawn often) is pushed down relative to a rare one
    assert (corrected[:, 0] - plain[:, 0] < corrected[:, 3] - plain[:, 3]).all()


def test_own_positives_and_accidental_hits_are_masked() -> None:
    g = torch.Generator().manual_seed(1)
    user, pos, rand = (unit(torch.randn(n, 8, generator=g)) for n in (4, 4, 3))
    pos_item = torch.tensor([7, 8, 7, 9])           # pair 2 targets the same item as pair 0
    group = torch.tensor([0, 0, 1, 2])              # pairs 0 and 1 come from the same user
    rand_item = torch.tensor([9, 5, 6])             # random item 9 = pair 3's positive
    logits = mixed_logits(user, pos, pos_item, group, rand, rand_item, None, None, torch.tensor(0.1))
    inf = torch.isinf(logits)
    assert not inf.diagonal().any()                 # the target is never masked
    assert inf[0, 1] and inf[1, 0]                  # same user
    assert inf[0, 2] and inf[2, 0]                  # same item
    assert inf[3, 4] and not inf[3, 5] and not inf[0, 4]
    assert torch.isfinite(sampled_softmax_loss(logits, group))


def test_loss_rewards_the_right_positive_and_weights_users_equally() -> None:
    pos = torch.eye(4)
    good = mixed_logits(pos.clone(), pos, torch.arange(4), torch.arange(4), torch.zeros(0, 4), torch.zeros(0, dtype=torch.long),
                        None, None, torch.tensor(0.1))
    bad = mixed_logits(pos.roll(1, 0), pos, torch.arange(4), torch.arange(4), torch.zeros(0, 4),
                       torch.zeros(0, dtype=torch.long), None, None, torch.tensor(0.1))
    assert sampled_softmax_loss(good, torch.arange(4)) < 0.01 < sampled_softmax_loss(bad, torch.arange(4))
    per_pair = torch.tensor([[0.0, -1e4, -1e4], [-1e4, 0.0, -1e4], [-1e4, -1e4, 0.0]])
    per_pair[2, 2] = -20.0                          # pair 2 is badly predicted
    # user A has pairs 0, 1 (good), user B pair 2 (bad): B's pair carries half of the loss weight
    loss = sampled_softmax_loss(per_pair, torch.tensor([0, 0, 1]))
    ce = F.cross_entropy(per_pair, torch.arange(3), reduction="none")
    torch.testing.assert_close(loss, (ce[0] / 2 + ce[1] / 2 + ce[2]) / 2)


def test_temperature_is_learned_with_a_floor() -> None:
    t = Temperature(init=0.05, floor=0.01)
    assert t().item() == pytest.approx(0.05)
    with torch.no_grad():
        t.log_tau.fill_(math.log(1e-4))
    assert t().item() == pytest.approx(0.01)
    t.log_tau.data.fill_(math.log(0.2))
    (t() * 3).backward()
    assert t.log_tau.grad is not None and t.log_tau.grad.item() == pytest.approx(0.6)


def _corpus():
    # one user: positives (save) at days 0, 1, 20, 40; a hide at day 2 and a short click at day 3 (not positive)
    spec = [(0, "save", "a"), (1, "save", "b"), (2, "hide", "h"), (3, "click", "c"), (20, "save", "d"), (40, "save", "e")]
    events = [Event(f"e{k}", "u", item, act, 1_700_000_000_000 + d * DAY, "homefeed", 500 if act == "click" else None)
              for k, (d, act, item) in enumerate(spec)]
    return build_corpus(events, None, rule=PositiveRule(min_dwell_ms=10_000), item_dim=4, id_buckets=0)


def test_positive_rule() -> None:
    rule = PositiveRule()
    assert rule.is_positive("save", None) and rule.is_positive("share", 0)
    assert rule.is_positive("click", 10_000) and rule.is_positive("closeup", None)
    assert not rule.is_positive("click", 9_999) and not rule.is_positive("hide", None)
    assert not rule.is_positive("impression", 50_000)
    c = _corpus()
    assert c.positive.tolist() == [True, True, False, False, True, True]


@pytest.mark.parametrize("objective", ["dense_all_action", "next_action", "all_action", "sasrec"])
def test_sampled_labels_follow_the_objective(objective: str) -> None:
    c = _corpus()
    rng = np.random.default_rng(0)
    name = {v: k for k, v in enumerate(c.item_ids)}
    S = 8
    for _ in range(30):
        rows, pairs = sample_pairs(c, np.array([0]), S, objective, rng, window_ms=28 * DAY)  # type: ignore[arg-type]
        (u, end), = rows
        assert len(pairs) >= 1
        for slot, item in zip(pairs.slot, pairs.item, strict=True):
            i = end - (S - slot)                             # global index of the action in that slot
            assert 0 <= i < end
            later = [j for j in range(i + 1, len(c.ts)) if c.positive[j]]
            if objective in ("next_action", "sasrec"):
                assert item == c.item[later[0]]
            else:
                in_window = {int(c.item[j]) for j in later if c.ts[j] <= c.ts[i] + 28 * DAY}
                assert item in in_window
            if objective in ("next_action", "all_action"):
                assert slot == S - 1
        assert name["h"] not in pairs.item and name["c"] not in pairs.item
