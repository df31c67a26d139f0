"""The few unconditional samples ``remask train`` prints (and saves) at the end of a run."""

from __future__ import annotations

from typing import Any

from remask.config import RunConfig
from remask.model import Transformer
from remask.sampling.config import SampleConfig
from remask.sampling.decode import decode


def final_samples(model: Transformer, tok: Any, cfg: RunConfig, n: int) -> list[str]:
    """A few unconditional samples (prompt: start of a document) to eyeball after training."""
    if n <= 0:
        return []
    gen_len = min(64, cfg.model.max_seq_len - 1)
    model.eval()
    # Random remasking in blocks of 8 at temperature 0.8 (benchmarks/final_samples.py): on the default
    # run's Python source, low-confidence rules commit the model's surest guess, whitespace, everywhere
    # (91-99% of the tokens); of the settings near the real text's whitespace and bigram variety, this
    # one has the lowest AR-judge perplexity. An AR model takes the shared settings (length,
    # temperature, seed) of the same config.
    block = 8 if gen_len % 8 == 0 else gen_len
    sc = SampleConfig(gen_length=gen_len, block_length=block, temperature=0.8, remasking="random", seed=0)
    out = decode(model, [[tok.eos_id]] * n, sc, mask_id=tok.mask_id, eos_id=tok.eos_id, eot_id=tok.eot_id)
    return [tok.decode(row.tolist(), skip_special_tokens=True) for row in out.tokens]
