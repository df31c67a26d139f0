"""Likelihoods: the ELBO is the any-order average, MC estimators converge, AR is exact and normalised."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from conftest import tiny_model_config
from remask.errors import RemaskError
from remask.likelihood import (
    LikelihoodConfig,
    _l_draws,
    any_order_loglik,
    ar_loglik,
    ar_logliks,
    chain_rule_loglik,
    elbo,
    exact_elbo,
    loglik,
    mixture_loglik,
    rolling_loglik,
    rolling_windows,
)
from remask.model import build_model
from remask.objectives import Batch, ar_loss

MASK = 30
PROMPT, ANSWER = [3, 7, 1], [5, 9, 2, 11]


@pytest.fixture(scope="module")
def mdm():
    # init_std 0.5: sharper, position-dependent conditionals than the default init, so the
    # identities below are tested on a model far from uniform
    return build_model(tiny_model_config(init_std=0.5), seed=0).eval()


@pytest.fixture(scope="module")
def small_vocab_mdm():
    return build_model(tiny_model_config(vocab_size=8, mask_token_id=6, eos_token_id=7, init_std=0.5), seed=1).eval()


class JointModel:
    """A mask predictor with the exact conditionals of an explicit joint table P over V^L: at a
    masked position i, p(x_i = v | revealed tokens) = sum of P over completions with x_i = v.
    Ignores the prompt. Vocabulary: ``V`` real tokens, then the mask id ``V``."""

    def __init__(self, V: int, L: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.V, self.L = V, L
        expo = -torch.rand(V ** L, generator=g, dtype=torch.float64).log()  # normalised: a Dirichlet(1) draw
        self.P = expo / expo.sum()  # (V^L,)
        self.seqs = torch.tensor(list(itertools.product(range(V), repeat=L)))  # (V^L, L)

    def log_p(self, x: list[int]) -> float:
        idx = int(np.ravel_multi_index(x, (self.V,) * self.L))
        return math.log(self.P[idx].item())

    def __call__(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        B, S = x.shape
        ans = x[:, S - self.L:]  # (B, L)
        logits = torch.full((B, S, self.V + 1), -1e9, dtype=torch.float64)
        for b in range(B):
            revealed = ans[b] != self.V  # (L,)
            consistent = (self.seqs[:, revealed] == ans[b, revealed]).all(1)  # (V^L,)
            mass = self.P * consistent
            for i in range(self.L):
                if not revealed[i]:
                    marg = torch.zeros(self.V, dtype=torch.float64).index_add_(0, self.seqs[:, i], mass)
                    logits[b, S - self.L + i, : self.V] = marg.log()
        return logits


# ----------------------------------------------------------------------------- exactness

@pytest.mark.parametrize("L", [1, 2, 3, 4])
def test_exact_elbo_equals_average_over_all_orders(mdm, L):
    """The any-order-autoregressive identity: enumerating 2^L masked sets (the l-form ELBO) and
    L! chain-rule orders give the same number."""
    ans = ANSWER[:L]
    a = exact_elbo(mdm, PROMPT, ans, mask_id=MASK)
    b = any_order_loglik(mdm, PROMPT, ans, mask_id=MASK)
    assert a == pytest.approx(b, abs=1e-5)
    assert a < 0


def test_true_conditionals_make_every_form_equal_the_log_likelihood():
    """With the exact conditionals of a joint P, every decoding order yields log P(x), so the ELBO,
    each chain rule and the mixture all equal log P(x): the bound is tight."""
    jm = JointModel(V=3, L=3, seed=0)
    for x in ([0, 1, 2], [2, 2, 0], [1, 0, 1]):
        truth = jm.log_p(x)
        assert exact_elbo(jm, [0], x, mask_id=3) == pytest.approx(truth, abs=1e-6)
        for order in itertools.permutations(range(3)):
            assert chain_rule_loglik(jm, [0], x, mask_id=3, order=order) == pytest.approx(truth, abs=1e-6)
        est = elbo(jm, [0], x, LikelihoodConfig(mc_num=256, batch_size=64), mask_id=3)
        assert abs(est.value - truth) < 3 * est.stderr


def test_guidance_is_a_no_op_when_the_model_ignores_the_prompt():
    jm = JointModel(V=3, L=2, seed=1)
    plain = exact_elbo(jm, [0, 1], [2, 0], mask_id=3)
    assert exact_elbo(jm, [0, 1], [2, 0], mask_id=3, cfg_scale=2.0) == pytest.approx(plain, abs=1e-6)


def test_guidance_changes_the_network_bound(mdm):
    plain = exact_elbo(mdm, PROMPT, ANSWER[:2], mask_id=MASK)
    assert exact_elbo(mdm, PROMPT, ANSWER[:2], mask_id=MASK, cfg_scale=1.0) != pytest.approx(plain, abs=1e-3)


def test_chain_rule_and_mixture_are_normalised_and_bound_the_elbo(small_vocab_mdm):
    """Every fixed order is a distribution over all V^L answers, so is their mixture; and the
    ELBO never exceeds the mixture's log-likelihood (Jensen)."""
    m, V, L = small_vocab_mdm, 8, 2
    answers = list(itertools.product(range(V), repeat=L))
    for order in ([0, 1], [1, 0]):
        total = sum(math.exp(chain_rule_loglik(m, [1, 2], list(a), mask_id=6, order=order)) for a in answers)
        assert total == pytest.approx(1.0, abs=1e-5)
    mix = [mixture_loglik(m, [1, 2], list(a), mask_id=6) for a in answers]
    assert sum(math.exp(v) for v in mix) == pytest.approx(1.0, abs=1e-5)
    for a, v in zip(answers[::7], mix[::7]):
        assert exact_elbo(m, [1, 2], list(a), mask_id=6) <= v + 1e-9


# ----------------------------------------------------------------------------- Monte Carlo

@pytest.mark.parametrize("estimator", ["l", "t"])
def test_monte_carlo_estimators_converge_within_three_standard_errors(mdm, estimator):
    exact = exact_elbo(mdm, PROMPT, ANSWER, mask_id=MASK)
    for seed in range(3):
        est = elbo(mdm, PROMPT, ANSWER, LikelihoodConfig(mc_num=1024, batch_size=256, estimator=estimator, seed=seed),
                   mask_id=MASK)
        assert est.n == 1024 and est.samples.shape == (1024,)
        assert 0 < est.stderr < 3.0
        assert abs(est.value - exact) < 3 * est.stderr


def test_l_form_has_lower_variance_than_t_form(mdm):
    def run(estimator: str, seed: int):
        return elbo(mdm, PROMPT, ANSWER, LikelihoodConfig(mc_num=512, batch_size=128, estimator=estimator, seed=seed),
                    mask_id=MASK)

    for seed in range(2):
        lf, tf = run("l", seed), run("t", seed)
        assert lf.samples.var() < tf.samples.var() / 2  # per-sample variance
        assert lf.stderr < tf.stderr


def test_stratified_draws_cover_every_masked_count_equally():
    L, B = 4, 12
    masked, weight = _l_draws(np.random.default_rng(0), B, L)
    counts = masked.sum(1)  # (B,)
    assert sorted(counts.tolist()) == sorted([1, 2, 3, 4] * 3)  # each l exactly B / L times
    assert torch.allclose(weight, L / counts.double())


def test_noise_is_keyed_common_random_numbers_and_independent_keys(mdm):
    cfg = LikelihoodConfig(mc_num=32, batch_size=16, seed=5)
    a = elbo(mdm, PROMPT, ANSWER, cfg, mask_id=MASK, key=0)
    assert elbo(mdm, PROMPT, ANSWER, cfg, mask_id=MASK, key=0).value == a.value
    assert elbo(mdm, PROMPT, ANSWER, cfg, mask_id=MASK, key=1).value != a.value
    # same key, another answer of the same length: the same positions are masked in each sample
    other = [12, 13, 14, 15]
    b = elbo(mdm, PROMPT, other, cfg, mask_id=MASK, key=0)
    assert torch.equal(a.samples != 0, b.samples != 0)


def test_bad_settings_and_inputs_raise_one_line_errors(mdm):
    with pytest.raises(RemaskError, match="divide --mc-num"):
        LikelihoodConfig(mc_num=100, batch_size=32)
    with pytest.raises(RemaskError, match="--estimator"):
        LikelihoodConfig(estimator="x")
    with pytest.raises(RemaskError, match="exceed the model context"):
        elbo(mdm, [1] * 60, [2] * 10, mask_id=MASK)
    with pytest.raises(RemaskError, match="permutation"):
        chain_rule_loglik(mdm, PROMPT, ANSWER, mask_id=MASK, order=[0, 0, 1, 2])
    with pytest.raises(RemaskError, match="use elbo"):
        any_order_loglik(mdm, PROMPT, list(range(9)), mask_id=MASK)
    assert elbo(mdm, PROMPT, [], mask_id=MASK).value == 0.0


# ----------------------------------------------------------------------------- AR baseline

@pytest.fixture(scope="module")
def ar():
    return build_model(tiny_model_config(causal=True, init_std=0.5), seed=2).eval()


def test_ar_loglik_matches_the_training_loss(ar):
    tokens = torch.tensor([PROMPT + ANSWER])
    prompt_mask = torch.zeros_like(tokens, dtype=torch.bool)
    prompt_mask[:, : len(PROMPT)] = True
    mean_nll = ar_loss(ar, Batch(tokens, prompt_mask)).item()
    assert -ar_loglik(ar, PROMPT, ANSWER) / len(ANSWER) == pytest.approx(mean_nll, abs=1e-5)


def test_ar_batched_equals_one_by_one_and_flags_greedy_answers(ar):
    pairs = [(PROMPT, ANSWER), ([4], [8, 8]), ([1, 2, 3, 4, 5, 6], [7])]
    batched = ar_logliks(ar, pairs, batch_size=3)
    for (p, a), (v, _) in zip(pairs, batched):
        assert v == pytest.approx(ar_loglik(ar, p, a), abs=1e-5)
    # the greedy continuation of a prompt is flagged greedy; changing its last token is not
    x = list(PROMPT)
    for _ in range(3):
        x.append(int(ar(torch.tensor([x]))[0, -1].argmax()))
    greedy = x[len(PROMPT):]
    (_, g1), (_, g2) = ar_logliks(ar, [(PROMPT, greedy), (PROMPT, [*greedy[:-1], (greedy[-1] + 1) % 30])],
                                  with_greedy=True)
    assert g1 and not g2


def test_ar_likelihood_is_normalised():
    m = build_model(tiny_model_config(vocab_size=8, mask_token_id=6, eos_token_id=7, causal=True, init_std=0.5),
                    seed=3).eval()
    answers = [list(a) for a in itertools.product(range(8), repeat=2)]
    total = sum(math.exp(v) for v, _ in ar_logliks(m, [([1], a) for a in answers], batch_size=64))
    assert total == pytest.approx(1.0, abs=1e-5)


def test_loglik_dispatches_on_the_causal_flag(ar, mdm):
    assert loglik(ar, PROMPT, ANSWER, mask_id=MASK).value == pytest.approx(ar_loglik(ar, PROMPT, ANSWER))
    assert loglik(ar, PROMPT, ANSWER, mask_id=MASK).stderr == 0.0
    assert loglik(mdm, PROMPT, ANSWER, LikelihoodConfig(mc_num=8, batch_size=8), mask_id=MASK).n == 8
    with pytest.raises(RemaskError, match="non-empty prompt"):
        ar_loglik(ar, [], ANSWER)
    with pytest.raises(RemaskError, match="causal"):
        ar_logliks(mdm, [(PROMPT, ANSWER)])


# ----------------------------------------------------------------------------- long texts

@pytest.mark.parametrize("n,window,stride", [(2, 4, 3), (10, 4, 3), (17, 8, 2), (9, 5, 4)])
def test_rolling_windows_score_every_token_once_within_the_window(n, window, stride):
    wins = rolling_windows(n, window, stride)
    scored = [i for _, s, e in wins for i in range(s, e)]
    assert scored == list(range(1, n))
    for c, s, e in wins:
        assert 0 <= c < s < e and e - c <= window and e - s <= stride


def test_rolling_loglik_exact_for_ar_and_summed_for_mdm(ar, mdm):
    stream = [31, *range(1, 12)]
    whole = ar_loglik(ar, stream[:1], stream[1:])
    assert rolling_loglik(ar, stream, window=len(stream), stride=len(stream) - 1, mask_id=MASK).value == \
        pytest.approx(whole, abs=1e-5)
    pieces = sum(ar_loglik(ar, stream[c:s], stream[s:e]) for c, s, e in rolling_windows(len(stream), 6, 3))
    assert rolling_loglik(ar, stream, window=6, stride=3, mask_id=MASK).value == pytest.approx(pieces, abs=1e-5)
    cfg = LikelihoodConfig(mc_num=16, batch_size=16)
    est = rolling_loglik(mdm, stream, window=6, stride=5, cfg=cfg, mask_id=MASK, key=10)
    parts = [elbo(mdm, stream[c:s], stream[s:e], cfg, mask_id=MASK, key=10 + k)
             for k, (c, s, e) in enumerate(rolling_windows(len(stream), 6, 5))]
    assert est.value == pytest.approx(sum(p.value for p in parts))
    assert est.stderr == pytest.approx(math.sqrt(sum(p.stderr ** 2 for p in parts)))
    with pytest.raises(RemaskError, match="--stride"):
        rolling_windows(10, 4, 4)
