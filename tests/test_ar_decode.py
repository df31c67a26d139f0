"""AR decoding as a stream: one step per token, pending columns, and early stop on EOS."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from remask.errors import RemaskError
from remask.sampling.ar import ARSampleConfig, ar_generate, ar_stream

EOS, MASK, V = 0, 1, 8


class Scripted(nn.Module):
    """A causal stand-in whose next token is ``script[row][column - width]`` (EOS past the end)."""

    def __init__(self, script: list[list[int]], width: int) -> None:
        super().__init__()
        self.script, self.width = script, width
        self.w = nn.Parameter(torch.zeros(1))  # gives the decoder a device
        self.calls = 0

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        self.calls += 1
        B, T = x.shape
        logits = torch.full((B, T, V), -10.0)
        for r, row in enumerate(self.script):
            i = T - self.width
            logits[r, -1, row[i] if i < len(row) else EOS] = 10.0
        return logits


def test_stream_steps_grow_the_final_answer_and_mark_pending_columns():
    model = Scripted([[3, 4, 5, 6, 7, 2]], width=2)
    cfg = ARSampleConfig(gen_length=6)
    steps = list(ar_stream(model, [[5, 6]], cfg, eos_id=EOS, mask_id=MASK))
    assert len(steps) == 6 and [s.n_forward for s in steps] == [1, 2, 3, 4, 5, 6]
    final = steps[-1].tokens[0].tolist()
    assert final == [3, 4, 5, 6, 7, 2]
    for i, s in enumerate(steps):
        assert s.position == i
        assert s.tokens[0, :i + 1].tolist() == final[:i + 1]
        assert (s.tokens[0, i + 1:] == MASK).all()  # not decoded yet
    assert ar_generate(model, [[5, 6]], cfg, eos_id=EOS, mask_id=MASK).tokens[0].tolist() == final


def test_early_stop_once_every_row_has_ended():
    # row 0 ends at its 2nd token, row 1 at its 4th; 8 columns were asked for
    model = Scripted([[3, EOS, 5, 5, 5, 5, 5, 5], [4, 4, 4, EOS, 6, 6, 6, 6]], width=1)
    out = ar_generate(model, [[2], [2]], ARSampleConfig(gen_length=8), eos_id=EOS, mask_id=MASK)
    assert out.n_forward == 4 and out.n_forward_saved == 4 and model.calls == 4
    assert out.tokens.tolist() == [[3, EOS] + [EOS] * 6, [4, 4, 4, EOS] + [EOS] * 4]  # EOS pads after the end
    model.calls = 0
    full = ar_generate(model, [[2], [2]], ARSampleConfig(gen_length=8, early_stop=False), eos_id=EOS,
                       mask_id=MASK)
    assert full.n_forward == 8 and full.n_forward_saved == 0 and model.calls == 8
    assert torch.equal(full.tokens, out.tokens)  # an ended row only pads, with or without early stop


def test_stream_checks_the_prompt_before_the_first_step():
    model = Scripted([[3]], width=1)
    with pytest.raises(RemaskError, match="at least one token"):
        ar_stream(model, [[]], ARSampleConfig(gen_length=2), eos_id=EOS)  # raised at the call, not at next()
