"""Which columns a denoising step recomputes: no cache, a prefix cache, or a dual cache.

A masked diffusion model attends in both directions, so every commit changes the keys and
values of every position and there is no exact KV cache. Within one block of the
semi-autoregressive loop (LLaDA, Algorithm 5) they change little outside the block, which is
what the approximate caches of Fast-dLLM (Wu et al. 2025, section 3.2) exploit:

* ``none``: the whole canvas, every step (exact; LLaDA).
* ``prefix``: a block's first step runs the whole canvas and stores every column's keys and
  values; its later steps run only columns start..L-1 (the block and the masked suffix)
  against the stored prompt and finished blocks.
* ``dual``: the later steps run only the block itself, against the stored prefix *and* suffix.

The first step of every block is a full forward pass in every mode, so it is exact; the
stored entries are refreshed there. ``SampleConfig.cache_full_every = N`` keeps that full pass
for every N-th block only: the other blocks start with a pass over the previous block and their
own, which rewrites the finished block's entries (last computed while some of it was still
masked) and keeps the prompt's and the suffix's. At long generations the full passes are half
of a dual cache's work (gen_length 1024 in blocks of 32: 32 passes over 1056 columns against
1024 over 32). ``SampleConfig.cache_refresh = N`` also refreshes them every N steps inside a
block: an answer that is one long block (a Sudoku grid) otherwise keeps the prompt's entries
from its first, all-masked step to the end. Classifier-free guidance runs the doubled batch
[conditional; unconditional] through one cache. bf16 autocast wraps the forward only; the
sampler's arithmetic stays in float32/float64.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from remask.devices import autocast
from remask.errors import RemaskError
from remask.guidance import guided_logits

CACHE_MODES = ("none", "prefix", "dual")

_COMPILED: weakref.WeakKeyDictionary[Any, Callable[..., Tensor]] = weakref.WeakKeyDictionary()


def compiled(model: Any) -> Callable[..., Tensor]:
    """``torch.compile(model)``, once per model object (later calls reuse the compiled graphs).

    The forward is the step's cost; the sampler's selection is a handful of small tensor ops
    without host synchronisation, so compiling the model is what pays off.
    """
    fn = _COMPILED.get(model)
    if fn is None:
        fn = _COMPILED[model] = torch.compile(model, dynamic=None)
    return fn


class BlockForward:
    """One denoising forward pass -> logits (B, W, V) float32 for the canvas's columns start..start+W-1.

    The pass runs the whole canvas (no cache, or a refresh) or a window of it, but the logits are
    the block's columns only (with ``to_end``, every column from the block's start on, which early
    exit reads): a remask Transformer runs its output head on those columns alone (``select``),
    which at 288 columns is an eighth of a full pass.
    """

    def __init__(self, model: Callable[..., Tensor], mode: str, *, attn_mask: Tensor | None, prompt_mask: Tensor,
                 mask_id: int, cfg_scale: float, dtype: str = "auto", compile: bool = False,
                 device: torch.device | None = None) -> None:
        if mode not in CACHE_MODES:
            raise RemaskError(f"--cache {mode!r} is not a cache mode; choose one of: {', '.join(CACHE_MODES)}")
        if mode != "none" and not callable(getattr(model, "new_cache", None)):
            raise RemaskError(f"--cache {mode} needs a remask Transformer (a model with new_cache); use --cache none")
        self.model, self.mode = model, mode
        self.run = compiled(model) if compile else model
        self.cfg_scale, self.mask_id, self.prompt_mask, self.attn = cfg_scale, mask_id, prompt_mask, attn_mask
        device = device if device is not None else prompt_mask.device
        self.autocast = autocast(device, dtype)
        self.cache: Any = None
        self.selects = bool(getattr(model, "selects_rows", False))  # forward(select=slice) on the block alone

    def __call__(self, x: Tensor, start: int, end: int, first: bool, since: int | None = None,
                 to_end: bool = False) -> Tensor:
        """first: a full pass (a refresh). since: a block's first step without one (``cache_full_every``):
        the window also covers columns since.. (the previous block), so their entries are refreshed.
        to_end: logits up to the canvas's last column instead of the block's end (early exit (b))."""
        L = x.shape[1]  # x: (B, L) the whole canvas
        cached: dict[str, Any] = {}
        lo, hi = 0, L  # no cache, or a refresh: the whole canvas
        if self.mode != "none":
            if self.cache is None:  # one cache for the run (the doubled batch under CFG)
                self.cache = self.model.new_cache(L)  # type: ignore[attr-defined]
            if not first:  # later steps: the block (dual) or the block and everything after it (prefix)
                lo, hi = (start if since is None else since), (L if self.mode == "prefix" else end)
            cached = {"cache": self.cache, "start": lo}
        keep = slice(start - lo, (hi if to_end else end) - lo)  # the block (or from it to the end), in the window
        if self.selects:
            cached["select"] = keep
        with self.autocast:
            logits = guided_logits(self.run, x[:, lo:hi], self.attn, self.prompt_mask[:, lo:hi], self.mask_id,
                                   self.cfg_scale, **cached)
        return logits if self.selects else logits[:, keep]  # (B, W, V) float32 from column start on
