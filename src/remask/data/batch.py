"""The unit every objective trains on: token ids with the prompt and padding masks beside them."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Batch:
    """tokens (B, L) long; prompt_mask (B, L) bool, True where a token is never masked and never
    supervised (SFT prompts); attn_mask (B, L) bool, True for real tokens (None: no padding)."""

    tokens: Tensor
    prompt_mask: Tensor | None = None
    attn_mask: Tensor | None = None

    def to(self, device: torch.device | str) -> Batch:
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return Batch(move(self.tokens), move(self.prompt_mask), move(self.attn_mask))

    def truncate(self, length: int) -> Batch:
        cut = lambda t: None if t is None else t[:, :length]  # noqa: E731
        return Batch(cut(self.tokens), cut(self.prompt_mask), cut(self.attn_mask))
