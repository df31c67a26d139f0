"""When a run saves, where, and which of its checkpoints it keeps.

    keep 1 (default)  RUN/checkpoint/ is the one checkpoint, replaced at each save
    keep K > 1        RUN/checkpoints/step-000500/ ... the newest K; RUN/latest names the newest

Every step of a save leaves the run resumable from a complete checkpoint if the process is killed
there: the checkpoint is built under a temporary name and renamed into place, then ``RUN/latest`` is
rewritten atomically, and only then are older checkpoints (and leftovers of killed saves) deleted.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from remask.checkpoint import KEPT, LATEST, save_checkpoint
from remask.config import TrainConfig
from remask.fileio import write_text_atomic
from remask.train import distributed, sharded


def target(out_dir: Path, step: int, keep: int) -> Path:
    """Where the checkpoint of ``step`` goes."""
    return out_dir / "checkpoint" if keep == 1 else out_dir / KEPT / f"step-{step:06d}"


def save(run: Any, step: int, train_state: dict[str, Any]) -> Path:
    """Save the run's state (``loop._Run``) for ``step``: every process calls this. Under FSDP with
    ``sharded_ckpt`` each writes its shards; otherwise rank 0 writes the state gathered onto it."""
    t, info = run.cfg.train, run.info
    final = target(run.out_dir, step, t.keep)
    if t.sharded_ckpt and info.sharded:
        tmp = sharded.write_shards(run.model, run.optimizer, final, info)
        write = None if tmp is None else sharded.finish(tmp, run.cfg, run.tok, train_state)
    else:
        full = distributed.gathered(run.model, run.optimizer, info)  # every process takes part
        write = None if full is None else (lambda d: save_checkpoint(d, full[0], run.cfg, run.tok, optimizer=full[1],
                                                                      train_state=train_state))
    if info.is_main and write is not None:
        save_kept(run.out_dir, final, t.keep, write)
    distributed.barrier(info)
    return final


def save_kept(out_dir: Path, final: Path, keep: int, save: Callable[[Path], object]) -> Path:
    """Run ``save(final)`` (an atomic checkpoint save), point ``RUN/latest`` at it when keeping
    several, then prune. Rank 0 only: it is the one writer of the run directory."""
    save(final)
    if keep == 1:
        (out_dir / LATEST).unlink(missing_ok=True)  # a run that kept several before now keeps one
        shutil.rmtree(out_dir / KEPT, ignore_errors=True)
    else:
        write_text_atomic(out_dir / LATEST, final.relative_to(out_dir).as_posix() + "\n")
        _prune(out_dir / KEPT, final, keep)
        shutil.rmtree(out_dir / "checkpoint", ignore_errors=True)  # a run that kept one before
    for leftover in [*out_dir.glob(".checkpoint.tmp-*"), *out_dir.glob(".checkpoint.old-*")]:
        shutil.rmtree(leftover, ignore_errors=True)  # from saves a kill interrupted
    return final


def _prune(kept: Path, newest: Path, keep: int) -> None:
    """Keep ``newest`` and the keep - 1 checkpoints of the highest steps before it. Later steps belong
    to a future this run abandoned (``--overwrite``, a NaN-guard reload) and go too."""
    def step(p: Path) -> int:
        return int(p.name.removeprefix("step-"))

    older = sorted((p for p in kept.glob("step-*") if p.name[5:].isdigit() and step(p) < step(newest)), key=step)
    later = [p for p in kept.glob("step-*") if p.name[5:].isdigit() and step(p) > step(newest)]
    for p in [*older[: max(0, len(older) - (keep - 1))], *later, *kept.glob(".step-*")]:
        shutil.rmtree(p, ignore_errors=True)  # .step-*: temporary or recovery names of finished or killed saves


@dataclass
class SaveClock:
    """Whether a step ends with a checkpoint: every ``ckpt_interval`` steps and, with ``ckpt_minutes``,
    whenever that much wall-clock time has passed since the last save. Ranks' clocks differ, so rank 0
    decides and every rank follows (the save is collective under FSDP)."""
    last: float = field(default_factory=lambda: time.monotonic())

    def due(self, step: int, t: TrainConfig, info: distributed.DistInfo) -> bool:
        if t.ckpt_interval and step % t.ckpt_interval == 0:
            return True
        if t.ckpt_minutes is None:
            return False
        late = torch.tensor([float(time.monotonic() - self.last >= 60 * t.ckpt_minutes)], device=info.device)
        return bool(distributed.broadcast_from_main(late, info).item())

    def reset(self) -> None:
        self.last = time.monotonic()
