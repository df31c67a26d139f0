"""Autoregressive decoding for the ``causal=True`` baseline: left to right, one token per pass."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from remask.config import check, option
from remask.errors import RemaskError


@dataclass(kw_only=True)
class ARSampleConfig:
    max_new_tokens: int = option("tokens to generate", 64)
    temperature: float = option("0 is greedy", 0.0)
    top_k: int | None = option("sample among the k most likely tokens (None: all)", None)
    top_p: float | None = option("nucleus sampling mass (None: off)", None)
    seed: int = option("seed of the sampling generator", 0)
    kv_cache: bool = option("reuse the keys/values of earlier tokens (exact for a causal model; one new "
                            "column per pass instead of the whole prefix)", True)

    def __post_init__(self) -> None:
        check(self.max_new_tokens > 0, f"--gen-length must be positive, got {self.max_new_tokens}")
        check(self.temperature >= 0, f"--temperature must be >= 0, got {self.temperature}")
        check(self.top_k is None or self.top_k > 0, f"--top-k must be positive, got {self.top_k}")
        check(self.top_p is None or 0 < self.top_p <= 1, f"--top-p must be in (0, 1], got {self.top_p}")


@dataclass
class ARGeneration:
    tokens: Tensor  # (B, max_new_tokens)
    n_forward: int


def filter_logits(logits: Tensor, top_k: int | None, top_p: float | None) -> Tensor:
    """Keep the top-k tokens and/or the smallest set whose probability reaches top_p.  (B, V)"""
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= top_p  # keep the token that crosses top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


@torch.inference_mode()
def ar_generate(model: nn.Module, prompts: Sequence[Sequence[int]], cfg: ARSampleConfig, *, eos_id: int,
                mask_id: int | None = None) -> ARGeneration:
    """Decode left to right. Prompts of different lengths are left-padded with an attention mask.

    With ``cfg.kv_cache`` (and a model with ``new_cache``) the prompt is run once and every
    later pass feeds only the newest token against the stored keys/values: the causal model's
    earlier columns never change, so this is exact (equal to recomputing, up to float rounding).
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise RemaskError("every prompt needs at least one token (e.g. the EOS id as a document start)")
    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    limit = getattr(getattr(model, "cfg", None), "max_seq_len", None)
    if limit is not None and width + cfg.max_new_tokens > limit:
        raise RemaskError(f"prompt ({width} tokens) + --gen-length {cfg.max_new_tokens} exceeds the model context "
                          f"of {limit} tokens; shorten the prompt or lower --gen-length")
    total = width + cfg.max_new_tokens
    x = torch.full((len(prompts), total), eos_id, dtype=torch.long, device=device)  # (B, total)
    attn = torch.zeros_like(x, dtype=torch.bool)
    for i, p in enumerate(prompts):
        x[i, width - len(p):width] = torch.tensor(list(p), device=device)
        attn[i, width - len(p):] = True  # generated columns are real too
    padded = not bool(attn[:, :width].all())
    causal = getattr(getattr(model, "cfg", None), "causal", False)  # a cache is only exact for a causal model
    cache = model.new_cache(total) if cfg.kv_cache and causal and callable(getattr(model, "new_cache", None)) else None
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    for t in range(width, total):
        mask = attn[:, :t] if padded else None
        if cache is None:
            logits = model(x[:, :t], attn_mask=mask)[:, -1].float()  # (B, V)
        elif t == width:  # prefill: the whole prompt once
            logits = model(x[:, :t], attn_mask=mask, cache=cache, start=0)[:, -1].float()
        else:  # only the newest token, against the cached prefix
            logits = model(x[:, t - 1:t], attn_mask=mask, cache=cache, start=t - 1)[:, -1].float()
        if mask_id is not None:
            logits[:, mask_id] = float("-inf")
        if cfg.temperature == 0:
            nxt = logits.argmax(-1)
        else:
            probs = filter_logits(logits / cfg.temperature, cfg.top_k, cfg.top_p).softmax(-1)
            nxt = torch.multinomial(probs, 1, generator=gen).squeeze(-1)
        x[:, t] = nxt
    return ARGeneration(x[:, width:], cfg.max_new_tokens)
