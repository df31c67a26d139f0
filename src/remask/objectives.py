"""Training objectives: LLaDA pre-training, LLaDA SFT, and next-token (AR baseline).

Each objective returns one loss contribution per sample, shape (B,). The training loop sums
the contributions and divides by the GLOBAL batch size, so with ``B`` sequences of length
``L`` the pre-training loss is exactly LLaDA's

    L(theta) = -(1 / (B L)) sum_b sum_i 1[x_t^i = M] log p_theta(x_0^i | x_t) / p_b   (LLaDA eq. 3)

with ``p_b = (1 - eps) t_b + eps`` (the forward process, LLaDA eq. 1, with eps avoiding
division by a zero masking probability). It bounds the data negative log-likelihood from above
(eq. 4 / 5), whatever the number of micro-batches or processes the batch is split over.

Noise comes in from the caller as ``noise`` (B, 1 + L) uniforms keyed by sample (see
``remask.rng``): column 0 is ``t``, columns 1: decide which tokens are masked.

The LM head runs only at the supervised positions (``supervised_nll``): with LLaDA-8B's 126,464
tokens the full (B, L, V) logits of a batch would take more memory than the rest of the step.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from remask.data.batch import Batch
from remask.rng import TIME, keyed_generator


def forward_process(x0: Tensor, noise: Tensor, *, mask_id: int, eps: float,
                    maskable: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """LLaDA's forward process q(x_t | x_0) (eq. 1): mask each token independently with prob p.

    x0: (B, L) clean tokens. noise: (B, 1 + L) uniforms. maskable: (B, L) bool or None.
    Returns x_t (B, L), masked (B, L) bool, and p (B,) the masking probability per sequence.
    """
    t = noise[:, 0]  # (B,) t ~ U(0, 1)
    p = (1.0 - eps) * t + eps  # (B,)
    masked = noise[:, 1 : 1 + x0.shape[1]] < p[:, None]  # (B, L)
    if maskable is not None:
        masked = masked & maskable
    xt = torch.where(masked, torch.full_like(x0, mask_id), x0)
    return xt, masked, p


def masked_token_nll(logits: Tensor, x0: Tensor, masked: Tensor) -> Tensor:
    """Cross-entropy at masked positions only, zero elsewhere: (B, L).

    Only the masked rows of the (B, L, V) logits enter the softmax, which keeps memory in check
    with large vocabularies (LLaDA-8B: 126,464).
    """
    nll = torch.zeros(x0.shape, dtype=torch.float32, device=x0.device)
    nll[masked] = F.cross_entropy(logits[masked].float(), x0[masked], reduction="none")
    return nll


class _RowNLL(torch.autograd.Function):
    """-log softmax(logits)[target] per row: (N, V) logits, (N,) targets -> (N,) float32 (float64 for float64).

    ``F.cross_entropy(logits.float(), ...)`` holds about three float32 (N, V) tensors at the peak of
    its backward (the upcast logits, the saved log-softmax, its gradient), which with a 126,464-token
    vocabulary outweighs the rest of a small model's step. Here the logits are upcast a chunk of rows
    at a time, only the logits (in their own dtype) and one float per row are saved, and the backward
    writes softmax - one_hot straight into a gradient of the logits' dtype: the logits and their
    gradient, and one float32 chunk, are all that is ever held.
    """

    @staticmethod
    def forward(ctx: Any, logits: Tensor, target: Tensor) -> Tensor:
        acc = torch.promote_types(logits.dtype, torch.float32)  # float32, or float64 for float64 logits
        lse = torch.empty(logits.shape[0], dtype=acc, device=logits.device)  # (N,) log-sum-exp
        for rows in _chunks(logits):
            lse[rows] = torch.logsumexp(logits[rows].to(acc), dim=-1)
        ctx.save_for_backward(logits, target, lse)
        return lse - logits.gather(1, target[:, None])[:, 0].to(acc)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor, None]:
        logits, target, lse = ctx.saved_tensors
        grad = torch.empty_like(logits)  # (N, V) in the logits' dtype
        for rows in _chunks(logits):
            p = torch.exp(logits[rows].to(lse.dtype) - lse[rows, None])  # (n, V) softmax
            p[torch.arange(p.shape[0], device=p.device), target[rows]] -= 1.0
            grad[rows] = p * grad_out[rows, None]
        return grad, None


def _chunks(logits: Tensor, floats: int = 1 << 24) -> list[slice]:
    """Row slices of ``logits`` (N, V) whose float32 copy is at most ``floats`` values (64 MB)."""
    step = max(1, floats // max(1, logits.shape[1]))
    return [slice(i, i + step) for i in range(0, logits.shape[0], step)]


def row_nll(logits: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy per row, (N, V), (N,) -> (N,) float32, at a fraction of the memory (see _RowNLL)."""
    return _RowNLL.apply(logits, target)


def _base(model: nn.Module) -> nn.Module:
    """The module under DDP (``.module``) and torch.compile (``._orig_mod``) wrappers."""
    while True:
        inner = next((m for m in (getattr(model, a, None) for a in ("module", "_orig_mod"))
                      if isinstance(m, nn.Module)), None)
        if inner is None:
            return model
        model = inner


def supervised_nll(model: nn.Module, xt: Tensor, x0: Tensor, rows: Tensor, attn_mask: Tensor | None) -> Tensor:
    """Cross-entropy of ``x0`` at the positions where ``rows`` is True, zero elsewhere: (B, L).

    A remask Transformer computes the LM head at those N positions only (``select``); it is called
    through its wrappers (DDP, FSDP) so their hooks run. Any other callable returning (B, L, V)
    logits (test doubles) is indexed after the fact, like ``masked_token_nll``.
    """
    if getattr(_base(model), "selects_rows", False):
        logits = model(xt, attn_mask=attn_mask, select=rows)  # (N, V)
    else:
        logits = model(xt, attn_mask=attn_mask)[rows]  # (B, L, V) -> (N, V)
    nll = torch.zeros(x0.shape, dtype=torch.float32, device=x0.device)
    nll[rows] = row_nll(logits, x0[rows])
    return nll


def stratify_t(noise: Tensor, slots: np.ndarray, batch_size: int, *, seed: int, step: int, kind: str) -> Tensor:
    """Replace the t column of ``noise`` (B, 1 + L) by a low-discrepancy draw across the global batch.

    slots: (B,) each row's place 0..batch_size-1 in the global batch. stratified: t_j = (u + j / B) mod 1
    with one u ~ U(0, 1) per step (Kingma et al. 2021, sec. 4; MDLM's sampler): every stratum of
    width 1/B holds one t. antithetic: pairs (t, 1 - t). Each t is still U(0, 1), so the expected loss
    (and the bound) is unchanged; its variance across batches is lower. Keyed like all noise, so the
    draw does not depend on how the batch is split. iid leaves ``noise`` as it is.
    """
    if kind == "iid":
        return noise
    if kind == "stratified":
        u = keyed_generator(seed, step, 0, TIME).random()
        t = (u + slots / batch_size) % 1.0
    else:  # antithetic: slots 2k and 2k + 1 share u_k
        u = np.array([keyed_generator(seed, step, int(j) // 2, TIME).random() for j in slots])
        t = np.where(slots % 2 == 0, u, 1.0 - u)
    noise = noise.clone()
    noise[:, 0] = torch.as_tensor(t, dtype=noise.dtype, device=noise.device)
    return noise


def _weighted(nll: Tensor, p: Tensor, weight: str) -> Tensor:
    """(B, L) masked-token CE -> (B, L) summands: CE / p (LLaDA eq. 3) or the flat CE."""
    return nll / p[:, None] if weight == "elbo" else nll


def mdm_loss(model: nn.Module, batch: Batch, noise: Tensor, *, mask_id: int, eps: float = 1e-3,
             weight: str = "elbo") -> Tensor:
    """Pre-training: per-sample sum over masked tokens of CE / p, divided by L.  -> (B,)"""
    x0 = batch.tokens
    maskable = batch.attn_mask  # padding (if any) is never masked nor supervised
    xt, masked, p = forward_process(x0, noise, mask_id=mask_id, eps=eps, maskable=maskable)
    nll = supervised_nll(model, xt, x0, masked, batch.attn_mask)  # (B, L)
    return _weighted(nll, p, weight).sum(1) / x0.shape[1]


def sft_loss(model: nn.Module, batch: Batch, noise: Tensor, *, mask_id: int, eps: float = 1e-3,
             weight: str = "elbo") -> Tensor:
    """LLaDA SFT: the prompt is never masked; the answer (EOS padding included) is masked and
    predicted; each sample's loss is normalised by its answer length.  -> (B,)"""
    assert batch.prompt_mask is not None, "SFT batches carry a prompt_mask"
    answer = ~batch.prompt_mask  # (B, L): answer tokens plus their EOS padding
    if batch.attn_mask is not None:
        answer = answer & batch.attn_mask
    xt, masked, p = forward_process(batch.tokens, noise, mask_id=mask_id, eps=eps, maskable=answer)
    nll = supervised_nll(model, xt, batch.tokens, masked, batch.attn_mask)  # (B, L)
    answer_len = answer.sum(1).clamp_min(1)  # (B,)
    return _weighted(nll, p, weight).sum(1) / answer_len


def ar_loss(model: nn.Module, batch: Batch, noise: Tensor | None = None, **_: object) -> Tensor:
    """Next-token cross-entropy, averaged over each sample's supervised targets.  -> (B,)

    Targets are tokens 1..L-1 predicted from their prefixes; with a prompt_mask (SFT) only
    answer tokens are targets. ``noise`` is unused: the AR loss is deterministic.
    """
    x = batch.tokens
    attn = None if batch.attn_mask is None else batch.attn_mask[:, :-1]
    supervised = torch.ones_like(x[:, 1:], dtype=torch.bool)  # (B, L-1): targets x_1..x_{L-1}
    if batch.prompt_mask is not None:
        supervised = supervised & ~batch.prompt_mask[:, 1:]
    if batch.attn_mask is not None:
        supervised = supervised & batch.attn_mask[:, 1:]
    nll = supervised_nll(model, x[:, :-1], x[:, 1:], supervised, attn)  # (B, L-1)
    return nll.sum(1) / supervised.sum(1).clamp_min(1)


OBJECTIVES = {"mdm": mdm_loss, "sft": sft_loss, "ar": ar_loss}
