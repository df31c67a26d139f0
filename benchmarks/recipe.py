"""Which training levers buy quality per CPU-minute: an ablation at equal wall-clock.

    python benchmarks/recipe.py                            # every arm, 2.5 minutes each, two at a time
    python benchmarks/recipe.py --arms mdm/base mdm/bf16   # some arms
    python benchmarks/recipe.py --list                     # the arms and what each changes
    python benchmarks/recipe.py --minutes 0.2 --arms mdm/base ar/base   # quick end-to-end check

Every arm trains the same starting recipe (``preset_small``'s model and batch: d_model 128, 4 layers,
4 heads since 2026-12-01 21:00, d_model 192 and 6 heads before; batch 16 x 128 bytes, peak LR 3e-3,
50 warmup steps, cosine over the time budget with ``lr_clock=time``; float32, uncompiled, iid t,
AdamW) with one lever changed, on char-level tinyshakespeare (byte
tokens, last 10% held out), for the same ``--minutes`` of training. Arms run two at a time in two
processes with one thread each, so both of a pair see the same machine load; the two baselines
(``mdm/base``, ``ar/base``) run first and every arm is compared with the baseline of its objective.

The figure per arm is the validation loss in nats per character, recomputed after training on
``--eval-batches`` x 16 fixed windows with 4 fixed mask draws each (the MDM's is LLaDA's ELBO bound,
eq. 3, always with eps = 1e-3 and the 1/p weight, whatever the arm trained with; the AR's is the
exact NLL), with its standard error over windows. The difference from the baseline is reported
with the standard error of the difference (windows are shared, so this overstates it a little).

``mdm/from-ar`` is continued pre-training (Dream, DiffuLLaMA): the AR baseline's recipe for
``--ar-fraction`` of the budget, then the diffusion objective from its weights (``init_from``, the
causal mask dropped) for the rest, equal total compute.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import torch

from common import (
    SHAKESPEARE,
    add_data_arg,
    add_worker_args,
    command_line,
    dataset,
    date,
    machine,
    publish,
    run_workers,
    table,
    val_standard_error,
    work_dir,
)
from remask.config import RunConfig, apply_overrides, preset_small

# The starting recipe: preset_small's model and batch with the levers below switched off.
BASE_TRAIN = {"max_steps": 10**6, "lr_clock": "time", "dtype": "float32", "compile": False, "t_sampling": "iid",
              "optimizer": "adamw", "eval_interval": 250, "eval_batches": 4,
              "ckpt_interval": 0, "log_interval": 25, "progress": False, "samples": 0, "device": "cpu"}
SPEED = {"train.dtype": "bfloat16", "train.compile": True}
# arm -> (what it changes, overrides of the starting recipe); AR arms take the same lever where it applies.
LEVERS: dict[str, tuple[str, dict[str, Any]]] = {
    "base": ("today's recipe", {}),
    "bf16": ("bf16 autocast (attention in float32)", {"train.dtype": "bfloat16"}),
    "compile": ("torch.compile of each block", {"train.compile": True}),
    "bf16+compile": ("both", SPEED),
    "stratified": ("stratified t across the batch", {"train.t_sampling": "stratified"}),
    "antithetic": ("antithetic t pairs (t, 1 - t)", {"train.t_sampling": "antithetic"}),
    "floor-0.1": ("mask-rate floor p >= 0.1 (mask_eps)", {"train.mask_eps": 0.1}),
    "flat-weight": ("CE weight 1 instead of 1/p", {"train.loss_weight": "flat"}),
    "from-ar": ("AR for part of the budget, then MDM from its weights", {}),
    "lr-1.5e-3": ("peak LR 1.5e-3", {"train.lr": 1.5e-3}),
    "lr-6e-3": ("peak LR 6e-3", {"train.lr": 6e-3}),
    "batch-32": ("batch 32", {"train.batch_size": 32}),
    "batch-8": ("batch 8", {"train.batch_size": 8}),
    "d128": ("d_model 128, 4 heads", {"model.d_model": 128, "model.n_head": 4}),
    "d256": ("d_model 256, 8 heads", {"model.d_model": 256, "model.n_head": 8}),
    "6-layers": ("6 layers", {"model.n_layer": 6}),
    "muon": ("Muon on the blocks' matrices, AdamW on the rest", {"train.optimizer": "muon"}),
}
MDM_ONLY = ("stratified", "antithetic", "floor-0.1", "flat-weight", "from-ar")
ARMS = [f"mdm/{k}" for k in LEVERS] + [f"ar/{k}" for k in LEVERS if k not in MDM_ONLY]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=2.5, help="training time budget of each arm")
    ap.add_argument("--arms", nargs="+", default=ARMS, metavar="OBJ/LEVER", help="arms to run (default: all)")
    ap.add_argument("--on-top", default="", metavar="LEVER[,LEVER]",
                    help="levers applied to every arm, baselines included (e.g. bf16+compile for the sweep)")
    ap.add_argument("--ar-fraction", type=float, default=0.5, help="mdm/from-ar: share of the budget trained as AR")
    ap.add_argument("--eval-batches", type=int, default=32, help="final validation batches of 16 windows")
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--list", action="store_true", help="print the arms and exit")
    ap.add_argument("--figure", type=Path, default=None, help="curves of the baselines and the best arms (PNG)")
    add_data_arg(ap, "tinyshakespeare/input.txt")
    add_worker_args(ap, "recipe", kinds=None)
    args = ap.parse_args(argv)
    unknown = [a for a in args.arms if a not in ARMS]
    if unknown:
        ap.error(f"unknown arm {unknown[0]}; see --list")
    return args


def arm_config(arm: str, args: argparse.Namespace, minutes: float) -> RunConfig:
    """The starting recipe with ``arm``'s lever (and the --on-top levers) applied."""
    objective, lever = arm.split("/")
    overrides = {f"train.{k}": v for k, v in BASE_TRAIN.items()}
    overrides.update({"train.objective": objective, "train.seed": args.seed, "train.time_budget": minutes * 60,
                      "model.causal": objective == "ar"})
    for name in [x for x in args.on_top.split(",") if x] + [lever]:
        overrides.update(LEVERS[name][1])
    return apply_overrides(preset_small(), overrides)


def worker(args: argparse.Namespace) -> None:
    """Train one arm for the budget (mdm/from-ar: AR, then MDM from it), then validate with its error."""
    from remask.checkpoint import load_model
    from remask.train.loop import train

    torch.set_num_threads(1)
    arm, work = args.worker, args.work_dir
    out = work / arm.replace("/", "-")
    data = work / "data"
    if arm == "mdm/from-ar":
        ar_cfg = arm_config("ar/base", args, args.minutes * args.ar_fraction)
        first = train(ar_cfg, out / "ar-phase", data=data, overwrite=True)
        cfg = arm_config("mdm/base", args, args.minutes * (1 - args.ar_fraction))
        res = train(cfg, out / "run", data=data, init_from=first.checkpoint, overwrite=True)
        steps = first.step + res.step
    else:
        cfg = arm_config(arm, args, args.minutes)
        res = train(cfg, out / "run", data=data, overwrite=True)
        steps = res.step
    model, _ = load_model(res.checkpoint)
    cfg = RunConfig(model=cfg.model, train=apply_overrides(cfg, {"train.eval_batches": args.eval_batches,
                                                                 "train.eval_mc": 4}).train)
    mean, se = val_standard_error(model, data, cfg)
    record = {"arm": arm, "steps": steps, "tokens_per_s": res.tokens_per_s, "val": mean, "se": se,
              "params": model.num_params(), "run": str(out / "run")}
    (work / f"{arm}.json").write_text(json.dumps(record, indent=2))
    print(f"{arm}: {steps} steps, val {mean:.4f} ± {se:.4f}", flush=True)


def run_arms(args: argparse.Namespace, work: Path) -> dict[str, dict[str, Any]]:
    """Baselines first, then the other arms, two at a time."""
    from remask.data.prepare import prepare
    from remask.data.tokenizer import ByteTokenizer

    if not (work / "data" / "meta.json").exists():
        prepare([dataset(args.data, SHAKESPEARE)], work / "data", ByteTokenizer(), val_fraction=0.1)
    for objective in ("mdm", "ar"):  # arm names are OBJ/LEVER: logs and results land in work/OBJ/
        (work / objective).mkdir(exist_ok=True)
    order = [a for a in ("mdm/base", "ar/base") if a in args.arms] + [a for a in args.arms if not a.endswith("/base")]
    # a kept --work-dir resumes: arms with a result are not trained again
    results = {a: json.loads((work / f"{a}.json").read_text()) for a in order if (work / f"{a}.json").exists()}
    todo = [a for a in order if a not in results]
    for i in range(0, len(todo), 2):
        pair = todo[i:i + 2]
        print(f"running {' and '.join(pair)} ({args.minutes:g} min of training each)", flush=True)
        got = run_workers(__file__, work, [*sys.argv[1:], "--work-dir", str(work)], kinds=pair,
                          result="{kind}.json", logs=True)
        results.update(got)
    return {a: results[a] for a in order}


def report(args: argparse.Namespace, res: dict[str, dict[str, Any]]) -> str:
    rows = []
    for arm, r in res.items():
        objective, lever = arm.split("/")
        base = res.get(f"{objective}/base")
        delta = "" if base is None or arm == f"{objective}/base" else (
            f"{r['val'] - base['val']:+.4f} ± {math.hypot(r['se'], base['se']):.4f}")
        rel = "" if base is None else f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}"
        rows.append([arm, LEVERS[lever][0], f"{r['params'] / 1e6:.2f}M", r["steps"], f"{r['tokens_per_s']:,.0f}", rel,
                     f"{r['val']:.4f} ± {r['se']:.4f}", delta])
    headers = ["arm", "lever", "params", "steps", "tokens/s", "tokens/s vs base", "val nats/char ± SE",
               "vs base (negative: better)"]
    on_top = f" Applied to every arm: {args.on_top}." if args.on_top else ""
    return f"""# recipe

Ablation at equal wall-clock: {args.minutes:g} minutes of training per arm, two arms at a time, one thread
each; char-level tinyshakespeare, byte tokens, validation on {args.eval_batches * 16} fixed held-out windows
of 128 (MDM: ELBO bound, eq. 3, eps 1e-3, 4 mask draws per window; AR: exact NLL).{on_top}

- command: `{command_line()}`
- date: {date()}
- machine: {machine()}

{table(headers, rows)}
"""


def main() -> None:
    args = parse_args()
    if args.list:
        for arm in ARMS:
            print(f"{arm:22s} {LEVERS[arm.split('/')[1]][0]}")
        return
    if args.worker:
        worker(args)
        return
    with work_dir(args.work_dir, "recipe-") as work:
        res = run_arms(args, work)
        text = report(args, res)
        print(text)
        if args.figure is not None:
            from remask.plot import plot_runs

            plot_runs([r["run"] for r in res.values()], args.figure, labels=list(res))
        if str(args.results) != "-":
            publish(text, args.results)


if __name__ == "__main__":
    main()
