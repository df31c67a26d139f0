"""The mask predictor: a LLaMA-style Transformer that returns logits, nothing else.

RMSNorm, rotary position embeddings (rotate-half convention), SwiGLU, no biases and, with
``causal=False`` (LLaDA), no causal mask anywhere. ``causal=True`` is the autoregressive
baseline on the same code. There is no time input: LLaDA's predictor infers the noise level
from the number of mask tokens it sees.

Build on the meta device and call ``init_weights()`` (or load a state dict with ``assign=True``):

    with torch.device("meta"):
        model = Transformer(cfg)
    model.to_empty(device="cpu")
    model.init_weights()

Samplers may pass a ``KVCache`` to run a window of columns against the stored keys and values
of the others (an exact decoder cache for ``causal=True``; an approximate one for diffusion,
where the stored entries go stale as the canvas changes). The model still returns logits only;
which columns to recompute, and when, is the sampler's business (``remask.sampling.cache``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from remask.config import ModelConfig
from remask.errors import RemaskError


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # Normalise in float32 for stability under bf16 autocast, then cast back.
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return xf.type_as(x) * self.weight


def rope_tables(positions: Tensor, head_dim: int, theta: float) -> tuple[Tensor, Tensor]:
    """cos and sin for rotary embeddings at integer ``positions`` (B, L) -> two (B, 1, L, head_dim)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim))
    angles = positions.float()[..., None] * inv_freq  # (B, L, head_dim/2)
    angles = torch.cat([angles, angles], dim=-1)  # rotate-half layout: (B, L, head_dim)
    return angles.cos()[:, None], angles.sin()[:, None]


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate (B, H, L, D) by the position angles (rotate-half convention, as LLaMA/LLaDA)."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (x.float() * cos + rotated.float() * sin).type_as(x)


class KVCache:
    """Rotated keys and values of every layer for columns 0..capacity-1: (B, Hkv, capacity, D) each.

    A forward with ``cache=`` writes its window's keys/values at columns start..start+W-1, then
    lets the window's queries attend to every column written so far (``length``). Buffers are
    allocated on first write (dtype and device follow the keys), so one cache serves fp32 and
    bf16 runs alike. Columns the caller never rewrites keep their old, possibly stale, entries.
    """

    def __init__(self, n_layer: int, capacity: int) -> None:
        self.capacity = capacity
        self.length = 0  # columns 0..length-1 hold keys/values
        self.keys: list[Tensor | None] = [None] * n_layer
        self.values: list[Tensor | None] = [None] * n_layer

    def write(self, layer: int, start: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store (B, Hkv, W, D) at columns start.. and return the (B, Hkv, length, D) keys and values."""
        if self.keys[layer] is None:
            shape = (k.shape[0], k.shape[1], self.capacity, k.shape[3])
            self.keys[layer] = k.new_zeros(shape)
            self.values[layer] = v.new_zeros(shape)
        keys, values = self.keys[layer], self.values[layer]
        keys[:, :, start:start + k.shape[2]] = k
        values[:, :, start:start + v.shape[2]] = v
        return keys[:, :, :self.length], values[:, :, :self.length]


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        self.q_proj = nn.Linear(cfg.d_model, cfg.n_head * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, cfg.n_kv_head * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, cfg.n_kv_head * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.n_head * cfg.head_dim, cfg.d_model, bias=False)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None, causal: bool,
                cache: tuple[KVCache, int, int] | None = None) -> Tensor:
        B, L, _ = x.shape
        q = self.q_proj(x).view(B, L, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, L, D)
        k = self.k_proj(x).view(B, L, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, Hkv, L, D)
        v = self.v_proj(x).view(B, L, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, Hkv, L, D)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:  # (cache, layer index, first column of the window)
            k, v = cache[0].write(cache[1], cache[2], k, v)  # (B, Hkv, length, D): stored + this window
            causal = False  # window_mask already holds the causal pattern (or there is none)
        if self.n_kv_head != self.n_head:  # grouped-query attention: share each K/V head
            rep = self.n_head // self.n_kv_head
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        # mask is None (plain causal or fully bidirectional) or a (B, 1, L, L) boolean "may attend".
        y = _attend(q, k, v, mask, causal and mask is None)  # (B, H, L, D)
        return self.o_proj(y.transpose(1, 2).reshape(B, L, -1))  # (B, L, d_model)


def _attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, is_causal: bool) -> Tensor:
    """Scaled dot-product attention; on the CPU, bf16 inputs are attended in float32.

    PyTorch's CPU flash-attention backward in bf16 ran 5x slower than in float32 (2 cores with
    AMX, torch 2.13: 170 vs 34 ms over 3 steps of the default model), which turned bf16 autocast
    from a 1.3x gain into a loss; the projections around it stay in bf16.
    """
    if q.device.type == "cpu" and q.dtype == torch.bfloat16:
        with torch.autocast("cpu", enabled=False):
            y = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask, is_causal=is_causal)
        return y.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)


class SwiGLU(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.d_model, cfg.ffn_hidden, bias=False)
        self.up_proj = nn.Linear(cfg.d_model, cfg.ffn_hidden, bias=False)
        self.down_proj = nn.Linear(cfg.ffn_hidden, cfg.d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = SwiGLU(cfg)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None, causal: bool,
                cache: tuple[KVCache, int, int] | None = None) -> Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin, mask, causal, cache)
        return x + self.mlp(self.mlp_norm(x))


class Transformer(nn.Module):
    """tokens (B, L) -> logits (B, L, vocab_size)."""

    selects_rows = True  # forward(..., select=) runs the LM head at chosen positions only (the objectives)

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.tie_weights()

    def tie_weights(self) -> None:
        """Share the embedding with the LM head; redo after ``to_empty`` or an ``assign=True`` load."""
        if self.cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight

    @torch.no_grad()
    def init_weights(self, seed: int | None = None) -> None:
        """Normal(0, init_std) for embeddings and linears; residual outputs scaled by 1/sqrt(2 n_layer)."""
        gen = None
        if seed is not None:
            gen = torch.Generator(device=self.embed.weight.device).manual_seed(seed)
        std = self.cfg.init_std
        for name, p in self.named_parameters():
            if p.ndim == 1:  # RMSNorm gains
                p.fill_(1.0)
            elif name.endswith(("o_proj.weight", "down_proj.weight")):
                p.normal_(0.0, std / math.sqrt(2 * self.cfg.n_layer), generator=gen)
            else:
                p.normal_(0.0, std, generator=gen)

    def forward(self, idx: Tensor, attn_mask: Tensor | None = None, position_ids: Tensor | None = None,
                cache: KVCache | None = None, start: int = 0, select: Tensor | slice | None = None) -> Tensor:
        """Logits for every position of ``idx`` (B, L, V), or, with ``select``, (N, V) at its N True
        positions in row-major order: training supervises only some positions, and with a large
        vocabulary (LLaDA-8B: 126,464) the full (B, L, V) logits would dominate memory. A ``slice``
        select keeps those columns, (B, W', V): a denoising step reads only its block's.

        idx: (B, L) token ids. attn_mask: optional (B, L) bool, True for real tokens; padded keys
        are hidden from every query. position_ids: optional (B, L) rotary positions; by default
        0..L-1, or, with an attn_mask, the count of real tokens before each position, so a
        left-padded prompt sees exactly the positions it would see alone.

        With ``cache``, idx (B, W) holds columns start..start+W-1 of a longer sequence: their
        keys/values are written into the cache and their queries attend to every column the
        cache holds (0..cache.length-1 after this write), under the causal mask if ``causal``.
        attn_mask then covers those columns, (B, cache.length); position_ids stays (B, W).
        """
        B, L = idx.shape
        total = L
        if cache is not None:
            if start < 0 or start + L > cache.capacity:
                raise ValueError(f"columns {start}..{start + L - 1} do not fit a cache of {cache.capacity}")
            cache.length = total = max(cache.length, start + L)
        if position_ids is None:
            if attn_mask is None:
                position_ids = torch.arange(start, start + L, device=idx.device).expand(B, L)
            else:
                position_ids = (attn_mask.long().cumsum(-1) - 1).clamp_min(0)[:, start:start + L]
        cos, sin = rope_tables(position_ids, self.cfg.head_dim, self.cfg.rope_theta)
        if cache is None:
            mask = None if attn_mask is None else attention_mask(attn_mask, self.cfg.causal)
        else:
            mask = window_mask(attn_mask, start, L, total, self.cfg.causal, idx.device)
        x = self.embed(idx)  # (B, L, d_model)
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, mask, self.cfg.causal, None if cache is None else (cache, i, start))
        if isinstance(select, slice):
            x = x[:, select]  # (B, W', d_model): RMSNorm and the head act per position, so select first
        elif select is not None:
            x = x[select]  # (N, d_model)
        return self.lm_head(self.norm(x))  # (B, L, V), or (N, V) with select

    def new_cache(self, capacity: int) -> KVCache:
        """An empty ``KVCache`` for sequences of up to ``capacity`` columns."""
        return KVCache(self.cfg.n_layer, capacity)

    def num_params(self, exclude_embeddings: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.embed.weight.numel() if exclude_embeddings else n


def attention_mask(key_mask: Tensor, causal: bool) -> Tensor:
    """(B, L) key padding -> (B, 1, L, L) bool "query i may attend key j".

    Every query also sees itself, so a padding row never has zero allowed keys (which would
    make softmax NaN); padded positions' outputs are ignored by callers anyway.
    """
    L = key_mask.shape[-1]
    allowed = key_mask[:, None, None, :].expand(-1, 1, L, L)  # (B, 1, L, L)
    if causal:
        allowed = allowed & torch.ones(L, L, dtype=torch.bool, device=key_mask.device).tril()
    return allowed | torch.eye(L, dtype=torch.bool, device=key_mask.device)


def window_mask(key_mask: Tensor | None, start: int, width: int, total: int, causal: bool,
                device: torch.device) -> Tensor | None:
    """(B, total) key padding -> (B, 1, width, total) bool for queries at columns start..start+width-1.

    None when every query may see every key (bidirectional, no padding): SDPA's fast path.
    Each query always sees its own column, as in ``attention_mask``.
    """
    if key_mask is None and (not causal or (width == 1 and start + 1 == total)):
        return None
    query_col = torch.arange(start, start + width, device=device)[:, None]  # (W, 1)
    key_col = torch.arange(total, device=device)[None, :]  # (1, total)
    allowed = torch.ones(1, 1, width, total, dtype=torch.bool, device=device)
    if key_mask is not None:
        allowed = allowed & key_mask[:, None, None, :total]  # (B, 1, W, total)
    if causal:
        allowed = allowed & (key_col <= query_col)
    return allowed | (key_col == query_col)


def build_model(cfg: ModelConfig, device: str | torch.device = "cpu", seed: int | None = None) -> Transformer:
    """Construct on the meta device (no wasted init), materialise on ``device``, then init."""
    with torch.device("meta"):
        model = Transformer(cfg)
    model.to_empty(device=device)
    model.tie_weights()  # to_empty materialises each module's parameter separately
    model.init_weights(seed)
    return model


# ----------------------------------------------------------------------------- what callers ask of a model
# Samplers, likelihoods and services take any callable that returns logits (tests pass scripted
# doubles); these read what a remask Transformer declares in ``cfg`` and assume nothing else.

def is_causal(model: Any) -> bool:
    """Whether ``model`` is the autoregressive baseline (``cfg.causal``); a plain callable is not."""
    return bool(getattr(getattr(model, "cfg", None), "causal", False))


def context_length(model: Any) -> int | None:
    """``model.cfg.max_seq_len`` when the model declares one."""
    limit = getattr(getattr(model, "cfg", None), "max_seq_len", None)
    return limit if isinstance(limit, int) else None


def model_device(model: Any) -> torch.device:
    """The device of the model's first parameter (CPU for a parameter-free callable)."""
    params = getattr(model, "parameters", None)
    first = next(iter(params()), None) if callable(params) else None
    return first.device if first is not None else torch.device("cpu")


CONTEXT_ERROR = ("prompt ({used} tokens) + --gen-length {new} exceeds the model context of {limit} tokens; "
                 "shorten the prompt or lower --gen-length")


def check_context(model: Any, used: int, new: int = 0, message: str = CONTEXT_ERROR) -> None:
    """``used`` tokens on the canvas + ``new`` ones to produce must fit the model context; else a
    one-line RemaskError, ``message`` formatted with ``used``, ``new`` and ``limit`` (each caller
    names its own inputs and fix: flags, request fields, chat commands)."""
    limit = context_length(model)
    if limit is not None and used + new > limit:
        raise RemaskError(message.format(used=used, new=new, limit=limit))


def check_vocab(model: Any, ids: Tensor, what: str) -> None:
    """Ids outside ``model.cfg.vocab_size`` -> RemaskError (instead of an embedding IndexError)."""
    vocab = getattr(getattr(model, "cfg", None), "vocab_size", None)
    if isinstance(vocab, int) and ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
        bad = int(ids.max()) if int(ids.max()) >= vocab else int(ids.min())
        raise RemaskError(f"{what} holds token id {bad}, outside the model vocabulary (size {vocab}); "
                          "encode it with the model's own tokenizer")
