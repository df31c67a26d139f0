"""LLaDA sampling: a schedule (how many to commit), a rule (which), a loop (blocks, CFG, caches).

    from remask.sampling import SampleConfig, generate
    out = generate(model, [prompt_ids], SampleConfig(gen_length=64, steps=64, block_length=32),
                   mask_id=tok.mask_id, eos_id=tok.eos_id)
    out.tokens  # (B, 64)

Fast settings: ``SampleConfig(remasking="threshold", threshold=0.9, cache="dual")``.
"""

from remask.sampling.cache import CACHE_MODES, BlockForward, guided_logits
from remask.sampling.infill import infill, parse_infill
from remask.sampling.loop import (
    Generation,
    SampleConfig,
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
    Rule,
    above_threshold,
    demote,
    entropy_confidence,
    low_confidence,
    margin_confidence,
    random_confidence,
    select_topk,
    top_k,
)
from remask.sampling.schedule import num_transfer_tokens
from remask.sampling.stream import TextDeltas, text_deltas, trim_eos

__all__ = [
    "CACHE_MODES",
    "CONFIDENCES",
    "RULES",
    "BlockForward",
    "Confidence",
    "Generation",
    "Rule",
    "SampleConfig",
    "StepEvent",
    "TextDeltas",
    "above_threshold",
    "add_gumbel_noise",
    "demote",
    "denoise",
    "entropy_confidence",
    "generate",
    "generate_stream",
    "guided_logits",
    "infill",
    "low_confidence",
    "margin_confidence",
    "num_transfer_tokens",
    "parse_infill",
    "random_confidence",
    "select_topk",
    "text_deltas",
    "top_k",
    "trim_eos",
]
