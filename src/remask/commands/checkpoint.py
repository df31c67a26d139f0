"""`remask checkpoint consolidate`: join a sharded checkpoint into one (``remask.train.sharded``).

    remask checkpoint consolidate runs/big                    # the run's newest, in place
    remask checkpoint consolidate runs/big/checkpoints/step-001000 --out ckpts/step-1000
"""

from __future__ import annotations

import argparse

from remask.commands.flags import emit
from remask.train.sharded import consolidate


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["consolidate"],
                   help="consolidate: write a sharded checkpoint (--train.sharded_ckpt under FSDP) as single files")
    p.add_argument("ckpt", help="sharded checkpoint, or a run directory whose newest checkpoint is one")
    p.add_argument("--out", default=None, help="directory to write (default: replace the sharded one, atomically)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    out = consolidate(args.ckpt, args.out)
    emit(args, {"out": str(out)}, f"wrote {out} (model.safetensors, optimizer.safetensors); load it with --ckpt {out}")
    return 0
