"""Remasking rules and confidence measures: hand-computed scores, one signature, parallel decoding."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from conftest import Columns, tiny_model_config
from remask.model import build_model
from remask.sampling import (
    CONFIDENCES,
    RULES,
    SampleConfig,
    StepEvent,
    above_threshold,
    demote,
    generate,
    num_transfer_tokens,
)

MASK, EOS = 30, 31
INF = float("-inf")
KNOBS = SampleConfig(gen_length=1)  # the rules' defaults: threshold 0.9, factor 1, low threshold 0.4


def _logits(*rows: list[float]) -> Tensor:
    """(1, len(rows), V) logits from per-position probability lists (log taken; 0 -> -inf)."""
    return torch.tensor(rows).log()[None]


def test_measures_by_hand():
    logits = _logits([0.5, 0.3, 0.2, 0.0], [0.25, 0.25, 0.25, 0.25], [1.0, 0.0, 0.0, 0.0])  # (1, 3, 4)
    x0 = torch.tensor([[1, 0, 0]])
    cand = torch.tensor([[True, True, False]])
    lc = CONFIDENCES["low_confidence"](logits, x0, cand, None)[0]
    torch.testing.assert_close(lc[:2], torch.tensor([0.3, 0.25]))
    margin = CONFIDENCES["margin"](logits, x0, cand, None)[0]
    torch.testing.assert_close(margin[:2], torch.tensor([0.2, 0.0]))  # top-1 minus top-2, whatever x0 is
    ent = CONFIDENCES["entropy"](logits, x0, torch.ones_like(cand), None)[0]
    h = -(0.5 * math.log(0.5) + 0.3 * math.log(0.3) + 0.2 * math.log(0.2))
    torch.testing.assert_close(ent, torch.tensor([math.exp(-h), 0.25, 1.0]))  # exp(-H): 1/V uniform, 1 one-hot
    assert torch.isfinite(ent).all()  # zero-probability (banned) tokens give no nan
    for name, measure in CONFIDENCES.items():
        scores = measure(logits, x0, cand, torch.Generator().manual_seed(0))[0]
        assert scores[2] == INF, name  # non-candidates are -inf
        assert ((scores[:2] >= 0) & (scores[:2] <= 1)).all(), name  # every measure is in [0, 1]


def test_entropy_orders_like_negative_entropy():
    logits = torch.randn(1, 50, 16) * 3
    cand = torch.ones(1, 50, dtype=torch.bool)
    score = CONFIDENCES["entropy"](logits, logits.argmax(-1), cand, None)[0]
    p = logits[0].softmax(-1)
    neg_h = (p * p.log()).sum(-1)
    assert torch.equal(score.argsort(), neg_h.argsort())


def test_every_rule_has_one_signature():
    conf = torch.tensor([[0.95, 0.2, INF, 0.91, 0.5], [0.1, 0.3, 0.2, INF, INF]])
    budget = torch.tensor([1, 2])
    for name, rule in RULES.items():
        commit = rule(conf, budget, KNOBS)
        assert commit.shape == conf.shape and commit.dtype == torch.bool, name
        assert not (commit & (conf == INF)).any(), name
        assert (commit.sum(-1) >= budget).all(), name
    # top-k: exactly the budget, best first
    assert RULES["low_confidence"](conf, budget, KNOBS).tolist() == [[True, False, False, False, False],
                                                                    [False, True, True, False, False]]
    # threshold: everything >= 0.9, and never fewer than the budget
    assert above_threshold(conf, budget, KNOBS).tolist() == [[True, False, False, True, False],
                                                            [False, True, True, False, False]]
    # a zero budget still commits one (progress), but never a non-candidate
    none_left = torch.full((1, 3), INF)
    assert above_threshold(torch.tensor([[0.1, 0.4, 0.2]]), torch.tensor([0]), KNOBS).tolist() == [[False, True, False]]
    assert not above_threshold(none_left, torch.tensor([1]), KNOBS).any()


def test_demote_keeps_real_scores_and_blocks_the_threshold():
    conf = torch.tensor([[0.99, 0.5, 0.97, INF]])
    last = torch.tensor([[True, False, False, False]])
    order = demote(conf, last)
    assert order[0, 1] == 0.5 and order[0, 2] == 0.97 and order[0, 3] == INF
    assert order[0, 0] < 0 and order.argsort(descending=True)[0, :3].tolist() == [2, 1, 0]
    assert above_threshold(order, torch.tensor([1]), KNOBS).tolist() == [[False, False, True, False]]


def test_threshold_commits_all_confident_tokens_in_parallel():
    # 2 prompt columns; 8 generated: 5 near-certain (logit 12), 3 unsure (two tokens tie).
    table = torch.zeros(10, 32)
    sure = [2, 3, 5, 6, 8]
    table[sure, 4] = 12.0
    table[[4, 7, 9], 5] = table[[4, 7, 9], 6] = 2.0
    events: list[StepEvent] = []
    mock = Columns(table)
    cfg = SampleConfig(gen_length=8, steps=8, remasking="threshold", threshold=0.9)
    out = generate(mock, [[1, 2]], cfg, mask_id=MASK, eos_id=EOS, callback=events.append)
    first = events[0].committed[0].nonzero().flatten().tolist()
    assert first == sure  # every confident column at once
    assert [int(e.committed.sum()) for e in events] == [5, 1, 1, 1]  # then at least one per step
    assert out.n_forward == 4 == mock.calls and not (out.tokens == MASK).any()
    # The same run with the margin measure: the unsure columns have margin 0 < 0.9 as well.
    cfg = SampleConfig(gen_length=8, steps=8, remasking="threshold", confidence="margin", threshold=0.9)
    events.clear()
    generate(Columns(table), [[1, 2]], cfg, mask_id=MASK, eos_id=EOS, callback=events.append)
    assert events[0].committed[0].nonzero().flatten().tolist() == sure and len(events) == 4


def test_threshold_respects_the_schedule_as_a_floor():
    # Nothing is confident; with 2 steps for 8 masks the budget (4 per step) still finishes the block.
    table = torch.zeros(10, 32)
    out = generate(Columns(table), [[1, 2]], SampleConfig(gen_length=8, steps=2, remasking="threshold"),
                   mask_id=MASK, eos_id=EOS)
    assert out.n_forward == 2 and not (out.tokens == MASK).any()


@pytest.mark.parametrize("name", ["low_confidence", "margin", "entropy", "random"])
def test_topk_rules_commit_the_schedule(name):
    model = build_model(tiny_model_config(init_std=0.3), seed=0).eval()
    cfg = SampleConfig(gen_length=12, steps=8, block_length=6, remasking=name, early_stop=False)
    events: list[StepEvent] = []
    out = generate(model, [[1, 2, 3], [4, 5]], cfg, mask_id=MASK, eos_id=EOS, callback=events.append)
    expected = num_transfer_tokens(torch.tensor([6, 6]), 4)
    for ev in events:
        assert ev.committed.sum(-1).tolist() == expected[:, ev.step % 4].tolist()
        for r in range(2):  # the best-scoring candidates went first (random: by its noise scores)
            picked = ev.confidence[r][ev.committed[r]]
            left = ev.confidence[r][~ev.committed[r] & (ev.confidence[r] > INF)]
            if picked.numel() and left.numel():
                assert picked.min() >= left.max()
    assert not (out.tokens == MASK).any()


def test_rules_differ_on_a_real_model():
    model = build_model(tiny_model_config(init_std=0.3), seed=0).eval()
    orders = {}
    for name in ("low_confidence", "margin", "entropy"):
        events: list[StepEvent] = []
        generate(model, [[1, 2, 3]], SampleConfig(gen_length=16, steps=16, remasking=name, early_stop=False),
                 mask_id=MASK, eos_id=EOS, callback=events.append)
        orders[name] = [int(e.committed[0].nonzero()) for e in events]
    assert len({tuple(o) for o in orders.values()}) > 1  # the measures really rank differently
