"""Contracts of LLaDA's reverse process: schedule, rules, loop, CFG, EOS handling, infilling."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from remask.config import ModelConfig
from remask.errors import RemaskError
from remask.model import build_model
from remask.sampling import (
    CONFIDENCES,
    RULES,
    SampleConfig,
    StepEvent,
    demote,
    generate,
    infill,
    num_transfer_tokens,
    parse_infill,
    select_topk,
)

MASK, EOS = 30, 31


@pytest.fixture(scope="module")
def model() -> nn.Module:
    # init_std raised from 0.02 so the tiny random model is not near-uniform (more varied tokens).
    cfg = ModelConfig(vocab_size=32, d_model=32, n_layer=1, n_head=2, max_seq_len=64, mask_token_id=MASK,
                      eos_token_id=EOS, init_std=0.3)
    return build_model(cfg, seed=0).eval()


class FixedLogits(nn.Module):
    """Logits that depend only on the column: table (L, V), broadcast over the batch."""

    def __init__(self, table: Tensor) -> None:
        super().__init__()
        self.table = table
        self.calls = 0

    def forward(self, idx: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        self.calls += 1
        return self.table[: idx.shape[1]].expand(idx.shape[0], -1, -1)


def _run(model, prompts, cfg, **kw):
    events: list[StepEvent] = []
    out = generate(model, prompts, cfg, mask_id=MASK, eos_id=EOS, callback=events.append, **kw)
    return out, events


# ----------------------------------------------------------------------------- schedule and selection

def test_schedule_hand_values_and_sums():
    assert num_transfer_tokens(torch.tensor([10]), 4).tolist() == [[3, 3, 2, 2]]
    got = num_transfer_tokens(torch.tensor([10, 3, 0, 8]), 4)
    assert got.tolist() == [[3, 3, 2, 2], [1, 1, 1, 0], [0, 0, 0, 0], [2, 2, 2, 2]]
    for n in range(0, 20):
        for s in (1, 3, 7):
            assert int(num_transfer_tokens(torch.tensor([n]), s).sum()) == n


def test_select_topk_never_picks_noncandidates():
    inf = float("-inf")
    conf = torch.tensor([[0.1, 0.9, inf, 0.5, 0.7], [inf, inf, 0.2, inf, inf]])
    picked = select_topk(conf, torch.tensor([2, 3]))
    assert picked.tolist() == [[False, True, False, False, True], [False, False, True, False, False]]


def test_demote_puts_flagged_last_and_keeps_order():
    inf = float("-inf")
    conf = torch.tensor([[0.9, 0.8, 0.1, 0.5, inf]])
    last = torch.tensor([[True, False, False, True, False]])
    order = demote(conf, last)[0]
    ranked = order.argsort(descending=True).tolist()
    assert ranked[:4] == [1, 2, 0, 3] and order[4] == inf


# ----------------------------------------------------------------------------- loop invariants

@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_generate_invariants(model, temperature):
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8]]
    cfg = SampleConfig(gen_length=12, steps=8, block_length=6, temperature=temperature)
    out, events = _run(model, prompts, cfg)
    P = 5
    assert out.tokens.shape == (2, 12) and out.n_forward == 8 == len(events)
    assert out.canvas[0, :P].tolist() == [EOS, EOS, 1, 2, 3] and out.canvas[1, :P].tolist() == [4, 5, 6, 7, 8]
    assert not (out.tokens == MASK).any()
    expected = num_transfer_tokens(torch.tensor([6, 6]), 4)  # (B, steps per block)
    seen = torch.zeros(2, P + 12, dtype=torch.bool)
    for ev in events:
        i = ev.step - 4 * ev.block
        assert ev.committed.sum(-1).tolist() == expected[:, i].tolist()
        lo, hi = P + 6 * ev.block, P + 6 * (ev.block + 1)
        assert not ev.committed[:, :lo].any() and not ev.committed[:, hi:].any()  # inside the block
        assert not (ev.committed & seen).any()
        seen |= ev.committed
        assert torch.equal(ev.canvas[seen], out.canvas[seen])  # committed tokens never change
        assert torch.equal(ev.canvas[:, :P], out.canvas[:, :P])  # prompt untouched
    assert seen[:, P:].all()


def test_determinism_and_seeds(model):
    prompts = [[1, 2, 3, 4]]
    greedy = SampleConfig(gen_length=8, steps=4)
    assert torch.equal(_run(model, prompts, greedy)[0].tokens, _run(model, prompts, greedy)[0].tokens)
    hot = SampleConfig(gen_length=16, steps=4, temperature=1.0, seed=1)
    a, b = _run(model, prompts, hot)[0].tokens, _run(model, prompts, hot)[0].tokens
    c = _run(model, prompts, SampleConfig(gen_length=16, steps=4, temperature=1.0, seed=2))[0].tokens
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("cfg_scale", [0.0, 1.5])
def test_batched_equals_one_by_one(model, cfg_scale):
    prompts = [[1, 2], [3, 4, 5, 6, 7], [8, 9, 10]]
    cfg = SampleConfig(gen_length=8, steps=4, block_length=4, cfg_scale=cfg_scale)
    batched = _run(model, prompts, cfg)[0].tokens
    for row, p in zip(batched, prompts):
        assert torch.equal(row, _run(model, [p], cfg)[0].tokens[0])
        assert torch.equal(row, _run(model, torch.tensor(p), cfg)[0].tokens[0])  # a tensor prompt works too
    assert len(batched.unique()) > 3  # the tiny model does not just repeat one token


def test_random_rule_commits_by_schedule(model):
    cfg = SampleConfig(gen_length=10, steps=4, remasking="random", seed=3)
    out, events = _run(model, [[1, 2]], cfg)
    assert [int(e.committed.sum()) for e in events] == [3, 3, 2, 2] and not (out.tokens == MASK).any()
    assert torch.equal(out.tokens, _run(model, [[1, 2]], cfg)[0].tokens)


# ----------------------------------------------------------------------------- low-confidence order, by hand

def _peaked_table(peaks: list[float], tokens: list[int], V: int = 32) -> Tensor:
    """Column j predicts tokens[j] with logit peaks[j] (all else 0), and the mask token at 50."""
    table = torch.zeros(len(peaks), V)
    table[torch.arange(len(peaks)), torch.tensor(tokens)] = torch.tensor(peaks)
    table[:, MASK] = 50.0  # the model "wants" the mask token; it must never be produced
    return table


def test_low_confidence_commits_most_probable_within_block():
    P = 2
    peaks = [0.0, 0.0, 1.0, 5.0, 3.0, 7.0, 8.0, 2.0, 6.0, 4.0]  # prompt columns 0-1, generated 2..9
    toks = [0, 0, 11, 12, 13, 14, 15, 16, 17, 18]
    mock = FixedLogits(_peaked_table(peaks, toks))
    cfg = SampleConfig(gen_length=8, steps=4, block_length=4)
    out, events = _run(mock, [[1, 2]], cfg)
    got = [sorted((e.committed[0].nonzero().flatten() - P).tolist()) for e in events]
    # Block 0 holds peaks [1, 5, 3, 7]: commit {3, 1} then {2, 0}. Column 4 (peak 8) is the most
    # confident overall but belongs to block 1, so it waits: {4, 6} then {7, 5}.
    assert got == [[1, 3], [0, 2], [4, 6], [5, 7]]
    assert out.tokens[0].tolist() == toks[P:] and mock.calls == 4


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_mask_token_never_generated(temperature):
    mock = FixedLogits(_peaked_table([0.0] * 12, [0] * 12))
    out = generate(mock, [[1, 2, 3, 4]], SampleConfig(gen_length=8, steps=4, temperature=temperature),
                   mask_id=MASK, eos_id=EOS)
    assert not (out.tokens == MASK).any()


# ----------------------------------------------------------------------------- classifier-free guidance

class PromptSensitive(nn.Module):
    """Logits ``cond`` where the prompt (columns < P) is visible, ``uncond`` where it is masked."""

    def __init__(self, P: int, cond: Tensor, uncond: Tensor) -> None:
        super().__init__()
        self.P, self.cond, self.uncond, self.inputs = P, cond, uncond, []

    def forward(self, idx: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        self.inputs.append(idx.clone())
        visible = (idx[:, : self.P] != MASK).any(-1)  # (B,)
        B, L = idx.shape
        return torch.where(visible[:, None, None], self.cond.expand(B, L, -1), self.uncond.expand(B, L, -1))


def test_cfg_guided_logits_formula_and_unconditional_input():
    V, w = 32, 1.0
    cond, uncond = torch.zeros(V), torch.zeros(V)
    cond[1], cond[2] = 2.0, 1.9  # conditional argmax: token 1
    uncond[1] = 2.0  # guidance boosts what the prompt adds: token 2
    mock = PromptSensitive(3, cond, uncond)
    events: list[StepEvent] = []
    out = generate(mock, [[5, 6, 7]], SampleConfig(gen_length=4, steps=2, cfg_scale=w), mask_id=MASK, eos_id=EOS,
                   callback=events.append)
    assert (out.tokens == 2).all() and out.n_forward == 4
    guided = (uncond + (w + 1) * (cond - uncond)).index_fill(0, torch.tensor([MASK]), float("-inf"))
    p2 = guided.softmax(-1)[2]
    first = events[0].confidence[0, 3:]
    assert torch.allclose(first, p2.expand(4))  # low_confidence uses the guided probabilities
    batch = mock.inputs[0]  # (2, L): [conditional; unconditional]
    assert batch[0, :3].tolist() == [5, 6, 7] and batch[1, :3].tolist() == [MASK] * 3
    assert torch.equal(batch[0, 3:], batch[1, 3:])
    plain = generate(mock, [[5, 6, 7]], SampleConfig(gen_length=4, steps=2), mask_id=MASK, eos_id=EOS)
    assert (plain.tokens == 1).all() and plain.n_forward == 2


def test_cfg_doubles_forwards_and_keeps_padding(model):
    prompts = [[1, 2], [3, 4, 5, 6]]
    assert _run(model, prompts, SampleConfig(gen_length=4, steps=4))[0].n_forward == 4
    mock = PromptSensitive(4, torch.zeros(32), torch.zeros(32))
    out = generate(mock, prompts, SampleConfig(gen_length=4, steps=4, cfg_scale=1.0), mask_id=MASK, eos_id=EOS)
    assert out.n_forward == 8 and mock.inputs[0][2, :4].tolist() == [EOS, EOS, MASK, MASK]  # padding stays


# ----------------------------------------------------------------------------- EOS handling

def _eos_table(V: int = 32, eot: int = 29) -> Tensor:
    """Columns 0-1: prompt. 2-5: EOS (or EOT) near-certain. 6-9: never EOS/EOT, token 3 likely."""
    table = torch.zeros(10, V)
    table[2:4, EOS] = 30.0
    table[4:6, eot] = 30.0
    table[6:, 3] = 3.0
    table[6:, [EOS, eot]] = float("-inf")
    return table


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_confidence_eos_eot_inf_commits_eos_last(temperature):
    eot = 29
    mock = FixedLogits(_eos_table(eot=eot))
    for flag in (True, False):
        cfg = SampleConfig(gen_length=8, steps=8, temperature=temperature, confidence_eos_eot_inf=flag)
        events: list[StepEvent] = []
        generate(mock, [[1, 2]], cfg, mask_id=MASK, eos_id=EOS, eot_id=eot, callback=events.append)
        ending = [bool(torch.isin(e.canvas[e.committed], torch.tensor([EOS, eot])).any()) for e in events]
        assert ending == ([False] * 4 + [True] * 4 if flag else [True] * 4 + [False] * 4)


def test_confidence_eos_eot_inf_uses_the_sampled_tokens(monkeypatch):
    # EOS is the most confident prediction in every column, but at temperature 1 many draws are
    # not EOS. A spy rule (registered like any rule) sees each step's draws x0: whenever an EOS
    # is committed, every candidate that drew something else must be committed in the same step.
    seen: list[tuple[Tensor, Tensor]] = []

    def spy(logits, x0, candidates, generator):
        seen.append((x0.clone(), candidates.clone()))
        return CONFIDENCES["low_confidence"](logits, x0, candidates, generator)

    monkeypatch.setitem(CONFIDENCES, "spy", spy)
    monkeypatch.setitem(RULES, "spy", RULES["low_confidence"])
    table = torch.zeros(18, 32)
    table[:, EOS] = 5.0 + torch.linspace(0, 0.5, 18)  # p(EOS) about 0.6, p(token 3) about 0.3
    table[:, 3] = 4.5
    checked = 0
    for seed in (0, 1):
        seen.clear()
        events: list[StepEvent] = []
        cfg = SampleConfig(gen_length=16, steps=4, temperature=1.0, remasking="spy", confidence_eos_eot_inf=True,
                           seed=seed)
        generate(FixedLogits(table), [[1, 2]], cfg, mask_id=MASK, eos_id=EOS, callback=events.append)
        for (x0, candidates), ev in zip(seen, events, strict=True):
            if (ev.canvas[ev.committed] == EOS).any():
                others = candidates & (x0 != EOS)  # the rule sees the block's columns, here 2..17
                assert (ev.committed[:, 2:] | ~others).all()
                checked += int(others.sum())
    assert checked > 0  # the draws did mix EOS and other tokens in an EOS-committing step


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_logits_eos_inf_never_produces_eos(temperature):
    eot = 29
    table = torch.zeros(12, 32)
    table[:, EOS], table[:, eot] = 20.0, 19.0
    out = generate(FixedLogits(table), [[1, 2, 3, 4]],
                   SampleConfig(gen_length=8, steps=4, temperature=temperature, logits_eos_inf=True),
                   mask_id=MASK, eos_id=EOS, eot_id=eot)
    assert not torch.isin(out.tokens, torch.tensor([EOS, eot, MASK])).any()


# ----------------------------------------------------------------------------- infilling

class CharTokenizer:
    mask_id, eos_id, eot_id = MASK, EOS, None

    def encode(self, text: str, allow_special: bool = True) -> list[int]:
        return [ord(c) % 28 for c in text]

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return "".join(chr(97 + i % 26) for i in ids)


def test_parse_infill():
    ids, editable = parse_infill("ab<mask:3>c<mask:1>", CharTokenizer())
    assert ids == [97 % 28, 98 % 28, MASK, MASK, MASK, 99 % 28, MASK]
    assert editable == [False, False, True, True, True, False, True]
    bad_texts = [("no holes", "no <mask:N> span"), ("a<mask:0>", "at least one"), ("a<mask:-2>", "at least one"),
                 ("a<mask:x>", "whole number"), ("a<mask:1.5>", "whole number")]
    for bad, needle in bad_texts:
        with pytest.raises(RemaskError, match=needle):
            parse_infill(bad, CharTokenizer())


def test_infill_fills_holes_and_keeps_text(model):
    ids, editable = parse_infill("def f(x):<mask:5> x +<mask:2>\n", CharTokenizer())
    events: list[StepEvent] = []
    out = infill(model, ids, editable, SampleConfig(steps=64), mask_id=MASK, eos_id=EOS, callback=events.append)
    fixed = ~torch.tensor(editable)
    assert torch.equal(out.canvas[0, fixed], torch.tensor(ids)[fixed])
    assert not (out.canvas == MASK).any()
    assert out.n_forward == 7 and all(int(e.committed.sum()) == 1 for e in events)  # steps capped at holes


def test_infill_batch_rows_follow_their_own_schedule(model):
    canvas = torch.tensor([[1, MASK, MASK, MASK, MASK, 2], [3, 4, MASK, MASK, 5, 6]])
    editable = canvas == MASK
    events: list[StepEvent] = []
    out = infill(model, canvas, editable, SampleConfig(steps=2), mask_id=MASK, eos_id=EOS, callback=events.append)
    assert [e.committed.sum(-1).tolist() for e in events] == [[2, 1], [2, 1]]
    assert torch.equal(out.canvas[~editable], canvas[~editable]) and not (out.canvas == MASK).any()


# ----------------------------------------------------------------------------- user errors

def test_config_errors():
    with pytest.raises(RemaskError, match=r"^--block-length 30 must divide --gen-length 64$"):
        SampleConfig(gen_length=64, block_length=30)
    with pytest.raises(RemaskError, match=r"--steps 10 .*--block-length 16.*try --steps 12"):
        SampleConfig(gen_length=64, block_length=16, steps=10)
    with pytest.raises(RemaskError, match="entropy, factor, hierarchy, low_confidence, margin, random, threshold"):
        SampleConfig(remasking="nope")
    for bad in (dict(temperature=-1.0), dict(steps=0), dict(gen_length=0), dict(cfg_scale=-1.0),
                dict(threshold=0.0), dict(threshold=1.5), dict(cache="full"), dict(confidence="nope"),
                dict(dtype="fp16"), dict(factor=0.0), dict(low_threshold=1.0), dict(low_threshold=-0.1),
                dict(credit=-1.0), dict(credit_decay=1.5), dict(credit_boost=0.0)):
        with pytest.raises(RemaskError):
            SampleConfig(**bad)
    assert set(RULES) >= {"low_confidence", "random", "margin", "entropy", "threshold"}


def test_generate_input_errors(model):
    too_long = r"prompt \(60 tokens\) \+ --gen-length 8 exceeds the model context of 64 tokens; shorten"
    with pytest.raises(RemaskError, match=too_long):
        generate(model, [[1] * 60], SampleConfig(gen_length=8, steps=8), mask_id=MASK, eos_id=EOS)
    with pytest.raises(RemaskError, match="no prompts"):
        generate(model, [], SampleConfig(), mask_id=MASK, eos_id=EOS)
    with pytest.raises(RemaskError, match="outside the model vocabulary"):
        generate(model, [[1, 99]], SampleConfig(gen_length=4, steps=4), mask_id=MASK, eos_id=EOS)
    with pytest.raises(RemaskError, match="exceeds the model context"):
        infill(model, [1] * 70, [True] * 70, SampleConfig(), mask_id=MASK, eos_id=EOS)
    with pytest.raises(RemaskError, match="nothing to fill"):
        infill(model, [1, 2], [False, False], SampleConfig(), mask_id=MASK, eos_id=EOS)


# ----------------------------------------------------------------------------- early exit

def _ending_table(columns: list[int], V: int = 32) -> Tensor:
    """Column j (after a 2-token prompt) predicts columns[j] with logit 9."""
    table = torch.zeros(2 + len(columns), V)
    table[torch.arange(2, 2 + len(columns)), torch.tensor(columns)] = 9.0
    return table


def test_early_stop_after_an_all_eos_block():
    # Blocks of 4: text, EOS, then text again. The model is never asked about blocks 2 and 3.
    cols = [5] * 4 + [EOS] * 4 + [7] * 8
    mock = FixedLogits(_ending_table(cols))
    out, events = _run(mock, [[1, 2]], SampleConfig(gen_length=16, steps=16, block_length=4))
    assert out.tokens[0].tolist() == [5] * 4 + [EOS] * 12
    assert out.n_forward == mock.calls == 8 and out.n_forward_saved == 8
    last = events[-1]
    assert last.early_exit and last.n_forward == 8 and last.committed[0, 2 + 8:].all()
    assert not last.committed[0, : 2 + 8].any() and not any(e.early_exit for e in events[:-1])
    full = generate(FixedLogits(_ending_table(cols)), [[1, 2]],
                    SampleConfig(gen_length=16, steps=16, block_length=4, early_stop=False), mask_id=MASK, eos_id=EOS)
    assert full.tokens[0].tolist() == cols and full.n_forward == 16 and full.n_forward_saved == 0


def test_early_stop_when_the_rest_is_predicted_eos():
    # Block 0 ends in EOS and every later column predicts EOS: block 1's first pass ends the run.
    cols = [5, 5, 5, EOS] + [EOS] * 12
    mock = FixedLogits(_ending_table(cols))
    out, events = _run(mock, [[1, 2]], SampleConfig(gen_length=16, steps=16, block_length=4))
    assert out.tokens[0].tolist() == cols and out.n_forward == 5 and out.n_forward_saved == 11
    assert events[-1].early_exit and events[-1].committed[0, 2 + 4:].all()
    # With CFG every skipped step would have cost two passes.
    out = generate(FixedLogits(_ending_table(cols)), [[1, 2]],
                   SampleConfig(gen_length=16, steps=16, block_length=4, cfg_scale=1.0), mask_id=MASK, eos_id=EOS)
    assert out.n_forward == 10 and out.n_forward_saved == 22
    # Without EOS just before the block, predicted EOS is not enough: block 1 is denoised, then (a) stops.
    cols = [5] * 4 + [EOS] * 12
    out = generate(FixedLogits(_ending_table(cols)), [[1, 2]],
                   SampleConfig(gen_length=16, steps=16, block_length=4), mask_id=MASK, eos_id=EOS)
    assert out.tokens[0].tolist() == cols and out.n_forward == 8 and out.n_forward_saved == 8


class FirstTokenDecides(nn.Module):
    """Row-dependent logits: a prompt starting with 1 ends after block 0; any other keeps writing 7s."""

    def __init__(self, P: int, block: int) -> None:
        super().__init__()
        self.P, self.block = P, block

    def forward(self, idx: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        B, L = idx.shape
        logits = torch.zeros(B, L, 32)
        logits[:, :, 7] = 9.0
        first = idx[torch.arange(B), (~attn_mask).sum(-1) if attn_mask is not None else 0]  # (B,) first real token
        ends = (first == 1)[:, None] & (torch.arange(L) >= self.P + self.block)[None]  # (B, L)
        logits[ends] = 0.0
        logits[..., EOS] = torch.where(ends, 9.0, 0.0)
        return logits


def test_early_stop_is_per_row_and_batched_equals_one_by_one():
    cfg = SampleConfig(gen_length=12, steps=12, block_length=4)
    prompts = [[1, 4, 4], [2, 4], [1, 4]]
    batched = generate(FirstTokenDecides(3, 4), prompts, cfg, mask_id=MASK, eos_id=EOS)
    for row, p in zip(batched.tokens, prompts):
        alone = generate(FirstTokenDecides(len(p), 4), [p], cfg, mask_id=MASK, eos_id=EOS)
        assert torch.equal(row, alone.tokens[0])
        assert row.tolist() == ([7] * 4 + [EOS] * 8 if p[0] == 1 else [7] * 12)
        assert alone.n_forward == (8 if p[0] == 1 else 12)
    assert batched.n_forward == 12 and batched.n_forward_saved == 0  # row 1 needs every step


def test_trim_eos():
    from remask.sampling import trim_eos

    assert trim_eos([5, 6, EOS, 7, EOS], EOS) == [5, 6]
    assert trim_eos(torch.tensor([5, 29, EOS]), EOS, eot_id=29) == [5]
    assert trim_eos([5, 6], EOS) == [5, 6] and trim_eos([EOS, 5], EOS) == []
