"""Credit decoding: a masked position that keeps predicting the same token earns credit for it.

CreditDecoding (arXiv 2510.06133, "Accelerating Parallel Decoding in Diffusion Large Language Models
with Trace Credits"; the form dInfer ships): a token the model has predicted at a position for several
steps in a row is probably right even while its probability alone is below the commit threshold, and
remasking throws that history away. Each block keeps a credit C (B, W, V), zero when the block starts.
At every step, for each still-masked position with top-1 token v and probability p_v:

    C <- decay * C,    C[v] += p_v ** boost                                   (the trace)
    logits' = logits + weight * log(1 + C)                                    (the fusion)

and the step draws, scores and commits with ``logits'``, so a rule such as ``threshold`` commits a
consistently predicted token steps earlier. ``SampleConfig.credit`` is ``weight`` (0: off).
"""

from __future__ import annotations

import torch
from torch import Tensor


def accrue(credit: Tensor | None, logits: Tensor, masked: Tensor, *, decay: float, boost: float) -> Tensor:
    """The block's credit after one more step: (B, W, V) or None (the block's first step), logits (B, W, V)
    of this step, masked (B, W) bool -> (B, W, V) float32."""
    p = logits.float().softmax(-1)  # (B, W, V)
    top_p, top = p.max(-1)  # (B, W) probability and id of each position's top-1 token
    gain = torch.where(masked, top_p.pow(boost), 0.0)  # (B, W) only masked positions earn credit
    credit = torch.zeros_like(p) if credit is None else credit * decay
    return credit.scatter_add_(-1, top[..., None], gain[..., None])


def fuse(logits: Tensor, credit: Tensor, weight: float) -> Tensor:
    """logits + weight * log(1 + credit): (B, W, V) each -> (B, W, V) float32 (-inf stays -inf)."""
    return logits.float() + weight * credit.log1p()
