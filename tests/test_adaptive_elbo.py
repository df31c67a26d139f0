"""Scoring a corpus at a requested standard error: Monte Carlo samples go where they buy the most."""

from __future__ import annotations

import math

import pytest

from conftest import tiny_model_config
from remask.commands import main
from remask.errors import RemaskError
from remask.likelihood import LikelihoodConfig, elbo, elbo_sum, exact_elbo
from remask.model import build_model

MASK = 30


@pytest.fixture(scope="module")
def mdm():
    return build_model(tiny_model_config(init_std=0.5), seed=0).eval()


def pairs(n: int, length: int = 6) -> list[tuple[list[int], list[int]]]:
    """n (prompt, answer) pairs of small ids, all different."""
    return [([(3 * k) % 29, 1], [(k + j * 7) % 29 for j in range(length)]) for k in range(n)]


def test_without_a_target_the_sum_is_the_sum_of_elbos(mdm):
    cfg = LikelihoodConfig(mc_num=16, batch_size=8)
    ps = pairs(5)
    got = elbo_sum(mdm, ps, cfg, mask_id=MASK, key=3)
    ref = [elbo(mdm, p, a, cfg, mask_id=MASK, key=3 + k) for k, (p, a) in enumerate(ps)]
    assert got.value == pytest.approx(sum(e.value for e in ref), rel=1e-12)
    assert got.stderr == pytest.approx(math.sqrt(sum(e.stderr ** 2 for e in ref)), rel=1e-9)
    assert got.n == 5 * 16


def test_a_target_is_met_with_fewer_samples_and_an_unbiased_figure(mdm):
    ps = pairs(12, length=5)
    exact = sum(exact_elbo(mdm, p, a, mask_id=MASK) for p, a in ps)  # 2^5 - 1 masked sets each
    cfg = LikelihoodConfig(mc_num=256, batch_size=8)
    full = elbo_sum(mdm, ps, cfg, mask_id=MASK)
    target = 2.0 * full.stderr  # a looser target than mc_num everywhere gives
    got = elbo_sum(mdm, ps, cfg, mask_id=MASK, target_stderr=target)
    assert got.stderr <= target and got.n < full.n / 2  # met, at a fraction of the samples
    assert abs(got.value - exact) < 4 * got.stderr  # still an estimate of the same bound
    tighter = elbo_sum(mdm, ps, cfg, mask_id=MASK, target_stderr=target / 2)
    assert tighter.stderr <= target / 2 and tighter.n > got.n


def test_an_unreachable_target_stops_at_mc_num_and_reports_the_error_reached(mdm):
    ps = pairs(3)
    cfg = LikelihoodConfig(mc_num=16, batch_size=8)
    got = elbo_sum(mdm, ps, cfg, mask_id=MASK, target_stderr=1e-9)
    assert got.n == 3 * 16 and got.stderr > 1e-9
    assert got.value == pytest.approx(elbo_sum(mdm, ps, cfg, mask_id=MASK).value, rel=1e-12)  # the same draws


def test_target_stderr_is_validated_and_is_a_flag(tmp_path, capsys):
    with pytest.raises(RemaskError, match="--target-stderr must be positive"):
        LikelihoodConfig(target_stderr=0.0)
    assert main(["eval", "perplexity", "--help"]) == 0
    assert "--target-stderr" in capsys.readouterr().out


def test_perplexity_reaches_the_requested_error_of_the_corpus_figure():
    from remask.data.tokenizer import ByteTokenizer
    from remask.evaluate import perplexity

    tok = ByteTokenizer()
    model = build_model(tiny_model_config(vocab_size=tok.vocab_size, mask_token_id=tok.mask_id,
                                          eos_token_id=tok.eos_id, init_std=0.3), seed=0).eval()
    texts = ["the quick brown fox jumps over the lazy dog. " * 3, "remask scores every window of a corpus."]
    fixed = perplexity(model, tok, texts, window=16, cfg=LikelihoodConfig(mc_num=64, batch_size=8))
    target = 1.5 * fixed["stderr_nats_per_token"]
    res = perplexity(model, tok, texts, window=16, cfg=LikelihoodConfig(mc_num=64, batch_size=8, target_stderr=target))
    assert res["stderr_nats_per_token"] <= target and res["mc_samples"] < fixed["mc_samples"]
    assert fixed["mc_samples"] == 64 * fixed["windows"]
    assert abs(res["nats_per_token"] - fixed["nats_per_token"]) < 4 * math.hypot(target, fixed["stderr_nats_per_token"])
