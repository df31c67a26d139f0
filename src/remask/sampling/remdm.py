"""ReMDM-style re-masking: committed tokens the model has come to doubt go back to the mask.

LLaDA's reverse process (Nie et al. 2025, Algorithms 4 and 5) only ever chooses among masked
positions: once committed, a token is final, and an early mistake stays. ReMDM (Wang et al.
2025, "Remasking Discrete Diffusion Models with Inference-Time Scaling") generalises the reverse
step so that an unmasked token returns to the mask with probability sigma_t, and a later step
predicts it again in its new context. Its confidence-based schedule (ReMDM-conf) gives tokens
the model was less sure of when it decoded them a larger share of sigma_t.

remask uses a deterministic, budgeted form that fits the block loop (``loop.denoise``,
``SampleConfig.remask_committed`` / ``remask_below``): at every step but a block's last, up to
``k`` tokens committed by earlier steps of the same block whose *current* confidence (the
configured measure, scored on the committed token under this step's logits) is below ``tau``
return to the mask, the least confident first. The tokens re-masked are added back to the
block's remaining schedule, so the block still ends fully committed in the same number of
steps (forward passes): exactly as many with the fixed-budget rules, at most as many with
``threshold``.

Two limits keep everything else valid. Only the current block is touched, so the prompt and
finished blocks (the K/V caches' stored prefix, early exit's EOS test) never change. And a
token is final once nothing before it in its row is masked: that is the stable prefix
``stream.TextDeltas`` has already sent as text, so a stream never has to take text back.

The model is trained to predict masked positions only, so its distribution at a visible
position is a heuristic signal (it does see the token itself there); ``low_confidence`` scores
the committed token, ``margin`` and ``entropy`` score only how unsure the position is.
"""

from __future__ import annotations

import torch
from torch import Tensor

from remask.sampling.rules import NEG_INF, select_topk


def remaskable(held: Tensor, masked: Tensor, column: Tensor) -> Tensor:
    """Which held tokens may return to the mask: (B, W) bool, (B, L) bool, (W,) long -> (B, W) bool.

    held: tokens of the current block (columns ``column``) committed by earlier steps of this
    block. masked: the whole canvas's masks before this step. A token at or before its row's
    first mask is in the stable prefix (final text) and stays.
    """
    L = masked.shape[1]
    every = torch.arange(L, device=masked.device)  # (L,)
    first = torch.where(masked, every, L).amin(-1)  # (B,) first masked column; L if none
    return held & (column[None] > first[:, None])  # (B, W)


def pick_remasks(doubt: Tensor, eligible: Tensor, k: int, below: float) -> Tensor:
    """Per row, up to ``k`` eligible tokens whose score is below ``below``, the lowest first.

    (B, W) float scores, (B, W) bool -> (B, W) bool. Ties go to the leftmost position (the
    stable sort of ``rules.select_topk``); a NaN score counts as the lowest. No host sync.
    """
    doubt = doubt.float().nan_to_num(nan=NEG_INF)  # (B, W)
    low = eligible & (doubt < below)  # (B, W)
    order = torch.where(low, -doubt, NEG_INF)  # (B, W) least confident = highest rank
    budget = torch.full(doubt.shape[:1], k, dtype=torch.long, device=doubt.device)  # (B,)
    return select_topk(order, budget)
