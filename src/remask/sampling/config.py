"""Sampler settings: one declaration per setting, shared by the library, the CLI, the server and lm-eval.

``DecodeConfig`` holds what every decoder takes under one name (the answer length, temperature,
seed and early stop); ``SampleConfig`` adds LLaDA's reverse-process settings and ``ARSampleConfig``
the autoregressive baseline's. ``sampler_config`` builds the right one for a model from one
mapping of named settings (parsed flags, an HTTP request, lm-eval's model_args), so a default or a
help text lives in its dataclass field alone: ``remask generate --help``, the server's request
schema and the lm-eval adapter are all derived from these fields.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from remask.config import check, coerce, option
from remask.devices import DTYPES
from remask.errors import RemaskError
from remask.sampling.cache import CACHE_MODES
from remask.sampling.rules import CONFIDENCES, RULES


@dataclass(kw_only=True)
class DecodeConfig:
    """The settings every decoder shares, diffusion and autoregressive alike."""

    gen_length: int = option("number of tokens to generate after the prompt", 64)
    temperature: float = option("sampling temperature (0: argmax, deterministic; a diffusion model draws "
                                "Gumbel-max noise in float64)", 0.0)
    seed: int = option("seed of the sampling noise", 0)
    early_stop: bool = option("stop once the answer has ended and fill the rest with EOS (diffusion: a block "
                              "committed entirely as EOS, or a block ending in EOS with EOS predicted for the whole "
                              "rest; AR: every row has produced EOS)", True)

    def __post_init__(self) -> None:
        check(self.gen_length > 0, f"--gen-length must be positive, got {self.gen_length}")
        check(self.temperature >= 0, f"--temperature must be >= 0, got {self.temperature}")


@dataclass(kw_only=True)
class SampleConfig(DecodeConfig):
    """LLaDA's sampler settings (the arguments of its ``generate``), after the shared ones."""

    steps: int | None = option("denoising steps in total, shared equally by the blocks, one forward pass each "
                               "(None: = gen_length, one token per step)", None)
    block_length: int | None = option("semi-autoregressive block length; must divide gen_length (None: one block)",
                                      None)
    remasking: str = option("which masked tokens to commit each step: low_confidence (LLaDA), margin, entropy, "
                            "random, or a parallel rule: threshold, factor (Fast-dLLM) or hierarchy (dInfer)",
                            "low_confidence", choices=tuple(RULES))
    cfg_scale: float = option("classifier-free guidance weight w (0: off; >0 doubles the forward passes)", 0.0)
    logits_eos_inf: bool = option("never generate EOS/EOT: their logits are set to -inf", False)
    confidence_eos_eot_inf: bool = option("commit EOS/EOT predictions only after every other token of the block",
                                          False)
    confidence: str | None = option("confidence measure: low_confidence, margin, entropy or random "
                                    "(None: the rule's namesake; low_confidence for threshold)", None,
                                    choices=tuple(CONFIDENCES))
    threshold: float = option("remasking=threshold or hierarchy: commit every masked token whose confidence >= this",
                              0.9)
    factor: float = option("remasking=factor: commit the n surest tokens while (n + 1)(1 - confidence of the n-th) "
                           "<= this (Fast-dLLM's factor rule; larger: more tokens per step)", 1.0)
    low_threshold: float = option("remasking=hierarchy: the surest token of each run of adjacent masks is committed "
                                  "only if its confidence > this (dInfer's low threshold)", 0.4)
    credit: float = option("credit decoding: weight of the credit a masked position earns by predicting the same "
                           "token step after step, added to its logits as weight * log(1 + credit) (0: off)", 0.0)
    credit_decay: float = option("credit decoding: the credit kept from one step to the next", 0.8)
    credit_boost: float = option("credit decoding: each step adds p ** this to the top-1 token's credit "
                                 "(p its probability; < 1 lifts unsure tokens)", 0.2)
    cache: str = option("approximate K/V cache: none (exact), prefix, or dual (prefix and suffix)", "none",
                        choices=CACHE_MODES)
    cache_refresh: int = option("with a cache: also recompute the whole canvas every this many steps of a block "
                                "(0: only at each block's first step, as Fast-dLLM)", 0)
    cache_full_every: int = option("with a cache: only every this-many-th block starts with a pass over the whole "
                                   "canvas; the others start with one over the previous block and their own, which "
                                   "refreshes the finished block's keys and values and keeps the rest's (1: every "
                                   "block, as Fast-dLLM)", 1)
    dtype: str = option("forward-pass precision: auto (bf16 on CUDA), float32 or bfloat16", "auto", choices=DTYPES)
    compile: bool = option("torch.compile the model's forward pass (pays off on GPU for repeated calls)", False)
    remask_committed: int = option("ReMDM-style re-masking: at most this many tokens committed earlier in the block "
                                   "go back to the mask per step (0: off, LLaDA's commits are final)", 0)
    remask_below: float = option("re-masking: only committed tokens whose current confidence is below this "
                                 "(same measure as the commits)", 0.5)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.steps is None:
            self.steps = self.gen_length
        check(self.steps > 0, f"--steps must be positive, got {self.steps}")
        if self.block_length is not None:
            check(self.block_length > 0,
                  f"--block-length must be positive (or None for one block), got {self.block_length}")
            check(self.gen_length % self.block_length == 0,
                  f"--block-length {self.block_length} must divide --gen-length {self.gen_length}")
        blocks = self.num_blocks
        if self.steps % blocks:
            suggestion = -(-self.steps // blocks) * blocks
            raise RemaskError(f"--steps {self.steps} must be a multiple of the number of blocks "
                              f"(--gen-length {self.gen_length} / --block-length {self.block_length} = {blocks}); "
                              f"try --steps {suggestion}")
        check(self.cfg_scale >= 0, f"--cfg-scale must be >= 0 (0 turns guidance off), got {self.cfg_scale}")
        check(self.remasking in RULES,
              f"--remasking {self.remasking!r} is not a known rule; choose one of: {', '.join(sorted(RULES))}")
        check(self.confidence is None or self.confidence in CONFIDENCES,
              f"--confidence {self.confidence!r} is not a known measure; choose one of: "
              f"{', '.join(sorted(CONFIDENCES))}")
        check(0 < self.threshold <= 1, f"--threshold must be in (0, 1] (confidences are probabilities), "
                                       f"got {self.threshold}")
        check(self.factor > 0, f"--factor must be positive, got {self.factor}")
        check(0 <= self.low_threshold < 1, f"--low-threshold must be in [0, 1), got {self.low_threshold}")
        check(self.credit >= 0, f"--credit must be >= 0 (0 turns credit decoding off), got {self.credit}")
        check(0 <= self.credit_decay <= 1, f"--credit-decay must be in [0, 1], got {self.credit_decay}")
        check(self.credit_boost > 0, f"--credit-boost must be positive, got {self.credit_boost}")
        check(self.cache in CACHE_MODES, f"--cache {self.cache!r} is not a cache mode; choose one of: "
                                         f"{', '.join(CACHE_MODES)}")
        check(self.dtype in DTYPES, f"--dtype {self.dtype!r} must be one of: {', '.join(DTYPES)}")
        check(self.cache_refresh >= 0, f"--cache-refresh must be >= 0 (0: refresh only at block starts), "
                                       f"got {self.cache_refresh}")
        check(self.cache_full_every >= 1, f"--cache-full-every must be >= 1 (1: a full pass at every block's start), "
                                          f"got {self.cache_full_every}")
        check(self.remask_committed >= 0, f"--remask-committed must be >= 0 (0 turns re-masking off), "
                                          f"got {self.remask_committed}")
        check(0 < self.remask_below <= 1, f"--remask-below must be in (0, 1] (confidences are probabilities), "
                                          f"got {self.remask_below}")
        check(self.remask_committed == 0 or self.steps // blocks >= 2,
              f"--remask-committed needs at least 2 steps per block (a block's last step never re-masks), got "
              f"--steps {self.steps} for {blocks} block(s); raise --steps or set --remask-committed 0")

    @property
    def num_blocks(self) -> int:
        return self.gen_length // (self.block_length or self.gen_length)


@dataclass(kw_only=True)
class ARSampleConfig(DecodeConfig):
    """Left-to-right decoding of the causal baseline, after the shared settings."""

    top_k: int | None = option("AR: sample among the k most likely tokens (None: all)", None)
    top_p: float | None = option("AR: nucleus sampling mass (None: off)", None)
    kv_cache: bool = option("AR: reuse the keys/values of earlier tokens (exact for a causal model; one new "
                            "column per pass instead of the whole prefix)", True)

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.top_k is None or self.top_k > 0, f"--top-k must be positive, got {self.top_k}")
        check(self.top_p is None or 0 < self.top_p <= 1, f"--top-p must be in (0, 1], got {self.top_p}")


# Named bundles of settings, applied under whatever the user sets. llada-instruct is the published
# sampling setup of LLaDA-8B-Instruct (Nie et al. 2025, its chat and evaluation scripts):
# semi-autoregressive blocks of 32, low-confidence remasking, end-of-turn/EOS committed last; the
# answer is cut at <|eot_id|> by every caller (``stream.trim_eos``).
SAMPLER_PRESETS: dict[str, dict[str, Any]] = {
    "llada-instruct": {"block_length": 32, "remasking": "low_confidence", "confidence_eos_eot_inf": True},
}


def fields_of(cls: type) -> dict[str, dataclasses.Field]:
    """A config's fields by name, in declaration order."""
    return {f.name: f for f in dataclasses.fields(cls)}


# Every sampler setting, once: the shared fields first, then diffusion's, then AR's.
SAMPLER_FIELDS: dict[str, dataclasses.Field] = {**fields_of(SampleConfig), **fields_of(ARSampleConfig)}


def sampler_config(values: Mapping[str, Any], *, causal: bool, base: DecodeConfig | None = None
                   ) -> tuple[SampleConfig | ARSampleConfig, list[str]]:
    """Named settings -> (the sampler config for a causal or a diffusion model, the names given that
    only the other kind takes).

    ``values`` maps field names to values (strings are converted to the field's type); None, or a
    setting of the other kind, leaves the field at ``base``'s value (default: the dataclass
    default). A setting of the other kind counts as given when it differs from its default, so a
    parsed flag left at its default is not reported.
    """
    cls = ARSampleConfig if causal else SampleConfig
    own, hints = fields_of(cls), typing.get_type_hints(cls)
    unknown = [k for k in values if k not in SAMPLER_FIELDS]
    if unknown:
        raise RemaskError(f"unknown sampler setting {unknown[0]!r}; valid: {', '.join(SAMPLER_FIELDS)}")
    changes = {k: coerce(v, hints[k], k.replace("_", "-")) for k, v in values.items() if k in own and v is not None}
    foreign = [k for k, v in values.items() if k not in own and v is not None and v != SAMPLER_FIELDS[k].default]
    start = {} if base is None else {k: getattr(base, k) for k in own if hasattr(base, k)}
    return cls(**{**start, **changes}), foreign
