"""`remask prepare`: tokenise text into memory-mapped shards (``remask.data.prepare``).

    remask prepare corpus/ --out data/corpus --tokenizer tok/ --workers 8   # kill it and run it again: it resumes
"""

from __future__ import annotations

import argparse
from pathlib import Path

from remask.commands.flags import emit
from remask.data.prepare import prepare
from remask.data.tokenizer import load_tokenizer


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="*", help="text files, directories, .jsonl (field 'text'); none: built-in corpus")
    p.add_argument("--out", required=True, type=Path, help="output directory for the token shards")
    p.add_argument("--tokenizer", default=None, help="'bytes' (default) or a tokenizer directory / tokenizer.json")
    p.add_argument("--val-fraction", type=float, default=0.02)
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="tokenising processes; the shards are the same for any number (default: 1)")
    p.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
    meta = prepare(args.inputs or None, args.out, load_tokenizer(args.tokenizer), val_fraction=args.val_fraction,
                   workers=args.workers, progress=not args.json)
    s = meta["splits"]
    emit(args, meta, f"prepared {args.out}: train {s['train']['tokens']:,} tokens ({s['train']['documents']} docs), "
                     f"val {s['val']['tokens']:,} tokens ({s['val']['documents']} docs)")
    return 0
