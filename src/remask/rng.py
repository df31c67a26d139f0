"""Counter-based randomness: every draw is keyed by (seed, step, global sample index).

Training data order and masking noise never come from a stateful generator. A sample's
randomness depends only on its key, so a run is reproducible, resumes exactly from a step
number alone, and gives the same batch whatever the number of processes or micro-batches.
"""

from __future__ import annotations

import numpy as np
import torch

# Streams: distinct third key components so data offsets, masking noise, and per-step
# decisions (e.g. LLaDA's random-length cut), and low-discrepancy draws of t never share random numbers.
DATA, NOISE, STEP, TIME = 0, 1, 2, 3


def keyed_generator(seed: int, step: int, index: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed & 0xFFFFFFFF, step, index, stream])


def keyed_uniform(seed: int, step: int, indices: np.ndarray, n: int, stream: int = NOISE) -> torch.Tensor:
    """(len(indices), n) float32 uniforms in [0, 1), row i keyed by (seed, step, indices[i])."""
    rows = [keyed_generator(seed, step, int(i), stream).random(n, dtype=np.float32) for i in indices]
    return torch.from_numpy(np.stack(rows)) if rows else torch.empty(0, n)
