"""`remask train`: pre-train a masked diffusion LM, or the AR baseline (``remask.train.train``)."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from remask.checkpoint import has_checkpoint, read_config
from remask.commands.flags import RUN_SHORTCUTS, add_run_args, emit, resolve_config
from remask.config import RunConfig
from remask.errors import RemaskError
from remask.train import train

SHORTCUTS = {**RUN_SHORTCUTS, "objective": "train.objective"}


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", nargs="+", default=None, help="text files/dirs/.jsonl or a prepared dir; none: built-in")
    p.add_argument("--out", type=Path, default=Path("runs/default"), help="run directory (default: runs/default)")
    p.add_argument("--tokenizer", default=None, help="'bytes' (default) or a tokenizer directory / tokenizer.json")
    p.add_argument("--objective", choices=["mdm", "ar"], default=argparse.SUPPRESS, help="mdm (LLaDA, default) or ar (the baseline; SFT is "
                                                              "`remask sft`) (--train.objective)")
    p.add_argument("--init-from", type=Path, default=None, metavar="CKPT",
                   help="start from a checkpoint's weights and model (continued pre-training; an AR checkpoint "
                        "trained as an MDM drops its causal mask, as Dream and DiffuLLaMA adapt AR models)")
    add_run_args(p, RUN_SHORTCUTS)


def run_config(args: argparse.Namespace, shortcuts: dict[str, str]) -> RunConfig:
    """The command line's config. A resumed run starts from its own saved config, so it keeps its
    max_steps and time budget unless --max-steps / --time-budget (or a --train.* flag) change them."""
    if args.resume == "auto":
        args.resume = has_checkpoint(args.out)
    if not args.resume:
        return resolve_config(args, shortcuts)
    if not has_checkpoint(args.out):
        missing = "" if args.out.exists() else " (the directory does not exist)"
        raise RemaskError(f"--resume: '{args.out}' holds no checkpoint{missing}; drop --resume to start a new run")
    saved = read_config(args.out)
    return resolve_config(args, shortcuts, base=RunConfig(model=saved.model, train=replace(saved.train, progress=True)))


def run(args: argparse.Namespace) -> int:
    cfg = run_config(args, SHORTCUTS)
    data = args.data[0] if args.data and len(args.data) == 1 else args.data
    if args.init_from is not None and args.resume:
        raise RemaskError("--init-from starts a new run from a checkpoint's weights; --resume continues this run's "
                          "own: give one of them")
    res = train(cfg, args.out, data=data, tokenizer=args.tokenizer, resume=args.resume, overwrite=args.overwrite,
                init_from=args.init_from)
    bpb = f", {res.val_bpb:.3f} bits/byte" if res.val_bpb is not None else ""
    human = (f"step {res.step}: validation loss {res.val_loss:.4f} nats/token{bpb}; {res.tokens_per_s:,.0f} tokens/s\n"
             f"checkpoint: {res.checkpoint}\n" + "".join(f"--- sample {i}\n{s}\n" for i, s in enumerate(res.samples)))
    emit(args, res.to_json(), human.rstrip())
    return 0
