"""Early stopping on validation, and RUN/best: the checkpoint of the best validation so far.

With ``train.early_stop_patience`` N > 0, every validation is compared with the best one so far
(lower is better: the MDM's ELBO bound or the AR's NLL, nats per token). A new best is saved as a
full checkpoint in ``RUN/best/`` (weights, config, tokenizer, optimizer, train_state; written under
a temporary name and renamed into place, so a kill leaves the previous best whole). After N
validations in a row without a new best the loop stops. ``--ckpt RUN/best`` loads it anywhere a
checkpoint is accepted.

The best figure, its step and the count of validations since it are part of train_state.json, so a
resumed run continues the count exactly. A run killed after a new best but before its next regular
checkpoint resumes from an older state; it retrains the same steps, reaches the same validation
figure, and writes RUN/best again.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from remask.checkpoint import save_checkpoint
from remask.train import distributed

BEST = "best"  # RUN/best/


@dataclass
class Best:
    """The best validation loss so far, the step it was measured at, and the validations since."""
    val: float = math.inf
    step: int | None = None
    stale: int = 0  # validations in a row without improving on ``val``
    seen_step: int | None = None  # the step of the latest validation observed (the final one is not repeated)

    @classmethod
    def from_train_state(cls, saved: dict[str, Any]) -> Best:
        step, seen = saved.get("best_step"), saved.get("best_seen_step")
        return cls(val=float(saved.get("best_val", math.inf)), step=None if step is None else int(step),
                   stale=int(saved.get("best_stale", 0)), seen_step=None if seen is None else int(seen))

    def train_state(self) -> dict[str, Any]:
        return {"best_val": self.val, "best_step": self.step, "best_stale": self.stale, "best_seen_step": self.seen_step}

    def update(self, val: float, step: int) -> bool:
        """Record a validation; True when it is a new best. A non-finite figure never is."""
        self.seen_step = step
        if math.isfinite(val) and val < self.val:
            self.val, self.step, self.stale = val, step, 0
            return True
        self.stale += 1
        return False

    def exhausted(self, patience: int) -> bool:
        """Whether early stopping ends the run (never when ``patience`` is 0)."""
        return patience > 0 and self.stale >= patience


def best_dir(out_dir: str | Path) -> Path:
    return Path(out_dir) / BEST


def drop_stale(out_dir: Path, best: Best) -> None:
    """At the start of a run whose state records no best yet (a fresh or ``--overwrite`` run), remove
    a RUN/best that an earlier run left, so it is never taken for this run's. Rank 0 only."""
    if best.step is None:
        shutil.rmtree(best_dir(out_dir), ignore_errors=True)


def observe(run: Any, s: Any) -> None:
    """After a validation of the loop (``loop._Run``, ``loop.LoopState``): update ``s.best`` and, with
    early stopping on, save a new best to RUN/best. Every process calls this (gathering is collective)."""
    t = run.cfg.train
    if not s.best.update(s.last_val, s.step) or t.early_stop_patience == 0:
        return
    full = distributed.gathered(run.model, run.optimizer, run.info)
    if run.info.is_main and full is not None:
        state = {**s.train_state(), "data_dir": run.data_dir, "objective": t.objective,
                 "world_size": run.info.world_size}
        save_checkpoint(best_dir(run.out_dir), full[0], run.cfg, run.tok, optimizer=full[1], train_state=state)
    distributed.barrier(run.info)
    run.log({"step": s.step, "best_val": s.best.val})
