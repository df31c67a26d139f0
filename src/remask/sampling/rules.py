"""Remasking rules: which of the masked positions to commit at each step.

At every step of LLaDA's reverse process (Nie et al. 2025, Algorithm 4 "low-confidence
remasking" and Algorithm 5, its semi-autoregressive form) the model predicts a token ``x0`` for
every masked position, and only some are kept; the rest are "remasked". Two small pieces
decide which:

* a **confidence measure** (``CONFIDENCES``) scores each candidate, higher = surer:

      measure(logits (B, L, V) float, x0 (B, L) long, candidates (B, L) bool, generator) -> (B, L) float

  ``low_confidence`` p(x0 | x_t) (LLaDA), ``margin`` top-1 minus top-2 probability (Kim et al.
  2025), ``entropy`` exp(-H(p)), ordered like negative entropy (Dream), ``random`` uniform
  noise (LLaDA's ``random``). All lie in [0, 1], so one threshold means the same on each.
  Non-candidates score -inf.

* a **rule** (``RULES``) turns scores into commits; every rule has one signature:

      rule(confidence (B, L), budget (B,) long, knobs) -> commit (B, L) bool

  ``budget`` is the schedule's token count for this step (``schedule.num_transfer_tokens``);
  ``knobs`` is anything with the ``Knobs`` attributes (a ``SampleConfig``). The rules named after
  a measure commit exactly the ``budget`` best candidates of each row with that measure. The
  parallel rules commit as many as they judge safe, never fewer than the budget (at least one),
  with any measure (``SampleConfig.confidence``):

  - ``threshold`` (Wu et al. 2025, Fast-dLLM, section 3.3): every candidate at least
    ``knobs.threshold`` sure;
  - ``factor`` (Fast-dLLM's factor-based rule): the n most confident, n the largest count whose
    n-th best confidence c_(n) still satisfies (n + 1)(1 - c_(n)) <= ``knobs.factor``, so the more
    tokens go at once, the surer the least sure of them must be;
  - ``hierarchy`` (dInfer, arXiv 2510.08666, hierarchical decoding): the most confident candidate of
    every run of adjacent candidates, if above ``knobs.low_threshold``, plus every candidate at
    least ``knobs.threshold`` sure. Commits land apart, in different runs, so neighbours that
    depend on each other are not fixed by one pass; each commit splits its run, so the number per
    step grows as the block fills.

Adding a rule is a function and one line in each registry it belongs to.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor


class Knobs(Protocol):
    """What the rules read of their settings (``SampleConfig`` declares each, with its help and default)."""

    threshold: float
    factor: float
    low_threshold: float


Confidence = Callable[[Tensor, Tensor, Tensor, torch.Generator | None], Tensor]
Rule = Callable[[Tensor, Tensor, Knobs], Tensor]

NEG_INF = float("-inf")


# ----------------------------------------------------------------------------- confidence measures

def low_confidence(logits: Tensor, x0: Tensor, candidates: Tensor, generator: torch.Generator | None) -> Tensor:
    """Model probability of the sampled token, p(x0 | x_t): commit the most confident, remask the rest.

    This is LLaDA's ``low_confidence`` remasking. The probability comes from the un-noised logits
    even when x0 was drawn with Gumbel noise, as LLaDA does. Computed as exp(logit - logsumexp)
    in float32, so no (B, L, V) softmax is materialised.
    """
    logits = logits.float()  # (B, L, V)
    log_norm = torch.logsumexp(logits, dim=-1)  # (B, L)
    chosen = logits.gather(-1, x0[..., None]).squeeze(-1)  # (B, L) logit of the sampled token
    p = (chosen - log_norm).exp()  # (B, L) in [0, 1]
    return torch.where(candidates, p, NEG_INF)


def random_confidence(logits: Tensor, x0: Tensor, candidates: Tensor, generator: torch.Generator | None) -> Tensor:
    """Uniform scores: commit a uniformly random subset of the candidates (LLaDA's ``random`` remasking)."""
    noise = torch.rand(candidates.shape, generator=generator, device=candidates.device)  # (B, L)
    return torch.where(candidates, noise, NEG_INF)


def margin_confidence(logits: Tensor, x0: Tensor, candidates: Tensor, generator: torch.Generator | None) -> Tensor:
    """p(top-1) - p(top-2): a position whose best guess clearly beats the runner-up goes first.

    Independent of the sampled x0, like the top-probability margin of Kim et al. 2025.
    """
    logits = logits.float()  # (B, L, V)
    log_norm = torch.logsumexp(logits, dim=-1, keepdim=True)  # (B, L, 1)
    top2 = (logits.topk(2, dim=-1).values - log_norm).exp()  # (B, L, 2) the two largest probabilities
    return torch.where(candidates, top2[..., 0] - top2[..., 1], NEG_INF)


def entropy_confidence(logits: Tensor, x0: Tensor, candidates: Tensor, generator: torch.Generator | None) -> Tensor:
    """exp(-H(p)), H the Shannon entropy of the predicted distribution (nats).

    Ranks exactly as negative entropy (Dream's ``entropy`` order) but lies in (0, 1]: 1 is a
    one-hot prediction, 1/V a uniform one, so a threshold means roughly "as sure as a
    distribution over 1/tau equally likely tokens".
    """
    logp = logits.float().log_softmax(-1)  # (B, L, V)
    # p log p with p = 0 (banned tokens, logit -inf) contributes 0, not nan.
    plogp = torch.where(logp > NEG_INF, logp.exp() * logp, 0.0)
    return torch.where(candidates, plogp.sum(-1).exp(), NEG_INF)  # (B, L) exp(-H)


CONFIDENCES: dict[str, Confidence] = {
    "low_confidence": low_confidence,
    "random": random_confidence,
    "margin": margin_confidence,
    "entropy": entropy_confidence,
}


# ----------------------------------------------------------------------------- selection

def ranks(confidence: Tensor) -> Tensor:
    """(B, L) scores -> (B, L) long rank of each position in its row, 0 = highest score.

    Ties go to the leftmost position (stable sort), so selection is deterministic.
    """
    B, L = confidence.shape
    order = confidence.argsort(dim=-1, descending=True, stable=True)  # (B, L) positions, best first
    positions = torch.arange(L, device=confidence.device).expand(B, L)  # (B, L)
    return torch.empty_like(order).scatter_(-1, order, positions)  # (B, L) rank of each position


def select_topk(confidence: Tensor, k: Tensor) -> Tensor:
    """Per row, the ``k`` highest-scoring positions: (B, L) float, (B,) long -> (B, L) bool.

    A -inf position (a non-candidate) is never selected, even when ``k`` exceeds the number of
    candidates. No Python loop over rows: one sort, then ``rank < k``.
    """
    return (ranks(confidence) < k[:, None]) & (confidence > NEG_INF)  # (B, L)


def top_k(confidence: Tensor, budget: Tensor, knobs: Knobs) -> Tensor:
    """Commit exactly ``budget`` candidates per row, the highest scores first (``knobs`` unused)."""
    return select_topk(confidence, budget)


def above_threshold(confidence: Tensor, budget: Tensor, knobs: Knobs) -> Tensor:
    """Commit every candidate scoring >= ``knobs.threshold``, plus the best ``max(budget, 1)`` of each row.

    The floor keeps progress (one token per step at least) and, with fewer steps than masks,
    still finishes the block within its steps. No host sync: pure tensor ops.
    """
    sure = (confidence >= knobs.threshold) & (confidence > NEG_INF)  # (B, L)
    return sure | select_topk(confidence, budget.clamp_min(1))


def factor_rule(confidence: Tensor, budget: Tensor, knobs: Knobs) -> Tensor:
    """Fast-dLLM's factor-based parallel decoding: commit the n most confident candidates of each row,
    n the length of the leading run of c_(i) >= 1 - f / (i + 1) over the confidences sorted
    c_(1) >= c_(2) >= ... (f = ``knobs.factor``), and never fewer than ``max(budget, 1)``.

    Wu et al. 2025 (Fast-dLLM, Theorem 1 and its factor rule): greedy decoding of n tokens from their
    marginals agrees with the joint when each is sure enough, and the bar rises with n; the rule's
    (n + 1)(1 - c_(n)) <= f makes it concrete. The best candidate always passes.
    """
    best = confidence.sort(dim=-1, descending=True).values  # (B, L) c_(1) >= c_(2) >= ...
    i = torch.arange(1, best.shape[-1] + 1, device=best.device, dtype=best.dtype)  # (L,) 1-based rank
    passes = (best >= 1 - knobs.factor / (i + 1)) & (best > NEG_INF)  # (B, L)
    passes[:, 0] = True
    n = passes.long().cumprod(-1).sum(-1)  # (B,) leading run of passes
    return select_topk(confidence, torch.maximum(n, budget.clamp_min(1)))


def hierarchy_rule(confidence: Tensor, budget: Tensor, knobs: Knobs) -> Tensor:
    """dInfer's hierarchical decoding: in each row, the best candidate of every run of adjacent candidates
    that scores above ``knobs.low_threshold``, every candidate >= ``knobs.threshold``, and at least the
    best ``max(budget, 1)``.

    Runs are maximal stretches of consecutive candidate columns (B, L): a commit inside a run splits
    it in two, so one step commits at most one token per run and neighbours wait for the next pass.
    Ties within a run commit all tied positions (exact float ties between distinct tokens are rare).
    """
    candidate = confidence > NEG_INF  # (B, L)
    before = torch.nn.functional.pad(candidate[:, :-1], (1, 0))  # (B, L) the left neighbour is a candidate
    run = (candidate & ~before).long().cumsum(-1)  # (B, L) 1, 2, ... per run of candidates (0 before the first)
    lowest = torch.finfo(confidence.dtype).min
    scores = torch.where(candidate, confidence, lowest)  # (B, L) finite, so amax ignores non-candidates
    B, L = scores.shape
    peak = scores.new_full((B, L + 1), lowest).scatter_reduce(-1, run, scores, reduce="amax")  # (B, L + 1) per run id
    best = candidate & (scores == peak.gather(-1, run)) & (confidence > knobs.low_threshold)  # (B, L)
    sure = candidate & (confidence >= knobs.threshold)
    return best | sure | select_topk(confidence, budget.clamp_min(1))


RULES: dict[str, Rule] = {
    "low_confidence": top_k,
    "random": top_k,
    "margin": top_k,
    "entropy": top_k,
    "threshold": above_threshold,
    "factor": factor_rule,
    "hierarchy": hierarchy_rule,
}


def measure_name(remasking: str, confidence: str | None) -> str:
    """The confidence measure a rule uses: the explicit one, else the rule's namesake, else low_confidence."""
    if confidence is not None:
        return confidence
    return remasking if remasking in CONFIDENCES else "low_confidence"


def demote(confidence: Tensor, last: Tensor) -> Tensor:
    """Move the ``last`` candidates below every other candidate of their row, keeping each group's order.

    (B, L) float, (B, L) bool -> (B, L) float. The other candidates keep their exact scores (so
    ``threshold`` still compares real confidences); each ``last`` one is shifted down by its
    row's score range + 1, which puts it below the row's lowest score and, for measures in
    [0, 1], below 0, so no positive threshold admits it. -inf stays -inf. Used to commit
    EOS/EOT last (``confidence_eos_eot_inf``).
    """
    finite = confidence > NEG_INF  # (B, L)
    high = torch.where(finite, confidence, NEG_INF).amax(-1, keepdim=True)  # (B, 1)
    low = torch.where(finite, confidence, float("inf")).amin(-1, keepdim=True)  # (B, 1)
    shift = (high - low).nan_to_num(0.0, posinf=0.0, neginf=0.0) + 1.0  # (B, 1); rows without candidates: 1
    return torch.where(last & finite, confidence - shift, confidence)
