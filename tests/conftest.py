"""Shared fixtures: tiny configs and models that run in milliseconds on one CPU core."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from remask.config import ModelConfig
from remask.model import build_model

torch.set_num_threads(1)  # the CI machine has 2 cores; tiny models gain nothing from more


def tiny_model_config(**kw) -> ModelConfig:
    base = dict(vocab_size=32, d_model=32, n_layer=2, n_head=4, max_seq_len=64, mask_token_id=30, eos_token_id=31)
    base.update(kw)
    return ModelConfig(**base)


@pytest.fixture
def tiny_model():
    return build_model(tiny_model_config(), seed=0).eval()


@pytest.fixture
def text_corpus(tmp_path: Path) -> Path:
    """A few small real-looking text files (a directory corpus)."""
    d = tmp_path / "corpus"
    d.mkdir()
    words = ["the", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog", "while", "remask", "denoises", "every", "masked", "token"]
    for i in range(6):
        lines = [" ".join(words[(i + j) % len(words):] + words[: (i + j) % len(words)]) for j in range(40)]
        (d / f"doc{i}.txt").write_text("\n".join(lines) + "\n")
    return d


class Columns(nn.Module):
    """Fixed logits per column (a (L, V) table)."""

    def __init__(self, table: Tensor) -> None:
        super().__init__()
        self.table, self.calls = table, 0

    def forward(self, idx: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        self.calls += 1
        return self.table[: idx.shape[1]].expand(idx.shape[0], -1, -1)
