"""`remask sft`: fine-tune on chat data, LLaDA SFT or the AR baseline (``remask.sft``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from remask.commands.flags import RUN_SHORTCUTS, add_run_args, emit
from remask.commands.train import run_config
from remask.errors import RemaskError
from remask.sft import sft


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", nargs="+", default=None, help=".jsonl files/dirs: {messages: [...]} or {prompt, response}")
    p.add_argument("--out", type=Path, required=True, help="run directory")
    p.add_argument("--ckpt", default=None, help="base checkpoint to fine-tune (default: a fresh model)")
    p.add_argument("--objective", choices=["sft", "ar"], default=None, help="sft (LLaDA, default) or ar (baseline)")
    p.add_argument("--template", type=Path, default=None, help="file holding a Jinja2 chat template")
    p.add_argument("--split-turns", action="store_true", help="one single-turn pair per assistant turn")
    p.add_argument("--skip-bad", action="store_true", help="skip bad or too-long records (counted) instead of failing")
    p.add_argument("--val-fraction", type=float, default=0.05, help="examples held out for validation")
    p.add_argument("--buckets", type=int, default=8, help="length buckets (1: no bucketing)")
    p.add_argument("--tokenizer", default=None, help="fresh models only: 'bytes' (default) or a tokenizer path")
    add_run_args(p, RUN_SHORTCUTS, help={"seq_len": "longest example in tokens (longer ones are errors)"})


def run(args: argparse.Namespace) -> int:
    cfg = run_config(args, RUN_SHORTCUTS)
    template = None
    if args.template is not None:
        try:
            template = args.template.read_text(encoding="utf-8")
        except OSError as e:
            raise RemaskError(f"--template '{args.template}' cannot be read ({e.strerror})") from None
    res = sft(args.data, args.out, cfg=cfg, init_from=args.ckpt, resume=args.resume, overwrite=args.overwrite,
              tokenizer=args.tokenizer,
              objective=args.objective, template=template, split_turns=args.split_turns, skip_bad=args.skip_bad,
              val_fraction=args.val_fraction, buckets=args.buckets)
    r = res.train
    human = (f"step {r.step}: validation loss {r.val_loss:.4f} per answer token; {r.tokens_per_s:,.0f} tokens/s\n"
             f"{res.examples} training / {res.val_examples} validation examples, {res.skipped} skipped; "
             f"padding {100 * res.padding_fraction:.1f}% of tokens "
             f"({100 * res.padding_fraction_unbucketed:.1f}% without bucketing)\n"
             f"checkpoint: {r.checkpoint}")
    emit(args, res.to_json(), human)
    return 0
