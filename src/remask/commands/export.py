"""`remask export`: write a checkpoint in LLaDA-8B's Hugging Face layout (``remask.checkpoint``).

    remask export --ckpt runs/chat --out hf/chat                  # config, shards + index, tokenizer
    remask export --ckpt runs/chat --out hf/chat --dtype bfloat16 --shard-size 2GB
"""

from __future__ import annotations

import argparse
import re

from remask.checkpoint import DEFAULT_SHARD_SIZE, export_checkpoint, read_config
from remask.commands.flags import emit
from remask.errors import RemaskError

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
DTYPES = ("stored", "bfloat16", "float32")


def parse_size(text: str) -> int:
    """"5GB", "500MB", "2GiB" or a plain byte count -> bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    if not m or m.group(2).upper() not in _UNITS:
        raise RemaskError(f"--shard-size {text!r} is not a size; write e.g. 5GB, 500MB, 2GiB or a byte count")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", required=True, help="checkpoint, run or LLaDA directory to export")
    p.add_argument("--out", required=True, help="directory to write (refused if it exists, unless --overwrite)")
    p.add_argument("--shard-size", default=f"{DEFAULT_SHARD_SIZE // 10**9}GB",
                   help="largest shard, e.g. 5GB, 500MB, 2GiB [default: %(default)s]")
    p.add_argument("--dtype", choices=DTYPES, default="stored",
                   help="weights as stored (loading the export back is bit-exact), or converted [default: stored]")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    import torch

    dtype = None if args.dtype == "stored" else getattr(torch, args.dtype)
    out = export_checkpoint(args.ckpt, args.out, shard_size=parse_size(args.shard_size), dtype=dtype,
                            overwrite=args.overwrite)
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    causal = read_config(out).model.causal  # as a later --ckpt will read it
    emit(args, {"out": str(out), "shards": shards, "causal": causal},
         f"wrote {out} ({len(shards)} shard{'s' * (len(shards) != 1)}, "
         f"{'causal (AR)' if causal else 'bidirectional (LLaDA)'}); load it with --ckpt {out}")
    return 0
