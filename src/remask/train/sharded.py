"""Sharded checkpoints under FSDP2 (``--train.sharded_ckpt``): each process writes its own shards
of the weights and optimizer moments with ``torch.distributed.checkpoint`` (DCP), so no process
ever holds the whole state, and none waits for rank 0 to gather it.

    CKPT/
      shards/            DCP files: .metadata and one __R_0.distcp per process
      config.json, tokenizer files, train_state.json   as in a single-file checkpoint

The save is as atomic as any other: every process writes into the same temporary directory, and
rank 0 adds the JSON files and renames it into place once all shards are written. Every command
loads the weights of such a checkpoint (``remask.checkpoint``); a resumed run (on any number of
processes, sharded or not) reads the optimizer moments from the shards here, and ``consolidate``
turns one into a single-file checkpoint.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from remask.checkpoint import (
    SHARDS,
    Checkpoint,
    finish_checkpoint,
    load_checkpoint,
    save_checkpoint,
    temp_dir,
)
from remask.config import RunConfig
from remask.errors import RemaskError
from remask.train import distributed
from remask.train.optim import build_optimizer


def write_shards(model: torch.nn.Module, optimizer: torch.optim.Optimizer, final: Path,
                 info: distributed.DistInfo) -> Path | None:
    """Every process writes its shards into one temporary directory beside ``final``; rank 0 gets
    that directory back (for ``finish_checkpoint``), the others None."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    box = [str(temp_dir(final)) if info.is_main else None]
    if dist.is_initialized():
        dist.broadcast_object_list(box, src=0)
    tmp = Path(box[0])
    state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, optimizer)}
    dcp.save(state, checkpoint_id=str(tmp / SHARDS), no_dist=not dist.is_initialized())
    return tmp if info.is_main else None


def finish(tmp: Path, config: RunConfig, tokenizer: Any, train_state: dict[str, Any]) -> Callable[[Path], Path]:
    """The save ``keep.save_kept`` runs on rank 0: complete ``tmp`` and rename it to the directory given."""
    return lambda final: finish_checkpoint(tmp, final, config, tokenizer, train_state)


def load_optimizer(model: torch.nn.Module, optimizer: torch.optim.Optimizer, ckpt: Path) -> None:
    """The optimizer moments of a sharded checkpoint into ``optimizer`` (sharded or not; every
    process calls this when there are several)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    state = get_optimizer_state_dict(model, optimizer)  # a template: every moment allocated, in place
    try:
        with warnings.catch_warnings():  # in one process DCP warns that it loads in one process: the intent
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load({"optim": state}, checkpoint_id=str(ckpt / SHARDS), no_dist=not dist.is_initialized())
    except Exception as e:  # DCP's CheckpointException wraps each process's failure
        raise RemaskError(f"the optimizer state in '{ckpt / SHARDS}' is unreadable or does not match the run "
                          f"({type(e).__name__}); re-save the checkpoint") from None
    set_optimizer_state_dict(model, optimizer, state)


def restore(model: torch.nn.Module, optimizer: torch.optim.Optimizer, ck: Checkpoint, info: distributed.DistInfo, *,
            weights: bool) -> None:
    """Put a checkpoint's state (``weights``: its weights too) into the run's model and optimizer,
    whichever kind it is."""
    distributed.load_full_state(model, optimizer, ck.model.state_dict() if weights else None, ck.optimizer_state, info)
    if ck.kind == "sharded":
        load_optimizer(model, optimizer, ck.path)


def consolidate(path: str | Path, out: str | Path | None = None) -> Path:
    """Write a sharded checkpoint (or a run's newest, when that is sharded) as a single-file one,
    weights and optimizer state, to ``out`` (default: in its place, swapped in atomically)."""
    ck = load_checkpoint(path, "cpu", dtype="stored")
    if ck.kind != "sharded":
        raise RemaskError(f"'{ck.path}' is already a single-file checkpoint ({ck.kind}); nothing to consolidate")
    optimizer = build_optimizer(ck.model, ck.config.train)
    load_optimizer(ck.model, optimizer, ck.path)
    return save_checkpoint(out if out is not None else ck.path, ck.model, ck.config, ck.tokenizer,
                           optimizer=optimizer, train_state=ck.train_state)
