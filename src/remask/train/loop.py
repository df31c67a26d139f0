"""The one training loop: LLaDA pre-training, the AR baseline and SFT, on CPU, GPU or torchrun.

Single process:   remask train --data corpus/ --out runs/x
Several GPUs:     torchrun --nproc_per_node 8 -m remask train --data corpus/ --out runs/x
Sharded (FSDP2):  torchrun --nproc_per_node 8 -m remask train --train.parallel fsdp ...
Several nodes:    torchrun --nnodes 4 --nproc_per_node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 -m remask train ...
CPU, 2 processes: torchrun --nproc_per_node 2 -m remask train --train.device cpu ...

The global batch (``--batch-size`` sequences) is split over processes, then micro-batches.
Each sample's data and masking noise are keyed by (seed, step, global index), and the loss is
divided by the global batch size, so the gradient does not depend on how the batch is split.

A step whose loss or gradient norm is not finite on any process is skipped on all of them and
logged; ``nan_patience`` of them in a row send the run back to its last checkpoint with the
learning rate cut by ``nan_lr_factor`` (``_skip``).
"""

from __future__ import annotations

import json
import math
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from remask.checkpoint import Checkpoint, guard_run_dir, load_checkpoint
from remask.config import RunConfig
from remask.data.batch import Batch
from remask.data.tokenizer import load_tokenizer
from remask.devices import autocast_dtype, autocast_to, flush_denormals
from remask.errors import RemaskError
from remask.model import Transformer, build_model
from remask.objectives import OBJECTIVES, stratify_t
from remask.rng import NOISE, STEP, keyed_generator, keyed_uniform
from remask.train import best as best_mod
from remask.train import distributed, keep, sharded
from remask.train.batches import BatchSource, TokenWindows
from remask.train.keep import SaveClock
from remask.train.optim import build_optimizer, lr_at
from remask.train.rundir import find_data_dir, record_data_dir, truncate_metrics
from remask.train.samples import final_samples

EVAL_SEED = 20250214  # validation noise never changes, so val numbers compare across runs
VAL_EPS = 1e-3  # validation bounds with LLaDA's eps whatever train.mask_eps is, so runs compare
# TrainConfig fields a resumed run takes from the command line rather than from its checkpoint.
RESUME_MAY_CHANGE = ("max_steps", "time_budget", "progress", "parallel", "activation_checkpointing", "compile",
                     "nan_patience", "nan_lr_factor", "keep", "ckpt_minutes", "sharded_ckpt",
                     "early_stop_patience")
MAX_RELOADS = 8  # NaN-guard reloads per run before giving up: by then the LR is 1/256 (factor 0.5) of the plan


@dataclass
class TrainResult:
    step: int
    tokens_per_s: float
    val_loss: float
    val_bpb: float | None
    elapsed: float
    checkpoint: Path
    samples: list[str] = field(default_factory=list)
    interrupted: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"step": self.step, "tokens_per_s": round(self.tokens_per_s, 1), "val_loss": self.val_loss,
                "val_bpb": self.val_bpb, "elapsed_s": round(self.elapsed, 2), "checkpoint": str(self.checkpoint),
                "samples": self.samples, "interrupted": self.interrupted}


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: list[tuple[Batch, np.ndarray]], cfg: RunConfig,
             info: distributed.DistInfo, amp: torch.dtype | None = None) -> float:
    """Mean per-token loss over fixed validation batches (the ELBO bound, eq. 3, for mdm and sft, with
    LLaDA's eps and weight whatever the training's; exact NLL for ar), with fixed masking noise:
    ``eval_mc`` draws per window. amp: the training's autocast dtype (None: float32)."""
    t = cfg.train
    loss_fn = OBJECTIVES[t.objective]
    draws = 1 if t.objective == "ar" else t.eval_mc
    was_training = model.training
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=info.device)  # (sum of losses, count)
    mine = batches[info.rank :: info.world_size]
    # Under FSDP every forward gathers weights from every process, so all run as many forwards;
    # a process short of batches repeats one with weight 0.
    rounds = -(-len(batches) // info.world_size) if info.sharded else len(mine)
    for k in range(rounds):
        batch, idx = mine[k] if k < len(mine) else batches[0]
        weight = float(k < len(mine))
        batch = batch.to(info.device)
        for d in range(draws):
            noise = keyed_uniform(EVAL_SEED, d, idx, 1 + batch.tokens.shape[1]).to(info.device)
            with autocast_to(info.device, amp):
                contrib = loss_fn(model, batch, noise, mask_id=cfg.model.mask_token_id, eps=VAL_EPS)
            total += weight * torch.stack([contrib.double().sum(), torch.tensor(float(len(idx)), device=info.device)])
    distributed.all_reduce_sum(total, info)
    model.train(was_training)
    return (total[0] / total[1].clamp_min(1)).item()


def _resolve_data(data: Any, tok: Any, out_dir: Path, info: distributed.DistInfo,
                  progress: bool = False) -> tuple[str, Any]:
    """(prepared data directory, the tokenizer that produced its ids); rank 0 prepares, the rest
    wait. A directory prepared earlier brings its own tokenizer; raw text is tokenised with ``tok``."""
    from remask.data.prepare import is_prepared, resolve_data

    if isinstance(data, (str, Path)) and is_prepared(data):
        return str(data), load_tokenizer(Path(data) / "tokenizer")
    box = [str(resolve_data(data, out_dir / "data", tok, progress=progress)) if info.is_main else None]
    if info.enabled:
        torch.distributed.broadcast_object_list(box, src=0)
    return box[0], tok


def _build(cfg: RunConfig, tok: Any, info: distributed.DistInfo) -> tuple[Transformer, RunConfig]:
    """A fresh model whose vocabulary and special ids come from the tokenizer."""
    model_cfg = replace(cfg.model, vocab_size=tok.vocab_size, mask_token_id=tok.mask_id, eos_token_id=tok.eos_id,
                        causal=cfg.model.causal or cfg.train.objective == "ar")
    torch.manual_seed(cfg.train.seed)
    return build_model(model_cfg, info.device, seed=cfg.train.seed), RunConfig(model=model_cfg, train=cfg.train)


def _from_checkpoint(init_from: str | Path, cfg: RunConfig, tokenizer: Any,
                     info: distributed.DistInfo) -> tuple[Transformer, RunConfig, Any]:
    """A checkpoint's weights and model config, trained with ``cfg.train`` (SFT, continued pre-training)."""
    # float32 master weights whatever the checkpoint stores (LLaDA-8B ships bf16, where AdamW's small
    # updates would round away); autocast (train.dtype) decides the compute precision
    ck = load_checkpoint(init_from, info.device, dtype=torch.float32)
    model, tok = ck.model, ck.tokenizer
    # An AR checkpoint continued as a diffusion model (Dream, DiffuLLaMA) drops its causal mask; the
    # reverse turns one causal. The weights are the same either way: only attention's pattern differs.
    model.cfg = replace(model.cfg, causal=cfg.train.objective == "ar")
    cfg = RunConfig(model=model.cfg, train=cfg.train)
    if tokenizer is not None:  # e.g. the base tokenizer with a chat template added for SFT
        tok = load_tokenizer(tokenizer)
        m = ck.config.model
        if (tok.vocab_size, tok.mask_id, tok.eos_id) != (m.vocab_size, m.mask_token_id, m.eos_token_id):
            raise RemaskError(f"the tokenizer given does not match checkpoint '{init_from}' (vocabulary or "
                              "mask/EOS ids differ); drop the tokenizer to use the checkpoint's own")
    return model, cfg, tok


def _restore(cfg: RunConfig, out_dir: Path, info: distributed.DistInfo, *, data: Any, tokenizer: Any,
             source: BatchSource | None, init_from: str | Path | None,
             resume: bool) -> tuple[Transformer, RunConfig, Any, str | None, Checkpoint | None]:
    """(model, config, tokenizer, prepared data directory, the checkpoint resumed from): the run's
    own on resume, a checkpoint's weights with ``init_from``, else a fresh model for the data's tokenizer."""
    model, ck, data_dir = None, None, None
    if resume:
        ck = load_checkpoint(out_dir, info.device, with_optimizer=True, dtype=torch.float32)
        # The run's own config wins, except for the bounds the user may extend on resume and how it
        # runs (checkpoints hold full state, so DDP and FSDP resume each other's runs).
        train_cfg = replace(ck.config.train, **{k: getattr(cfg.train, k) for k in RESUME_MAY_CHANGE})
        model, cfg, tok = ck.model, RunConfig(model=ck.config.model, train=train_cfg), ck.tokenizer
        data_dir = find_data_dir(ck.train_state.get("data_dir"), out_dir)
    elif init_from is not None:
        model, cfg, tok = _from_checkpoint(init_from, cfg, tokenizer, info)
    else:
        tok = None if source is None and tokenizer is None else load_tokenizer(tokenizer)
    if source is None and data_dir is None:
        data_dir, data_tok = _resolve_data(data, tok if tok is not None else load_tokenizer(None), out_dir, info,
                                           progress=cfg.train.progress)
        if tok is not None and data_tok.digest() != tok.digest():
            whose = f"--tokenizer {tokenizer}" if init_from is None else f"checkpoint '{init_from}'s tokenizer"
            raise RemaskError(f"--data {data} was prepared with a different tokenizer than {whose}; pass raw text "
                              "so it is re-tokenised, or re-run `remask prepare` with that tokenizer")
        tok = data_tok
    if model is None:
        model, cfg = _build(cfg, tok, info)
    return model, cfg, tok, data_dir, ck


@dataclass
class LoopState:
    """The loop's counters, saved in train_state.json so a resumed run continues them exactly."""
    step: int = 0
    elapsed: float = 0.0  # seconds spent in optimizer steps (evaluation and checkpoints excluded)
    tokens_seen: int = 0
    last_val: float = math.nan  # validation loss of the latest evaluation
    lr_scale: float = 1.0  # the NaN guard's cut to the scheduled learning rate (nan_lr_factor per reload)
    nan_streak: int = 0  # steps skipped in a row for a non-finite loss or gradient norm
    reloads: int = 0  # times the NaN guard went back to the last checkpoint
    best: best_mod.Best = field(default_factory=best_mod.Best)  # early stopping: best validation, patience count

    @classmethod
    def from_train_state(cls, saved: dict[str, Any]) -> LoopState:
        return cls(step=int(saved.get("step", 0)), elapsed=float(saved.get("elapsed", 0.0)),
                   tokens_seen=int(saved.get("tokens_seen", 0)), last_val=float(saved.get("val_loss", math.nan)),
                   lr_scale=float(saved.get("lr_scale", 1.0)), nan_streak=int(saved.get("nan_streak", 0)),
                   reloads=int(saved.get("reloads", 0)), best=best_mod.Best.from_train_state(saved))

    def train_state(self) -> dict[str, Any]:
        return {"step": self.step, "elapsed": self.elapsed, "tokens_seen": self.tokens_seen, "val_loss": self.last_val,
                "lr_scale": self.lr_scale, "nan_streak": self.nan_streak, "reloads": self.reloads, **self.best.train_state()}


@dataclass
class _Throughput:
    """Tokens per second over the steps since the last logged one."""
    t0: float = field(default_factory=time.perf_counter)
    tokens: int = 0
    tok_s: float = 0.0  # at the last logged step

    def measure(self) -> float:
        self.tok_s = self.tokens / max(1e-9, time.perf_counter() - self.t0)
        return self.tok_s

    def restart(self) -> None:
        self.t0, self.tokens = time.perf_counter(), 0


@dataclass
class _Step:
    """What one optimizer step reports, the same on every process."""
    lr: float
    loss: float  # mean per-sample loss over the global batch (NaN or inf when skipped for it)
    grad_norm: float  # before clipping
    skipped: str | None  # why the update was skipped, or None


@dataclass
class _Run:
    """What stays fixed while the loop runs, and the run directory's outputs: metrics and checkpoint."""
    cfg: RunConfig
    info: distributed.DistInfo
    out_dir: Path
    model: Transformer  # unwrapped (sharded in place under FSDP): the optimizer, clipping and evaluation use it
    ddp_model: torch.nn.Module  # what training steps call: DDP under torchrun, else ``model``
    optimizer: torch.optim.Optimizer
    tok: Any
    source: BatchSource
    val_batches: list[tuple[Batch, np.ndarray]]
    data_dir: str | None  # as train_state.json records it (see rundir.record_data_dir)
    amp: torch.dtype | None  # autocast dtype of every forward pass (None: float32), resolved once
    saved_step: int | None = None  # step of the checkpoint this run last wrote or resumed from
    clock: SaveClock = field(default_factory=SaveClock)

    @property
    def metrics_path(self) -> Path:
        return self.out_dir / "metrics.jsonl"

    def log(self, record: dict[str, Any]) -> None:
        if self.info.is_main:
            with self.metrics_path.open("a") as f:
                f.write(json.dumps(record) + "\n")

    def validate(self, s: LoopState) -> float:
        loss = evaluate(self.model, self.val_batches, self.cfg, self.info, self.amp)
        self.log({"step": s.step, "val_loss": loss, "val_bpb": _bpb(loss, self.source)})
        return loss

    def checkpoint(self, s: LoopState) -> Path:
        """Save the run's state now, where ``train.keep`` says (``keep.save``)."""
        ck = keep.save(self, s.step, {**s.train_state(), "data_dir": self.data_dir, "objective": self.cfg.train.objective,
                                      "world_size": self.info.world_size})
        self.saved_step = s.step
        self.clock.reset()
        return ck


def _make_run(cfg: RunConfig, model: Transformer, tok: Any, out_dir: Path, info: distributed.DistInfo, *,
              source: BatchSource | None, data_dir: str | None, ck: Checkpoint | None) -> _Run:
    """Check batch and sequence sizes, then set up the batch source, parallel wrapper and optimizer."""
    t = cfg.train
    if t.batch_size % info.world_size:
        raise RemaskError(f"--batch-size {t.batch_size} must be a multiple of the {info.world_size} processes")
    if t.seq_len > cfg.model.max_seq_len:
        raise RemaskError(f"--seq-len {t.seq_len} exceeds --model.max_seq_len {cfg.model.max_seq_len}; raise the latter")
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    if source is None:
        source = TokenWindows(data_dir, t.seq_len, t.seed)
    model.train()
    amp = autocast_dtype(t.dtype, info.device, cpu_bf16=True)  # training: bf16 on a CPU with native bf16 matmuls
    ddp_model = distributed.parallelize(model, info, compile=t.compile, checkpoint_blocks=t.activation_checkpointing,
                                        param_dtype=amp, compile_len=_compile_len(t))
    optimizer = build_optimizer(model, t)
    if ck is not None:
        sharded.restore(model, optimizer, ck, info, weights=False)
    val_batches = source.val_batches(t.micro_batch_size, t.eval_batches)
    return _Run(cfg, info, out_dir, model, ddp_model, optimizer, tok, source, val_batches,
                record_data_dir(data_dir, out_dir), amp,
                saved_step=None if ck is None else int(ck.train_state.get("step", 0)))


def _compile_len(t: Any) -> int | None:
    """The sequence length the model sees in training (AR: inputs drop the last token); None for SFT,
    whose padded batch lengths vary."""
    return None if t.objective == "sft" else t.seq_len - (t.objective == "ar")


def train(cfg: RunConfig, out_dir: str | Path, *, data: str | Path | list | None = None,
          tokenizer: Any = None, source: BatchSource | None = None, init_from: str | Path | None = None,
          resume: bool = False, overwrite: bool = False,
          callback: Callable[[int, float], None] | None = None) -> TrainResult:
    """Train and checkpoint into ``out_dir``; return the final metrics.

    data: raw text files / directories / .jsonl, or a prepared directory; None is the built-in
    corpus. tokenizer: "bytes" (default), a tokenizer directory / tokenizer.json, or an object.
    source: a ready BatchSource (SFT passes its own); init_from: start from a checkpoint's
    weights; resume: continue ``out_dir``'s checkpoint exactly; overwrite: start afresh even where
    ``out_dir`` already holds a checkpoint (refused otherwise). callback(step, loss) runs after
    every optimizer step (loss is NaN where not logged); raising KeyboardInterrupt there (or
    Ctrl-C) saves and stops.
    """
    out_dir = Path(out_dir)
    guard_run_dir(out_dir, resume=resume, overwrite=overwrite)
    info = distributed.setup(cfg.train.device, parallel=cfg.train.parallel)
    model, cfg, tok, data_dir, ck = _restore(cfg, out_dir, info, data=data, tokenizer=tokenizer, source=source,
                                             init_from=init_from, resume=resume)
    run = _make_run(cfg, model, tok, out_dir, info, source=source, data_dir=data_dir, ck=ck)
    s = LoopState.from_train_state(ck.train_state if ck is not None else {})
    start, t = s.step, cfg.train
    _announce(run, s)
    bar = tqdm(total=t.max_steps, initial=start, disable=not (t.progress and info.is_main), unit="step",
               dynamic_ncols=True, desc=t.objective)

    meter, interrupted = _Throughput(), False
    with flush_denormals(info.device):
        try:
            while (s.step < t.max_steps and (t.time_budget is None or s.elapsed < t.time_budget)
                   and not s.best.exhausted(t.early_stop_patience)):
                st = _optimizer_step(run, s, meter)
                loss_val = math.nan
                if st.skipped is not None:
                    if _skip(run, s, st):  # went back to the last checkpoint
                        bar.n = s.step
                        bar.refresh()
                        continue
                elif s.step % t.log_interval == 0 or s.step == t.max_steps:
                    loss_val = _log_step(run, s, meter, st, bar)
                bar.update(1)
                if callback is not None:
                    callback(s.step, loss_val)
                _evaluate_and_checkpoint(run, s, meter)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            bar.close()
    return _finish(run, s, start=start, interrupted=interrupted, tok_s=meter.tok_s)


def _announce(run: _Run, s: LoopState) -> None:
    """On rank 0: drop metrics a crash left past the checkpoint, warn of a spent time budget, and
    describe the run (with the progress bar on)."""
    t, info, m = run.cfg.train, run.info, run.cfg.model
    if not info.is_main:
        return
    truncate_metrics(run.metrics_path, s.step)
    best_mod.drop_stale(run.out_dir, s.best)
    if t.time_budget is not None and s.elapsed >= t.time_budget and s.step < t.max_steps:
        warnings.warn(f"the run's time budget of {t.time_budget:g} s is spent ({s.elapsed:.0f} s trained), so no "
                      "step is taken; raise it with --time-budget SECONDS or lift it with --time-budget none",
                      stacklevel=3)
    if t.progress:
        how = f", {t.parallel}" if info.enabled or info.sharded else ""
        print(f"remask {t.objective}: {run.model.num_params() / 1e6:.2f}M parameters (d_model {m.d_model}, "
              f"{m.n_layer} layers, {'causal' if m.causal else 'bidirectional'}), {info.world_size} process(es) on "
              f"{info.device}{how}, batch {t.batch_size} x {t.seq_len} tokens; run directory {run.out_dir}",
              file=sys.stderr)


def _accumulate(run: _Run, s: LoopState) -> tuple[torch.Tensor, int]:
    """Forward and backward over this process's share of step ``s.step``'s global batch, in
    micro-batches. Returns (this process's summed per-sample losses, tokens in the global batch)."""
    t, info = run.cfg.train, run.info
    # LLaDA: in a small fraction of batches, cut every sequence to one random length.
    cut_rng = keyed_generator(t.seed, s.step, 0, STEP)
    length = t.seq_len
    if t.objective == "mdm" and cut_rng.random() < t.random_length_prob:
        length = int(cut_rng.integers(1, t.seq_len + 1))
    per_rank = t.batch_size // info.world_size
    mine = np.arange(s.step * t.batch_size, (s.step + 1) * t.batch_size)[info.rank * per_rank:(info.rank + 1) * per_rank]
    micro = [mine[i:i + t.micro_batch_size] for i in range(0, per_rank, t.micro_batch_size)]
    loss_fn = OBJECTIVES[t.objective]
    step_loss = torch.zeros((), device=info.device)
    n_tok = 0
    for j, idx in enumerate(micro):
        batch = run.source.train_batch(s.step, idx).truncate(length).to(info.device)
        n_tok += batch.tokens.numel() * info.world_size  # SFT batches can be shorter than seq_len
        noise = keyed_uniform(t.seed, s.step, idx, 1 + batch.tokens.shape[1], NOISE)
        noise = stratify_t(noise, idx - s.step * t.batch_size, t.batch_size, seed=t.seed, step=s.step,
                           kind=t.t_sampling).to(info.device)
        sync = j == len(micro) - 1  # DDP all-reduces gradients on the last micro-batch only
        with distributed.sync_gradients(run.ddp_model, sync), autocast_to(info.device, run.amp):
            contrib = loss_fn(run.ddp_model, batch, noise, mask_id=run.cfg.model.mask_token_id, eps=t.mask_eps,
                              weight=t.loss_weight)
            # Sum / GLOBAL batch; DDP and FSDP average over processes, hence the world_size factor.
            loss = contrib.sum() * (info.world_size / t.batch_size)
        loss.backward()
        step_loss += contrib.detach().sum()
    return step_loss, n_tok


def _optimizer_step(run: _Run, s: LoopState, meter: _Throughput) -> _Step:
    """One optimizer step on the global batch of step ``s.step``; advances ``s``. A non-finite loss or
    gradient norm on any process skips the update on all of them (the flags are all-reduced)."""
    t, info = run.cfg.train, run.info
    t0 = time.perf_counter()
    lr = lr_at(s.step, t, s.elapsed) * s.lr_scale
    for g in run.optimizer.param_groups:
        g["lr"] = lr
    step_loss, n_tok = _accumulate(run, s)
    norm = distributed.grad_norm(run.model, t.grad_clip)  # global: the same on every process
    # (summed losses, processes whose loss is not finite, processes whose gradient norm is not finite)
    stats = torch.stack([step_loss, (~step_loss.isfinite()).float(), (~norm.isfinite()).float()])
    loss_sum, bad_loss, bad_norm = distributed.all_reduce_sum(stats, info).tolist()  # one host sync per step
    skipped = "non-finite loss" if bad_loss else "non-finite gradient norm" if bad_norm else None
    if skipped is None:
        run.optimizer.step()
        s.nan_streak = 0
    run.optimizer.zero_grad(set_to_none=True)
    s.step += 1
    s.tokens_seen += n_tok
    meter.tokens += n_tok
    s.elapsed += time.perf_counter() - t0
    return _Step(lr, loss_sum / t.batch_size, norm.item(), skipped)


def _log_step(run: _Run, s: LoopState, meter: _Throughput, st: _Step, bar: tqdm) -> float:
    """Log the mean loss of the step just taken (over all processes) with lr, gradient norm and
    throughput; return it."""
    tok_s = meter.measure()
    run.log({"step": s.step, "loss": st.loss, "lr": st.lr, "grad_norm": st.grad_norm, "tokens_per_s": tok_s,
             "elapsed": s.elapsed, "tokens": s.tokens_seen})
    bar.set_postfix(loss=f"{st.loss:.4f}", tok_s=f"{tok_s:,.0f}", refresh=False)
    meter.restart()
    return st.loss


def _skip(run: _Run, s: LoopState, st: _Step) -> bool:
    """Record a step skipped by the NaN guard; after ``nan_patience`` in a row, go back to the last
    checkpoint with the learning rate cut by ``nan_lr_factor`` (LLaDA's own remedy when its run hit
    a NaN). Returns whether it went back."""
    t = run.cfg.train
    s.nan_streak += 1
    run.log({"step": s.step, "skipped": st.skipped, "nan_streak": s.nan_streak, "lr": st.lr,
             "grad_norm": st.grad_norm if math.isfinite(st.grad_norm) else str(st.grad_norm)})
    if s.nan_streak < t.nan_patience:
        return False
    if run.saved_step is None:
        raise RemaskError(f"{s.nan_streak} steps in a row had a {st.skipped} (last: step {s.step}) before any "
                          f"checkpoint to go back to; lower --train.lr (now {t.lr}) or --train.ckpt_interval")
    if s.reloads >= MAX_RELOADS:
        raise RemaskError(f"{st.skipped} again after {s.reloads} reloads of the last checkpoint (learning rate now "
                          f"x{s.lr_scale:g}); check the data, or lower --train.lr and resume")
    ck = load_checkpoint(run.out_dir, run.info.device, with_optimizer=True)  # the newest complete one
    sharded.restore(run.model, run.optimizer, ck, run.info, weights=True)
    back = LoopState.from_train_state(ck.train_state)
    failed_at = s.step
    s.step, s.tokens_seen, s.nan_streak = back.step, back.tokens_seen, 0  # elapsed time is not given back
    s.lr_scale *= t.nan_lr_factor
    s.reloads += 1
    run.log({"step": s.step, "reload": True, "failed_at": failed_at, "lr_scale": s.lr_scale, "reloads": s.reloads})
    if run.info.is_main:
        warnings.warn(f"{t.nan_patience} steps in a row skipped for a {st.skipped} (to step {failed_at}); back to "
                      f"the checkpoint of step {s.step} with the learning rate x{s.lr_scale:g}", stacklevel=3)
    return True


def _evaluate_and_checkpoint(run: _Run, s: LoopState, meter: _Throughput) -> None:
    """Validation every ``eval_interval`` steps and a checkpoint every ``ckpt_interval``; those of
    the last step are _finish's."""
    t = run.cfg.train
    if t.eval_interval and s.step % t.eval_interval == 0 and s.step < t.max_steps:
        s.last_val = run.validate(s)
        best_mod.observe(run, s)
        meter.t0 = time.perf_counter()  # do not charge evaluation to throughput
    if s.step < t.max_steps and run.clock.due(s.step, t, run.info):
        run.checkpoint(s)
        meter.t0 = time.perf_counter()


def _finish(run: _Run, s: LoopState, *, start: int, interrupted: bool, tok_s: float) -> TrainResult:
    """Final validation (not for a run interrupted before its first step), checkpoint and samples."""
    if (not interrupted or s.step > start) and s.best.seen_step != s.step:  # early stop: validated just now
        s.last_val = run.validate(s)
        best_mod.observe(run, s)
    ck = run.checkpoint(s)
    # A fresh run reports its average throughput; a resumed one, that of its last logged window.
    tok_s = s.tokens_seen / s.elapsed if s.elapsed > 0 and start == 0 else tok_s
    samples = []
    if run.info.is_main and not interrupted and run.cfg.train.samples > 0:
        # Under FSDP no process holds the whole model, and compiled blocks would compile again for every
        # sampling shape: rank 0 samples from the checkpoint just saved, uncompiled.
        fresh = run.info.sharded or run.cfg.train.compile
        model = load_checkpoint(ck, run.info.device).model if fresh else run.model
        samples = final_samples(model, run.tok, run.cfg, run.cfg.train.samples)
    distributed.teardown(run.info)
    return TrainResult(s.step, tok_s, s.last_val, _bpb(s.last_val, run.source), s.elapsed, ck, samples, interrupted)


def _bpb(nats_per_token: float, source: BatchSource) -> float | None:
    """Bits per UTF-8 byte: tokenizer-independent, so models with different vocabularies compare."""
    bpt = getattr(source, "bytes_per_token", None)
    return None if not bpt or not math.isfinite(nats_per_token) else nats_per_token / math.log(2) / bpt
