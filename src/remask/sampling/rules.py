"""Remasking rules: which of the masked positions to commit first.

At every step of LLaDA's reverse process (Nie et al. 2025, Algorithm 4 "low-confidence
remasking" and Algorithm 5, its semi-autoregressive form) the model predicts a token ``x0`` for
every masked position, and only the scheduled number of them is kept; the rest are "remasked".
A rule scores the candidates; the loop commits the ``k`` highest scores of each row.

Every rule has one signature (``Rule``) and lives in the plain ``RULES`` dict, so adding one
(margin, entropy, ...) is a function plus one line:

    rule(logits (B, L, V) float, x0 (B, L) long, candidates (B, L) bool, generator) -> (B, L) float

``logits`` are the guided, un-noised logits (after classifier-free guidance and the banned
tokens set to -inf); ``x0`` the tokens sampled from them; ``candidates`` the masked positions
inside the current block. Higher scores are committed first; non-candidates must be -inf.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

Rule = Callable[[Tensor, Tensor, Tensor, torch.Generator | None], Tensor]

NEG_INF = float("-inf")


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


RULES: dict[str, Rule] = {
    "low_confidence": low_confidence,
    "random": random_confidence,
}


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


def demote(confidence: Tensor, last: Tensor) -> Tensor:
    """Reorder scores so the ``last`` positions come after every other finite score.

    (B, L) float, (B, L) bool -> (B, L) float. Returns rank-based scores: the order within each
    group is kept, every ``last`` candidate scores below every other candidate, and -inf stays
    -inf. Used to commit EOS/EOT last (``confidence_eos_eot_inf``) whatever scale the rule uses.
    """
    L = confidence.shape[-1]
    finite = confidence > NEG_INF  # (B, L)
    score = -(ranks(confidence) + L * (last & finite).long()).to(confidence.dtype)  # (B, L) higher = first
    return torch.where(finite, score, NEG_INF)
