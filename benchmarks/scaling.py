"""Scaling out: tokens/s on 1 vs 2 processes (DDP and FSDP2, through torchrun and `remask train`), the peak
memory of the training loss with the LM head at every position vs at the supervised positions only, and a
~1B-parameter model in bf16 on one GPU.

    python benchmarks/scaling.py                        # CPU: both tables, about 3 minutes on 2 idle cores
    python benchmarks/scaling.py cpu --steps 20 --rounds 1
    python benchmarks/scaling.py gpu                    # one CUDA GPU, ~1B parameters (benchmarks/gpu_scaling.sh)
    python benchmarks/scaling.py gpu --size tiny --device cpu --dtype float32 --results -    # its dry run

Throughput (``cpu``): every configuration is the real command line, ``remask train`` on the 1.9M-parameter
``small`` preset, batch 16 x 128 tokens, under ``python -m torch.distributed.run --standalone`` for several
processes. Each process gets its share of the machine's cores as threads, so every row uses the whole CPU.
tokens/s is the median of the ``metrics.jsonl`` windows (5 steps each) after ``--warmup`` steps, over
``--rounds`` rounds that run the configurations in turn (so a shared machine's drift hits them alike); the
ratio is to the one-process row of the same run.

Loss memory (``cpu``): one forward and backward of the mdm (and SFT) loss on a model with LLaDA-8B's
vocabulary (126,464) and a small body, each in a fresh process: the peak resident memory (VmHWM, reset
just before) above what the process held before the loss. "every position" is how the loss was computed
before: the (B, L, V) logits, then the supervised rows; "supervised only" is today's ``select``.

GPU (``gpu``): `remask train --train.parallel fsdp` under torchrun on one GPU (the FSDP2 path of many, with
its bf16 mixed-precision policy) on the built-in corpus. MFU = model FLOP/s / the best bf16 ``torch.matmul``
FLOP/s measured in the same run; model FLOPs per token are 6 N + 12 n_layer L d (PaLM appendix B, as in
benchmarks/train_throughput.py). Extra arguments go to ``remask train`` (e.g. ``--train.compile true``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from common import RESULTS_DIR, provenance, publish, table, work_dir
from remask import objectives
from remask.config import ModelConfig
from remask.data.batch import Batch
from remask.data.corpus import default_corpus_files
from remask.data.prepare import prepare
from remask.model import Transformer, build_model
from remask.objectives import forward_process, masked_token_nll, mdm_loss, sft_loss
from remask.rng import keyed_uniform
from train_throughput import corpus_dir, model_flops_per_token

LOG_INTERVAL = 5
LLADA_VOCAB = 126_464
SIZES = {  # gpu: model flags, batch flags
    "1b": (dict(d_model=2048, n_layer=20, n_head=16, max_seq_len=2048), dict(batch_size=16, micro_batch_size=8, seq_len=2048)),
    "tiny": (dict(d_model=64, n_layer=2, n_head=4, max_seq_len=64), dict(batch_size=4, micro_batch_size=2, seq_len=64)),
}


# ----------------------------------------------------------------------------- training runs

def train_command(procs: int, data: Path, out: Path, flags: dict[str, Any], extra: list[str], *,
                  torchrun: bool = False) -> list[str]:
    """``remask train`` as a user types it: one process directly, several (or ``torchrun``) under torchrun."""
    launch = [sys.executable, "-m", "remask"]
    if procs > 1 or torchrun:
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}", "-m",
                  "remask"]
    cmd = [*launch, "train", "--data", str(data), "--out", str(out), "--overwrite", "--json", "--time-budget", "none"]
    for key, value in flags.items():
        cmd += [f"--{key}", str(value)]
    return cmd + extra


def run_train(procs: int, threads: int, data: Path, out: Path, flags: dict[str, Any], extra: list[str], *,
              warmup: int, timeout: float, torchrun: bool = False) -> list[float]:
    """Run it; return tokens/s of each metrics window after ``warmup`` steps."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    cmd = train_command(procs, data, out, flags, extra, torchrun=torchrun)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise SystemExit(f"`{' '.join(cmd)}` failed:\n{done.stderr[-3000:]}")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    windows = [r["tokens_per_s"] for r in records if "tokens_per_s" in r and r["step"] > warmup]
    if not windows:
        raise SystemExit(f"no metrics window after step {warmup} in {out / 'metrics.jsonl'}")
    return windows


def throughput(args: argparse.Namespace, extra: list[str], work: Path) -> str:
    cores = os.cpu_count() or 1
    data = corpus_dir(work)
    flags = {"preset": "small", "max-steps": args.warmup + args.steps, "train.log_interval": LOG_INTERVAL,
             "train.eval_interval": 0, "train.eval_batches": 1, "train.ckpt_interval": 0, "train.samples": 0,
             "train.device": "cpu", "train.dtype": "float32", "train.optimizer": "adamw"}  # FSDP2 shards matrices
    configs = [("1 process (baseline)", 1, cores, "ddp"), ("1 process, 1 thread", 1, 1, "ddp"),
               ("2 processes, DDP", 2, max(1, cores // 2), "ddp"), ("2 processes, FSDP2", 2, max(1, cores // 2), "fsdp")]
    windows: dict[str, list[float]] = {name: [] for name, *_ in configs}
    for r in range(args.rounds):
        for name, procs, threads, parallel in configs:
            out = work / f"run-{procs}-{parallel}-{threads}"
            windows[name] += run_train(procs, threads, data, out, {**flags, "train.parallel": parallel}, extra,
                                       warmup=args.warmup, timeout=600)
            shutil.rmtree(out, ignore_errors=True)
            print(f"round {r + 1}/{args.rounds}: {name}: {statistics.median(windows[name]):,.0f} tokens/s", flush=True)
    base = statistics.median(windows[configs[0][0]])
    rows = []
    for name, procs, threads, _ in configs:
        med = statistics.median(windows[name])
        rows.append([name, procs, threads, f"{med:,.0f}", f"{min(windows[name]):,.0f}-{max(windows[name]):,.0f}",
                     f"{med / base:.2f}"])
    return table(["configuration", "processes", "threads each", "tokens/s (median)", "range", "ratio"], rows)


# ----------------------------------------------------------------------------- loss memory

def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def loss_before(model: Transformer, batch: Batch, noise: torch.Tensor, objective: str, mask_id: int) -> torch.Tensor:
    """The loss as remask computed it before the head ran at supervised positions only: the (B, L, V)
    logits, then ``masked_token_nll`` (the supervised rows, upcast, ``F.cross_entropy``)."""
    answer = None if objective == "mdm" else ~batch.prompt_mask
    xt, masked, p = forward_process(batch.tokens, noise, mask_id=mask_id, eps=1e-3, maskable=answer)
    nll = masked_token_nll(model(xt), batch.tokens, masked)  # (B, L)
    per_token = nll / p[:, None]
    return per_token.sum(1) / (batch.tokens.shape[1] if answer is None else answer.sum(1))


def _cross_entropy_rows(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), target, reduction="none")


HEADS = {  # how the loss reaches its per-token cross-entropy
    "every": "(B, L, V) logits, then F.cross_entropy of the supervised rows (before)",
    "select": "head at the supervised rows, F.cross_entropy",
    "row_nll": "head at the supervised rows, row_nll (now)",
}


def memory_worker(args: argparse.Namespace) -> None:
    """One loss forward + backward in this fresh process; prints {"peak_mb", "supervised"}."""
    torch.set_num_threads(1)
    cfg = ModelConfig(vocab_size=LLADA_VOCAB, d_model=args.d_model, n_layer=2, n_head=4, max_seq_len=args.seq_len,
                      mask_token_id=LLADA_VOCAB - 2, eos_token_id=LLADA_VOCAB - 1)
    model = build_model(cfg, seed=0)
    B, L = args.batch, args.seq_len
    tokens = torch.randint(0, LLADA_VOCAB - 2, (B, L), generator=torch.Generator().manual_seed(0))
    prompt = torch.zeros(B, L, dtype=torch.bool)
    prompt[:, : L // 2] = True  # SFT: the first half of each sequence is the prompt
    batch = Batch(tokens, prompt_mask=prompt if args.objective == "sft" else None)
    noise = keyed_uniform(0, 0, np.arange(B), 1 + L)
    loss_fn = {"mdm": mdm_loss, "sft": sft_loss}[args.objective]
    if args.head == "select":  # isolate what the selection alone saves
        objectives.row_nll = _cross_entropy_rows
    amp = torch.autocast("cpu", dtype=torch.bfloat16) if args.dtype == "bfloat16" else contextlib.nullcontext()
    before = _status_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current resident size
    with amp:
        if args.head == "every":
            loss = loss_before(model, batch, noise, args.objective, cfg.mask_token_id).sum()
        else:
            loss = loss_fn(model, batch, noise, mask_id=cfg.mask_token_id).sum()
    loss.backward()
    peak = _status_kb("VmHWM")
    masked = (noise[:, 1:] < ((1 - 1e-3) * noise[:, :1] + 1e-3)) & ~batch.prompt_mask if args.objective == "sft" \
        else noise[:, 1:] < ((1 - 1e-3) * noise[:, :1] + 1e-3)
    print(json.dumps({"peak_mb": (peak - before) / 1024, "supervised": int(masked.sum()),
                      "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def loss_memory(args: argparse.Namespace) -> str:
    rows = []
    for dtype in ("float32", "bfloat16"):
        for objective in ("mdm", "sft"):
            peaks = {}
            for head in HEADS:
                cmd = [sys.executable, str(Path(__file__).resolve()), "memory-worker", "--objective", objective,
                       "--head", head, "--batch", str(args.mem_batch), "--seq-len", str(args.mem_seq_len),
                       "--d-model", str(args.mem_d_model), "--dtype", dtype]
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
                if done.returncode != 0:
                    raise SystemExit(f"memory worker failed:\n{done.stderr[-3000:]}")
                res = json.loads(done.stdout.strip().splitlines()[-1])
                peaks[head] = res["peak_mb"]
                n = args.mem_batch * args.mem_seq_len
                rows.append([dtype, objective, HEADS[head],
                             f"{res['supervised']:,} of {n:,}", f"{res['peak_mb']:,.0f}",
                             f"{res['peak_mb'] / peaks['every']:.2f}"])
    note = (f"Model: vocabulary {LLADA_VOCAB:,}, d_model {args.mem_d_model}, 2 layers; batch {args.mem_batch} x "
            f"{args.mem_seq_len} tokens, masking noise keyed as in training (mdm: t ~ U(0, 1) per sequence; sft: "
            "the first half of each sequence is prompt); on the CPU, float32 or bf16 autocast. Peak = resident memory "
            "above the process's own before the loss, over its forward and backward.")
    return note + "\n\n" + table(["dtype", "objective", "loss", "supervised positions", "peak MB", "ratio"], rows)


# ----------------------------------------------------------------------------- GPU

def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, repeats: int = 10) -> float:
    """Best FLOP/s of an n x n ``torch.matmul`` in ``dtype`` on ``device``."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    a @ b  # warm up kernels / thread pool
    sync()
    best = 0.0
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(repeats):
            a @ b
        sync()
        best = max(best, 2.0 * n**3 * repeats / (time.perf_counter() - t0))
    return best


def gpu(args: argparse.Namespace, extra: list[str], work: Path) -> str:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device visible: run `scaling.py gpu --size tiny --device cpu --dtype float32` to dry-run")
    dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32}[args.dtype]
    peak = matmul_peak(device, dtype, 8192 if device.type == "cuda" else 1024)
    model_kw, batch_kw = SIZES[args.size]
    with torch.device("meta"):
        model = Transformer(ModelConfig(vocab_size=264, mask_token_id=256, eos_token_id=257, **model_kw))
    data = work / "data"
    t0 = time.perf_counter()
    prepare(None if args.size == "1b" else default_corpus_files()[:20], data, workers=args.workers)
    prep_s = time.perf_counter() - t0
    # n_kv_head and ffn_hidden follow d_model and n_head ("none"), not the preset's resolved values
    flags = {**{f"model.{k}": v for k, v in model_kw.items()}, "model.n_kv_head": "none", "model.ffn_hidden": "none",
             **{f"train.{k}": v for k, v in batch_kw.items()},
             "max-steps": args.warmup + args.steps, "train.log_interval": LOG_INTERVAL, "train.eval_interval": 0,
             "train.eval_batches": 1, "train.ckpt_interval": 0, "train.samples": 0, "train.progress": "false",
             "train.device": args.device, "train.dtype": args.dtype, "train.parallel": "fsdp", "train.lr": 3e-4,
             "train.optimizer": "adamw"}
    # torchrun with one process: a process group of one, so FSDP2 shards (trivially) and casts as on many GPUs.
    windows = run_train(1, os.cpu_count() or 1, data, work / "run", flags, extra, warmup=args.warmup,
                        timeout=args.timeout, torchrun=True)
    tok_s = statistics.median(windows)
    flops = model_flops_per_token(model, batch_kw["seq_len"])
    rows = [[args.size, f"{model.num_params() / 1e9:.3f}B" if model.num_params() > 1e8 else f"{model.num_params() / 1e6:.2f}M",
             f"{batch_kw['batch_size']} x {batch_kw['seq_len']}", f"{tok_s:,.0f}", f"{tok_s * flops / 1e12:.1f}",
             f"{peak / 1e12:.1f}", f"{100 * tok_s * flops / peak:.1f}%"]]
    note = (f"Device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}; {args.dtype}; "
            f"FSDP2 under torchrun, 1 process; {args.steps} timed steps after {args.warmup}; data prepared in "
            f"{prep_s:.0f} s ({args.workers} workers).")
    return note + "\n\n" + table(["size", "parameters", "batch", "tokens/s", "model TFLOP/s",
                                  f"{args.dtype} matmul peak TFLOP/s", "MFU"], rows)


# ----------------------------------------------------------------------------- main

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="mode")
    cpu = sub.add_parser("cpu", help="1 vs 2 processes, DDP vs FSDP2; loss memory (default)")
    cpu.add_argument("--warmup", type=int, default=5, help="untimed steps at the start of each run")
    cpu.add_argument("--steps", type=int, default=20, help="timed steps per run (a multiple of 5)")
    cpu.add_argument("--rounds", type=int, default=2, help="times each configuration runs, in turn")
    cpu.add_argument("--mem-batch", type=int, default=8)
    cpu.add_argument("--mem-seq-len", type=int, default=256)
    cpu.add_argument("--mem-d-model", type=int, default=256)
    cpu.add_argument("--skip-throughput", action="store_true", help="only the loss-memory table")
    g = sub.add_parser("gpu", help="a ~1B model in bf16 on one GPU through torchrun and FSDP2")
    g.add_argument("--size", choices=sorted(SIZES), default="1b")
    g.add_argument("--device", default="cuda")
    g.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    g.add_argument("--warmup", type=int, default=10)
    g.add_argument("--steps", type=int, default=20)
    g.add_argument("--workers", type=int, default=8, help="processes for `remask prepare`")
    g.add_argument("--timeout", type=float, default=240.0, help="seconds the training run may take")
    mw = sub.add_parser("memory-worker")  # one measurement, in a fresh process
    mw.add_argument("--objective", choices=["mdm", "sft"], required=True)
    mw.add_argument("--head", choices=sorted(HEADS), required=True)
    mw.add_argument("--batch", type=int, required=True)
    mw.add_argument("--seq-len", type=int, required=True)
    mw.add_argument("--d-model", type=int, required=True)
    mw.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    for p in (cpu, g):
        p.add_argument("--work-dir", type=Path, default=None, help="keep runs here (default: a temp dir, removed)")
        p.add_argument("--results", type=Path, default=RESULTS_DIR / ("scaling.md" if p is cpu else "gpu_scaling.md"),
                       help="Markdown results file to write ('-': do not write)")
    args, extra = ap.parse_known_args(sys.argv[1:] if len(sys.argv) > 1 else ["cpu"])
    if args.mode == "memory-worker":
        return memory_worker(args)
    t0 = time.perf_counter()
    with work_dir(args.work_dir, "remask-scaling-") as work:
        if args.mode == "gpu":
            body = f"## One {args.device} device, size {args.size}\n\n" + gpu(args, extra, work)
        else:
            load = os.getloadavg()
            body = ""
            if not args.skip_throughput:
                body += "## Tokens/s, 1 vs 2 processes (CPU)\n\n" + throughput(args, extra, work) + "\n\n"
            body += "## Peak memory of the loss\n\n" + loss_memory(args)
            body += f"\n\nLoad average when the run began: {load[0]:.2f} (1 min), {load[1]:.2f} (5 min)."
    publish(f"# Scaling\n\n{body}\n\n{provenance(time.perf_counter() - t0)}", args.results)


if __name__ == "__main__":
    main()
