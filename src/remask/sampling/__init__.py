"""LLaDA sampling: a schedule (how many to commit), a rule (which), a loop (blocks, CFG, caches).

    from remask.sampling import SampleConfig, generate
    out = generate(model, [prompt_ids], SampleConfig(gen_length=64, steps=64, block_length=32),
                   mask_id=tok.mask_id, eos_id=tok.eos_id)
    out.tokens  # (B, 64)

Fast settings: ``SampleConfig(remasking="threshold", threshold=0.9, cache="dual")``.
"""

from remask.guidance import guided_logits
from remask.sampling.ar import ARGeneration, ARStep, ar_generate, ar_stream
from remask.sampling.cache import CACHE_MODES, BlockForward
from remask.sampling.config import ARSampleConfig, DecodeConfig, SampleConfig, sampler_config
from remask.sampling.decode import decode, decode_stream, for_model
from remask.sampling.infill import infill, parse_infill
from remask.sampling.loop import (
    Generation,
    StepEvent,
    add_gumbel_noise,
    denoise,
    generate,
    generate_stream,
)
from remask.sampling.rules import (
    CONFIDENCES,
    RULES,
    Confidence,
    Knobs,
    Rule,
    above_threshold,
    demote,
    entropy_confidence,
    factor_rule,
    hierarchy_rule,
    low_confidence,
    margin_confidence,
    random_confidence,
    select_topk,
    top_k,
)
from remask.sampling.schedule import num_transfer_tokens
from remask.sampling.stream import TextDeltas, stop_index, text_deltas, trim_eos

__all__ = [
    "CACHE_MODES",
    "CONFIDENCES",
    "RULES",
    "ARGeneration",
    "ARSampleConfig",
    "ARStep",
    "BlockForward",
    "Confidence",
    "DecodeConfig",
    "Generation",
    "Knobs",
    "Rule",
    "SampleConfig",
    "StepEvent",
    "TextDeltas",
    "above_threshold",
    "add_gumbel_noise",
    "ar_generate",
    "ar_stream",
    "decode",
    "decode_stream",
    "demote",
    "denoise",
    "entropy_confidence",
    "factor_rule",
    "for_model",
    "generate",
    "generate_stream",
    "guided_logits",
    "hierarchy_rule",
    "infill",
    "low_confidence",
    "margin_confidence",
    "num_transfer_tokens",
    "parse_infill",
    "random_confidence",
    "sampler_config",
    "select_topk",
    "stop_index",
    "text_deltas",
    "top_k",
    "trim_eos",
]
