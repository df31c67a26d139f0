"""Masked diffusion vs autoregressive when data is scarce: many epochs over small corpora.

    python benchmarks/data_constrained.py                      # 4 minutes per corpus (~15 min wall)
    python benchmarks/data_constrained.py --minutes 1          # quick end-to-end check
    python benchmarks/data_constrained.py --corpora shijing    # one corpus
    python benchmarks/data_constrained.py --data DIR           # DIR/tinyshakespeare/, DIR/chinese_poetry/

Corpora (all under the dataset root, ``--data DIR``, else ``$REMASK_DATA``, else ``../shared/data``):
the first 50 KB and the first 200 KB of tinyshakespeare (last 10% of each held out), and the
诗经 (``chinese_poetry/shijing.json``, 305 poems, one document each; ~10% of the poems held out by
the prepare step's hash split). Byte tokenizer, so a token is a UTF-8 byte and nats per token are
nats per byte (a Chinese character is three bytes).

Per corpus, the same backbone (only ``causal`` differs) is trained with LLaDA's objective (mdm) and
with next-token prediction (ar), AT THE SAME TIME in two processes with one thread each, for the
same ``--minutes`` of training (``TrainConfig.time_budget``; the LR follows the budget,
``lr_clock=time``). Both validate every ``--eval-interval`` steps on fixed held-out windows (MDM:
LLaDA's ELBO bound with fixed mask noise; AR: exact NLL) and use early stopping
(``train.early_stop_patience``), which keeps RUN/best. The report gives each model's best
validation figure (recomputed on RUN/best with its standard error over windows) and the epoch it
occurred at, and the crossover: the first epoch at which the MDM's bound is below the AR's best.
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

import torch

from common import (
    RESULTS_DIR,
    SHAKESPEARE,
    add_data_arg,
    add_model_args,
    add_set_arg,
    add_worker_args,
    barrier,
    dataset,
    optimizer_label,
    progress_line,
    provenance,
    publish,
    run_workers,
    table,
    val_standard_error,
    with_overrides,
    work_dir,
    write_atomic,
)
from remask.config import ModelConfig, RunConfig, TrainConfig

SHIJING = "chinese_poetry/shijing.json"
CORPORA = {"shakespeare-50k": 50_000, "shakespeare-200k": 200_000, "shijing": None}  # bytes of Shakespeare kept


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=4.0, help="training time budget of each model, per corpus")
    ap.add_argument("--corpora", nargs="+", choices=list(CORPORA), default=list(CORPORA))
    add_data_arg(ap, "tinyshakespeare/ and chinese_poetry/")
    add_model_args(ap, d_model=128, n_layer=4, n_head=4)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=TrainConfig().lr, help="peak LR (same for both)")
    ap.add_argument("--warmup-steps", type=int, default=50)
    ap.add_argument("--eval-interval", type=int, default=100, help="validate every this many steps")
    ap.add_argument("--eval-batches", type=int, default=8, help="validation batches (of --batch-size windows)")
    ap.add_argument("--eval-mc", type=int, default=2, help="mask draws per window for the MDM's ELBO")
    ap.add_argument("--patience", type=int, default=8, help="train.early_stop_patience of both models")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--corpus", choices=list(CORPORA), help=argparse.SUPPRESS)  # the worker's corpus
    add_set_arg(ap)
    add_worker_args(ap, "data_constrained")
    return ap.parse_args(argv)


def run_config(args: argparse.Namespace, objective: str) -> RunConfig:
    model = ModelConfig(d_model=args.d_model, n_layer=args.n_layer, n_head=args.n_head, max_seq_len=args.seq_len,
                        causal=objective == "ar")
    train = TrainConfig(objective=objective, seed=args.seed, batch_size=args.batch_size, seq_len=args.seq_len,
                        max_steps=10**6, time_budget=args.minutes * 60.0, lr_clock="time", lr=args.lr,
                        warmup_steps=args.warmup_steps, eval_interval=args.eval_interval,
                        eval_batches=args.eval_batches, eval_mc=args.eval_mc, early_stop_patience=args.patience,
                        ckpt_interval=0, log_interval=25, progress=False, samples=0, device="cpu", dtype="float32")
    return with_overrides(RunConfig(model=model, train=train), args.overrides)


# ----------------------------------------------------------------------------- corpora

def write_corpus(args: argparse.Namespace, name: str, out: Path) -> list[Path]:
    """The text files of corpus ``name`` under ``out``: one cut of Shakespeare, or one file per poem."""
    out.mkdir(parents=True, exist_ok=True)
    size = CORPORA[name]
    if size is not None:
        text = dataset(args.data, SHAKESPEARE).read_bytes()[:size].decode("utf-8", errors="ignore")
        return [write_atomic(out / "input.txt", text)]
    poems = json.loads(dataset(args.data, SHIJING).read_text(encoding="utf-8"))
    return [write_atomic(out / f"{i:03d}.txt", p["title"] + "\n" + "\n".join(p["content"]) + "\n")
            for i, p in enumerate(poems)]


# ----------------------------------------------------------------------------- worker

def worker(args: argparse.Namespace) -> None:
    """One objective on one corpus: train under the budget with early stopping, then score RUN/best."""
    from remask.checkpoint import load_checkpoint
    from remask.data.prepare import load_meta
    from remask.train.loop import train

    torch.set_num_threads(args.threads)
    obj, work = args.worker, args.work_dir
    data_dir, out = work / "data", work / obj
    cfg = run_config(args, obj)
    train_tokens = load_meta(data_dir)["splits"]["train"]["tokens"]
    barrier(work, "train", obj)
    res = train(cfg, out / "run", data=data_dir, overwrite=True)
    best = load_checkpoint(out / "run" / "best")
    mean, se = val_standard_error(best.model, data_dir, cfg)
    per_epoch = cfg.train.batch_size * cfg.train.seq_len / train_tokens  # epochs per optimizer step
    vals = [r for r in map(json.loads, (out / "run" / "metrics.jsonl").read_text().splitlines()) if "val_loss" in r]
    record: dict[str, Any] = {
        "objective": obj, "train_tokens": train_tokens, "epochs_per_step": per_epoch,
        "curve": [(r["step"] * per_epoch, r["val_loss"]) for r in vals],
        "best_step": best.train_state["best_step"], "best_val": mean, "best_val_se": se,
        "best_epoch": best.train_state["best_step"] * per_epoch, "early_stopped": res.step < cfg.train.max_steps
        and res.elapsed < cfg.train.time_budget, **res.to_json(),
    }
    (out / "result.json").write_text(json.dumps(record, indent=2))
    print(f"{obj}: {res.step} steps, best val {mean:.4f} ± {se:.4f} at step {record['best_step']}", flush=True)


# ----------------------------------------------------------------------------- driver and report

def run_corpus(args: argparse.Namespace, name: str, work: Path) -> dict[str, Any]:
    """Prepare one corpus and train both models on it at once; return their results and data sizes."""
    from remask.data.prepare import prepare
    from remask.data.tokenizer import ByteTokenizer

    files = write_corpus(args, name, work / "text")
    meta = prepare(files, work / "data", ByteTokenizer(), val_fraction=0.1)
    load0 = os.getloadavg()[0]
    print(f"== {name}: {meta['splits']['train']['tokens']:,} train / {meta['splits']['val']['tokens']:,} val bytes",
          flush=True)
    argv = [*sys.argv[1:], "--work-dir", str(work), "--corpus", name]
    res = run_workers(__file__, work, argv, threads=args.threads, result="{kind}/result.json",
                      progress=lambda kind: progress_line(work / kind / "run" / "metrics.jsonl", "val_loss"))
    return {**res, "train_bytes": meta["splits"]["train"]["tokens"], "val_bytes": meta["splits"]["val"]["tokens"],
            "load": (load0, os.getloadavg()[0])}


def crossover(mdm: dict[str, Any], ar: dict[str, Any]) -> str:
    """The first epoch at which the MDM's validation bound is below the AR's best validation loss."""
    target = min(v for _, v in ar["curve"])
    first = next((e for e, v in mdm["curve"] if v < target), None)
    return "not within budget" if first is None else f"{first:.1f}"


def plot(results: dict[str, dict[str, Any]], out: Path) -> Path:
    """Validation vs epochs, one panel per corpus, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 4), squeeze=False)
    for ax, (name, r) in zip(axes[0], results.items()):
        for kind, label in (("mdm", "MDM (ELBO bound)"), ("ar", "AR (NLL)")):
            xs, ys = zip(*r[kind]["curve"])
            ax.plot(xs, ys, label=label)
            ax.scatter([r[kind]["best_epoch"]], [min(ys)], marker="*", s=80)
        ax.set(title=name, xlabel="epochs", ylabel="validation nats/byte")
        ax.legend()
    fig.tight_layout()
    tmp = out.with_name(out.stem + ".tmp" + out.suffix)
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, out)
    return out


def report(args: argparse.Namespace, results: dict[str, dict[str, Any]], figure: Path, total_s: float) -> str:
    rows = []
    for name, r in results.items():
        for kind in ("mdm", "ar"):
            k = r[kind]
            rows.append([name, f"{r['train_bytes']:,}", kind, k["step"], f"{k['step'] * k['epochs_per_step']:.1f}",
                         f"{k['best_val']:.4f} ± {k['best_val_se']:.4f}", f"{k['best_val'] / math.log(2):.3f}",
                         f"{k['best_epoch']:.1f}", "yes" if k["early_stopped"] else "no",
                         crossover(r["mdm"], r["ar"]) if kind == "mdm" else ""])
    headers = ["corpus", "train bytes", "model", "steps", "epochs", "best val nats/byte (± SE)", "bits/byte",
               "best at epoch", "early stop", "MDM < AR best from epoch"]
    loads = "; ".join(f"{n} {r['load'][0]:.1f} -> {r['load'][1]:.1f}" for n, r in results.items())
    return f"""# data_constrained

MDM (LLaDA's objective, bidirectional) vs AR (next-token, causal) on the same backbone, many epochs
over small corpora, same wall-clock per corpus ({args.minutes:g} min of training each, run at the same
time in two processes with {args.threads} thread each), early stopping with patience {args.patience}
validations (every {args.eval_interval} steps).

- model: d_model {args.d_model}, {args.n_layer} layers, {args.n_head} heads, byte vocabulary; seq_len
  {args.seq_len}, batch {args.batch_size}, {optimizer_label(args.overrides)} peak LR {args.lr:g}, {args.warmup_steps} warmup steps, cosine
  decay following the time budget (`lr_clock=time`).
- validation: {args.eval_batches * args.batch_size} fixed windows of the held-out 10%; MDM: ELBO bound (eq. 3)
  with {args.eval_mc} fixed mask draws per window, an upper bound on its NLL; AR: exact NLL. The best
  figure is recomputed on RUN/best; SE = standard error over windows. Epochs = tokens seen / train bytes.
- 1-minute load average at start -> end of each corpus: {loads}

{table(headers, rows)}

"MDM < AR best from epoch": the first validation at which the MDM's bound is below the AR's best
validation loss of the whole run ("not within budget": never within these {args.minutes:g} minutes).

![validation vs epochs]({figure.name})

Recipe overrides (`--set`, every model): {", ".join(args.overrides) or "none"}.

{provenance(total_s)}"""


def main() -> None:
    args = parse_args()
    if args.worker:
        worker(args)
        return
    t0, results = time.perf_counter(), {}
    with work_dir(args.work_dir, "remask-data-constrained-") as work:
        for name in args.corpora:
            results[name] = run_corpus(args, name, work / name)
    out = args.results if str(args.results) != "-" else RESULTS_DIR / "data_constrained.md"
    figure = plot(results, out.with_suffix(".png"))
    publish(report(args, results, figure, time.perf_counter() - t0), args.results)


if __name__ == "__main__":
    main()
