"""Masked diffusion ELBO vs autoregressive NLL, in bits per byte, at three equal-compute budgets.

    python benchmarks/ar_vs_mdm.py                          # about 8 minutes on a 2-core CPU
    python benchmarks/ar_vs_mdm.py --budgets 50,100,200     # a quicker check

The same backbone (only ``causal`` differs) trains with LLaDA's objective (mdm) and with
next-token prediction (ar) on the same character-level corpus (tinyshakespeare from the dataset
root: ``--data DIR``, else ``$REMASK_DATA``, else ``../shared/data`` where that exists, else a slice
of the built-in corpus), first 90% for training, last 10% held out. At each budget both models get the same number of optimizer steps of the same batch
and sequence length, so the same training tokens and FLOPs (the AR forward is one token
shorter); each budget is its own run with a cosine schedule over its steps. The two objectives
train AT THE SAME TIME in two processes with one thread each.

Scored by ``remask.evaluate.perplexity`` on the same held-out windows (the training sequence
length, one token of context): the AR model's exact NLL and the MDM's Monte Carlo ELBO, an upper
bound on its NLL, with its standard error. Writes benchmarks/results/ar_vs_mdm.md and
ar_vs_mdm.png.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common import (
    SHAKESPEARE,
    add_data_arg,
    add_model_args,
    add_worker_args,
    barrier,
    dataset,
    provenance,
    publish,
    run_workers,
    table,
    work_dir,
)
from remask.config import ModelConfig, RunConfig, TrainConfig
from remask.objectives import Batch
from remask.rng import DATA, keyed_generator


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budgets", default="100,300,800", help="optimizer steps of the three budgets")
    add_data_arg(ap, "tinyshakespeare/", fallback="the built-in corpus")
    add_model_args(ap, d_model=128, n_layer=4, n_head=4)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--val-chars", type=int, default=8192, help="held-out characters scored")
    ap.add_argument("--mc-num", type=int, default=16, help="MDM: Monte Carlo samples per window")
    ap.add_argument("--seed", type=int, default=1337)
    add_worker_args(ap, "ar_vs_mdm")
    return ap.parse_args(argv)


def load_text(path: Path | None) -> tuple[str, str]:
    """The corpus and its name; the built-in corpus stands in where there is no file (None)."""
    if path is not None:
        return path.read_text(encoding="utf-8"), f"{path.parent.name}/{path.name}"
    from remask.data.corpus import iter_documents

    parts, size = [], 0
    for doc in iter_documents(None):
        if not doc.text.isascii():
            continue
        parts.append(doc.text)
        size += len(doc.text)
        if size > 1_000_000:
            break
    return "\n".join(parts), "the built-in corpus (first 1 MB of ASCII stdlib sources)"


class TextWindows:
    """BatchSource over one token array: random training windows keyed by (seed, step, index)."""

    def __init__(self, train: np.ndarray, val: np.ndarray, seq_len: int, seed: int, bytes_per_token: float) -> None:
        self.train, self.val, self.seq_len, self.seed = train, val, seq_len, seed
        self.bytes_per_token = bytes_per_token

    def train_batch(self, step: int, indices: np.ndarray) -> Batch:
        hi = len(self.train) - self.seq_len + 1
        starts = [int(keyed_generator(self.seed, step, int(i), DATA).integers(hi)) for i in indices]
        return Batch(torch.from_numpy(np.stack([self.train[s:s + self.seq_len] for s in starts])).long())

    def val_batches(self, micro_batch_size: int, n_batches: int) -> list[tuple[Batch, np.ndarray]]:
        starts = np.linspace(0, len(self.val) - self.seq_len, num=micro_batch_size).astype(np.int64)
        rows = np.stack([self.val[s:s + self.seq_len] for s in starts])
        return [(Batch(torch.from_numpy(rows).long()), np.arange(micro_batch_size))]


def worker(args: argparse.Namespace) -> None:
    """One objective: train every budget from scratch, score each on the held-out text."""
    from remask.checkpoint import load_model
    from remask.data.tokenizer import ByteTokenizer
    from remask.evaluate import perplexity
    from remask.likelihood import LikelihoodConfig
    from remask.train.loop import train

    torch.set_num_threads(1)
    kind, work = args.worker, args.work_dir
    tok = ByteTokenizer()
    text, _ = load_text(dataset(args.data, SHAKESPEARE, optional=True))
    cut = int(len(text) * 0.9)
    ids = tok.encode_array(text)
    source = TextWindows(ids[:cut], ids[cut:], args.seq_len, args.seed, len(text.encode()) / len(ids))
    val_text = text[cut:cut + args.val_chars]
    barrier(work, "start", kind)  # both start together, so both see the same machine load
    records = []
    for steps in map(int, args.budgets.split(",")):
        model_cfg = ModelConfig(d_model=args.d_model, n_layer=args.n_layer, n_head=args.n_head,
                                max_seq_len=args.seq_len, causal=kind == "ar")
        train_cfg = TrainConfig(objective=kind, seed=args.seed, batch_size=args.batch_size, seq_len=args.seq_len,
                                max_steps=steps, lr=args.lr, warmup_steps=min(50, steps // 10), eval_interval=0,
                                eval_batches=1, eval_mc=1, ckpt_interval=0, log_interval=25, progress=False,
                                samples=0, device="cpu", dtype="float32")
        res = train(RunConfig(model=model_cfg, train=train_cfg), work / f"{kind}-{steps}", tokenizer=tok,
                    source=source)
        model, _ = load_model(res.checkpoint)
        t0 = time.perf_counter()
        ppl = perplexity(model, tok, [val_text], window=args.seq_len,
                         cfg=LikelihoodConfig(mc_num=args.mc_num, batch_size=args.mc_num, seed=args.seed))
        bpb_se = ppl["stderr_nats_per_token"] * ppl["tokens"] / ppl["bytes"] / math.log(2)
        records.append({"steps": steps, "train_tokens": steps * args.batch_size * args.seq_len, "train_s": res.elapsed,
                        "eval_s": time.perf_counter() - t0, "params": model.num_params(), "bpb_se": bpb_se, **ppl})
        print(json.dumps(records[-1]), flush=True)
    (work / f"{kind}.json").write_text(json.dumps(records, indent=2))


def plot(res: dict[str, list[dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for kind, label in (("mdm", "MDM (LLaDA), ELBO bound"), ("ar", "AR, exact NLL")):
        xs = [r["train_tokens"] for r in res[kind]]
        ys = [r["bits_per_byte"] for r in res[kind]]
        ax.errorbar(xs, ys, yerr=[r["bpb_se"] for r in res[kind]], marker="o", capsize=3, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("training tokens (equal compute per budget)")
    ax.set_ylabel("held-out bits per byte")
    ax.set_title("MDM vs AR at equal compute")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    os.replace(tmp, path)
    plt.close(fig)


def report(args: argparse.Namespace, res: dict[str, list[dict[str, Any]]], corpus: str, total_s: float,
           png: str) -> str:
    rows = []
    for m, a in zip(res["mdm"], res["ar"]):
        rows.append([m["steps"], f"{m['train_tokens']:,}", f"{m['bits_per_byte']:.3f} ± {m['bpb_se']:.3f}",
                     f"{a['bits_per_byte']:.3f}", f"{m['bits_per_byte'] / a['bits_per_byte']:.2f}",
                     f"{m['train_s']:.0f} / {a['train_s']:.0f}"])
    headers = ["steps", "training tokens", "MDM ELBO bits/byte (± MC s.e.)", "AR NLL bits/byte",
               "MDM / AR", "train s (MDM / AR)"]
    m0 = res["mdm"][0]
    return f"""# MDM ELBO vs AR NLL at equal compute

{table(headers, rows)}

![bits per byte vs training tokens]({png})

Corpus: {corpus}, byte tokenizer; first 90% trains, the first {args.val_chars:,} characters of the last 10%
are scored ({m0['tokens']:,} tokens in {m0['windows']} windows of {args.seq_len} tokens, one token of
context each). Both models: the same Transformer ({m0['params']:,} parameters, {args.n_layer} layers, width
{args.d_model}, {args.n_head} heads), batch {args.batch_size} x {args.seq_len} tokens, peak LR {args.lr},
cosine schedule over each budget, seed {args.seed}; each budget trained from scratch, MDM and AR at the same
time in two processes with one thread each. MDM: LLaDA's l-form ELBO with {args.mc_num} Monte Carlo samples per
window (an upper bound on its NLL); AR: exact. The ratio column divides the MDM bound by the AR NLL of the same
budget (lower is better for both; > 1 means the AR model is ahead).

{provenance(total_s)}"""


def main() -> None:
    args = parse_args()
    if args.worker:
        worker(args)
        return
    budgets = [int(b) for b in args.budgets.split(",")]
    if len(budgets) < 1 or any(b <= 0 for b in budgets):
        raise SystemExit(f"--budgets {args.budgets!r}: give positive step counts, e.g. 100,300,800")
    text_file = dataset(args.data, SHAKESPEARE, optional=True)  # a missing dataset ends here, before training
    t0 = time.perf_counter()
    with work_dir(args.work_dir, "remask-ar-vs-mdm-") as work:
        res = run_workers(__file__, work, [*sys.argv[1:], "--work-dir", str(work)])
    _, corpus = load_text(text_file)
    png_path = (work if str(args.results) == "-" else args.results).with_suffix(".png")
    plot(res, png_path)
    publish(report(args, res, corpus, time.perf_counter() - t0, png_path.name), args.results)


if __name__ == "__main__":
    main()
