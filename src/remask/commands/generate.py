"""`remask generate`: continue a prompt with the checkpoint's decoder (``remask.sampling.decode``)."""

from __future__ import annotations

import argparse
import sys

from remask.chat import prompt_ids, trim_answer
from remask.commands.flags import add_sampler_args, emit, load, sample_config
from remask.display import LiveCanvas
from remask.model import is_causal
from remask.sampling.decode import decode


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt", nargs="?", default="", help="prompt text (empty: start of a document)")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the checkpoint's chat template")
    add_sampler_args(p)


def run(args: argparse.Namespace) -> int:
    ck = load(args)
    model, tok = ck.model, ck.tokenizer
    ids = prompt_ids(tok, args.prompt) if args.chat else tok.encode(args.prompt) if args.prompt else [tok.eos_id]
    cfg = sample_config(args, causal=is_causal(model))
    show = LiveCanvas(tok, sys.stderr, len(ids), label=True) if args.show_steps and not args.json else None
    out = decode(model, [ids], cfg, mask_id=tok.mask_id, eos_id=tok.eos_id, eot_id=tok.eot_id, callback=show)
    gen = trim_answer(out.tokens[0].tolist(), tok)[0] if args.chat else out.tokens[0].tolist()
    text = tok.decode(gen, skip_special_tokens=True)
    emit(args, {"prompt": args.prompt, "text": text, "n_forward": out.n_forward}, text if args.chat else args.prompt + text)
    return 0
