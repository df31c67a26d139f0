"""`remask tokenizer train`: learn a byte-level BPE on a corpus (``remask.data.tokenizer.train_bpe``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from remask.commands.flags import emit
from remask.data.corpus import iter_documents
from remask.data.tokenizer import train_bpe


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["train"], help="train: learn a byte-level BPE on your corpus")
    p.add_argument("inputs", nargs="*", help="text files, directories, .jsonl; none: built-in corpus")
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--out", required=True, type=Path, help="directory to write tokenizer.json into")
    p.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
    tok = train_bpe((d.text for d in iter_documents(args.inputs or None)), args.vocab_size)
    tok.save(args.out)
    emit(args, {"out": str(args.out), "vocab_size": tok.vocab_size, "mask_id": tok.mask_id, "eos_id": tok.eos_id},
         f"wrote {args.out}/tokenizer.json: {tok.vocab_size} tokens (mask id {tok.mask_id}, eos id {tok.eos_id})")
    return 0
