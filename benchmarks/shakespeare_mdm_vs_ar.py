"""Masked diffusion vs autoregressive on char-level tinyshakespeare, equal wall-clock budget.

    python benchmarks/shakespeare_mdm_vs_ar.py                # 10 minutes of training each (~12 min wall)
    python benchmarks/shakespeare_mdm_vs_ar.py --minutes 2    # quick end-to-end check
    python benchmarks/shakespeare_mdm_vs_ar.py --data DIR     # DIR/tinyshakespeare/input.txt

Data: tinyshakespeare under the dataset root, ``--data DIR``, else ``$REMASK_DATA``, else
``../shared/data`` beside the repository; missing, the script stops with a one-line error.

The same backbone (remask.model.Transformer; only ``causal`` differs) is trained twice through
``remask.train.loop.train``: LLaDA's objective (mdm) and next-token prediction (ar). Both runs
happen AT THE SAME TIME in two processes with one thread each, so both see the same machine
load, and each stops at ``TrainConfig.time_budget`` seconds of training (evaluation excluded).
Same data split (``remask prepare``, byte tokenizer, last 10% of the text held out, as nanoGPT's
shakespeare_char), same batch, seq_len, peak LR and warmup.

LR schedule: the loop's cosine decays over ``max_steps``; to make it end with the time budget,
each worker first trains a throwaway copy for ``--calibrate-seconds`` (both at once, so under
the same load), measures its steps per second, and sets max_steps = rate x budget x 0.98.

Reported per model: validation loss in nats per character (the MDM's is LLaDA's ELBO bound,
eq. 3 with fixed masking noise; the AR's is the exact next-token NLL) with the Monte Carlo /
window standard error, bits per byte, steps reached, and samples. The ratio MDM / AR compares
them. Reference: nanoGPT's CPU recipe for AR (4 layers, 4 heads, 128 wide, context 64, batch
12, 2000 iterations, ~3 minutes) reaches val ~1.88 nats/char.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from common import (
    SHAKESPEARE,
    add_data_arg,
    add_model_args,
    add_set_arg,
    add_worker_args,
    barrier,
    command_line,
    dataset,
    date,
    machine,
    optimizer_label,
    progress_line,
    publish,
    run_workers,
    steady_rate,
    table,
    val_standard_error,
    with_overrides,
    work_dir,
)
from remask.config import ModelConfig, RunConfig, TrainConfig

PROMPT = "JULIET:\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="training time budget of each model")
    add_data_arg(ap, "tinyshakespeare/input.txt")
    add_model_args(ap, d_model=128, n_layer=4, n_head=4)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=TrainConfig().lr, help="peak LR (same for both)")
    ap.add_argument("--warmup-steps", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--calibrate-seconds", type=float, default=15.0, help="throwaway run that sizes the LR schedule")
    ap.add_argument("--eval-batches", type=int, default=32, help="final validation batches (of --batch-size windows)")
    ap.add_argument("--eval-mc", type=int, default=4, help="mask draws per window for the MDM's ELBO")
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--mdm-from-ar", type=float, default=0.0, metavar="FRACTION",
                    help="the MDM's budget starts with this fraction trained as AR, then continues as an MDM "
                         "from those weights (remask train --init-from); 0: from scratch")
    add_set_arg(ap)
    add_worker_args(ap, "shakespeare_mdm_vs_ar")
    return ap.parse_args(argv)


def run_config(args: argparse.Namespace, objective: str, max_steps: int, budget: float | None) -> RunConfig:
    model = ModelConfig(d_model=args.d_model, n_layer=args.n_layer, n_head=args.n_head, max_seq_len=args.seq_len,
                        causal=objective == "ar")
    train = TrainConfig(objective=objective, seed=args.seed, batch_size=args.batch_size, seq_len=args.seq_len,
                        max_steps=max_steps, time_budget=budget, lr=args.lr, warmup_steps=args.warmup_steps,
                        eval_interval=0, eval_batches=args.eval_batches, eval_mc=args.eval_mc, ckpt_interval=0,
                        log_interval=25, progress=False, samples=3, device="cpu", dtype="float32")
    return with_overrides(RunConfig(model=model, train=train), args.overrides)


@torch.no_grad()
def prompted_sample(model: torch.nn.Module, tok: Any, objective: str, gen: int) -> str:
    """One sample continuing PROMPT at temperature 0.8 (MDM: one token per step, 4 blocks)."""
    prompt = tok.encode(PROMPT)
    if objective == "ar":
        from remask.sampling.ar import ARSampleConfig, ar_generate

        out = ar_generate(model, [prompt], ARSampleConfig(gen_length=gen, temperature=0.8, seed=0), eos_id=tok.eos_id)
    else:
        from remask.sampling import SampleConfig, generate

        sc = SampleConfig(gen_length=gen, steps=gen, block_length=gen // 4, temperature=0.8, seed=0)
        out = generate(model, [prompt], sc, mask_id=tok.mask_id, eos_id=tok.eos_id, eot_id=tok.eot_id)
    return PROMPT + tok.decode(out.tokens[0].tolist(), skip_special_tokens=True)


def worker(args: argparse.Namespace) -> None:
    """One objective: calibrate the step rate, train for the budget, evaluate, sample."""
    from remask.checkpoint import load_model
    from remask.train.loop import train

    torch.set_num_threads(args.threads)
    obj, work = args.worker, args.work_dir
    data_dir, out = work / "data", work / obj
    budget = args.minutes * 60.0

    barrier(work, "calibrate", obj)
    calib = run_config(args, obj, max_steps=10**6, budget=args.calibrate_seconds)
    calib = RunConfig(model=calib.model, train=replace(calib.train, eval_batches=1, samples=0, log_interval=5))
    c = train(calib, out / "calibrate", data=data_dir)
    rate = steady_rate(out / "calibrate" / "metrics.jsonl", c.step, c.elapsed)
    max_steps = max(args.warmup_steps + 1, int(rate * budget * 0.98))
    print(f"{obj}: calibration {c.step} steps in {c.elapsed:.1f}s -> max_steps {max_steps}", flush=True)
    shutil.rmtree(out / "calibrate", ignore_errors=True)

    barrier(work, "train", obj)
    wall0, init, ar_steps = time.perf_counter(), None, 0
    if obj == "mdm" and args.mdm_from_ar:  # continued pre-training: AR first, then MDM from its weights
        ar = run_config(args, "ar", max_steps=10**6, budget=budget * args.mdm_from_ar)
        first = train(RunConfig(model=ar.model, train=replace(ar.train, lr_clock="time", samples=0)), out / "ar-phase",
                      data=data_dir)
        init, ar_steps, budget = first.checkpoint, first.step, budget * (1 - args.mdm_from_ar)
        max_steps = max(args.warmup_steps + 1, int(rate * budget * 0.98))
    cfg = run_config(args, obj, max_steps=max_steps, budget=budget)
    res = train(cfg, out / "run", data=data_dir, init_from=init)
    wall = time.perf_counter() - wall0
    model, tok = load_model(res.checkpoint)
    mean, se = val_standard_error(model, data_dir, cfg)
    record: dict[str, Any] = {
        "objective": obj, "params": model.num_params(), "calibration_steps_per_s": rate, "max_steps": max_steps,
        "wall_s": wall, "recomputed_val_loss": mean, "val_loss_se": se, "ar_phase_steps": ar_steps,
        "prompted_sample": prompted_sample(model, tok, obj, gen=min(96, args.seq_len - len(PROMPT)) // 4 * 4),
        **res.to_json(),
    }
    (out / "result.json").write_text(json.dumps(record, indent=2))
    print(f"{obj}: {res.step} steps, val {res.val_loss:.4f} nats/char", flush=True)


def launch(args: argparse.Namespace, work: Path) -> dict[str, dict[str, Any]]:
    """Start both workers at once, report progress every 30 s, and collect their result.json."""
    return run_workers(__file__, work, [*sys.argv[1:], "--work-dir", str(work)], threads=args.threads,
                       result="{kind}/result.json",
                       progress=lambda kind: progress_line(work / kind / "run" / "metrics.jsonl"))


def report(args: argparse.Namespace, res: dict[str, dict[str, Any]], data_meta: dict[str, Any]) -> str:
    mdm, ar = res["mdm"], res["ar"]
    rows = []
    for o, r in res.items():
        rows.append([o, "bidirectional" if o == "mdm" else "causal", r["step"], f"{r['elapsed_s']:.0f}",
                     f"{r['tokens_per_s']:,.0f}", f"{r['step'] * args.batch_size * args.seq_len / 1e6:.2f}",
                     f"{r['val_loss']:.4f} ± {r['val_loss_se']:.4f}", f"{r['val_bpb']:.4f}"])
    headers = ["objective", "attention", "steps", "train s", "tokens/s", "M tokens", "val nats/char (± SE)",
               "bits per byte"]
    label = "full run" if args.minutes == 10 else f"**{args.minutes:g}-minute validation run (not the 10-minute benchmark)**"
    val = data_meta["splits"]["val"]
    samples = "\n\n".join(
        f"**{o}**, unconditional (after EOS), temperature 0.8:\n\n" + "\n".join(
            "```text\n" + s + "\n```" for s in r["samples"])
        + f"\n\n**{o}**, prompted with `{PROMPT.strip()}`:\n\n```text\n{r['prompted_sample']}\n```"
        for o, r in res.items())
    return f"""# shakespeare_mdm_vs_ar

Char-level tinyshakespeare, equal wall-clock training budget: LLaDA's masked diffusion model (mdm)
vs the same Transformer trained autoregressively (ar), both trained at the same time in two
processes ({args.threads} thread each). {label}.

- command: `{command_line()}`
- date: {date()}
- machine: {machine()}; 1-minute load average {data_meta["load"][0]:.1f} at start, {data_meta["load"][1]:.1f} at
  end (both models share whatever load there is; it lowers the steps both reach)
- model: d_model {args.d_model}, {args.n_layer} layers, {args.n_head} heads, {mdm["params"]:,} parameters
  (byte vocabulary 264), seq_len {args.seq_len}, batch {args.batch_size}, {optimizer_label(args.overrides)} peak LR {args.lr:g},
  {args.warmup_steps} warmup steps then cosine to 0.1x over max_steps (sized per model from a
  {args.calibrate_seconds:g}s calibration run: mdm {mdm["max_steps"]}, ar {ar["max_steps"]}); budget
  {args.minutes:g} min of training each (`TrainConfig.time_budget`; evaluation not counted).
- recipe overrides (`--set`, both models): {", ".join(args.overrides) or "none"}; MDM from an AR phase of
  {args.mdm_from_ar:g} of its budget ({mdm["ar_phase_steps"]} AR steps, then {mdm["step"]} MDM steps)
- data: `remask prepare` with the byte tokenizer, last 10% held out ({val["tokens"]:,} validation tokens);
  validation on {args.eval_batches * args.batch_size} fixed windows of {args.seq_len}; the MDM's loss
  is LLaDA's ELBO bound (eq. 3) with {args.eval_mc} fixed mask draws per window, the AR's is the exact
  next-token NLL. SE = standard error over windows. Byte tokens = characters (the text is ASCII).

{table(headers, rows)}

**MDM / AR validation loss: {mdm["val_loss"] / ar["val_loss"]:.3f}** (MDM ELBO {mdm["val_loss"]:.3f} vs
AR {ar["val_loss"]:.3f} nats/char; steps reached: mdm {mdm["step"]}, ar {ar["step"]}).

Reference: nanoGPT's CPU recipe (AR, 4 layers, 4 heads, 128 wide, context 64, batch 12, 2000
iterations = 1.5 M tokens, about 3 minutes on its author's CPU) reaches val about 1.88 nats/char.

## Samples

{samples}
"""


def main() -> None:
    args = parse_args()
    if args.worker:
        worker(args)
        return
    text_file = dataset(args.data, SHAKESPEARE)
    from remask.data.prepare import prepare
    from remask.data.tokenizer import ByteTokenizer

    with work_dir(args.work_dir, "remask-shakespeare-") as work:
        meta = prepare([text_file], work / "data", ByteTokenizer(), val_fraction=0.1)
        load0 = os.getloadavg()[0]
        res = launch(args, work)
        meta["load"] = (load0, os.getloadavg()[0])
    publish(report(args, res, meta), args.results)


if __name__ == "__main__":
    main()
