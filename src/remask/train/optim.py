"""The optimizers (AdamW, or Muon for hidden matrices beside AdamW) and the learning-rate schedules."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from remask.config import TrainConfig


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Weight decay on matrices only: norms' gains and the token embedding are not decayed
    (decaying embeddings of rare tokens toward zero only hurts them). With ``optimizer="muon"``
    the blocks' weight matrices go to Muon and everything else stays with AdamW."""
    hidden, head, no_decay, seen = [], [], [], set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:  # tied weights appear twice
            continue
        seen.add(id(p))
        if p.ndim < 2 or "embed" in name:
            no_decay.append(p)
        else:
            (head if "lm_head" in name else hidden).append(p)
    use_muon = cfg.optimizer == "muon"
    groups = [{"params": head if use_muon else hidden + head, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    fused = next(model.parameters()).device.type == "cuda"
    adamw = torch.optim.AdamW([g for g in groups if g["params"]],  # a tied head leaves Muon's AdamW no decayed group
                              lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=fused)
    if not use_muon:
        return adamw
    # "match_rms_adamw" scales each matrix's update to AdamW's RMS (Moonlight, arXiv 2502.16982),
    # so Muon takes the same peak LR and weight decay as AdamW and one schedule drives both.
    muon = torch.optim.Muon(hidden, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.muon_momentum,
                            adjust_lr_fn="match_rms_adamw")
    return MuonAdamW(muon, adamw)


class MuonAdamW(torch.optim.Optimizer):
    """Muon (arXiv 2502.16982; ``torch.optim.Muon``) on the blocks' weight matrices and AdamW on the
    embedding, the output head and the norms' gains, as one optimizer: the loop's LR schedule sets
    ``lr`` on every group, and ``state_dict`` is a single flat one, so checkpoints and exact resume
    work unchanged.

    The two inner optimizers run their own update rules over this optimizer's param groups and
    state (the same dict objects), re-linked after every ``load_state_dict``, which replaces them.
    """

    def __init__(self, muon: torch.optim.Muon, adamw: torch.optim.AdamW) -> None:
        for g in muon.param_groups:
            g["algorithm"] = "muon"
        for g in adamw.param_groups:
            g["algorithm"] = "adamw"
        self._inner = {"muon": muon, "adamw": adamw}
        super().__init__(muon.param_groups + adamw.param_groups, {})
        self._link()

    def _link(self) -> None:
        for algorithm, inner in self._inner.items():
            inner.param_groups = [g for g in self.param_groups if g["algorithm"] == algorithm]
            inner.state = self.state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._link()

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        if closure is not None:
            raise ValueError("MuonAdamW.step takes no closure")
        for inner in self._inner.values():
            inner.step()


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
