"""Scoring at a useful speed: `remask eval perplexity` at a requested standard error vs mc_num everywhere.

    python benchmarks/eval_speed.py                     # about 6 minutes on a 2-core CPU
    python benchmarks/eval_speed.py --train-seconds 20 --kb 4 --results -   # a quick check

A character MDM trains for ``--train-seconds`` on tinyshakespeare (the dataset root from --data /
REMASK_DATA, else ../shared/data), then scores ``--kb`` KB of its held-out tail three ways:

* fixed: ``mc_num`` (default 128) Monte Carlo samples for every window, today's default;
* adaptive at the fixed run's own standard error: samples allocated across windows (Neyman,
  ``likelihood.elbo_sum``) until the corpus figure's standard error is at most the fixed run's;
* adaptive at fixed standard errors (``--targets``, nats/char): what comparing two models needs.

Reported: nats/char with its standard error, Monte Carlo samples, wall time, and the speed-up over
the fixed run measured in the same run (samples are exact counts; seconds are noisy on a shared
machine, so the runs are timed after a warm-up pass).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from common import SHAKESPEARE, add_data_arg, dataset, provenance, publish, table
from remask.config import preset_small
from remask.evaluate import perplexity
from remask.likelihood import LikelihoodConfig
from remask.train import load_checkpoint, train

RESULTS = Path(__file__).resolve().parent / "results" / "eval_speed.md"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_arg(ap, "tinyshakespeare/")
    ap.add_argument("--train-seconds", type=float, default=60.0, help="training time of the scored model")
    ap.add_argument("--kb", type=float, default=20.0, help="KB of held-out text to score")
    ap.add_argument("--window", type=int, default=128, help="tokens per window (the training seq_len)")
    ap.add_argument("--mc-num", type=int, default=128, help="samples per window of the fixed run (the default)")
    ap.add_argument("--batch-size", type=int, default=16, help="samples per forward pass (the adaptive step)")
    ap.add_argument("--targets", type=float, nargs="+", default=[0.005, 0.01, 0.02],
                    help="standard errors (nats/char) to request besides the fixed run's own")
    ap.add_argument("--results", type=Path, default=RESULTS, help="report path ('-': print only)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    text = dataset(args.data, SHAKESPEARE).read_text(encoding="utf-8")
    held_out = text[-int(args.kb * 1024):]
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "train.txt"
        corpus.write_text(text[: -int(args.kb * 1024)], encoding="utf-8")
        cfg = preset_small()  # the default run's shape and recipe
        cfg.model.max_seq_len, cfg.train.seq_len = max(args.window, cfg.model.max_seq_len), args.window
        cfg.train.max_steps, cfg.train.time_budget, cfg.train.lr_clock = 100_000, args.train_seconds, "time"
        cfg.train.progress, cfg.train.samples, cfg.train.eval_batches, cfg.train.eval_interval = False, 0, 2, 0
        train(cfg, Path(tmp) / "run", data=str(corpus))
        ck = load_checkpoint(Path(tmp) / "run", "cpu")
    docs = [held_out[i:i + 2048] for i in range(0, len(held_out), 2048)]  # 2 KB documents

    def score(target: float | None) -> tuple[dict, float]:
        lcfg = LikelihoodConfig(mc_num=args.mc_num, batch_size=args.batch_size, target_stderr=target)
        t0 = time.perf_counter()
        res = perplexity(ck.model, ck.tokenizer, docs, window=args.window, cfg=lcfg)
        return res, time.perf_counter() - t0

    perplexity(ck.model, ck.tokenizer, docs[:1], window=args.window,
               cfg=LikelihoodConfig(mc_num=args.batch_size, batch_size=args.batch_size))  # warm-up, not timed
    fixed, t_fixed = score(None)
    rows = [(f"fixed: {args.mc_num} per window", fixed, t_fixed)]
    res, t = score(fixed["stderr_nats_per_token"])
    rows.append(("target: the fixed run's stderr", res, t))
    for target in args.targets:
        res, t = score(target)
        rows.append((f"target: {target:g} nats/char", res, t))
    body = table(["setting", "nats/char", "stderr", "samples", "seconds", "samples saved", "speed-up"],
                 [(name, f"{r['nats_per_token']:.4f}", f"{r['stderr_nats_per_token']:.4f}", f"{r['mc_samples']:,}",
                   f"{t:.1f}", f"{fixed['mc_samples'] / r['mc_samples']:.2f}x", f"{t_fixed / t:.2f}x")
                  for name, r, t in rows])
    report = (f"# Scoring speed: a requested standard error vs mc_num for every window\n\n"
              f"{len(held_out):,} characters of held-out tinyshakespeare in {len(docs)} documents, "
              f"{fixed['windows']} windows of {args.window}; a {ck.model.num_params() / 1e6:.2f}M-parameter "
              f"character MDM trained {args.train_seconds:g} s; batch {args.batch_size} samples per pass.\n\n"
              f"{body}\n\n{provenance(time.perf_counter() - t_start)}")
    publish(report, args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
