"""Likelihoods: the masked-diffusion ELBO (two Monte Carlo estimators), chain-rule and AR log-likelihoods.

For a masked diffusion model with mask predictor p_θ(x_0^i | x_t), the log-likelihood of an
answer a (L tokens) given a prompt c is bounded below by (LLaDA eq. 4, conditional form)

    log p(a | c) >= E_{t ~ U(0,1)} E_{a_t ~ q(a_t | a)} [ (1/t) sum_{i: a_t^i = M} log p_θ(a^i | c, a_t) ]      (t-form)
                  = E_{l ~ U{1..L}} E_{a_l} [ (L/l) sum_{i: a_l^i = M} log p_θ(a^i | c, a_l) ]               (l-form)

where q masks each token independently with probability t, and a_l masks exactly l positions
drawn uniformly (LLaDA Sec. 2.4 uses the l-form for evaluation: it has lower variance; the
t-form's variance is in fact infinite, since a lone masked token at small t carries weight 1/t
with probability about L t, and integral_0 L t (1/t)^2 dt diverges). The two
are equal because, given t, the number of masks is Binomial(L, t) and
integral_0^1 C(L,l) t^(l-1) (1-t)^(L-l) dt = 1/l. Both also equal the average, over all L! orders
σ, of the chain-rule log-likelihood of decoding a one token at a time in order σ (the
any-order-autoregressive identity; Hoogeboom et al. 2022, Ou et al. 2024):

    ELBO(a | c) = (1/L!) sum_σ sum_k log p_θ(a^{σ(k)} | c, a^{σ(<k)} revealed, the rest masked)

Each fixed order gives an exact log-probability (of "decode in this order, drawing every token from
the model"), so by Jensen the ELBO never exceeds the log-likelihood of the uniform mixture over
orders. ``exact_elbo`` (2^L masked sets) and ``any_order_loglik`` (L! orders) compute both
sides by enumeration for short answers; ``elbo`` estimates the bound by Monte Carlo, with a
standard error. ``ar_loglik`` is the causal baseline's exact log-likelihood.

Randomness is keyed (``remask.rng``) by (seed, key, batch index), so an estimate is reproducible,
and equal keys give equal noise: scoring several options with one key compares them with
common random numbers.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from remask.config import check, option
from remask.errors import RemaskError
from remask.guidance import guided_logits
from remask.model import check_context, is_causal, model_device
from remask.rng import keyed_generator

_STREAM = 3  # a noise stream of our own, distinct from rng.DATA / NOISE / STEP
ESTIMATORS = ("l", "t")
MAX_ENUM_ORDERS = 8  # any_order_loglik enumerates L! orders: 8! = 40,320 forward rows at most
MAX_ENUM_SUBSETS = 16  # exact_elbo enumerates 2^L - 1 masked sets


@dataclass(kw_only=True)
class LikelihoodConfig:
    """How ``elbo`` estimates the bound."""

    mc_num: int = option("Monte Carlo samples per (prompt, answer) pair", 128)
    batch_size: int = option("samples per forward pass; must divide mc_num (one larger than mc_num is cut to it)",
                             32)
    estimator: str = option("'l': masked count l ~ U{1..L}, stratified over the batch, weight L/l (LLaDA); "
                            "'t': t ~ U(0,1), each token masked w.p. t, weight 1/t", "l", choices=ESTIMATORS)
    cfg_scale: float = option("classifier-free guidance weight on the predictor (0: off)", 0.0)
    seed: int = option("seed of the masking noise", 0)
    target_stderr: float | None = option("corpus figures (eval perplexity): draw samples per window, from one batch "
                                         "up to mc_num, until the standard error of the nats/token figure is at "
                                         "most this (None: mc_num samples for every window)", None)

    def __post_init__(self) -> None:
        check(self.mc_num > 0, f"--mc-num must be positive, got {self.mc_num}")
        self.batch_size = min(self.batch_size, self.mc_num)
        check(self.batch_size > 0 and self.mc_num % self.batch_size == 0,
              f"--batch-size {self.batch_size} must be positive and divide --mc-num {self.mc_num}; "
              f"try --batch-size {math.gcd(self.mc_num, max(1, self.batch_size))}")
        check(self.estimator in ESTIMATORS,
              f"--estimator {self.estimator!r} is not known; choose 'l' (lower variance) or 't'")
        check(self.target_stderr is None or self.target_stderr > 0,
              f"--target-stderr must be positive nats/token (or None), got {self.target_stderr}")
        check(self.cfg_scale >= 0, f"--cfg-scale must be >= 0 (0 turns guidance off), got {self.cfg_scale}")


@dataclass
class Estimate:
    """A log-likelihood (nats) with its Monte Carlo standard error (0 when exact)."""

    value: float
    stderr: float = 0.0
    n: int = 0  # Monte Carlo samples (0: exact)
    samples: Tensor | None = None  # (n,) float64 per-sample values, for diagnostics

    def __add__(self, other: Estimate) -> Estimate:
        """Sum of independent estimates (different keys): standard errors add in quadrature."""
        return Estimate(self.value + other.value, math.hypot(self.stderr, other.stderr), self.n + other.n)


# ----------------------------------------------------------------------------- one forward pass

def _masked_logprobs(model: Any, prompt: Sequence[int], answer: Sequence[int], masked: Tensor, *,
                     mask_id: int, cfg_scale: float = 0.0) -> Tensor:
    """log p_θ(a^i | c, a_masked) at the masked answer positions, 0 elsewhere: (B, L) float64.

    masked: (B, L) bool, which answer tokens each row hides. One forward pass (two with CFG).
    """
    device = model_device(model)
    P = len(prompt)
    x0 = torch.tensor(list(prompt) + list(answer), dtype=torch.long, device=device)  # (P + L,)
    masked = masked.to(device)
    B = masked.shape[0]
    target = x0[P:].expand(B, -1)  # (B, L)
    x = x0.expand(B, -1).clone()  # (B, P + L)
    x[:, P:] = torch.where(masked, mask_id, target)
    prompt_cols = torch.arange(P + len(answer), device=device) < P  # (P + L,) what guidance masks
    logits = guided_logits(model, x, None, prompt_cols.expand(B, -1), mask_id, cfg_scale, first=P)  # (B, L, V)
    out = torch.zeros(masked.shape, dtype=torch.float64, device=device)
    # Only the masked rows enter the softmax (LLaDA-8B's vocabulary is 126,464 wide).
    picked = F.log_softmax(logits[masked].float(), dim=-1).gather(-1, target[masked][:, None])  # (N, 1)
    out[masked] = picked.squeeze(-1).double()
    return out


def _check_answer(model: Any, prompt: Sequence[int], answer: Sequence[int]) -> None:
    check_context(model, len(prompt), len(answer), "prompt ({used} tokens) + answer ({new} tokens) exceed the model "
                  "context of {limit} tokens; shorten the text or use a smaller window")


# ----------------------------------------------------------------------------- Monte Carlo ELBO

def _t_draws(rng: np.random.Generator, B: int, L: int) -> tuple[Tensor, Tensor]:
    """t ~ U(0, 1], each token masked with probability t; weight 1/t.  -> (B, L) bool, (B,)"""
    t = 1.0 - rng.random(B)  # (0, 1]: the weight 1/t stays finite
    masked = rng.random((B, L)) < t[:, None]
    return torch.from_numpy(masked), torch.from_numpy(1.0 / t)


def _l_draws(rng: np.random.Generator, B: int, L: int) -> tuple[Tensor, Tensor]:
    """l in {1..L} stratified over the batch, l positions masked uniformly; weight L/l.  -> (B, L), (B,)

    Row j draws l from the j-th of B equal slices of U(0, 1) (one shared offset), so the batch mean
    is unbiased while the rows cover the masking ratios evenly.
    """
    u = (rng.random() + np.arange(B)) / B  # (B,) one point per stratum
    n_masked = np.minimum(np.floor(u * L).astype(np.int64) + 1, L)  # (B,) in 1..L
    ranks = np.argsort(np.argsort(rng.random((B, L)), axis=1), axis=1)  # (B, L) a random permutation per row
    masked = ranks < n_masked[:, None]
    return torch.from_numpy(masked), torch.from_numpy(L / n_masked.astype(np.float64))


@torch.inference_mode()
def elbo(model: Any, prompt: Sequence[int], answer: Sequence[int], cfg: LikelihoodConfig | None = None, *,
         mask_id: int, key: int = 0) -> Estimate:
    """Monte Carlo estimate of the ELBO on log p(answer | prompt), in nats, with its standard error.

    ``key`` separates independent estimates under one seed (e.g. windows of a document); equal
    keys reuse the same noise. The t-form's samples are independent: stderr = std / sqrt(n). The
    l-form's rows are stratified within a batch, so its stderr comes from the spread of the batch
    means (with a single batch, the independent-sample formula, which overstates it).
    """
    cfg = cfg or LikelihoodConfig()
    _check_answer(model, prompt, answer)
    if len(answer) == 0:
        return Estimate(0.0, 0.0, 0)
    return _estimate(_elbo_batches(model, prompt, answer, cfg, range(cfg.mc_num // cfg.batch_size),
                                   mask_id=mask_id, key=key), cfg.estimator)


def _elbo_batches(model: Any, prompt: Sequence[int], answer: Sequence[int], cfg: LikelihoodConfig,
                  batches: range, *, mask_id: int, key: int) -> list[Tensor]:
    """The Monte Carlo batches numbered ``batches`` of one ELBO: each (batch_size,) float64 samples of
    the bound, batch b drawn with noise keyed (seed, key, b), so more batches extend an estimate."""
    draw = _l_draws if cfg.estimator == "l" else _t_draws
    out = []
    for b in batches:
        masked, weight = draw(keyed_generator(cfg.seed, key, b, _STREAM), cfg.batch_size, len(answer))
        logp = _masked_logprobs(model, prompt, answer, masked, mask_id=mask_id, cfg_scale=cfg.cfg_scale)  # (B, L)
        out.append(logp.sum(1).cpu() * weight)  # (B,) one sample of the bound per row
    return out


def _estimate(batches: list[Tensor], estimator: str) -> Estimate:
    """Batches of samples -> their mean and its standard error (see ``elbo``)."""
    samples = torch.cat(batches)  # (n,)
    n = samples.numel()
    if estimator == "l" and len(batches) > 1:
        means = torch.stack([s.mean() for s in batches])  # (K,) independent replicates
        stderr = means.std().item() / math.sqrt(len(batches))
    else:
        stderr = samples.std().item() / math.sqrt(n) if n > 1 else math.inf
    return Estimate(samples.mean().item(), stderr, n, samples)


@torch.inference_mode()
def elbo_sum(model: Any, pairs: Sequence[tuple[Sequence[int], Sequence[int]]], cfg: LikelihoodConfig | None = None,
             *, mask_id: int, key: int = 0, target_stderr: float | None = None,
             progress: bool = False) -> Estimate:
    """The sum of the ELBOs of (prompt, answer) ``pairs``, pair k keyed ``key + k``, with its
    standard error (independent pairs: the errors add in quadrature).

    Without ``target_stderr`` every pair gets ``cfg.mc_num`` samples (the sum of ``elbo`` calls).
    With it (nats, for the sum) the samples are allocated where they buy the most: one batch per
    pair first, then, round by round, each pair's count is raised towards Neyman's allocation
    n_k ∝ σ_k (σ_k: the pair's per-sample spread), which minimises the variance of the sum for a
    given number of samples, until the sum's standard error is at most the target or every pair
    has ``cfg.mc_num``. A corpus of many windows thus needs far fewer than mc_num samples per window.
    """
    cfg = cfg or LikelihoodConfig()
    live = [(k, p, a) for k, (p, a) in enumerate(pairs) if len(a) > 0]
    for _, p, a in live:
        _check_answer(model, p, a)
    cap = cfg.mc_num // cfg.batch_size
    have = {k: 1 if target_stderr is not None else cap for k, _, _ in live}  # batches per pair
    bar = tqdm(total=sum(have.values()), disable=not progress, unit="pass", desc="scoring", leave=False)
    batches: dict[int, list[Tensor]] = {k: [] for k, _, _ in live}
    try:
        while True:
            for k, p, a in live:  # draw what is planned and not drawn yet
                got = len(batches[k])
                batches[k] += _elbo_batches(model, p, a, cfg, range(got, have[k]), mask_id=mask_id, key=key + k)
                bar.update(have[k] - got)
            est = {k: _estimate(b, cfg.estimator) for k, b in batches.items()}
            total_se = math.sqrt(sum(e.stderr ** 2 for e in est.values()))
            if target_stderr is None or total_se <= target_stderr:
                break
            grown = _neyman(est, have, cap, cfg.batch_size, target_stderr)
            if not grown:
                break  # every pair is at mc_num: report the error reached
            bar.total += grown
            bar.refresh()
    finally:
        bar.close()
    values = list(est.values()) if live else []
    return Estimate(sum(e.value for e in values), math.sqrt(sum(e.stderr ** 2 for e in values)),
                    sum(e.n for e in values))


def _neyman(est: dict[int, Estimate], have: dict[int, int], cap: int, batch_size: int, target: float) -> int:
    """Raise ``have`` (batches per pair, at most ``cap``) towards n_k = σ_k Σσ / target² samples,
    at least one batch for the pair whose error weighs most; returns the batches added."""
    sigma = {k: float(e.samples.std()) if e.samples is not None and e.n > 1 else 0.0 for k, e in est.items()}
    total = sum(sigma.values())
    added = 0
    for k, s in sigma.items():
        want = min(cap, max(have[k], math.ceil(s * total / target ** 2 / batch_size)))
        added, have[k] = added + want - have[k], want
    if added == 0:
        open_ = [k for k in have if have[k] < cap]
        if open_:
            worst = max(open_, key=lambda k: est[k].stderr)
            have[worst] += 1
            added = 1
    return added


# ----------------------------------------------------------------------------- exact by enumeration

@torch.inference_mode()
def chain_rule_loglik(model: Any, prompt: Sequence[int], answer: Sequence[int], *, mask_id: int,
                      order: Sequence[int] | None = None, cfg_scale: float = 0.0) -> float:
    """Exact log-probability of decoding ``answer`` one token at a time in ``order`` (default: left
    to right), every token drawn from the predictor given the tokens revealed before it.

        log p_σ(a | c) = sum_k log p_θ(a^{σ(k)} | c, a^{σ(<k)})

    All L steps go through the model as one batch of L canvases.
    """
    _check_answer(model, prompt, answer)
    L = len(answer)
    order = list(range(L)) if order is None else [int(i) for i in order]
    if sorted(order) != list(range(L)):
        raise RemaskError(f"order {order} must be a permutation of 0..{L - 1}")
    if L == 0:
        return 0.0
    step_of = torch.empty(L, dtype=torch.long)
    step_of[torch.tensor(order)] = torch.arange(L)  # position -> the step that reveals it
    masked = step_of[None, :] >= torch.arange(L)[:, None]  # (L steps, L positions): not yet revealed
    logp = _masked_logprobs(model, prompt, answer, masked, mask_id=mask_id, cfg_scale=cfg_scale)  # (L, L)
    return logp[torch.arange(L), torch.tensor(order, device=logp.device)].sum().item()


def any_order_loglik(model: Any, prompt: Sequence[int], answer: Sequence[int], *, mask_id: int,
                     cfg_scale: float = 0.0) -> float:
    """The average over all L! orders of ``chain_rule_loglik`` (equal to the ELBO; short answers only)."""
    L = len(answer)
    if L > MAX_ENUM_ORDERS:
        raise RemaskError(f"any_order_loglik enumerates L! orders; the answer has {L} tokens "
                          f"(at most {MAX_ENUM_ORDERS}); use elbo() instead")
    orders = list(itertools.permutations(range(L)))
    return sum(chain_rule_loglik(model, prompt, answer, mask_id=mask_id, order=o, cfg_scale=cfg_scale)
               for o in orders) / len(orders)


def mixture_loglik(model: Any, prompt: Sequence[int], answer: Sequence[int], *, mask_id: int) -> float:
    """log of the probability that "pick a uniform random order, decode in it" yields ``answer``:
    log (1/L!) sum_σ p_σ(a | c). A proper distribution over answers, bounded below by the ELBO."""
    L = len(answer)
    if L > MAX_ENUM_ORDERS:
        raise RemaskError(f"mixture_loglik enumerates L! orders; the answer has {L} tokens (at most {MAX_ENUM_ORDERS})")
    logs = torch.tensor([chain_rule_loglik(model, prompt, answer, mask_id=mask_id, order=o)
                         for o in itertools.permutations(range(L))], dtype=torch.float64)
    return (torch.logsumexp(logs, 0) - math.log(len(logs))).item()


@torch.inference_mode()
def exact_elbo(model: Any, prompt: Sequence[int], answer: Sequence[int], *, mask_id: int,
               cfg_scale: float = 0.0) -> float:
    """The l-form ELBO computed exactly over all 2^L - 1 masked sets S:

        ELBO = sum_{S != {}} 1 / (|S| C(L, |S|)) sum_{i in S} log p_θ(a^i | c, a outside S)

    (l uniform on 1..L times weight L/l, S uniform among the C(L, l) sets of size l).
    """
    _check_answer(model, prompt, answer)
    L = len(answer)
    if L > MAX_ENUM_SUBSETS:
        raise RemaskError(f"exact_elbo enumerates 2^L masked sets; the answer has {L} tokens "
                          f"(at most {MAX_ENUM_SUBSETS}); use elbo() instead")
    if L == 0:
        return 0.0
    codes = torch.arange(1, 2 ** L)  # (2^L - 1,) every nonempty subset as a bit mask
    masked = (codes[:, None] >> torch.arange(L)) & 1 == 1  # (S, L)
    logp = _masked_logprobs(model, prompt, answer, masked, mask_id=mask_id, cfg_scale=cfg_scale)  # (S, L)
    size = masked.sum(1)  # (S,)
    weight = torch.tensor([1.0 / (int(k) * math.comb(L, int(k))) for k in size], dtype=torch.float64)
    return (logp.sum(1).cpu() * weight).sum().item()


# ----------------------------------------------------------------------------- autoregressive baseline

@torch.inference_mode()
def ar_logliks(model: Any, pairs: Sequence[tuple[Sequence[int], Sequence[int]]], *,
               batch_size: int = 16, with_greedy: bool = False) -> list[tuple[float, bool]]:
    """Exact log p(answer | prompt) = sum_i log p(a_i | c, a_<i) for a causal model, batched.

    Returns (log-likelihood, whether every answer token is the argmax of its conditional) per
    pair. Prompts must be non-empty (pass the EOS id as a document start).
    """
    if hasattr(model, "cfg") and not is_causal(model):
        raise RemaskError("ar_logliks needs a causal (AR) model; for masked diffusion use elbo()")
    device = model_device(model)
    out: list[tuple[float, bool]] = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        seqs = []
        for prompt, answer in chunk:
            if len(prompt) == 0:
                raise RemaskError("AR scoring needs a non-empty prompt; pass the EOS id as a document start")
            _check_answer(model, prompt, answer[:-1] if answer else answer)
            seqs.append(list(prompt) + list(answer))
        W = max(len(s) for s in seqs) - 1
        x = torch.zeros(len(seqs), max(W, 1), dtype=torch.long)  # (B, W) inputs, right-padded
        y = torch.zeros_like(x)  # (B, W) next-token targets
        scored = torch.zeros_like(x, dtype=torch.bool)  # (B, W) answer targets
        real = torch.zeros_like(x, dtype=torch.bool)
        for i, (s, (prompt, _)) in enumerate(zip(seqs, chunk)):
            n = len(s) - 1
            x[i, :n], y[i, :n], real[i, :n] = torch.tensor(s[:-1]), torch.tensor(s[1:]), True
            scored[i, len(prompt) - 1:n] = True
        x, y, scored, real = x.to(device), y.to(device), scored.to(device), real.to(device)
        logits = model(x, attn_mask=real).float()  # (B, W, V); right padding never reaches a real token
        logp = F.log_softmax(logits, -1).gather(-1, y[..., None]).squeeze(-1).double()  # (B, W)
        total = (logp * scored).sum(1).tolist()
        greedy = ((logits.argmax(-1) == y) | ~scored).all(1).tolist() if with_greedy else [False] * len(seqs)
        out.extend(zip(total, greedy))
    return out


def ar_loglik(model: Any, prompt: Sequence[int], answer: Sequence[int]) -> float:
    """Exact log p(answer | prompt) for a causal model (one forward pass)."""
    return ar_logliks(model, [(prompt, answer)])[0][0]


# ----------------------------------------------------------------------------- either model, long texts

def loglik(model: Any, prompt: Sequence[int], answer: Sequence[int], cfg: LikelihoodConfig | None = None, *,
           mask_id: int, key: int = 0) -> Estimate:
    """The AR model's exact log-likelihood, or the MDM's Monte Carlo ELBO."""
    if is_causal(model):
        return Estimate(ar_loglik(model, prompt, answer))
    return elbo(model, prompt, answer, cfg, mask_id=mask_id, key=key)


def rolling_windows(n: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """Cut a stream of ``n`` tokens whose first is a never-scored prefix (e.g. EOS) into windows.

    Returns (context_start, target_start, target_end) triples: the targets tile 1..n-1 exactly
    once, each window [context_start, target_end) holds at most ``window`` tokens and at least one
    context token, and each scores at most ``stride`` targets.
    """
    if not 1 <= stride < window:
        raise RemaskError(f"--stride {stride} must be in 1..{window - 1} (the window is {window} tokens and "
                          "needs one context token)")
    out, s = [], 1
    while s < n:
        e = min(s + stride, n)
        out.append((max(0, e - window), s, e))
        s = e
    return out


def rolling_loglik(model: Any, stream: Sequence[int], *, window: int, stride: int,
                   cfg: LikelihoodConfig | None = None, mask_id: int, batch_size: int = 16, key: int = 0) -> Estimate:
    """log p(stream[1:] | stream[0]) as a chain of windows: each window's new tokens given up to
    ``window - stride`` tokens before them (exact for AR, a sum of ELBOs with ``cfg.mc_num``
    samples each for MDM).

    Window k draws its noise with key ``key + k``; to keep several streams independent, give each
    a key range of its own (e.g. a running count of windows).
    """
    return windows_loglik(model, [stream], window=window, stride=stride, cfg=cfg, mask_id=mask_id,
                          batch_size=batch_size, key=key)


def windows_loglik(model: Any, streams: Sequence[Sequence[int]], *, window: int, stride: int,
                   cfg: LikelihoodConfig | None = None, mask_id: int, batch_size: int = 16, key: int = 0,
                   target_stderr: float | None = None, progress: bool = False) -> Estimate:
    """``rolling_loglik`` summed over several streams (documents) at once, their windows numbered on
    from ``key`` in order, so one ``target_stderr`` (nats, for the sum; see ``elbo_sum``) covers the
    whole corpus."""
    pairs = [(s[c:a], s[a:e]) for s in streams for c, a, e in rolling_windows(len(s), window, stride)]
    if is_causal(model):
        return Estimate(sum(v for v, _ in ar_logliks(model, pairs, batch_size=batch_size)))
    return elbo_sum(model, pairs, cfg, mask_id=mask_id, key=key, target_stderr=target_stderr, progress=progress)
