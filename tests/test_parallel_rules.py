"""Parallel decoding rules beyond the threshold: Fast-dLLM's factor rule, dInfer's hierarchical decoding
and credit decoding, each against a hand computation or an independent loop, and end to end."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import Columns, tiny_model_config
from remask.model import build_model
from remask.sampling import SampleConfig, StepEvent, factor_rule, generate, hierarchy_rule
from remask.sampling.credit import accrue, fuse

MASK, EOS = 30, 31
INF = float("-inf")


def knobs(**kw: float) -> SampleConfig:
    return SampleConfig(gen_length=1, **kw)


def factor_reference(conf: list[float], budget: int, f: float) -> set[int]:
    """Fast-dLLM's factor rule, one row, written as a plain loop over the sorted candidates."""
    cand = sorted((c, -i) for i, c in enumerate(conf) if c > INF)[::-1]  # best first, ties to the left
    n = 1
    while n < len(cand) and cand[n][0] >= 1 - f / (n + 2):  # the (n + 1)-th best, 1-based rank n + 1
        n += 1
    return {-i for _, i in cand[:min(len(cand), max(n, budget, 1))]}


def test_factor_rule_by_hand():
    conf = torch.tensor([[0.1, 0.7, 0.99, 0.6, INF]])
    # f = 1: bars 1 - 1/(n + 1): the 2nd best needs 0.667 (0.7 passes), the 3rd 0.75 (0.6 fails)
    assert factor_rule(conf, torch.tensor([0]), knobs(factor=1.0)).tolist() == [[False, True, True, False, False]]
    # f = 2: bars 0.333, 0.5, 0.6: 0.7 and 0.6 pass, 0.1 fails
    assert factor_rule(conf, torch.tensor([0]), knobs(factor=2.0)).tolist() == [[False, True, True, True, False]]
    # the schedule is a floor, and a non-candidate is never committed
    assert factor_rule(conf, torch.tensor([9]), knobs(factor=1.0)).tolist() == [[True, True, True, True, False]]
    assert factor_rule(torch.tensor([[0.2, 0.3]]), torch.tensor([0]), knobs()).tolist() == [[False, True]]


@pytest.mark.parametrize("f", [0.5, 1.0, 3.0])
def test_factor_rule_matches_a_loop(f):
    g = torch.Generator().manual_seed(0)
    conf = torch.rand(64, 12, generator=g) ** 0.3  # many near-certain scores, so runs of passes occur
    conf[torch.rand(64, 12, generator=g) < 0.3] = INF
    budget = torch.randint(0, 3, (64,), generator=g)
    got = factor_rule(conf, budget, knobs(factor=f))
    for r in range(64):
        assert set(got[r].nonzero().flatten().tolist()) == factor_reference(conf[r].tolist(), int(budget[r]), f)


def test_hierarchy_commits_the_best_of_each_run():
    conf = torch.tensor([[0.5, 0.3, INF, 0.2, 0.45, 0.1, INF, 0.95]])  # runs [0, 1], [3, 4, 5], [7]
    zero = torch.tensor([0])
    assert hierarchy_rule(conf, zero, knobs()).nonzero()[:, 1].tolist() == [0, 4, 7]
    assert hierarchy_rule(conf, zero, knobs(low_threshold=0.46)).nonzero()[:, 1].tolist() == [0, 7]
    # nothing above the low threshold and nothing sure: the single best still goes (progress)
    assert hierarchy_rule(conf * 0.1, zero, knobs()).nonzero()[:, 1].tolist() == [7]  # 0.095, the best
    # a sure token is committed even when it is not its run's best... here 0.95 and 0.93 share a run
    pair = torch.tensor([[0.95, 0.93, 0.1]])
    assert hierarchy_rule(pair, zero, knobs(threshold=0.9)).tolist() == [[True, True, False]]
    assert hierarchy_rule(torch.full((1, 1), 0.5), zero, knobs()).tolist() == [[True]]  # one column


def test_hierarchy_never_commits_two_of_one_run_unless_sure():
    g = torch.Generator().manual_seed(1)
    conf = torch.rand(200, 16, generator=g) * 0.89  # nothing reaches the 0.9 threshold
    conf[torch.rand(200, 16, generator=g) < 0.35] = INF
    commit = hierarchy_rule(conf, torch.ones(200, dtype=torch.long), knobs(low_threshold=0.0))
    for r in range(200):
        runs, current = [], []
        for c in range(16):  # the runs of candidates, by a loop
            if conf[r, c] > INF:
                current.append(c)
            elif current:
                runs, current = [*runs, current], []
        runs += [current] if current else []
        picked = set(commit[r].nonzero().flatten().tolist())
        assert picked == {max(run, key=lambda c: (float(conf[r, c]), -c)) for run in runs}


def test_credit_trace_and_fusion_by_hand():
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 3.0, 0.0]]])  # (1, 2, 3)
    masked = torch.tensor([[True, False]])
    p0 = logits[0, 0].softmax(-1)[0]
    c1 = accrue(None, logits, masked, decay=0.8, boost=0.2)
    assert c1[0, 0, 0] == pytest.approx(float(p0) ** 0.2) and c1[0, 0, 1:].abs().sum() == 0
    assert c1[0, 1].abs().sum() == 0  # a committed position earns nothing
    c2 = accrue(c1, logits, masked, decay=0.8, boost=0.2)
    assert c2[0, 0, 0] == pytest.approx(1.8 * float(p0) ** 0.2)
    fused = fuse(logits.index_fill(-1, torch.tensor([2]), INF), c2, 0.5)
    assert fused[0, 0, 0] == pytest.approx(2.0 + 0.5 * math.log1p(1.8 * float(p0) ** 0.2))
    assert fused[0, 1, 1] == 3.0 and fused[0, 0, 2] == INF  # no credit: unchanged; banned stays banned


def test_credit_commits_a_steady_prediction_early():
    # 4 generated columns, each predicting token 4 with p = 0.85 at every step: below the 0.9 threshold,
    # so the threshold rule alone commits one per step; credit lifts them past it at the second step.
    table = torch.zeros(6, 32)
    table[2:, 4] = math.log(0.85 * 31 / 0.15)  # softmax over 32 tokens (the mask banned): ~0.85
    base = dict(gen_length=4, steps=4, remasking="threshold", threshold=0.9, early_stop=False)
    plain = generate(Columns(table), [[1, 2]], SampleConfig(**base), mask_id=MASK, eos_id=EOS)
    events: list[StepEvent] = []
    credit = generate(Columns(table), [[1, 2]], SampleConfig(**base, credit=0.5), mask_id=MASK, eos_id=EOS,
                      callback=events.append)
    assert plain.n_forward == 4 and credit.n_forward == 2
    assert [int(e.committed.sum()) for e in events] == [1, 3]
    assert torch.equal(plain.tokens, credit.tokens) and (credit.tokens == 4).all()
    assert float(events[0].confidence.max()) < 0.9 <= float(events[1].confidence.max())


@pytest.mark.parametrize("overrides", [dict(remasking="factor", factor=2.0), dict(remasking="hierarchy"),
                                       dict(remasking="threshold", credit=0.7),
                                       dict(remasking="hierarchy", cache="dual", credit=0.7),
                                       dict(remasking="factor", cache="prefix", block_length=8, steps=16)])
def test_parallel_rules_end_to_end(overrides):
    model = build_model(tiny_model_config(init_std=0.3), seed=0).eval()
    cfg = SampleConfig(**{**dict(gen_length=16, steps=16, block_length=8, early_stop=False), **overrides})
    events: list[StepEvent] = []
    out = generate(model, [[1, 2, 3], [4, 5]], cfg, mask_id=MASK, eos_id=EOS, callback=events.append)
    assert not (out.tokens == MASK).any() and out.n_forward <= cfg.steps
    done = torch.zeros_like(out.canvas, dtype=torch.bool)
    for e in events:
        assert not (e.committed & done).any()  # each position committed once
        done |= e.committed
    assert done[:, -16:].all()
    again = generate(model, [[1, 2, 3], [4, 5]], cfg, mask_id=MASK, eos_id=EOS)
    assert torch.equal(out.tokens, again.tokens)  # deterministic at temperature 0
