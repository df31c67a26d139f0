"""How many masked tokens to commit at each step of the reverse process.

LLaDA (Nie et al. 2025, Algorithms 4 and 5) runs ``s`` steps over a block that starts with
``n`` masked tokens and unmasks a linear share of them per step: ``n // s`` each step, plus
one more in each of the first ``n % s`` steps, so the counts sum to ``n`` and no mask is left
when the block's last step is done. This is LLaDA's ``get_num_transfer_tokens``, without its
Python loop over the batch.
"""

from __future__ import annotations

import torch
from torch import Tensor


def num_transfer_tokens(mask_count: Tensor, steps: int) -> Tensor:
    """Tokens to commit per step: (B,) masked counts -> (B, steps) long, each row summing to its count.

    Rows may start with different counts (infilling several canvases at once). With fewer
    masked tokens than steps, the trailing steps commit nothing (the loop skips them when
    every row is at zero).

    >>> num_transfer_tokens(torch.tensor([10]), 4).tolist()
    [[3, 3, 2, 2]]
    """
    if steps <= 0:
        raise ValueError(f"steps must be positive, got {steps}")
    mask_count = mask_count.long()  # (B,)
    base = (mask_count // steps)[:, None]  # (B, 1)
    remainder = (mask_count % steps)[:, None]  # (B, 1)
    step = torch.arange(steps, device=mask_count.device)  # (steps,)
    return base + (step < remainder).long()  # (B, steps)
