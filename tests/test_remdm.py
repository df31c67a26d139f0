"""ReMDM-style re-masking of committed tokens: off is LLaDA, on fixes a doubted token, never leaves its block."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from conftest import tiny_model_config
from remask.commands import build_parser
from remask.commands.flags import sample_config
from remask.errors import RemaskError
from remask.model import build_model
from remask.sampling import SampleConfig, StepEvent, generate, infill
from remask.sampling.remdm import pick_remasks, remaskable

MASK, EOS = 30, 31
INF = float("-inf")


def _run(model, prompts, cfg: SampleConfig) -> tuple[Tensor, int, list[StepEvent]]:
    events: list[StepEvent] = []
    out = generate(model, prompts, cfg, mask_id=MASK, eos_id=EOS, callback=events.append)
    return out.canvas, out.n_forward, events


def _model(seed: int) -> nn.Module:
    # init_std raised so the tiny random model is far from uniform: confidences spread out.
    return build_model(tiny_model_config(init_std=0.3), seed=seed).eval()


# ----------------------------------------------------------------------------- selection, by hand

def test_pick_remasks_lowest_first_below_threshold_and_capped():
    doubt = torch.tensor([[0.9, 0.1, 0.3, 0.2, INF], [0.6, 0.7, 0.05, 0.8, 0.4]])
    eligible = torch.tensor([[True, True, True, True, False], [True, True, False, True, True]])
    got = pick_remasks(doubt, eligible, 2, 0.5)
    # row 0: 0.1 and 0.2 (0.3 is the third lowest); row 1: only 0.4 is eligible and below 0.5
    assert got.tolist() == [[False, True, False, True, False], [False, False, False, False, True]]
    assert not pick_remasks(doubt, eligible, 0, 1.0).any()
    assert pick_remasks(torch.tensor([[float("nan"), 0.4]]), torch.tensor([[True, True]]), 1, 0.5).tolist() == \
        [[True, False]]  # a NaN score counts as the least confident


def test_remaskable_stops_at_the_stable_prefix():
    masked = torch.tensor([[False, False, True, False, False, True], [False, False, False, False, False, True]])
    held = torch.tensor([[True, True, False, True, True, False], [True, True, True, True, True, False]])
    columns = torch.arange(6)
    # Row 0: columns 0-1 precede the first mask (2): final. Row 1: everything before column 5 is final.
    assert remaskable(held, masked, columns).tolist() == [[False, False, False, True, True, False], [False] * 6]


# ----------------------------------------------------------------------------- off, and on without doubts

@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
def test_off_and_never_doubting_equal_llada(cache):
    model = _model(0)
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8]]
    for temperature in (0.0, 1.0):
        base = dict(gen_length=12, steps=8, block_length=6, temperature=temperature, cache=cache, seed=3)
        ref, ref_n, ref_events = _run(model, prompts, SampleConfig(**base))
        assert all(not e.remasked.any() and e.remasks(1) == [] for e in ref_events)
        # On, but no committed token is ever below 1e-30: exactly the same run, step by step.
        canvas, n, events = _run(model, prompts, SampleConfig(**base, remask_committed=3, remask_below=1e-30))
        assert torch.equal(canvas, ref) and n == ref_n == 8 and len(events) == len(ref_events)
        for e, r in zip(events, ref_events):
            assert torch.equal(e.canvas, r.canvas) and torch.equal(e.committed, r.committed)
            assert not e.remasked.any()


# ----------------------------------------------------------------------------- a doubted token is fixed

A, B, G3 = 10, 11, 13  # the early (wrong) guess, the right token, what column g3 settles to


class SecondThoughts(nn.Module):
    """Hand-made logits over a 2-token prompt and 4 generated columns g0..g3 (canvas columns 2..5).

    g2 is the surest column and says A while g3 is masked; once g3 holds G3 it says B, and A
    becomes improbable. g3 says G3 (logit 6), g0 and g1 say 5 and 6 weakly. A prompt starting
    with 9 makes g3 say 14 instead, so g2 never changes its mind (a row without doubts).
    """

    def forward(self, idx: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        Bsz, L = idx.shape
        logits = torch.zeros(Bsz, L, 32)
        first = idx[torch.arange(Bsz), (~attn_mask).sum(-1) if attn_mask is not None else 0]  # (B,) first real token
        g = L - 4  # column of g0
        logits[:, g, 5], logits[:, g + 1, 6] = 3.5, 3.0
        settled = idx[:, g + 3] == G3  # (B,)
        logits[:, g + 2, A] = torch.where(settled, 0.0, 9.0)
        logits[:, g + 2, B] = torch.where(settled, 9.0, 0.0)
        logits[torch.arange(Bsz), g + 3, torch.where(first == 9, 14, G3)] = 6.0
        return logits


def test_doubted_commit_is_remasked_then_replaced():
    model = SecondThoughts()
    plain, n_plain, _ = _run(model, [[1, 2]], SampleConfig(gen_length=4, steps=4))
    assert plain[0, 2:].tolist() == [5, 6, A, G3] and n_plain == 4  # LLaDA keeps its early guess
    canvas, n, events = _run(model, [[1, 2]], SampleConfig(gen_length=4, steps=4, remask_committed=1))
    assert canvas[0, 2:].tolist() == [5, 6, B, G3] and n == 4  # fixed, in the same number of passes
    # step 0 commits g2 = A, step 1 g3 (g2 still sure), step 2 g0 and sends g2 back, step 3 g1 and g2 = B
    assert [[c for c, _, _ in e.commits(0)] for e in events] == [[4], [5], [2], [3, 4]]
    assert [e.remasks(0) for e in events] == [[], [], [4], []]
    assert events[2].canvas[0, 4] == MASK and events[0].canvas[0, 4] == A and events[3].canvas[0, 4] == B


def test_remasking_is_per_row_in_a_batch():
    model = SecondThoughts()
    cfg = SampleConfig(gen_length=4, steps=4, remask_committed=2)
    prompts = [[1, 2], [9, 2]]
    canvas, n, events = _run(model, prompts, cfg)
    assert canvas[:, 2:].tolist() == [[5, 6, B, G3], [5, 6, A, 14]] and n == 4
    assert [e.remasks(1) for e in events] == [[]] * 4 and events[2].remasks(0) == [4]
    for row, p in zip(canvas, prompts):
        assert torch.equal(row, _run(model, [p], cfg)[0][0])


# ----------------------------------------------------------------------------- invariants, random-ish models

def _check_run(cfg: SampleConfig, prompts: list[list[int]], canvas: Tensor, n: int,
               events: list[StepEvent], start: Tensor) -> int:
    """Invariants of a re-masking run; returns the number of tokens it re-masked."""
    P = max(len(p) for p in prompts)
    L, W = canvas.shape[1], cfg.block_length or cfg.gen_length
    passes = 2 if cfg.cfg_scale > 0 else 1
    assert not (canvas == MASK).any()
    if cfg.remasking == "threshold":
        assert n <= cfg.steps * passes and n == len(events) * passes
    else:
        assert n == cfg.steps * passes == len(events) * passes  # the same passes as without re-masking
    before, remasks, commits = start, 0, torch.zeros(canvas.shape[0], dtype=torch.long)
    for e in events:
        lo = P + W * e.block
        col = torch.arange(L)
        assert not e.remasked[:, col < lo].any() and not e.remasked[:, col >= lo + W].any()  # its block only
        assert torch.equal(e.canvas[:, :lo], canvas[:, :lo])  # prompt and earlier blocks: final
        assert (before[e.remasked] != MASK).all() and (e.canvas[e.remasked] == MASK).all()
        assert not (e.remasked & e.committed).any()
        if e.step % (cfg.steps // cfg.num_blocks) == cfg.steps // cfg.num_blocks - 1:
            assert not e.remasked.any()  # never on a block's last step
        for r in range(canvas.shape[0]):  # the stable prefix (text a stream has sent) only grows
            old, new = before[r, P:].tolist(), e.canvas[r, P:].tolist()
            k = old.index(MASK) if MASK in old else len(old)
            assert new[:k] == old[:k]
        remasks += int(e.remasked.sum())
        commits += e.committed.sum(-1)
        before = e.canvas
    assert commits.tolist() == [cfg.gen_length + int(sum(e.remasked[r].sum() for e in events))
                                for r in range(canvas.shape[0])]  # every re-masked token committed again
    return remasks


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
def test_invariants_over_seeds(cache):
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8]]
    total = 0
    for seed in (0, 1, 2):
        model = _model(seed)
        for extra in (dict(temperature=0.0), dict(temperature=1.0, seed=seed), dict(cfg_scale=1.0),
                      dict(remasking="threshold", threshold=0.2), dict(remasking="random", seed=seed)):
            cfg = SampleConfig(gen_length=12, steps=8, block_length=6, cache=cache, remask_committed=2,
                               remask_below=0.9, **extra)
            start = torch.full((2, 17), MASK)
            start[0, :5] = torch.tensor([EOS, EOS, 1, 2, 3])
            start[1, :5] = torch.tensor(prompts[1])
            canvas, n, events = _run(model, prompts, cfg)
            assert canvas[0, :5].tolist() == [EOS, EOS, 1, 2, 3] and canvas[1, :5].tolist() == prompts[1]
            total += _check_run(cfg, prompts, canvas, n, events, start)
    assert total > 20  # the runs did re-mask (the invariants were not checked on empty sets)


def test_infill_with_remasking_keeps_the_text():
    model = _model(1)
    ids = torch.tensor([1, 2, MASK, MASK, MASK, 3, MASK, MASK, MASK, MASK, 4])
    edit = ids == MASK
    events: list[StepEvent] = []
    out = infill(model, ids, edit, SampleConfig(steps=5, remask_committed=2, remask_below=1.0), mask_id=MASK,
                 eos_id=EOS, callback=events.append)
    assert torch.equal(out.canvas[0, ~edit], ids[~edit]) and not (out.canvas == MASK).any()
    assert out.n_forward == 5 and sum(len(e.remasks(0)) for e in events) > 0
    assert all(set(e.remasks(0)) <= set(edit.nonzero().flatten().tolist()) for e in events)


# ----------------------------------------------------------------------------- user errors and the CLI

def test_config_errors():
    cases = [(dict(remask_committed=-1), r"^--remask-committed must be >= 0 \(0 turns re-masking off\), got -1$"),
             (dict(remask_below=0.0), r"^--remask-below must be in \(0, 1\]"),
             (dict(remask_below=1.5), r"^--remask-below must be in \(0, 1\].*got 1.5$"),
             (dict(remask_committed=1, gen_length=8, block_length=4, steps=2),
              r"^--remask-committed needs at least 2 steps per block.*--steps 2 for 2 block\(s\)")]
    for kw, pattern in cases:
        with pytest.raises(RemaskError, match=pattern) as err:
            SampleConfig(**kw)
        assert "\n" not in str(err.value)
    SampleConfig(remask_committed=0, gen_length=8, block_length=4, steps=2)  # off: one step per block is fine


def test_cli_flags_on_every_sampling_command():
    parser = build_parser()
    for argv in (["generate", "p"], ["infill", "a <mask:3>"], ["chat"], ["eval", "completion", "--data", "d.jsonl"]):
        args = parser.parse_args([*argv, "--ckpt", "x", "--gen-length", "8", "--remask-committed", "2",
                                  "--remask-below", "0.3"])
        cfg = sample_config(args)
        assert (cfg.remask_committed, cfg.remask_below) == (2, 0.3)
        default = sample_config(parser.parse_args([*argv, "--ckpt", "x"]))
        assert (default.remask_committed, default.remask_below) == (0, 0.5)
    bad = parser.parse_args(["generate", "p", "--ckpt", "x", "--remask-committed", "-2"])
    with pytest.raises(RemaskError, match="--remask-committed must be >= 0"):
        sample_config(bad)
