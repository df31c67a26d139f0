"""Typed, keyword-only configs, validated on construction, plus the presets.

Every field documents itself through ``option(help, default)`` (a ``field`` with
``metadata={"help": ...}``); the CLI turns each field of these two configs into a
``--section.field VALUE`` flag and shows that help text. ``check(ok, message)`` validates a field
with a one-line ``RemaskError``. The sampling and likelihood configs use the same pair. YAML or
JSON is only used to save a run's resolved config (``config.json`` in a checkpoint) and to read
``--config``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from remask.errors import RemaskError


def option(help: str, default: Any, *, choices: tuple[str, ...] | None = None) -> Any:
    """A config field documented once: ``help`` is what ``--help`` (and a server's request schema) shows
    for it, ``choices`` the values a flag accepts where they are a fixed set (see ``describe_fields``)."""
    return field(default=default, metadata={"help": help, "choices": choices})


def check(ok: bool, message: str) -> None:
    """Config validation: raise ``RemaskError(message)`` (a one-line user error) unless ``ok``."""
    if not ok:
        raise RemaskError(message)


def default_ffn_hidden(d_model: int) -> int:
    """SwiGLU's hidden width: about 8/3 d_model (LLaMA), rounded up to a multiple of 64."""
    return 64 * -(-int(8 * d_model / 3) // 64)


@dataclass(kw_only=True)
class ModelConfig:
    """A LLaMA-style Transformer; ``causal=False`` is LLaDA's mask predictor."""

    vocab_size: int = option("number of token ids (tokenizer vocabulary, specials included)", 264)
    d_model: int = option("residual stream width", 256)
    n_layer: int = option("number of Transformer blocks", 4)
    n_head: int = option("attention heads", 4)
    n_kv_head: int | None = option("key/value heads for grouped-query attention (None: = n_head)", None)
    ffn_hidden: int | None = option("SwiGLU hidden width (None: about 8/3 d_model, rounded up to 64)", None)
    max_seq_len: int = option("longest sequence the model is used with (prompt + generation)", 256)
    rope_theta: float = option("rotary embedding base", 10000.0)
    norm_eps: float = option("RMSNorm epsilon", 1e-5)
    causal: bool = option("causal attention: True is the autoregressive baseline", False)
    tie_embeddings: bool = option("share the token embedding with the LM head", False)
    mask_token_id: int = option("id of the [MASK] token", 256)
    eos_token_id: int = option("id of end-of-text (also the padding id)", 257)
    init_std: float = option("std of the normal init of linear and embedding weights", 0.02)

    def __post_init__(self) -> None:
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.ffn_hidden is None:
            self.ffn_hidden = default_ffn_hidden(self.d_model)
        check(self.d_model % self.n_head == 0, f"model.d_model={self.d_model} must be divisible by model.n_head={self.n_head}")
        check((self.d_model // self.n_head) % 2 == 0, "model.d_model / model.n_head must be even for rotary embeddings")
        check(self.n_head % self.n_kv_head == 0, f"model.n_head={self.n_head} must be a multiple of model.n_kv_head={self.n_kv_head}")
        for name in ("vocab_size", "d_model", "n_layer", "n_head", "n_kv_head", "ffn_hidden", "max_seq_len"):
            check(getattr(self, name) > 0, f"model.{name} must be positive, got {getattr(self, name)}")
        for name in ("mask_token_id", "eos_token_id"):
            tid = getattr(self, name)
            check(0 <= tid < self.vocab_size, f"model.{name}={tid} is outside the vocabulary (size {self.vocab_size})")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head


@dataclass(kw_only=True)
class TrainConfig:
    """The training loop shared by pre-training (mdm), the AR baseline (ar) and SFT."""

    objective: Literal["mdm", "ar", "sft"] = option("mdm: LLaDA pre-training; ar: next-token; sft: LLaDA SFT", "mdm")
    seed: int = option("seed for init, data order and masking noise", 1337)
    batch_size: int = option("global batch, in sequences", 16)
    micro_batch_size: int | None = option("sequences per forward pass (None: = batch_size); accumulates the rest", None)
    seq_len: int = option("training sequence length in tokens", 128)
    max_steps: int = option("optimizer steps (also the length of the LR schedule)", 2000)
    time_budget: float | None = option("stop after this many seconds of training (None: no limit)", None)
    lr: float = option("peak learning rate", 3e-3)
    min_lr_ratio: float = option("final LR as a fraction of the peak", 0.1)
    warmup_steps: int = option("linear warmup steps", 50)
    schedule: Literal["cosine", "wsd"] = option("after warmup: cosine decay, or warmup-stable-decay", "cosine")
    decay_fraction: float = option("wsd: fraction of max_steps spent in the final linear decay", 0.2)
    lr_clock: Literal["steps", "time"] = option(
        "what the LR schedule follows after warmup: steps (reproducible), or, when a time budget is set, "
        "whichever of steps and budget runs out first (the decay completes on a slow machine too)", "steps")
    optimizer: Literal["adamw", "muon"] = option(
        "adamw, or muon: Muon (orthogonalised momentum, torch.optim.Muon) for the blocks' weight matrices and "
        "AdamW for the embedding, output head and norms, at the same LR (Muon's updates scaled to AdamW's RMS)",
        "adamw")
    muon_momentum: float = option("Muon's (Nesterov) momentum", 0.95)
    weight_decay: float = option("decoupled weight decay on matrices (not on norms or embeddings)", 0.1)
    beta1: float = option("AdamW beta1", 0.9)
    beta2: float = option("AdamW beta2", 0.95)
    grad_clip: float = option("clip the global gradient norm to this (0: off)", 1.0)
    mask_eps: float = option("LLaDA eps: masking probability p = (1 - eps) t + eps (validation always uses 1e-3)",
                             1e-3)
    t_sampling: Literal["iid", "stratified", "antithetic"] = option(
        "how t is drawn across the global batch: iid (LLaDA), stratified (one per 1/B stratum, MDLM's "
        "low-discrepancy sampler) or antithetic (pairs t, 1 - t); same expected loss, lower variance",
        "iid")
    loss_weight: Literal["elbo", "flat"] = option(
        "weight of a masked token's cross-entropy: elbo (1/p, LLaDA eq. 3, an upper bound on the NLL) or flat "
        "(1: not a bound; validation still reports the ELBO)", "elbo")
    random_length_prob: float = option("fraction of batches cut to a random length in 1..seq_len", 0.01)
    eval_interval: int = option("validate every this many steps (0: only at the end)", 200)
    early_stop_patience: int = option(
        "stop after this many validations in a row without a new best, keeping the best in RUN/best (0: off)", 0)
    eval_batches: int = option("validation batches (fixed windows and fixed noise)", 8)
    eval_mc: int = option("mask draws per validation window for the ELBO", 2)
    log_interval: int = option("append metrics every this many steps", 10)
    ckpt_interval: int = option("checkpoint every this many steps (0: only at the end)", 500)
    ckpt_minutes: float | None = option("also checkpoint when this many minutes passed since the last save", None)
    sharded_ckpt: bool = option("under FSDP each process saves its shards (`remask checkpoint consolidate` joins them)",
                                False)
    keep: int = option("checkpoints kept: 1 is RUN/checkpoint; K > 1 keeps RUN/checkpoints/step-* and RUN/latest", 1)
    device: str = option("cpu, cuda, cuda:N or auto (auto: CUDA when visible, else the CPU)", "auto")
    dtype: Literal["auto", "float32", "bfloat16"] = option(
        "autocast dtype over float32 master weights (auto: bf16 on CUDA and on CPUs with native bf16 matmuls, "
        "AMX or AVX512-BF16; float32 elsewhere)", "auto")
    compile: bool = option("torch.compile each block", False)
    parallel: Literal["ddp", "fsdp"] = option(
        "under torchrun: ddp (a full replica per process) or fsdp (FSDP2: parameters, gradients and optimizer "
        "state sharded per block; compute in train.dtype, bf16 on GPU by default, over fp32 master weights)", "ddp")
    activation_checkpointing: bool = option(
        "recompute each block's activations in the backward pass: less memory for about a third more compute", False)
    nan_patience: int = option(
        "steps with a non-finite loss or gradient norm are skipped; after this many in a row the run reloads "
        "its last checkpoint with a lower learning rate", 3)
    nan_lr_factor: float = option("multiply the learning rate by this at each such reload", 0.5)
    progress: bool = option("show a progress bar", True)
    samples: int = option("samples printed (and saved) at the end of training", 3)

    def __post_init__(self) -> None:
        if self.micro_batch_size is None:
            self.micro_batch_size = self.batch_size
        for name in ("batch_size", "micro_batch_size", "seq_len", "max_steps", "eval_batches", "eval_mc", "log_interval"):
            check(getattr(self, name) > 0, f"train.{name} must be positive, got {getattr(self, name)}")
        check(self.batch_size % self.micro_batch_size == 0,
              f"train.batch_size={self.batch_size} must be a multiple of train.micro_batch_size={self.micro_batch_size}")
        check(self.lr > 0, f"train.lr must be positive, got {self.lr}")
        check(0 < self.mask_eps < 1, f"train.mask_eps must be in (0, 1), got {self.mask_eps}")
        check(0 <= self.random_length_prob <= 1, "train.random_length_prob must be in [0, 1]")
        check(0 <= self.min_lr_ratio <= 1, "train.min_lr_ratio must be in [0, 1]")
        check(0 < self.decay_fraction <= 1, "train.decay_fraction must be in (0, 1]")
        check(self.warmup_steps >= 0 and self.eval_interval >= 0 and self.ckpt_interval >= 0,
              "train.warmup_steps, train.eval_interval and train.ckpt_interval must be >= 0")
        check(self.early_stop_patience >= 0, f"train.early_stop_patience must be >= 0, got {self.early_stop_patience}")
        check(self.keep >= 1, f"train.keep must be >= 1, got {self.keep}")
        check(self.ckpt_minutes is None or self.ckpt_minutes > 0, "train.ckpt_minutes must be positive minutes")
        check(self.time_budget is None or self.time_budget > 0, "train.time_budget must be positive seconds")
        check(self.objective in ("mdm", "ar", "sft"), f"train.objective must be mdm, ar or sft, got {self.objective!r}")
        check(self.parallel in ("ddp", "fsdp"), f"train.parallel must be ddp or fsdp, got {self.parallel!r}")
        check(self.optimizer in ("adamw", "muon"), f"train.optimizer must be adamw or muon, got {self.optimizer!r}")
        check(0 <= self.muon_momentum < 1, f"train.muon_momentum must be in [0, 1), got {self.muon_momentum}")
        check(not (self.optimizer == "muon" and self.parallel == "fsdp"),
              "train.optimizer=muon orthogonalises whole matrices, which FSDP shards; use train.parallel=ddp or adamw")
        check(self.t_sampling in ("iid", "stratified", "antithetic"),
              f"train.t_sampling must be iid, stratified or antithetic, got {self.t_sampling!r}")
        check(self.loss_weight in ("elbo", "flat"), f"train.loss_weight must be elbo or flat, got {self.loss_weight!r}")
        check(self.nan_patience >= 1, f"train.nan_patience must be >= 1, got {self.nan_patience}")
        check(0 < self.nan_lr_factor < 1, f"train.nan_lr_factor must be in (0, 1), got {self.nan_lr_factor}")


@dataclass(kw_only=True)
class RunConfig:
    """Everything a run needs; this is what ``config.json`` in a checkpoint holds."""

    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        return cls(model=build(ModelConfig, d.get("model", {}), "model"), train=build(TrainConfig, d.get("train", {}), "train"))


# ----------------------------------------------------------------------------- presets
# Presets are plain functions so they can compute fields; the CLI names them with --preset.

def preset_tiny() -> RunConfig:
    """A model that trains in seconds: for tests and smoke runs."""
    return RunConfig(
        model=ModelConfig(d_model=64, n_layer=2, n_head=4, max_seq_len=64),
        # float32 on every machine: the same numbers on CPUs with and without native bf16
        train=TrainConfig(batch_size=8, seq_len=32, max_steps=20, warmup_steps=2, eval_interval=0,
                          eval_batches=2, ckpt_interval=0, log_interval=5, samples=1, dtype="float32"),
    )


def preset_small() -> RunConfig:
    """The default run: 0.92M parameters, at most ~5 minutes on a 2-core CPU (LR follows the budget).

    The recipe is benchmarks/recipe.py's (BENCHMARKS.md, "Training recipe"): bf16 autocast where the
    CPU multiplies bf16 natively (``dtype`` auto) and compiled blocks, which together train 1.6x the
    tokens per second, stratified t, and Muon for the blocks' matrices. LLaDA's objective is
    unchanged. d_model 128 trains 1.4x the tokens per second of d_model 192 and ends lower. Muon
    costs a third of the tokens per second at this size (its Newton-Schulz iterations on 28 small
    matrices per step) and still ends far lower: 2000 steps reach 1.826 nats/byte where AdamW's
    3500 reached 1.940 in more time (BENCHMARKS.md, "Default run"). 2000 steps take ~205 s of the
    270 s budget, so steps, not the clock, end the run and ``--seed`` reproduces it.
    """
    return RunConfig(
        model=ModelConfig(d_model=128, n_layer=4, n_head=4, max_seq_len=256),
        train=TrainConfig(batch_size=16, seq_len=128, max_steps=2000, time_budget=270.0, lr_clock="time", lr=3e-3,
                          warmup_steps=50, compile=True, t_sampling="stratified", optimizer="muon",
                          eval_interval=500, eval_batches=8, ckpt_interval=500),
    )


PRESETS = {"tiny": preset_tiny, "small": preset_small}


# ----------------------------------------------------------------------------- overrides

def build(cls: type, values: dict[str, Any], section: str) -> Any:
    """Construct dataclass ``cls`` from a dict, rejecting unknown keys with a one-line error."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise RemaskError(f"unknown option {section}.{unknown[0]}; valid: {', '.join(sorted(names))}")
    hints = typing.get_type_hints(cls)
    return cls(**{k: coerce(v, hints[k], f"{section}.{k}") for k, v in values.items()})


def coerce(value: Any, hint: Any, name: str) -> Any:
    """Convert a CLI string (or a YAML value) to the field's declared type."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return coerce(value, args[0], name)
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise RemaskError(f"--{name} must be one of {', '.join(map(str, choices))}, got {value!r}")
        return value
    if not isinstance(value, str):
        if hint is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        return value
    try:
        if hint is bool:
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if hint in (int, float, str):
            return hint(value)
    except ValueError:
        raise RemaskError(f"--{name} expects {getattr(hint, '__name__', hint)}, got {value!r}") from None
    return value


def apply_overrides(cfg: RunConfig, overrides: dict[str, Any]) -> RunConfig:
    """Return a new RunConfig with ``{"train.lr": "1e-3", ...}`` applied and re-validated."""
    d = cfg.to_dict()
    # Fields derived on construction (None: follow another field) keep following it unless set:
    # preset_small's n_kv_head (= n_head) must not refuse --model.n_head 8, nor its ffn_hidden
    # (from d_model) silently stay at d_model 192's width under --model.d_model 384.
    derived = {"train.micro_batch_size": cfg.train.batch_size, "model.n_kv_head": cfg.model.n_head,
               "model.ffn_hidden": default_ffn_hidden(cfg.model.d_model)}
    for key, follows in derived.items():
        section, _, name = key.partition(".")
        if d[section][name] == follows and key not in overrides:
            d[section][name] = None
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        if section not in d or not name:
            raise RemaskError(f"unknown option --{key}; options look like --model.d_model or --train.lr")
        d[section][name] = value
    return RunConfig.from_dict(d)


def describe_fields(cls: type) -> list[tuple[str, str, Any]]:
    """(name, help, default) of every field, for ``--help`` output."""
    return [(f.name, f.metadata.get("help", ""), f.default) for f in dataclasses.fields(cls)]
