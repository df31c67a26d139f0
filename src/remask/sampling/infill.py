"""Infilling: fill holes inside fixed text, conditioned on both sides.

A masked diffusion model predicts every masked position from the whole canvas, so text after a
hole constrains it as much as text before (something a left-to-right model cannot do). The
reverse process is LLaDA's (Nie et al. 2025, Algorithm 4), run as a single block over the whole
canvas: the holes are the only masked positions, everything else is fixed.

Holes are written in the text as ``<mask:N>`` (N tokens), e.g.::

    def add(a, b):
        return <mask:8>
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch
from torch import Tensor

from remask.errors import RemaskError
from remask.model import check_context, check_vocab, model_device
from remask.sampling.config import SampleConfig
from remask.sampling.loop import Generation, StepEvent, denoise, run_events

MARKER = re.compile(r"<mask:([^<>]*)>")


class Tokenizer(Protocol):
    """The part of the tokenizer interface infilling uses."""

    mask_id: int

    def encode(self, text: str, allow_special: bool = True) -> list[int]: ...


def parse_infill(text: str, tokenizer: Tokenizer) -> tuple[list[int], list[bool]]:
    """Text with ``<mask:N>`` holes -> (token ids with ``mask_id`` at the holes, per-token editable flags).

    The text between markers is encoded piece by piece, so a hole never merges with its
    neighbours into one token.
    """
    pieces = MARKER.split(text)  # [text, N, text, N, ..., text]
    if len(pieces) == 1:
        raise RemaskError("no <mask:N> span in the text; mark the span to fill, e.g. <mask:16>")
    ids: list[int] = []
    editable: list[bool] = []
    for i, piece in enumerate(pieces):
        if i % 2 == 0:  # fixed text
            if piece:
                fixed = tokenizer.encode(piece, allow_special=True)
                ids += fixed
                editable += [False] * len(fixed)
            continue
        n = _span_length(piece)
        ids += [tokenizer.mask_id] * n
        editable += [True] * n
    return ids, editable


def _span_length(raw: str) -> int:
    try:
        n = int(raw.strip())
    except ValueError:
        raise RemaskError(f"<mask:{raw}> needs a whole number of tokens to fill, e.g. <mask:16>") from None
    if n <= 0:
        raise RemaskError(f"<mask:{raw}> must fill at least one token, e.g. <mask:16>")
    return n


@torch.inference_mode()
def infill(
    model: Callable[..., Tensor],
    canvas: Sequence[int] | Tensor,
    editable: Sequence[bool] | Tensor,
    cfg: SampleConfig,
    *,
    mask_id: int,
    eos_id: int,
    eot_id: int | None = None,
    callback: Callable[[StepEvent], None] | None = None,
) -> Generation:
    """Fill the ``editable`` positions of ``canvas`` ((L,) or (B, L) ids) with LLaDA's reverse process.

    One block over the whole canvas; ``cfg.gen_length`` and ``cfg.block_length`` do not apply.
    The ``cfg.steps`` steps are capped at the number of holes (steps that would commit nothing
    are skipped), and each commits its scheduled share of the holes still masked. With CFG the
    unconditional pass masks all the fixed text. Returns the filled canvas as ``tokens`` too.
    """
    device = model_device(model)
    ids = _as_2d(canvas, torch.long, device, "canvas")  # (B, L)
    edit = _as_2d(editable, torch.bool, device, "editable")  # (B, L)
    if edit.shape != ids.shape:
        raise RemaskError(f"editable has shape {tuple(edit.shape)} but the canvas {tuple(ids.shape)}; "
                          "give one flag per token")
    if not bool(edit.any()):
        raise RemaskError("nothing to fill: no editable position; mark the span to fill, e.g. <mask:16>")
    check_context(model, ids.shape[1], message="the infill text ({used} tokens, holes included) exceeds the model "
                  "context of {limit} tokens; shorten the text or the <mask:N> spans")
    check_vocab(model, ids[~edit], "the infill text")
    # One block spanning the holes (the same commits as the whole canvas, since only holes are
    # candidates), so a dual cache recomputes just that span and keeps the text around it.
    cols = edit.any(0).nonzero().flatten()
    span = [(int(cols[0]), int(cols[-1]) + 1)]
    events = denoise(model, ids, edit, cfg, mask_id=mask_id, eos_id=eos_id, eot_id=eot_id,
                     prompt_mask=~edit, block_bounds=span)
    return run_events(events, torch.where(edit, mask_id, ids), callback)  # tokens: the whole filled canvas


def _as_2d(values: Any, dtype: torch.dtype, device: torch.device, what: str) -> Tensor:
    t = torch.as_tensor(values, dtype=dtype, device=device)
    t = t[None] if t.dim() == 1 else t
    if t.dim() != 2 or t.shape[1] == 0:
        raise RemaskError(f"{what} must be a non-empty list of token ids or a (B, L) tensor, "
                          f"got shape {tuple(t.shape)}")
    return t
