"""`remask plot RUN [RUN ...] --out curves.png`: training curves of runs side by side (``remask.plot``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from remask.commands.flags import emit
from remask.plot import plot_runs


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", type=Path, help="run directories (each with its metrics.jsonl)")
    p.add_argument("--out", type=Path, default=Path("curves.png"), help="figure to write (.png, .pdf, .svg)")
    p.add_argument("--labels", nargs="+", default=None, help="one legend name per run (default: directory names)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    out = plot_runs(args.runs, args.out, labels=args.labels)
    emit(args, {"out": str(out), "runs": [str(r) for r in args.runs]}, f"wrote {out}")
    return 0
