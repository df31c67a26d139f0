"""Streaming: events equal generate's run, text deltas of the stable prefix, UTF-8 never split."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from conftest import tiny_model_config
from remask.data.tokenizer import ByteTokenizer
from remask.errors import RemaskError
from remask.model import build_model
from remask.sampling import SampleConfig, TextDeltas, generate, generate_stream, text_deltas

TOK = ByteTokenizer()


class Spells(nn.Module):
    """Column P + j predicts ``target[j]``; confidences rise to the right, so each block fills right to left."""

    def __init__(self, P: int, target: list[int], V: int = 264) -> None:
        super().__init__()
        self.table = torch.zeros(P + len(target), V)
        for j, t in enumerate(target):
            self.table[P + j, t] = 5.0 + 0.1 * j

    def forward(self, idx: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        return self.table[: idx.shape[1]].expand(idx.shape[0], -1, -1)


def _deltas(text: str, gen_length: int, block: int, tail: list[int] | None = None) -> tuple[list[str], int]:
    target = list(text.encode("utf-8"))
    target += tail if tail is not None else [TOK.eos_id] * (gen_length - len(target))
    prompt = TOK.encode("> ")
    cfg = SampleConfig(gen_length=gen_length, steps=gen_length, block_length=block)
    events = list(generate_stream(Spells(len(prompt), target), [prompt], cfg, mask_id=TOK.mask_id, eos_id=TOK.eos_id))
    pieces: list[tuple[int, str]] = []
    deltas = TextDeltas(TOK)
    for i, ev in enumerate(events):
        d = deltas.update(ev.canvas[0, len(prompt):])
        if d:
            pieces.append((i, d))
    rest = deltas.finish(events[-1].canvas[0, len(prompt):])
    assert rest == ""  # everything was already final
    return [d for _, d in pieces], pieces[0][0] if pieces else -1


def test_multibyte_characters_are_never_split():
    # "é" and "€" straddle block boundaries (blocks of 4 bytes): "aéb€" = a, C3 A9, b, E2 82 AC.
    text = "aé€b€xyz"
    pieces, _ = _deltas(text, 16, 4)
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)
    assert len(pieces) > 1  # it really streamed


def test_text_is_final_before_later_blocks_are_denoised():
    text = "hello world, one two"
    pieces, first_at = _deltas(text, 32, 8)
    assert "".join(pieces) == text
    assert first_at == 7  # after block 0's last step, while blocks 1-3 are still masks
    assert pieces[0] == text[:8]


def test_deltas_stop_at_the_first_eos():
    tail = [TOK.eos_id] + list(b"after") + [TOK.eos_id] * 2
    pieces, _ = _deltas("hi", 10, 10, tail=tail)
    assert "".join(pieces) == "hi"


def test_finish_flushes_an_incomplete_character():
    d = TextDeltas(TOK)
    cut = [*"né".encode()[:-1], TOK.mask_id]
    assert d.update(cut) == "n"  # the lone 0xC3 waits for its continuation byte
    assert d.finish(cut[:-1]) == "\ufffd"  # the run ended without it: flush what there is
    assert d.update(list(b"more")) == ""  # nothing after the end


def test_stream_matches_generate():
    model = build_model(tiny_model_config(init_std=0.3), seed=0).eval()
    cfg = SampleConfig(gen_length=12, steps=6, block_length=4, temperature=1.0, seed=4)
    events = list(generate_stream(model, [[1, 2], [3, 4, 5]], cfg, mask_id=30, eos_id=31))
    out = generate(model, [[1, 2], [3, 4, 5]], cfg, mask_id=30, eos_id=31)
    assert torch.equal(events[-1].canvas, out.canvas) and events[-1].n_forward == out.n_forward == len(events)
    for ev in events:  # (step, positions committed, tokens, confidences) for each row
        for r in range(2):
            commits = ev.commits(r)
            assert [c for c, _, _ in commits] == ev.committed[r].nonzero().flatten().tolist()
            assert all(ev.canvas[r, c] == t and 0.0 <= p <= 1.0 for c, t, p in commits)


def test_stream_checks_inputs_when_called():
    model = build_model(tiny_model_config(), seed=0).eval()
    with pytest.raises(RemaskError, match="exceeds the model context"):
        generate_stream(model, [[1] * 60], SampleConfig(gen_length=8, steps=8), mask_id=30, eos_id=31)


def test_text_deltas_helper_on_events():
    prompt = TOK.encode("> ")
    target = list("añb".encode()) + [TOK.eos_id] * 4
    cfg = SampleConfig(gen_length=8, steps=8, block_length=2)
    events = generate_stream(Spells(len(prompt), target), [prompt], cfg, mask_id=TOK.mask_id, eos_id=TOK.eos_id)
    # Blocks [a, C3] [B1, b] [EOS EOS] ...: "ñ" (C3 B1) completes only with block 1.
    assert list(text_deltas(events, TOK, gen_length=8)) == ["a", "ñb"]
