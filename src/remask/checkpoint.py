"""Checkpoints: a self-describing directory, written atomically, loaded without pickle.

    CKPT/
      model.safetensors       weights of the unwrapped model (tied LM head stored once)
      config.json             {"format": "remask-checkpoint", "version", "model": {...}, "train": {...}}
      tokenizer_config.json   the tokenizer (+ tokenizer.json for BPE / Hugging Face ones)
      train_state.json        step, elapsed time, data location, metrics of the last eval
      optimizer.safetensors   AdamW moments, param groups in the metadata (training only)

A run directory holds its latest checkpoint in ``RUN/checkpoint``; every command that takes
``--ckpt`` accepts either. The directory is built under a temporary name and swapped in with
``os.replace``, so a crash mid-save never leaves a half-written checkpoint behind.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from remask.config import RunConfig
from remask.errors import RemaskError
from remask.fileio import default_mode
from remask.model import Transformer

FORMAT, VERSION = "remask-checkpoint", 1


@dataclass
class Checkpoint:
    model: Transformer
    config: RunConfig
    tokenizer: Any
    path: Path
    train_state: dict[str, Any] = field(default_factory=dict)
    optimizer_state: dict[str, Any] | None = None


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory, or a run directory whose ``checkpoint/`` is one."""
    p = Path(path)
    for cand in (p, p / "checkpoint"):
        if (cand / "model.safetensors").is_file() and (cand / "config.json").is_file():
            return cand
    stale = sorted(p.parent.glob(f".{p.name}.old-*")) if p.name else []
    if stale:  # a crash between the two renames of a save: the previous checkpoint survives here
        return resolve_checkpoint(stale[-1])
    if not p.exists():
        raise RemaskError(f"checkpoint '{p}' does not exist; pass the run directory written by `remask train`")
    raise RemaskError(f"'{p}' is not a remask checkpoint (no model.safetensors + config.json); "
                      "pass a directory written by `remask train` or `remask sft`")


def read_config(path: str | Path) -> RunConfig:
    """The run config saved in a checkpoint (or run) directory, without loading its weights."""
    ckpt = resolve_checkpoint(path)
    try:
        meta = json.loads((ckpt / "config.json").read_text())
    except (json.JSONDecodeError, OSError) as e:
        raise RemaskError(f"checkpoint '{ckpt}' has an unreadable config.json ({e}); re-save or re-train it") from None
    if meta.get("format") != FORMAT:
        raise RemaskError(f"'{ckpt / 'config.json'}' is not a remask checkpoint config (format={meta.get('format')!r})")
    return RunConfig.from_dict({k: meta[k] for k in ("model", "train") if k in meta})


def guard_run_dir(out_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """Nothing is lost: a new run may not replace the checkpoint a directory already holds."""
    if not resume and not overwrite and (Path(out_dir) / "checkpoint").exists():
        raise RemaskError(f"'{out_dir}' already holds a checkpoint; pass --resume to continue it, --overwrite "
                          "to replace it, or --out to start elsewhere")


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def save_checkpoint(directory: str | Path, model: nn.Module, config: RunConfig, tokenizer: Any, *,
                    optimizer: torch.optim.Optimizer | None = None,
                    train_state: dict[str, Any] | None = None) -> Path:
    """Write a checkpoint directory atomically (build under a temp name, then rename)."""
    final = Path(directory)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()

    state = {k: v.detach().contiguous() for k, v in unwrap(model).state_dict().items()}
    if config.model.tie_embeddings:
        state.pop("lm_head.weight", None)  # same storage as embed.weight; safetensors stores it once
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": FORMAT})
    _write_json(tmp / "config.json", {"format": FORMAT, "version": VERSION, **config.to_dict()})
    tokenizer.save(tmp)
    if train_state is not None:
        _write_json(tmp / "train_state.json", {**train_state, "saved_at": time.time()})
    if optimizer is not None:
        tensors, groups = _flatten_optimizer(optimizer.state_dict())
        save_file(tensors, str(tmp / "optimizer.safetensors"), metadata={"param_groups": json.dumps(groups)})

    for f in tmp.iterdir():  # safetensors writes 0600; a checkpoint is meant to be shared
        f.chmod(default_mode())
    old = final.parent / f".{final.name}.old-{os.getpid()}"
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu", *, with_optimizer: bool = False) -> Checkpoint:
    """Load weights (memory-mapped, straight onto ``device``), config, tokenizer and train state."""
    from remask.data.tokenizer import load_tokenizer  # the data package is optional for pure model use

    ckpt = resolve_checkpoint(path)
    config = read_config(ckpt)
    try:
        state = load_file(str(ckpt / "model.safetensors"), device=str(device))
    except (SafetensorError, OSError, KeyError, TypeError) as e:
        raise RemaskError(f"checkpoint '{ckpt}' is unreadable ({type(e).__name__}: {e}); re-save or re-train it") from None

    with torch.device("meta"):
        model = Transformer(config.model)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in missing if not (config.model.tie_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise RemaskError(f"checkpoint '{ckpt}' does not match its config.json "
                          f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.tie_weights()
    model.eval()

    train_state = json.loads((ckpt / "train_state.json").read_text()) if (ckpt / "train_state.json").is_file() else {}
    opt_state = None
    if with_optimizer and (ckpt / "optimizer.safetensors").is_file():
        opt_state = _unflatten_optimizer(ckpt / "optimizer.safetensors", device)
    return Checkpoint(model, config, load_tokenizer(ckpt), ckpt, train_state, opt_state)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[Transformer, Any]:
    """(model in eval mode, tokenizer) from a checkpoint or run directory."""
    ck = load_checkpoint(path, device)
    return ck.model, ck.tokenizer


def unwrap(model: nn.Module) -> nn.Module:
    """The plain Transformer under DDP / torch.compile wrappers."""
    while True:
        if hasattr(model, "module"):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def _flatten_optimizer(sd: dict[str, Any]) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    tensors = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            tensors[f"{idx}.{k}"] = (v if torch.is_tensor(v) else torch.tensor(v)).detach().contiguous()
    return tensors, sd["param_groups"]


def _unflatten_optimizer(path: Path, device: str | torch.device) -> dict[str, Any]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device=str(device)) as f:
        groups = json.loads(f.metadata()["param_groups"])
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key in f.keys():  # noqa: SIM118 (safe_open is not a dict)
            idx, name = key.split(".", 1)
            t = f.get_tensor(key)
            state.setdefault(int(idx), {})[name] = t.cpu() if name == "step" else t
    return {"state": state, "param_groups": groups}
