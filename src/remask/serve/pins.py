"""Pinned words: fixed tokens at chosen answer positions, the rest of the answer written around them.

A request's ``pins`` (``[{"position": 5, "text": " cat"}, ...]``) fixes each word's tokens at the
answer's token positions ``position, position + 1, ...``; every other answer position starts
masked and is filled by the usual block-by-block reverse process (``sampling.loop.denoise`` with
the pinned columns not editable, the way ``sampling.infill`` fills the holes of a fixed text). The
model conditions on the pinned words from the first step, so the text before a word is written
knowing what follows it: infilling, which a left-to-right model cannot do (an AR checkpoint gets a
400). An answer with pins runs to its full length: EOS/EOT are never sampled (``logits_eos_inf``)
and early exit is off, so nothing before a pinned word can end the answer and drop it.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from remask.config import check
from remask.model import check_context, model_device
from remask.sampling.config import SampleConfig
from remask.sampling.loop import StepEvent, denoise, left_pad

MAX_PINS = 16  # words pinned in one request


@dataclass(frozen=True)
class Pin:
    """One pinned word: its answer position (in tokens), its token ids and its text."""

    position: int
    ids: tuple[int, ...]
    text: str


def parse_pins(value: Any, tokenizer: Any, *, max_tokens: int, causal: bool) -> tuple[Pin, ...]:
    """A request's ``pins`` -> its Pins, sorted by position (RemaskError, a 400, when they are wrong)."""
    if value is None:
        return ()
    check(isinstance(value, list) and len(value) <= MAX_PINS,
          f"'pins' must be a list of at most {MAX_PINS} {{\"position\", \"text\"}} objects, got {json.dumps(value)[:60]}")
    check(not causal or not value, "'pins' needs a masked diffusion checkpoint; this one is autoregressive "
                                   "(causal) and writes left to right only")
    pins = []
    for k, p in enumerate(value):
        check(isinstance(p, dict) and set(p) <= {"position", "text"},
              f"pins[{k}] must be an object with 'position' and 'text', got {json.dumps(p)[:60]}")
        pos, text = p.get("position"), p.get("text")
        check(isinstance(pos, int) and not isinstance(pos, bool) and 0 <= pos < max_tokens,
              f"pins[{k}] 'position' must be an integer in 0..{max_tokens - 1} (a token index in the answer, "
              f"below max_tokens), got {json.dumps(pos)[:30]}")
        check(isinstance(text, str) and text != "", f"pins[{k}] 'text' must be a non-empty string")
        try:
            ids = tuple(tokenizer.encode(text, allow_special=False))
        except UnicodeEncodeError:
            ids = ()
            check(False, f"pins[{k}] 'text' holds an unpaired UTF-16 surrogate; send valid Unicode text")
        check(pos + len(ids) <= max_tokens, f"pins[{k}] ({len(ids)} tokens at position {pos}) runs past "
                                            f"max_tokens {max_tokens}")
        pins.append(Pin(pos, ids, text))
    pins.sort(key=lambda p: p.position)
    for a, b in itertools.pairwise(pins):
        check(a.position + len(a.ids) <= b.position,
              f"the pins {json.dumps(a.text)[:30]} (tokens {a.position}..{a.position + len(a.ids) - 1}) and "
              f"{json.dumps(b.text)[:30]} (from {b.position}) overlap")
    return tuple(pins)


def pinned_config(cfg: SampleConfig) -> SampleConfig:
    """The sampler settings of an answer with pins: it runs to its full length (see the module's doc)."""
    return dataclasses.replace(cfg, logits_eos_inf=True, early_stop=False)


def pinned_stream(model: Any, prompts: Sequence[Sequence[int]], cfg: SampleConfig, pins: Sequence[Pin], *,
                  mask_id: int, eos_id: int, eot_id: int | None = None) -> Iterator[StepEvent]:
    """``generate_stream`` with ``pins`` fixed in every row's answer: the steps over the canvas
    (B, P + gen_length), prompt left-padded, answer blocks as Algorithm 5's, pinned columns fixed."""
    device = model_device(model)
    ids, attn = left_pad(prompts, eos_id, device)  # (B, P), (B, P) or None
    B, P = ids.shape
    n = cfg.gen_length
    check_context(model, P, n)
    answer = torch.full((B, n), mask_id, dtype=torch.long, device=device)  # (B, n)
    editable = torch.ones(B, P + n, dtype=torch.bool, device=device)  # (B, L)
    editable[:, :P] = False
    for pin in pins:
        answer[:, pin.position:pin.position + len(pin.ids)] = torch.tensor(pin.ids, dtype=torch.long, device=device)
        editable[:, P + pin.position:P + pin.position + len(pin.ids)] = False
    canvas = torch.cat([ids, answer], 1)  # (B, L)
    attn_mask = None if attn is None else torch.cat([attn, torch.ones(B, n, dtype=torch.bool, device=device)], 1)
    block = cfg.block_length or n
    bounds = [(P + b * block, P + min((b + 1) * block, n)) for b in range(cfg.num_blocks)]
    return denoise(model, canvas, editable, cfg, mask_id=mask_id, eos_id=eos_id, eot_id=eot_id,
                   attn_mask=attn_mask, block_bounds=bounds)


def pins_payload(pins: Sequence[Pin], index: int, length: int, tokenizer: Any) -> dict[str, Any]:
    """The ``pins`` event a viewer gets before the steps: the fixed columns (column, token id, token text)."""
    cells = [[pin.position + k, t, tokenizer.decode([t])] for pin in pins for k, t in enumerate(pin.ids)]
    return {"object": "remask.pins", "index": index, "length": length, "pinned": cells}
