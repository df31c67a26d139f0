"""Autoregressive decoding for the ``causal=True`` baseline: left to right, one token per pass.

``ar_stream`` yields after every token (what a server streams); ``ar_generate`` runs it to the end.
Decoding stops once every row has produced EOS (``early_stop``); the columns after it hold EOS.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from remask.errors import RemaskError
from remask.model import check_context, is_causal, model_device
from remask.sampling.config import ARSampleConfig


@dataclass
class ARGeneration:
    tokens: Tensor  # (B, gen_length): generated ids; after early stop, EOS to the end
    n_forward: int
    n_forward_saved: int = 0  # passes early stop skipped


@dataclass
class ARStep:
    """The state after one token: ``canvas`` (B, width + gen_length) is the left-padded prompts
    and the ids so far, with ``mask_id`` (else EOS) in the columns not yet decoded, as a diffusion
    ``StepEvent.canvas`` shows them; ``position`` is the generated column just written."""

    position: int
    canvas: Tensor
    n_forward: int
    n_forward_saved: int = 0  # set on the last step when early stop ended the run
    width: int = 0  # prompt columns: the answer is canvas[:, width:]

    @property
    def step(self) -> int:
        """The step index, as ``StepEvent.step`` names it (one token per step)."""
        return self.position

    @property
    def tokens(self) -> Tensor:
        """(B, gen_length) the generated columns."""
        return self.canvas[:, self.width:]


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


def ar_generate(model: nn.Module, prompts: Sequence[Sequence[int]], cfg: ARSampleConfig, *, eos_id: int,
                mask_id: int | None = None) -> ARGeneration:
    """Decode left to right (``ar_stream`` run to its end) -> the generated tokens and the cost."""
    *_, last = ar_stream(model, prompts, cfg, eos_id=eos_id, mask_id=mask_id)  # gen_length > 0: >= 1 step
    return ARGeneration(last.tokens, last.n_forward, last.n_forward_saved)


def ar_stream(model: nn.Module, prompts: Sequence[Sequence[int]], cfg: ARSampleConfig, *, eos_id: int,
              mask_id: int | None = None) -> Iterator[ARStep]:
    """Decode left to right, yielding an ``ARStep`` after every token. Prompts of different lengths
    are left-padded with an attention mask; ``mask_id`` is never produced.

    With ``cfg.kv_cache`` (and a model with ``new_cache``) the prompt is run once and every
    later pass feeds only the newest token against the stored keys/values: the causal model's
    earlier columns never change, so this is exact (equal to recomputing, up to float rounding).
    The prompts are checked here, before the first step.
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise RemaskError("every prompt needs at least one token (e.g. the EOS id as a document start)")
    width = max(len(p) for p in prompts)
    check_context(model, width, cfg.gen_length)
    return _decode(model, prompts, cfg, width, eos_id=eos_id, mask_id=mask_id)


@torch.inference_mode()
def _decode(model: nn.Module, prompts: Sequence[Sequence[int]], cfg: ARSampleConfig, width: int, *, eos_id: int,
            mask_id: int | None) -> Iterator[ARStep]:
    total = width + cfg.gen_length
    device = model_device(model)
    x = torch.full((len(prompts), total), eos_id, dtype=torch.long, device=device)  # (B, total)
    attn = torch.zeros_like(x, dtype=torch.bool)
    for i, p in enumerate(prompts):
        x[i, width - len(p):width] = torch.tensor(list(p), device=device)
        attn[i, width - len(p):] = True  # generated columns are real too
    padded = not bool(attn[:, :width].all())
    # a cache is only exact for a causal model
    cache = model.new_cache(total) if cfg.kv_cache and is_causal(model) and callable(getattr(model, "new_cache", None)) else None
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    pending = eos_id if mask_id is None else mask_id
    ended = torch.zeros(len(prompts), dtype=torch.bool, device=device)  # (B,) produced EOS already
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
        x[:, t] = torch.where(ended, eos_id, nxt)  # after its EOS a row only pads
        ended |= nxt == eos_id
        stop = cfg.early_stop and t + 1 < total and bool(ended.all())  # one host sync per token
        canvas = x.clone()  # (B, total)
        if not stop:
            canvas[:, t + 1:] = pending
        yield ARStep(t - width, canvas, t + 1 - width, total - t - 1 if stop else 0, width)
        if stop:
            return
