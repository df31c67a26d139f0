"""One entry point for both decoders: LLaDA's reverse process, or left to right for a causal model.

    out = decode(model, [ids], SampleConfig(gen_length=64), mask_id=tok.mask_id, eos_id=tok.eos_id)
    out.tokens  # (B, 64), whichever kind of model it is

Chat, the server, evaluation and ``remask generate`` call these, so the choice between the two
decoders is made here once (``model.is_causal``). A config of the other kind is converted by
``for_model``: the shared settings (gen_length, temperature, seed, early_stop) carry over.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from remask.model import is_causal
from remask.sampling.ar import ARGeneration, ARStep, ar_generate, ar_stream
from remask.sampling.config import ARSampleConfig, DecodeConfig, SampleConfig, sampler_config
from remask.sampling.loop import Generation, StepEvent, generate, generate_stream


def for_model(cfg: DecodeConfig, model: Any) -> SampleConfig | ARSampleConfig:
    """``cfg`` as the settings of the decoder ``model`` needs: itself when it fits, else the other
    kind built from its shared fields (the settings only one kind takes stay at their defaults)."""
    causal = is_causal(model)
    if isinstance(cfg, ARSampleConfig if causal else SampleConfig):
        return cfg
    return sampler_config({}, causal=causal, base=cfg)[0]


def decode_stream(model: Any, prompts: Sequence[Sequence[int]], cfg: DecodeConfig, *, mask_id: int, eos_id: int,
                  eot_id: int | None = None) -> Iterator[StepEvent | ARStep]:
    """The steps of either decoder; each has ``canvas`` (B, P + gen_length, the columns not yet decoded
    holding ``mask_id``), ``n_forward`` and ``n_forward_saved``. The prompts are checked at the call."""
    cfg = for_model(cfg, model)
    if isinstance(cfg, ARSampleConfig):
        return ar_stream(model, prompts, cfg, eos_id=eos_id, mask_id=mask_id)
    return generate_stream(model, prompts, cfg, mask_id=mask_id, eos_id=eos_id, eot_id=eot_id)


def decode(model: Any, prompts: Sequence[Sequence[int]], cfg: DecodeConfig, *, mask_id: int, eos_id: int,
           eot_id: int | None = None, callback: Callable[[Any], None] | None = None) -> Generation | ARGeneration:
    """Generate ``cfg.gen_length`` tokens after each prompt with the model's own decoder; ``callback``
    sees every step (a ``StepEvent``, or an ``ARStep`` per token)."""
    cfg = for_model(cfg, model)
    if isinstance(cfg, SampleConfig):
        return generate(model, prompts, cfg, mask_id=mask_id, eos_id=eos_id, eot_id=eot_id, callback=callback)
    if callback is None:
        return ar_generate(model, prompts, cfg, eos_id=eos_id, mask_id=mask_id)
    for step in ar_stream(model, prompts, cfg, eos_id=eos_id, mask_id=mask_id):
        callback(step)
    return ARGeneration(step.tokens, step.n_forward, step.n_forward_saved)
