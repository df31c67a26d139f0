"""Classifier-free guidance for a mask predictor (LLaDA, Appendix B.3).

The unconditional prediction is the same model with every prompt position masked; the guided
logits are u + (w + 1)(c - u). The sampler (``remask.sampling``) and the likelihood estimator
(``remask.likelihood``) both call ``guided_logits``, so they guide identically.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor


def guided_logits(model: Callable[..., Tensor], x: Tensor, attn_mask: Tensor | None, prompt_mask: Tensor,
                  mask_id: int, cfg_scale: float, *, first: int = 0, **cached: Any) -> Tensor:
    """One forward pass -> (B, W, V) float32 logits, with classifier-free guidance when cfg_scale > 0.

    The unconditional input masks every prompt position (padding stays padding, so it stays
    hidden by ``attn_mask``); both halves go through the model as one doubled batch, and
    logits = u + (w + 1)(c - u) (LLaDA, Appendix B.3). ``cached`` (cache=, start=) is passed on
    to the model: x and prompt_mask are then a window, attn_mask covers the whole sequence.
    ``first``: only columns first.. are returned, cut before the float32 cast (a scorer that needs
    the answer's logits alone never widens the prompt's, (B, P, V) with a 126k vocabulary).
    """
    if cfg_scale <= 0:
        return _call(model, x, attn_mask, cached)[:, first:].float()
    uncond = torch.where(prompt_mask, mask_id, x)  # (B, W)
    both = torch.cat([x, uncond])  # (2B, W)
    mask2 = None if attn_mask is None else torch.cat([attn_mask, attn_mask])
    cond_logits, uncond_logits = _call(model, both, mask2, cached)[:, first:].float().chunk(2)  # 2 x (B, W, V)
    return uncond_logits + (cfg_scale + 1) * (cond_logits - uncond_logits)


def _call(model: Callable[..., Tensor], x: Tensor, attn_mask: Tensor | None, cached: dict[str, Any]) -> Tensor:
    # Plain callables (test doubles) may take no attn_mask: only pass what is there.
    return model(x, **cached) if attn_mask is None else model(x, attn_mask=attn_mask, **cached)
