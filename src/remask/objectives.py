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
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from remask.data.batch import Batch


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


def mdm_loss(model: nn.Module, batch: Batch, noise: Tensor, *, mask_id: int, eps: float = 1e-3) -> Tensor:
    """Pre-training: per-sample sum over masked tokens of CE / p, divided by L.  -> (B,)"""
    x0 = batch.tokens
    maskable = batch.attn_mask  # padding (if any) is never masked nor supervised
    xt, masked, p = forward_process(x0, noise, mask_id=mask_id, eps=eps, maskable=maskable)
    logits = model(xt, attn_mask=batch.attn_mask)  # (B, L, V)
    nll = masked_token_nll(logits, x0, masked)  # (B, L)
    return (nll / p[:, None]).sum(1) / x0.shape[1]


def sft_loss(model: nn.Module, batch: Batch, noise: Tensor, *, mask_id: int, eps: float = 1e-3) -> Tensor:
    """LLaDA SFT: the prompt is never masked; the answer (EOS padding included) is masked and
    predicted; each sample's loss is normalised by its answer length.  -> (B,)"""
    assert batch.prompt_mask is not None, "SFT batches carry a prompt_mask"
    answer = ~batch.prompt_mask  # (B, L): answer tokens plus their EOS padding
    if batch.attn_mask is not None:
        answer = answer & batch.attn_mask
    xt, masked, p = forward_process(batch.tokens, noise, mask_id=mask_id, eps=eps, maskable=answer)
    logits = model(xt, attn_mask=batch.attn_mask)  # (B, L, V)
    nll = masked_token_nll(logits, batch.tokens, masked)  # (B, L)
    answer_len = answer.sum(1).clamp_min(1)  # (B,)
    return (nll / p[:, None]).sum(1) / answer_len


def ar_loss(model: nn.Module, batch: Batch, noise: Tensor | None = None, **_: object) -> Tensor:
    """Next-token cross-entropy, averaged over each sample's supervised targets.  -> (B,)

    Targets are tokens 1..L-1 predicted from their prefixes; with a prompt_mask (SFT) only
    answer tokens are targets. ``noise`` is unused: the AR loss is deterministic.
    """
    x = batch.tokens
    attn = None if batch.attn_mask is None else batch.attn_mask[:, :-1]
    logits = model(x[:, :-1], attn_mask=attn)  # (B, L-1, V)
    nll = F.cross_entropy(logits.float().transpose(1, 2), x[:, 1:], reduction="none")  # (B, L-1)
    supervised = torch.ones_like(nll, dtype=torch.bool)
    if batch.prompt_mask is not None:
        supervised = supervised & ~batch.prompt_mask[:, 1:]
    if batch.attn_mask is not None:
        supervised = supervised & batch.attn_mask[:, 1:]
    return (nll * supervised).sum(1) / supervised.sum(1).clamp_min(1)


OBJECTIVES = {"mdm": mdm_loss, "sft": sft_loss, "ar": ar_loss}
