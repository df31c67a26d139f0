"""`remask infill`: fill ``<mask:N>`` spans inside a text (``remask.sampling.infill``)."""

from __future__ import annotations

import argparse
import sys

from remask.commands.flags import add_sampler_args, emit, load, sample_config
from remask.display import LiveCanvas
from remask.errors import RemaskError
from remask.model import is_causal
from remask.sampling.infill import infill, parse_infill


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("text", help="text with spans to fill marked <mask:N> (N tokens)")
    add_sampler_args(p)


def run(args: argparse.Namespace) -> int:
    ck = load(args)
    model, tok = ck.model, ck.tokenizer
    if is_causal(model):
        raise RemaskError(f"--ckpt {args.ckpt} is autoregressive (causal): it can only continue text; infill needs "
                          "a masked diffusion checkpoint")
    ids, editable = parse_infill(args.text, tok)
    args.block_length = None  # the whole canvas is one block, and gen_length is the number of holes
    cfg = sample_config(args, gen_length=sum(editable))
    show = LiveCanvas(tok, sys.stderr, 0, label=True) if args.show_steps and not args.json else None
    out = infill(model, ids, editable, cfg, mask_id=tok.mask_id, eos_id=tok.eos_id, eot_id=tok.eot_id, callback=show)
    text = tok.decode(out.canvas[0].tolist(), skip_special_tokens=True)
    emit(args, {"text": text, "n_forward": out.n_forward}, text)
    return 0
