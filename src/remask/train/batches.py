"""Batch sources for the training loop.

A batch source hands out CPU batches by (step, global sample indices), never from hidden
state: sample ``i`` of step ``s`` is the same whichever process or micro-batch asks for it,
which is what makes resume exact and results independent of the number of processes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from remask.data.batch import Batch
from remask.errors import RemaskError
from remask.rng import DATA, keyed_generator


class BatchSource(Protocol):
    bytes_per_token: float | None  # UTF-8 bytes per validation token, for bits per byte

    def train_batch(self, step: int, indices: np.ndarray) -> Batch: ...

    def val_batches(self, micro_batch_size: int, n_batches: int) -> list[tuple[Batch, np.ndarray]]:
        """Fixed validation batches with the global indices that key their masking noise."""
        ...


class TokenWindows:
    """Windows of ``seq_len`` tokens cut from pre-tokenised shards (documents joined by EOS).

    Training windows start at offsets drawn from a generator keyed by (seed, step, index);
    validation windows are evenly spaced over the held-out split and never change.
    """

    def __init__(self, data_dir: str | Path, seq_len: int, seed: int) -> None:
        from remask.data.prepare import load_meta
        from remask.data.shards import TokenData

        self.seq_len, self.seed = seq_len, seed
        self.meta = load_meta(data_dir)
        self.train, self.val = TokenData(data_dir, "train"), TokenData(data_dir, "val")
        for split, data in (("train", self.train), ("val", self.val)):
            if len(data) < seq_len:
                raise RemaskError(f"the {split} split of '{data_dir}' has {len(data)} tokens, fewer than "
                                  f"--seq-len {seq_len}; give more text or lower --seq-len")
        val = self.meta["splits"]["val"]
        self.bytes_per_token = val["bytes"] / val["tokens"] if val.get("tokens") else None

    def train_batch(self, step: int, indices: np.ndarray) -> Batch:
        hi = len(self.train) - self.seq_len + 1
        rows = [self.train.get(int(keyed_generator(self.seed, step, int(i), DATA).integers(hi)), self.seq_len)
                for i in indices]
        return Batch(torch.from_numpy(np.stack(rows)).long())  # (b, seq_len)

    def val_batches(self, micro_batch_size: int, n_batches: int) -> list[tuple[Batch, np.ndarray]]:
        n = micro_batch_size * n_batches
        starts = np.linspace(0, len(self.val) - self.seq_len, num=n).astype(np.int64)
        out = []
        for b in range(n_batches):
            idx = np.arange(b * micro_batch_size, (b + 1) * micro_batch_size)
            rows = np.stack([self.val.get(int(starts[i]), self.seq_len) for i in idx])
            out.append((Batch(torch.from_numpy(rows).long()), idx))
        return out
