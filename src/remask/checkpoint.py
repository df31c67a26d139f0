"""Checkpoints: a self-describing directory, written atomically, loaded without pickle.

    CKPT/
      model.safetensors       weights of the unwrapped model (tied LM head stored once)
      config.json             {"format": "remask-checkpoint", "version", "model": {...}, "train": {...}}
      tokenizer_config.json   the tokenizer (+ tokenizer.json for BPE / Hugging Face ones)
      train_state.json        step, elapsed time, data location, metrics of the last eval
      optimizer.safetensors   AdamW moments and Muon momenta, param groups in the metadata (training only)

A run directory holds its latest checkpoint in ``RUN/checkpoint``, or, when it keeps several
(``--train.keep K``), in ``RUN/checkpoints/step-NNNNNN`` with ``RUN/latest`` (one line, written
atomically) naming the newest complete one; every command that takes ``--ckpt`` accepts the run,
``RUN/checkpoint`` or a checkpoint directory. Each is built under a temporary name and swapped in
with ``os.replace``, so a crash mid-save never leaves a half-written checkpoint behind.

Every ``--ckpt`` also takes a LLaDA-8B directory (the Hugging Face layout: config.json with
``model_type: "llada"``, sharded safetensors with their index, tokenizer.json; ``remask.llada``),
recognised by its config.json; ``export_checkpoint`` writes any checkpoint in that layout. Weights
of either kind go onto a model built on the meta device one tensor at a time from memory-mapped
files, straight to the target device and dtype, after every shape is checked against the config:
peak host memory stays near the size of the weights themselves.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from remask import llada
from remask.config import ModelConfig, RunConfig
from remask.errors import RemaskError
from remask.fileio import default_mode
from remask.model import Transformer

FORMAT, VERSION = "remask-checkpoint", 1
WEIGHTS = "model.safetensors"
LATEST, KEPT = "latest", "checkpoints"  # RUN/latest names the newest of RUN/checkpoints/step-*
SHARDS = "shards"  # torch.distributed.checkpoint files of a sharded save, in place of the two safetensors
DEFAULT_SHARD_SIZE = 5 * 10**9  # bytes per exported shard (Hugging Face's default)
# safetensors' dtype names -> torch; checkpoints hold floating-point weights only
_DTYPES = {"F64": torch.float64, "F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


@dataclass
class Checkpoint:
    model: Transformer
    config: RunConfig
    tokenizer: Any
    path: Path
    train_state: dict[str, Any] = field(default_factory=dict)
    optimizer_state: dict[str, Any] | None = None
    kind: str = "remask"  # or "llada": the directory is in LLaDA's Hugging Face layout


def _read_meta(config_file: Path) -> dict[str, Any]:
    try:
        meta = json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, OSError, UnicodeDecodeError) as e:
        raise RemaskError(f"'{config_file}' is unreadable ({e}); re-save or re-download the checkpoint") from None
    if not isinstance(meta, dict):
        raise RemaskError(f"'{config_file}' is not a JSON object; re-save or re-download the checkpoint")
    return meta


def checkpoint_kind(directory: str | Path) -> str | None:
    """"remask" (model.safetensors + config.json), "llada" (a Hugging Face config.json of model_type
    "llada") or None. A Hugging Face config of another model type, or a LLaDA setting remask does
    not implement, is a one-line error."""
    d = Path(directory)
    if not (d / "config.json").is_file():
        return None
    try:
        meta = json.loads((d / "config.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, OSError, UnicodeDecodeError):
        meta = None  # read_config says what is wrong with it
    if isinstance(meta, dict) and llada.is_hf_config(meta):
        llada.check_supported(meta, d / "config.json")
        return "llada"
    if (d / WEIGHTS).is_file():
        return "remask"
    return "sharded" if (d / SHARDS / ".metadata").is_file() else None


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory, a run directory (its ``latest`` pointer, else its ``checkpoint/``),
    ``RUN/checkpoint`` of a run that keeps several, or a LLaDA directory."""
    p = Path(path)
    if checkpoint_kind(p) is not None:
        return p
    if (p / LATEST).is_file():
        return resolve_checkpoint(_pointed(p))
    if checkpoint_kind(p / "checkpoint") is not None:
        return p / "checkpoint"
    if p.name == "checkpoint" and not p.exists() and (p.parent / LATEST).is_file():
        return resolve_checkpoint(p.parent)
    stale = sorted(p.parent.glob(f".{p.name}.old-*")) if p.name else []
    if stale:  # a crash between the two renames of a save: the previous checkpoint survives here
        return resolve_checkpoint(stale[-1])
    if not p.exists():
        raise RemaskError(f"checkpoint '{p}' does not exist; pass the run directory written by `remask train` "
                          "or a LLaDA directory")
    raise RemaskError(f"'{p}' is not a remask checkpoint (no model.safetensors + config.json) nor a LLaDA directory "
                      "(config.json with model_type \"llada\"); pass a directory written by `remask train` or "
                      "`remask sft`, or a downloaded LLaDA-8B model")


def _pointed(run: Path) -> Path:
    """The checkpoint ``RUN/latest`` names (a path relative to the run, so runs stay movable)."""
    name = (run / LATEST).read_text(encoding="utf-8").strip()
    if not name or Path(name).is_absolute() or ".." in Path(name).parts:
        raise RemaskError(f"'{run / LATEST}' does not name a checkpoint inside the run ({name!r}); point it at "
                          f"one of '{run / KEPT}' or delete it")
    return run / name


def has_checkpoint(run: str | Path) -> bool:
    """Whether a run directory holds a checkpoint to resume (complete or in a crash's recovery name)."""
    run = Path(run)
    return (run / LATEST).is_file() or (run / "checkpoint").exists() or any(run.glob(".checkpoint.old-*"))


def read_config(path: str | Path) -> RunConfig:
    """The run config saved in a checkpoint (or run) directory, or a LLaDA directory's, without
    loading its weights."""
    ckpt = resolve_checkpoint(path)
    meta = _read_meta(ckpt / "config.json")
    if llada.is_hf_config(meta):
        return llada.run_config(meta, ckpt / "config.json")
    if meta.get("format") != FORMAT:
        raise RemaskError(f"'{ckpt / 'config.json'}' is not a remask checkpoint config (format={meta.get('format')!r})")
    return RunConfig.from_dict({k: meta[k] for k in ("model", "train") if k in meta})


def guard_run_dir(out_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """Nothing is lost: a new run may not replace the checkpoint a directory already holds."""
    if not resume and not overwrite and has_checkpoint(out_dir):
        raise RemaskError(f"'{out_dir}' already holds a checkpoint; pass --resume to continue it, --overwrite "
                          "to replace it, or --out to start elsewhere")


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def save_checkpoint(directory: str | Path, model: nn.Module, config: RunConfig, tokenizer: Any, *,
                    optimizer: torch.optim.Optimizer | None = None,
                    train_state: dict[str, Any] | None = None) -> Path:
    """Write a checkpoint directory atomically (build under a temp name, then rename)."""
    final = Path(directory)
    tmp = temp_dir(final)
    state = {k: v.detach().contiguous() for k, v in unwrap(model).state_dict().items()}
    if config.model.tie_embeddings:
        state.pop("lm_head.weight", None)  # same storage as embed.weight; safetensors stores it once
    save_file(state, str(tmp / WEIGHTS), metadata={"format": FORMAT})
    if optimizer is not None:
        tensors, groups = _flatten_optimizer(optimizer.state_dict())
        save_file(tensors, str(tmp / "optimizer.safetensors"), metadata={"param_groups": json.dumps(groups)})
    return finish_checkpoint(tmp, final, config, tokenizer, train_state)


def finish_checkpoint(tmp: Path, final: Path, config: RunConfig, tokenizer: Any,
                      train_state: dict[str, Any] | None) -> Path:
    """Add config, tokenizer and train state to ``tmp`` (its weights written), then swap it in as ``final``."""
    _write_json(tmp / "config.json", {"format": FORMAT, "version": VERSION, **config.to_dict()})
    tokenizer.save(tmp)
    if train_state is not None:
        _write_json(tmp / "train_state.json", {**train_state, "saved_at": time.time()})
    return _swap_in(tmp, final)


def temp_dir(final: Path) -> Path:
    """An empty directory beside ``final`` to build it in."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def _swap_in(tmp: Path, final: Path) -> Path:
    """Rename the finished ``tmp`` to ``final``, replacing what was there only once it is complete."""
    for f in tmp.rglob("*"):  # safetensors writes 0600; a checkpoint is meant to be shared
        if f.is_file():
            f.chmod(default_mode())
    old = final.parent / f".{final.name}.old-{os.getpid()}"
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu", *, with_optimizer: bool = False,
                    dtype: torch.dtype | str | None = None) -> Checkpoint:
    """Load weights (memory-mapped, straight onto ``device``), config, tokenizer and train state of a
    remask checkpoint (or run) directory or a LLaDA directory.

    dtype: the weights' dtype. None: as stored on an accelerator (bf16 for the published LLaDA
    checkpoints), float32 on the CPU (where bf16 matmuls are slow); "stored": as stored everywhere;
    or a torch dtype (or its name, e.g. "bfloat16").
    """
    from remask.data.tokenizer import load_tokenizer  # the data package is optional for pure model use

    ckpt = resolve_checkpoint(path)
    kind = checkpoint_kind(ckpt)
    config = read_config(ckpt)
    tok = load_tokenizer(ckpt)
    if kind == "llada":  # before the weights: a mismatch should not wait for 16 GB to load
        _check_tokenizer(tok, config.model, ckpt)
    with torch.device("meta"):
        model = Transformer(config.model)
    if kind == "sharded":
        _load_shards(model, ckpt, torch.device(device), dtype)
    else:
        sources = llada.weight_files(ckpt, config.model) if kind == "llada" else _remask_sources(ckpt, model)
        load_weights(model, sources, torch.device(device), dtype)
    model.eval()

    train_state = json.loads((ckpt / "train_state.json").read_text()) if (ckpt / "train_state.json").is_file() else {}
    opt_state = None
    if with_optimizer and (ckpt / "optimizer.safetensors").is_file():
        opt_state = _unflatten_optimizer(ckpt / "optimizer.safetensors", device)
    return Checkpoint(model, config, tok, ckpt, train_state, opt_state, kind)


def load_model(path: str | Path, device: str | torch.device = "cpu", *,
               dtype: torch.dtype | str | None = None) -> tuple[Transformer, Any]:
    """(model in eval mode, tokenizer) from a checkpoint, run or LLaDA directory."""
    ck = load_checkpoint(path, device, dtype=dtype)
    return ck.model, ck.tokenizer


def export_checkpoint(path: str | Path, out: str | Path, *, shard_size: int = DEFAULT_SHARD_SIZE,
                      dtype: torch.dtype | None = None, overwrite: bool = False) -> Path:
    """Write any checkpoint (remask's, bidirectional or AR, or a LLaDA directory) to ``out`` in
    LLaDA's Hugging Face layout (``remask.llada.write_llada``), atomically: built under a temporary
    name, then renamed. dtype None keeps the stored weights bit for bit."""
    if shard_size <= 0:
        raise RemaskError(f"--shard-size must be positive, got {shard_size} bytes")
    ck = load_checkpoint(path, "cpu", dtype="stored")  # memory-mapped: each shard is read as it is written
    final = Path(out)
    src = ck.path.resolve()
    if final.resolve() in (src, *src.parents):
        raise RemaskError(f"--out '{final}' would replace the checkpoint being exported; choose another directory")
    if final.exists() and not (final.is_dir() and overwrite):
        raise RemaskError(f"--out '{final}' already exists; pass --overwrite to replace it, or choose another directory")
    tmp = temp_dir(final)
    try:
        llada.write_llada(ck.model, ck.tokenizer, tmp, shard_size=shard_size, dtype=dtype)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _swap_in(tmp, final)


# ----------------------------------------------------------------------------- weights

@contextlib.contextmanager
def _open(file: Path) -> Iterator[Any]:
    """safe_open (a memory map of ``file``), its failures as one-line errors."""
    try:
        with safe_open(str(file), framework="pt", device="cpu") as f:
            yield f
    except (SafetensorError, OSError) as e:
        raise RemaskError(f"'{file}' is unreadable ({type(e).__name__}: {e}); re-save or re-download it") from None


def _load_shards(model: Transformer, ckpt: Path, device: torch.device, dtype: torch.dtype | str | None) -> None:
    """Fill ``model`` (on the meta device) with the whole weights of a sharded save, in this process
    alone (``remask.train.sharded`` writes them; its optimizer state loads through that module)."""
    import torch.distributed.checkpoint as dcp

    model.to_empty(device="cpu")
    model.tie_weights()
    state = model.state_dict()
    try:
        with warnings.catch_warnings():  # DCP warns that it loads in one process: that is the intent
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load({"model": state}, checkpoint_id=str(ckpt / SHARDS), no_dist=True)
    except Exception as e:  # DCP raises its own CheckpointException for unreadable or mismatching files
        raise RemaskError(f"the shards in '{ckpt / SHARDS}' are unreadable or do not match config.json "
                          f"({type(e).__name__}); re-save the checkpoint") from None
    model.to(device=device, dtype=_target_dtype(torch.float32, device, dtype))


def _remask_sources(ckpt: Path, model: Transformer) -> dict[str, tuple[Path, str]]:
    """Every parameter from model.safetensors under its own name; extra or missing tensors are errors."""
    with _open(ckpt / WEIGHTS) as f:
        keys = set(f.keys())
    params = [name for name, _ in model.named_parameters()]  # a tied LM head is listed once, as embed.weight
    missing = [k for k in params if k not in keys]
    unexpected = sorted(keys - set(params) - ({"lm_head.weight"} if model.cfg.tie_embeddings else set()))
    if missing or unexpected:
        raise RemaskError(f"checkpoint '{ckpt}' does not match its config.json "
                          f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return {k: (ckpt / WEIGHTS, k) for k in params}


def _target_dtype(stored: torch.dtype, device: torch.device, dtype: torch.dtype | str | None) -> torch.dtype:
    if dtype is None:
        return stored if device.type != "cpu" else torch.float32
    if dtype == "stored":
        return stored
    if isinstance(dtype, str):
        named = getattr(torch, dtype, None)
        if not isinstance(named, torch.dtype) or not named.is_floating_point:
            raise RemaskError(f"dtype {dtype!r} is not a floating-point torch dtype; use stored, float32 or bfloat16")
        return named
    return dtype


def _check_headers(params: dict[str, torch.Tensor], sources: dict[str, tuple[Path, str]]) -> dict[str, torch.dtype]:
    """Each source tensor's stored dtype, after checking from the file headers alone (no weight is
    read) that it exists and has its parameter's shape."""
    by_file: dict[Path, list[str]] = {}
    for name, (file, _) in sources.items():
        by_file.setdefault(file, []).append(name)
    stored = {}
    for file, names in by_file.items():
        with _open(file) as f:
            keys = set(f.keys())
            for name in names:
                key = sources[name][1]
                if key not in keys:
                    raise RemaskError(f"'{file}' has no tensor {key}, which its index or config.json promises; "
                                      "re-save or re-download the checkpoint")
                header = f.get_slice(key)
                shape, want = tuple(header.get_shape()), tuple(params[name].shape)
                if shape != want:
                    raise RemaskError(f"tensor {key} in '{file}' has shape {shape} but config.json implies {want}; "
                                      "the weights and config.json disagree (re-save the checkpoint or fix config.json)")
                if header.get_dtype() not in _DTYPES:
                    raise RemaskError(f"tensor {key} in '{file}' has dtype {header.get_dtype()}; remask loads "
                                      f"floating-point weights ({', '.join(_DTYPES)})")
                stored[name] = _DTYPES[header.get_dtype()]
    return stored


def load_weights(model: Transformer, sources: dict[str, tuple[Path, str]], device: torch.device,
                 dtype: torch.dtype | str | None = None) -> None:
    """Fill ``model`` (built on the meta device) from safetensors files, one tensor at a time.

    sources: parameter name -> (file, tensor name in it). A tensor whose target (``load_checkpoint``'s
    ``dtype`` rule) is its stored dtype on the CPU stays a view of the memory-mapped file: nothing is
    copied, pages are read on first use, and a write (training) copies only the pages it touches,
    never the file. Any other tensor is read through a mapping of its own, moved and converted, and
    that mapping is dropped at once, so at most one tensor's file pages sit beside the result.
    """
    params = dict(model.named_parameters())
    stored = _check_headers(params, sources)
    target = {name: _target_dtype(stored[name], device, dtype) for name in sources}
    views = [n for n in sources if device.type == "cpu" and target[n] == stored[n]]
    state: dict[str, torch.Tensor] = {}
    for file in dict.fromkeys(sources[n][0] for n in views):  # one mapping per file for all its views
        with _open(file) as f:
            state.update({n: f.get_tensor(sources[n][1]) for n in views if sources[n][0] == file})
    for name in [n for n in sources if n not in set(views)]:
        file, key = sources[name]
        with _open(file) as f:
            t = f.get_tensor(key)
        state[name] = t.to(device).to(target[name])  # move first: a dtype change then runs on the device
        del t  # the last reference to this tensor's mapping: its pages leave the process
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in missing if not (model.cfg.tie_embeddings and k == "lm_head.weight")]
    if missing or unexpected:  # a bug, not a user's mistake: the sources list every parameter once
        raise RuntimeError(f"load_weights: sources left {missing[:3]} unfilled, gave unknown {unexpected[:3]}")
    model.tie_weights()


def _check_tokenizer(tok: Any, cfg: ModelConfig, where: Path) -> None:
    """A LLaDA directory's tokenizer files must be the model's own."""
    if (tok.mask_id, tok.eos_id) != (cfg.mask_token_id, cfg.eos_token_id):
        raise RemaskError(f"the tokenizer in '{where}' has mask id {tok.mask_id} and EOS id {tok.eos_id}, but its "
                          f"config.json says mask_token_id {cfg.mask_token_id} and eos_token_id {cfg.eos_token_id}; "
                          "the tokenizer files belong to another model")
    if tok.vocab_size > cfg.vocab_size:
        raise RemaskError(f"the tokenizer in '{where}' has {tok.vocab_size} ids but the model's embedding only "
                          f"{cfg.vocab_size} rows; the tokenizer files belong to another model")


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
