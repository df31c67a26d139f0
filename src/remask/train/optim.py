"""AdamW with parameter groups, and the learning-rate schedules."""

from __future__ import annotations

import math

import torch
from torch import nn

from remask.config import TrainConfig


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """Weight decay on matrices only: norms' gains and the token embedding are not decayed
    (decaying embeddings of rare tokens toward zero only hurts them)."""
    decay, no_decay, seen = [], [], set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:  # tied weights appear twice
            continue
        seen.add(id(p))
        (decay if p.ndim >= 2 and "embed" not in name else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = next(model.parameters()).device.type == "cuda"
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=fused)


def lr_at(step: int, cfg: TrainConfig, elapsed: float = 0.0) -> float:
    """LR for optimizer step ``step`` (0-based): linear warmup, then cosine or WSD to min_lr.

    With ``lr_clock="time"`` the post-warmup schedule advances by whichever is further along,
    steps or elapsed seconds of the time budget, so a budget-bound run still decays fully.
    """
    peak, floor = cfg.lr, cfg.lr * cfg.min_lr_ratio
    if step < cfg.warmup_steps:
        return peak * (step + 1) / cfg.warmup_steps
    if cfg.lr_clock == "time" and cfg.time_budget:
        step = max(step, int(elapsed / cfg.time_budget * cfg.max_steps))
    if cfg.schedule == "cosine":
        span = max(1, cfg.max_steps - cfg.warmup_steps)
        progress = min(1.0, (step - cfg.warmup_steps) / span)
        return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * progress))
    # warmup-stable-decay: hold the peak, then decay linearly over the last decay_fraction.
    decay_start = cfg.max_steps - int(cfg.decay_fraction * cfg.max_steps)
    if step < decay_start:
        return peak
    progress = min(1.0, (step - decay_start) / max(1, cfg.max_steps - decay_start))
    return peak + (floor - peak) * progress
