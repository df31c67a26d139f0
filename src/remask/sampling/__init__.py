"""LLaDA sampling: a schedule (how many to commit), a rule (which), a loop (blocks, CFG).

    from remask.sampling import SampleConfig, generate
    out = generate(model, [prompt_ids], SampleConfig(gen_length=64, steps=64, block_length=32),
                   mask_id=tok.mask_id, eos_id=tok.eos_id)
    out.tokens  # (B, 64)
"""

from remask.sampling.infill import infill, parse_infill
from remask.sampling.loop import (
    Generation,
    SampleConfig,
    StepEvent,
    add_gumbel_noise,
    denoise,
    generate,
    guided_logits,
)
from remask.sampling.rules import RULES, Rule, demote, low_confidence, random_confidence, select_topk
from remask.sampling.schedule import num_transfer_tokens

__all__ = [
    "RULES",
    "Generation",
    "Rule",
    "SampleConfig",
    "StepEvent",
    "add_gumbel_noise",
    "demote",
    "denoise",
    "generate",
    "guided_logits",
    "infill",
    "low_confidence",
    "num_transfer_tokens",
    "parse_infill",
    "random_confidence",
    "select_topk",
]
