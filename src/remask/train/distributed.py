"""Process groups, device choice, and parallelism applied to the model from outside.

One entry point serves one CPU, one GPU and ``torchrun --nproc_per_node N`` on many: the
environment torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK) is detected here; gloo runs on CPU
(so the distributed path is tested without GPUs), NCCL on CUDA.

``parallelize`` turns the plain Transformer into what training steps call, in this order:
activation checkpointing and ``torch.compile`` per block, then either DDP (a full replica per
process) or FSDP2 (``fully_shard`` per block, then the root: each process keeps 1/N of every
parameter, gradient and optimizer moment, and gathers a block's weights just before using it).
The model's code knows nothing of any of it.

Checkpoints stay single files whatever the parallelism: ``gathered`` hands ``save_checkpoint``
the model and optimizer as one process would hold them, and ``load_full_state`` puts such a
state back into a (possibly sharded) model and optimizer, so a run can resume on any number of
processes under either scheme.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.checkpoint import checkpoint

from remask.devices import pick_device
from remask.model import Transformer


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    sharded: bool = False  # FSDP2: parameters are DTensor shards; collectives run inside forward

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup(device: str = "auto", *, flag: str = "--device", parallel: str = "ddp") -> DistInfo:
    """Join the process group if launched by torchrun; otherwise a world of one. ``flag`` names the
    device setting in errors. FSDP joins a group even of one process (``torchrun --nproc_per_node 1``),
    so one GPU runs the very code path of many (sharding, mixed-precision policy, gathered saves)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local, flag=flag)
    join = world > 1 or (parallel == "fsdp" and "WORLD_SIZE" in os.environ)
    if join and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank, world, local, dev, sharded=parallel == "fsdp" and dist.is_initialized())


def wrap(model: nn.Module, info: DistInfo) -> nn.Module:
    """DistributedDataParallel when there are several processes; the model itself otherwise."""
    if not info.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[info.device.index] if info.device.type == "cuda" else None)


def parallelize(model: Transformer, info: DistInfo, *, compile: bool = False, checkpoint_blocks: bool = False,
                param_dtype: torch.dtype | None = None, compile_len: int | None = None) -> nn.Module:
    """What training steps call: ``model`` with per-block activation checkpointing and compilation,
    wrapped in DDP, or sharded in place by FSDP2 (then the returned module is ``model`` itself).

    param_dtype: FSDP2 compute dtype (bf16 on GPU); master weights, gradient reduction and the
    optimizer stay float32. None computes in float32. compile_len: compile for sequences of this
    length only (see ``_compiled``); None compiles for every length, with dynamic shapes.
    """
    if compile and info.device.type == "cpu" and not _cxx_compiler():
        warnings.warn("train.compile: no C++ compiler (c++, g++ or clang++, or $CXX) was found, which torch.compile "
                      "needs on the CPU; training uncompiled", stacklevel=2)
        compile = False
    for block in model.blocks:
        # The block's forward is replaced in place, so the state dict keeps its names (a wrapper module
        # would add one) and FSDP's hooks, run around forward, stay outside the compiled code.
        forward = block.forward
        if compile:
            forward = _compiled(forward, compile_len)
        if checkpoint_blocks:  # keep only the block's input; recompute the rest in the backward pass
            forward = functools.partial(checkpoint, forward, use_reentrant=False)
        block.forward = forward
    if not info.sharded:
        return wrap(model, info)
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for block in model.blocks:
        fully_shard(block, mp_policy=mp)
    # The root holds the embedding, final norm and LM head; the backward pass starts with the head,
    # so resharding the root after forward would only gather it again at once.
    fully_shard(model, mp_policy=mp, reshard_after_forward=False)
    return model


def _compiled(forward: Any, length: int | None) -> Any:
    """``torch.compile(forward)``, static for sequences of ``length`` tokens, eager for any other length.

    LLaDA cuts 1% of batches to a random length. Compiled for all lengths, the first such batch
    recompiled the block with dynamic shapes and every later step ran the slower dynamic kernels
    (default run, 2 CPU cores: 25k tokens/s before the first cut, 13-17k after). The rare other
    lengths cost little eagerly.
    """
    if length is None:
        return torch.compile(forward)
    static = torch.compile(forward, dynamic=False)

    @functools.wraps(forward)
    def call(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return (static if x.shape[1] == length else forward)(x, *args, **kwargs)  # x: (B, L, d_model)

    return call


def _cxx_compiler() -> str | None:
    """The C++ compiler Inductor would build CPU kernels with, if any."""
    names = [os.environ.get("CXX", ""), "c++", "g++", "clang++"]
    return next((found for name in names if name and (found := shutil.which(name))), None)


def sync_gradients(model: nn.Module, sync: bool) -> contextlib.AbstractContextManager:
    """Gradient accumulation: DDP all-reduces on the last micro-batch only (``sync``). FSDP2
    reduce-scatters every micro-batch: holding full gradients in between would cost the memory
    that sharding saves."""
    if not sync and hasattr(model, "no_sync"):
        return model.no_sync()
    return contextlib.nullcontext()


def grad_norm(model: nn.Module, max_norm: float) -> torch.Tensor:
    """The global gradient norm (every process, every shard), a float32 scalar that is the same
    on every process; gradients are clipped to ``max_norm`` when it is > 0."""
    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
    full = getattr(norm, "full_tensor", None)  # a DTensor under FSDP2
    return (full() if callable(full) else norm).float()


def gathered(model: Transformer, optimizer: torch.optim.Optimizer,
             info: DistInfo) -> tuple[Transformer, torch.optim.Optimizer] | None:
    """The model and optimizer as one process would hold them, for ``save_checkpoint``: themselves
    unless sharded. Under FSDP2 every process must call this (it gathers); rank 0 gets full copies
    on its CPU, the others None."""
    if not info.sharded:
        return model, optimizer
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_state = get_model_state_dict(model, options=options)
    opt_state = get_optimizer_state_dict(model, optimizer, options=options)  # keyed by parameter name
    if not info.is_main:
        return None
    with torch.device("meta"):
        plain = Transformer(model.cfg)
    plain.load_state_dict(model_state, assign=True)
    plain.tie_weights()
    groups = [{**g, "params": [plain.get_parameter(name) for name in g["params"]]} for g in opt_state["param_groups"]]
    plain_opt = type(optimizer)(groups)
    names = [name for g in opt_state["param_groups"] for name in g["params"]]
    plain_opt.load_state_dict(_by_index(opt_state, names))
    return plain, plain_opt


def load_full_state(model: Transformer, optimizer: torch.optim.Optimizer, model_state: dict[str, Any] | None,
                    opt_state: dict[str, Any] | None, info: DistInfo) -> None:
    """Load a single-process state (``Transformer.state_dict()``, ``optimizer.state_dict()``) into a
    model and optimizer, sharded or not; each FSDP2 process keeps its own shard of it."""
    if not info.sharded:
        if model_state is not None:
            model.load_state_dict(model_state)
        if opt_state is not None:
            optimizer.load_state_dict(opt_state)
        return
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True)
    if model_state is not None:
        set_model_state_dict(model, model_state, options=options)
    if opt_state is not None:
        name_of = {id(p): name for name, p in model.named_parameters()}
        names = [name_of[id(p)] for g in optimizer.param_groups for p in g["params"]]
        set_optimizer_state_dict(model, optimizer, _by_name(opt_state, names), options=options)


def _by_index(state: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """An optimizer state dict keyed by parameter name -> keyed by position (``names[i]`` is i)."""
    index = {name: i for i, name in enumerate(names)}
    return {"state": {index[n]: v for n, v in state["state"].items()},
            "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in state["param_groups"]]}


def _by_name(state: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """The inverse of ``_by_index``."""
    return {"state": {names[int(i)]: v for i, v in state["state"].items()},
            "param_groups": [{**g, "params": [names[int(i)] for i in g["params"]]} for g in state["param_groups"]]}


def all_reduce_sum(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def broadcast_from_main(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Rank 0's ``x`` on every rank: a decision taken from a clock the ranks do not share."""
    if info.enabled:
        dist.broadcast(x, src=0)
    return x


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def teardown(info: DistInfo) -> None:
    if (info.enabled or info.sharded) and dist.is_initialized():
        dist.destroy_process_group()
