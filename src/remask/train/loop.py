"""The one training loop: LLaDA pre-training, the AR baseline and SFT, on CPU, GPU or torchrun.

Single process:   remask train --data corpus/ --out runs/x
Several GPUs:     torchrun --nproc_per_node 8 -m remask train --data corpus/ --out runs/x
CPU, 2 processes: torchrun --nproc_per_node 2 -m remask train --train.device cpu ...

The global batch (``--batch-size`` sequences) is split over processes, then micro-batches.
Each sample's data and masking noise are keyed by (seed, step, global index), and the loss is
divided by the global batch size, so the gradient does not depend on how the batch is split.
"""

from __future__ import annotations

import contextlib
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

from remask.checkpoint import Checkpoint, guard_run_dir, load_checkpoint, save_checkpoint
from remask.config import RunConfig
from remask.data.batch import Batch
from remask.data.tokenizer import load_tokenizer
from remask.devices import autocast
from remask.errors import RemaskError
from remask.fileio import write_text_atomic
from remask.model import Transformer, build_model
from remask.objectives import OBJECTIVES
from remask.rng import NOISE, STEP, keyed_generator, keyed_uniform
from remask.sampling.config import SampleConfig
from remask.sampling.decode import decode
from remask.train import distributed
from remask.train.batches import BatchSource, TokenWindows
from remask.train.optim import build_optimizer, lr_at

EVAL_SEED = 20250214  # validation noise never changes, so val numbers compare across runs


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
             info: distributed.DistInfo) -> float:
    """Mean per-token loss over fixed validation batches (the ELBO bound for mdm and sft,
    exact NLL for ar), with fixed masking noise: ``eval_mc`` draws per window."""
    t = cfg.train
    loss_fn = OBJECTIVES[t.objective]
    draws = 1 if t.objective == "ar" else t.eval_mc
    was_training = model.training
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=info.device)  # (sum of losses, count)
    for batch, idx in batches[info.rank :: info.world_size]:
        batch = batch.to(info.device)
        for d in range(draws):
            noise = keyed_uniform(EVAL_SEED, d, idx, 1 + batch.tokens.shape[1]).to(info.device)
            with autocast(info.device, t.dtype):
                contrib = loss_fn(model, batch, noise, mask_id=cfg.model.mask_token_id, eps=t.mask_eps)
            total += torch.stack([contrib.double().sum(), torch.tensor(float(len(idx)), device=info.device)])
    distributed.all_reduce_sum(total, info)
    model.train(was_training)
    return (total[0] / total[1].clamp_min(1)).item()


def _resolve_data(data: Any, tok: Any, out_dir: Path, info: distributed.DistInfo) -> tuple[str, Any]:
    """(prepared data directory, the tokenizer that produced its ids); rank 0 prepares, the rest
    wait. A directory prepared earlier brings its own tokenizer; raw text is tokenised with ``tok``."""
    from remask.data.prepare import is_prepared, resolve_data

    if isinstance(data, (str, Path)) and is_prepared(data):
        return str(data), load_tokenizer(Path(data) / "tokenizer")
    box = [str(resolve_data(data, out_dir / "data", tok)) if info.is_main else None]
    if info.enabled:
        torch.distributed.broadcast_object_list(box, src=0)
    return box[0], tok


def _record_data_dir(data_dir: str | None, out_dir: Path) -> str | None:
    """``data_dir`` as train_state.json records it: relative to the run directory when it lies
    inside (the default ``RUN/data``), so the run can be moved and resumed from anywhere; else absolute."""
    if data_dir is None:
        return None
    path, run = Path(data_dir).resolve(), out_dir.resolve()
    return path.relative_to(run).as_posix() if path.is_relative_to(run) else str(path)


def _find_data_dir(recorded: str | None, out_dir: Path) -> str | None:
    """The prepared data a resumed run recorded. A relative path is relative to the run directory;
    runs saved before that rule recorded it relative to their working directory, so that is the fallback."""
    if recorded is None or Path(recorded).is_absolute():
        return recorded
    in_run = out_dir / recorded
    return recorded if not in_run.exists() and Path(recorded).exists() else str(in_run)


def _build(cfg: RunConfig, tok: Any, info: distributed.DistInfo) -> tuple[Transformer, RunConfig]:
    """A fresh model whose vocabulary and special ids come from the tokenizer."""
    model_cfg = replace(cfg.model, vocab_size=tok.vocab_size, mask_token_id=tok.mask_id, eos_token_id=tok.eos_id,
                        causal=cfg.model.causal or cfg.train.objective == "ar")
    torch.manual_seed(cfg.train.seed)
    return build_model(model_cfg, info.device, seed=cfg.train.seed), RunConfig(model=model_cfg, train=cfg.train)


def _from_checkpoint(init_from: str | Path, cfg: RunConfig, tokenizer: Any,
                     info: distributed.DistInfo) -> tuple[Transformer, RunConfig, Any]:
    """A checkpoint's weights and model config, trained with ``cfg.train`` (SFT, continued pre-training)."""
    ck = load_checkpoint(init_from, info.device)
    model, cfg, tok = ck.model, RunConfig(model=ck.config.model, train=cfg.train), ck.tokenizer
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
        ck = load_checkpoint(out_dir, info.device, with_optimizer=True)
        # The run's own config wins, except for the bounds the user may extend on resume.
        train_cfg = replace(ck.config.train, max_steps=cfg.train.max_steps, time_budget=cfg.train.time_budget,
                            progress=cfg.train.progress)
        model, cfg, tok = ck.model, RunConfig(model=ck.config.model, train=train_cfg), ck.tokenizer
        data_dir = _find_data_dir(ck.train_state.get("data_dir"), out_dir)
    elif init_from is not None:
        model, cfg, tok = _from_checkpoint(init_from, cfg, tokenizer, info)
    else:
        tok = None if source is None and tokenizer is None else load_tokenizer(tokenizer)
    if source is None and data_dir is None:
        data_dir, data_tok = _resolve_data(data, tok if tok is not None else load_tokenizer(None), out_dir, info)
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

    @classmethod
    def from_train_state(cls, saved: dict[str, Any]) -> LoopState:
        return cls(step=int(saved.get("step", 0)), elapsed=float(saved.get("elapsed", 0.0)),
                   tokens_seen=int(saved.get("tokens_seen", 0)), last_val=float(saved.get("val_loss", math.nan)))


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
class _Run:
    """What stays fixed while the loop runs, and the run directory's outputs: metrics and checkpoint."""
    cfg: RunConfig
    info: distributed.DistInfo
    out_dir: Path
    model: Transformer  # unwrapped: the optimizer, clipping, evaluation and checkpoints use it
    ddp_model: torch.nn.Module  # what training steps call: DDP under torchrun, else ``model``
    optimizer: torch.optim.Optimizer
    tok: Any
    source: BatchSource
    val_batches: list[tuple[Batch, np.ndarray]]
    data_dir: str | None  # as train_state.json records it (see _record_data_dir)

    @property
    def metrics_path(self) -> Path:
        return self.out_dir / "metrics.jsonl"

    def log(self, record: dict[str, Any]) -> None:
        if self.info.is_main:
            with self.metrics_path.open("a") as f:
                f.write(json.dumps(record) + "\n")

    def validate(self, s: LoopState) -> float:
        loss = evaluate(self.model, self.val_batches, self.cfg, self.info)
        self.log({"step": s.step, "val_loss": loss, "val_bpb": _bpb(loss, self.source)})
        return loss

    def checkpoint(self, s: LoopState) -> Path:
        ck = self.out_dir / "checkpoint"
        if self.info.is_main:
            save_checkpoint(ck, self.model, self.cfg, self.tok, optimizer=self.optimizer, train_state={
                "step": s.step, "elapsed": s.elapsed, "tokens_seen": s.tokens_seen, "data_dir": self.data_dir,
                "val_loss": s.last_val, "objective": self.cfg.train.objective, "world_size": self.info.world_size})
        distributed.barrier(self.info)
        return ck


def _make_run(cfg: RunConfig, model: Transformer, tok: Any, out_dir: Path, info: distributed.DistInfo, *,
              source: BatchSource | None, data_dir: str | None, opt_state: dict[str, Any] | None) -> _Run:
    """Check batch and sequence sizes, then set up the batch source, DDP wrapper and optimizer."""
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
    if t.compile:
        for block in model.blocks:
            block.compile()
    ddp_model = distributed.wrap(model, info)
    optimizer = build_optimizer(model, t)
    if opt_state is not None:
        optimizer.load_state_dict(opt_state)
    val_batches = source.val_batches(t.micro_batch_size, t.eval_batches)
    return _Run(cfg, info, out_dir, model, ddp_model, optimizer, tok, source, val_batches,
                _record_data_dir(data_dir, out_dir))


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
    every optimizer step; raising KeyboardInterrupt there (or Ctrl-C) saves and stops.
    """
    out_dir = Path(out_dir)
    guard_run_dir(out_dir, resume=resume, overwrite=overwrite)
    info = distributed.setup(cfg.train.device)
    model, cfg, tok, data_dir, ck = _restore(cfg, out_dir, info, data=data, tokenizer=tokenizer, source=source,
                                             init_from=init_from, resume=resume)
    run = _make_run(cfg, model, tok, out_dir, info, source=source, data_dir=data_dir,
                    opt_state=ck.optimizer_state if ck is not None else None)
    s = LoopState.from_train_state(ck.train_state if ck is not None else {})
    start, t = s.step, cfg.train
    if info.is_main:
        _truncate_metrics(run.metrics_path, start)
        if t.time_budget is not None and s.elapsed >= t.time_budget and s.step < t.max_steps:
            warnings.warn(f"the run's time budget of {t.time_budget:g} s is spent ({s.elapsed:.0f} s trained), so no "
                          "step is taken; raise it with --time-budget SECONDS or lift it with --time-budget none",
                          stacklevel=2)
    if t.progress and info.is_main:
        m = cfg.model
        print(f"remask {t.objective}: {model.num_params() / 1e6:.2f}M parameters (d_model {m.d_model}, {m.n_layer} "
              f"layers, {'causal' if m.causal else 'bidirectional'}), {info.world_size} process(es) on {info.device}, "
              f"batch {t.batch_size} x {t.seq_len} tokens; run directory {out_dir}", file=sys.stderr)
    bar = tqdm(total=t.max_steps, initial=start, disable=not (t.progress and info.is_main), unit="step",
               dynamic_ncols=True, desc=t.objective)

    meter, interrupted = _Throughput(), False
    try:
        while s.step < t.max_steps and (t.time_budget is None or s.elapsed < t.time_budget):
            lr, step_loss = _optimizer_step(run, s, meter)
            loss_val = math.nan
            if s.step % t.log_interval == 0 or s.step == t.max_steps:
                loss_val = _log_step(run, s, meter, step_loss, lr, bar)
            bar.update(1)
            if callback is not None:
                callback(s.step, loss_val)
            _evaluate_and_checkpoint(run, s, meter)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()
    return _finish(run, s, start=start, interrupted=interrupted, tok_s=meter.tok_s)


def _optimizer_step(run: _Run, s: LoopState, meter: _Throughput) -> tuple[float, torch.Tensor]:
    """One optimizer step on the global batch of step ``s.step``, this process's share of it in
    micro-batches; advances ``s``. Returns (learning rate, this process's summed per-sample losses)."""
    t, info = run.cfg.train, run.info
    t0 = time.perf_counter()
    lr = lr_at(s.step, t, s.elapsed)
    for g in run.optimizer.param_groups:
        g["lr"] = lr
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
        noise = keyed_uniform(t.seed, s.step, idx, 1 + batch.tokens.shape[1], NOISE).to(info.device)
        sync = j == len(micro) - 1 or not info.enabled  # DDP all-reduces gradients on the last micro-batch only
        with (contextlib.nullcontext() if sync else run.ddp_model.no_sync()), autocast(info.device, t.dtype):
            contrib = loss_fn(run.ddp_model, batch, noise, mask_id=run.cfg.model.mask_token_id, eps=t.mask_eps)
            # Sum / GLOBAL batch; DDP averages over processes, hence the world_size factor.
            loss = contrib.sum() * (info.world_size / t.batch_size)
        loss.backward()
        step_loss += contrib.detach().sum()
    if t.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), t.grad_clip)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    s.step += 1
    s.tokens_seen += n_tok
    meter.tokens += n_tok
    s.elapsed += time.perf_counter() - t0
    return lr, step_loss


def _log_step(run: _Run, s: LoopState, meter: _Throughput, step_loss: torch.Tensor, lr: float, bar: tqdm) -> float:
    """Log the mean loss of the step just taken (over all processes) with lr and throughput; return it.
    A loss that is no longer finite stops the run."""
    t = run.cfg.train
    loss_val = distributed.all_reduce_sum(step_loss, run.info).item() / t.batch_size
    tok_s = meter.measure()
    run.log({"step": s.step, "loss": loss_val, "lr": lr, "tokens_per_s": tok_s, "elapsed": s.elapsed,
             "tokens": s.tokens_seen})
    bar.set_postfix(loss=f"{loss_val:.4f}", tok_s=f"{tok_s:,.0f}", refresh=False)
    meter.restart()
    if not math.isfinite(loss_val):
        raise RemaskError(f"loss became {loss_val} at step {s.step}; lower --train.lr (now {t.lr})")
    return loss_val


def _evaluate_and_checkpoint(run: _Run, s: LoopState, meter: _Throughput) -> None:
    """Validation every ``eval_interval`` steps and a checkpoint every ``ckpt_interval``; those of
    the last step are _finish's."""
    t = run.cfg.train
    if t.eval_interval and s.step % t.eval_interval == 0 and s.step < t.max_steps:
        s.last_val = run.validate(s)
        meter.t0 = time.perf_counter()  # do not charge evaluation to throughput
    if t.ckpt_interval and s.step % t.ckpt_interval == 0 and s.step < t.max_steps:
        run.checkpoint(s)
        meter.t0 = time.perf_counter()


def _finish(run: _Run, s: LoopState, *, start: int, interrupted: bool, tok_s: float) -> TrainResult:
    """Final validation (not for a run interrupted before its first step), checkpoint and samples."""
    if not interrupted or s.step > start:
        s.last_val = run.validate(s)
    ck = run.checkpoint(s)
    # A fresh run reports its average throughput; a resumed one, that of its last logged window.
    tok_s = s.tokens_seen / s.elapsed if s.elapsed > 0 and start == 0 else tok_s
    samples = []
    if run.info.is_main and not interrupted:
        samples = final_samples(run.model, run.tok, run.cfg, run.cfg.train.samples)
    distributed.teardown(run.info)
    return TrainResult(s.step, tok_s, s.last_val, _bpb(s.last_val, run.source), s.elapsed, ck, samples, interrupted)


def _bpb(nats_per_token: float, source: BatchSource) -> float | None:
    """Bits per UTF-8 byte: tokenizer-independent, so models with different vocabularies compare."""
    bpt = getattr(source, "bytes_per_token", None)
    return None if not bpt or not math.isfinite(nats_per_token) else nats_per_token / math.log(2) / bpt


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop records a crashed run wrote after its last checkpoint, and a line a crash cut
    short (appends are not atomic), with one atomic rewrite."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except json.JSONDecodeError:
            continue
    write_text_atomic(path, "".join(k + "\n" for k in keep))


def final_samples(model: Transformer, tok: Any, cfg: RunConfig, n: int) -> list[str]:
    """A few unconditional samples (prompt: start of a document) to eyeball after training."""
    if n <= 0:
        return []
    gen_len = min(64, cfg.model.max_seq_len - 1)
    model.eval()
    # Random remasking in short blocks: a small, briefly trained MDM decoded by low confidence
    # commits its most certain guess, whitespace, everywhere first (measured: 99% spaces). An AR
    # model takes the shared settings (length, temperature, seed) of the same config.
    block = 8 if gen_len % 8 == 0 else gen_len
    sc = SampleConfig(gen_length=gen_len, block_length=block, temperature=0.8, remasking="random", seed=0)
    out = decode(model, [[tok.eos_id]] * n, sc, mask_id=tok.mask_id, eos_id=tok.eos_id, eot_id=tok.eot_id)
    return [tok.decode(row.tolist(), skip_special_tokens=True) for row in out.tokens]
