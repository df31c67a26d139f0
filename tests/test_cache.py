"""K/V caches: the model's cached windows, the exact AR cache, Fast-dLLM's prefix and dual caches."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from conftest import tiny_model_config
from remask.errors import RemaskError
from remask.model import build_model
from remask.sampling import SampleConfig, StepEvent, generate, infill
from remask.sampling.ar import ARSampleConfig, ar_generate
from remask.sampling.rules import low_confidence

MASK, EOS = 30, 31


def _model(**kw) -> nn.Module:
    # init_std 0.3: a tiny random model with peaked, varied predictions (no near-ties everywhere)
    return build_model(tiny_model_config(init_std=0.3, **kw), seed=0).eval()


def _run(model, prompts, cfg, **kw) -> tuple[Tensor, list[StepEvent]]:
    events: list[StepEvent] = []
    out = generate(model, prompts, cfg, mask_id=MASK, eos_id=EOS, callback=events.append, **kw)
    return out.tokens, events


# ----------------------------------------------------------------------------- the model's cached window

@pytest.mark.parametrize("causal", [False, True])
def test_cached_window_equals_the_full_forward(causal):
    model = _model(causal=causal, n_kv_head=2)
    x = torch.randint(0, 30, (2, 12))
    attn = torch.ones(2, 12, dtype=torch.bool)
    attn[0, :3] = False  # row 0 is left-padded
    full = model(x, attn_mask=attn)  # (2, 12, V)
    cache = model.new_cache(12)
    torch.testing.assert_close(model(x, attn_mask=attn, cache=cache, start=0), full)
    # Any window recomputed against unchanged neighbours gives the same logits.
    torch.testing.assert_close(model(x[:, 5:9], attn_mask=attn, cache=cache, start=5), full[:, 5:9])
    torch.testing.assert_close(model(x[:, 7:], attn_mask=attn, cache=cache, start=7), full[:, 7:])
    # A changed neighbour is *not* seen until it is rewritten: the cache really is a cache.
    y = x.clone()
    y[:, 2] = (x[:, 2] + 1) % 30
    stale = model(y[:, 5:9], attn_mask=attn, cache=cache, start=5)
    torch.testing.assert_close(stale, full[:, 5:9])
    if not causal:
        assert not torch.allclose(model(y, attn_mask=attn)[:, 5:9], full[:, 5:9], atol=1e-6)
    with pytest.raises(ValueError, match="do not fit"):
        model(x[:, :4], cache=cache, start=10)


def test_slice_select_runs_the_head_on_those_columns_only():
    model = _model()
    x = torch.randint(0, 30, (2, 12))
    attn = torch.ones(2, 12, dtype=torch.bool)
    attn[1, :2] = False
    full = model(x, attn_mask=attn)  # (2, 12, V)
    torch.testing.assert_close(model(x, attn_mask=attn, select=slice(4, 8)), full[:, 4:8])
    cache = model.new_cache(12)
    model(x, attn_mask=attn, cache=cache, start=0)
    torch.testing.assert_close(model(x[:, 6:], attn_mask=attn, cache=cache, start=6, select=slice(0, 3)),
                               full[:, 6:9])


@pytest.mark.parametrize("mode", ["none", "prefix", "dual"])
@pytest.mark.parametrize("extra", [{}, {"early_stop": True}, {"cfg_scale": 1.0}, {"cache_full_every": 2}])
def test_block_only_head_generates_what_full_logits_do(mode, extra):
    # A plain callable hides ``selects_rows``, so BlockForward cuts the block from full logits instead:
    # the head on the block's columns alone (and, for early exit, from the block to the end) must
    # change nothing but the cost. EOS is pushed up so that early exit has answers that end.
    model = _model()
    with torch.no_grad():
        model.lm_head.weight[EOS] *= 6.0

    class Plain(nn.Module):  # the same weights, full logits every pass
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, *a, **k):
            return self.inner(*a, **k)

        def new_cache(self, n: int):
            return self.inner.new_cache(n)

    assert model.selects_rows and not getattr(Plain(model), "selects_rows", False)
    cfg = SampleConfig(**{"gen_length": 16, "steps": 16, "block_length": 4, "cache": mode, "early_stop": False,
                          **extra})
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8]]
    sliced, ev_sliced = _run(model, prompts, cfg)
    whole, ev_whole = _run(Plain(model), prompts, cfg)
    assert torch.equal(sliced, whole)
    assert [e.n_forward for e in ev_sliced] == [e.n_forward for e in ev_whole]
    assert [e.early_exit for e in ev_sliced] == [e.early_exit for e in ev_whole]
    if extra.get("early_stop"):  # the to_end path ran: early exit fired somewhere
        assert any(e.early_exit for e in ev_sliced)


def test_ar_incremental_decoding_equals_the_full_forward():
    model = _model(causal=True)
    x = torch.randint(0, 30, (2, 10))
    full = model(x)
    cache = model.new_cache(10)
    steps = [model(x[:, :4], cache=cache, start=0)] + [model(x[:, t:t + 1], cache=cache, start=t) for t in range(4, 10)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_ar_generate_cached_equals_uncached(temperature):
    model = _model(causal=True)
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9], [10]]
    runs = [ar_generate(model, prompts, ARSampleConfig(gen_length=24, temperature=temperature, seed=3,
                                                       kv_cache=kv), eos_id=EOS, mask_id=MASK) for kv in (True, False)]
    assert torch.equal(runs[0].tokens, runs[1].tokens)
    assert len(runs[0].tokens.unique()) > 3
    if temperature == 0:  # and batched equals one by one
        for row, p in zip(runs[0].tokens, prompts):
            alone = ar_generate(model, [p], ARSampleConfig(gen_length=24), eos_id=EOS, mask_id=MASK)
            assert torch.equal(row, alone.tokens[0])


# ----------------------------------------------------------------------------- prefix and dual caches

def _step_confidence(model: nn.Module, canvas: Tensor, attn: Tensor | None, cols: slice) -> Tensor:
    """low_confidence of the argmax prediction, uncached, on the masked columns ``cols`` of ``canvas``."""
    with torch.inference_mode():
        logits = (model(canvas) if attn is None else model(canvas, attn_mask=attn)).float()[:, cols]
        logits[..., MASK] = float("-inf")
        masked = canvas[:, cols] == MASK
        return low_confidence(logits, logits.argmax(-1), masked, None)


def _full_steps_exact(model: nn.Module, prompt: list[int], cfg: SampleConfig, full: int) -> float:
    """Run ``cfg``; every step whose index is a multiple of ``full`` must equal the uncached
    confidences of its block. -> the largest deviation seen on the other (cached) steps."""
    tokens, events = _run(model, [prompt], cfg)
    P, W = len(prompt), cfg.block_length
    before = torch.tensor([prompt + [MASK] * cfg.gen_length])
    stale = 0.0
    for ev in events:
        cols = slice(P + W * ev.block, P + W * (ev.block + 1))
        exact = _step_confidence(model, before, None, cols)
        if ev.step % full == 0:  # a full forward pass
            torch.testing.assert_close(ev.confidence[:, cols], exact)
        else:
            stale = max(stale, float((ev.confidence[:, cols] - exact).nan_to_num(0).abs().max()))
        before = ev.canvas
    assert not (tokens == MASK).any()
    return stale


@pytest.mark.parametrize("mode", ["prefix", "dual"])
def test_first_step_of_every_block_is_exact(mode):
    cfg = SampleConfig(gen_length=16, steps=8, block_length=4, cache=mode, early_stop=False)  # 2 steps a block
    stale = _full_steps_exact(_model(), [1, 2, 3, 4], cfg, full=2)
    assert stale > 0  # later steps really use stale entries (2 layers: not exact)


@pytest.mark.parametrize("mode", ["prefix", "dual"])
def test_cache_refresh_makes_every_nth_step_exact(mode):
    # 8 steps a block, refresh 2: steps 0, 2, 4, 6 of each block are full passes, the others cached;
    # refresh 1 recomputes every step, so it equals the uncached run step for step.
    model, prompt = _model(), [1, 2, 3, 4]
    cfg = SampleConfig(gen_length=16, steps=16, block_length=8, cache=mode, cache_refresh=2, early_stop=False)
    stale = _full_steps_exact(model, prompt, cfg, full=2)
    assert stale > 0  # the other steps really are cached
    base = dict(gen_length=16, steps=16, block_length=8, early_stop=False)
    ref, ref_events = _run(model, [prompt], SampleConfig(**base))
    every, every_events = _run(model, [prompt], SampleConfig(**base, cache=mode, cache_refresh=1))
    assert torch.equal(every, ref)
    for a, b in zip(every_events, ref_events):
        torch.testing.assert_close(a.confidence, b.confidence)
    with pytest.raises(RemaskError, match="cache-refresh must be >= 0"):
        SampleConfig(cache=mode, cache_refresh=-1)


@pytest.mark.parametrize("mode", ["prefix", "dual"])
def test_cache_full_every_keeps_full_passes_at_every_nth_block(mode):
    # 4 blocks of 2 steps, a full pass at blocks 0 and 2 only: steps 0 and 4 are exact, the others
    # (blocks 1 and 3 start with a window over the previous block and their own) are cached.
    cfg = SampleConfig(gen_length=16, steps=8, block_length=4, cache=mode, cache_full_every=2, early_stop=False)
    assert _full_steps_exact(_model(), [1, 2, 3, 4], cfg, full=4) > 0
    with pytest.raises(RemaskError, match="cache-full-every must be >= 1"):
        SampleConfig(cache=mode, cache_full_every=0)


@pytest.mark.parametrize("mode", ["prefix", "dual"])
def test_window_refresh_rewrites_the_previous_block(mode):
    # One layer: a column's keys/values depend on its own token only, so a window over the previous
    # block and this one leaves nothing stale and the run equals the uncached one. Without the
    # previous block in the window, its last commits would still be cached as masks.
    model, prompts = _model(n_layer=1), [[1, 2, 3, 4], [5, 6]]
    base = dict(gen_length=16, steps=16, block_length=4, early_stop=False)
    ref, ref_events = _run(model, prompts, SampleConfig(**base))
    got, got_events = _run(model, prompts, SampleConfig(**base, cache=mode, cache_full_every=10))
    assert torch.equal(got, ref)
    for a, b in zip(got_events, ref_events):
        torch.testing.assert_close(a.confidence, b.confidence, atol=1e-5, rtol=1e-5)
    # early exit reads the whole suffix at a block's start; a window does not reach it, so it waits
    out = generate(model, prompts, SampleConfig(**{**base, "early_stop": True}, cache=mode, cache_full_every=2),
                   mask_id=MASK, eos_id=EOS)
    assert not (out.tokens == MASK).any()


@pytest.mark.parametrize("mode", ["prefix", "dual"])
@pytest.mark.parametrize("block_length", [16, 4])
def test_one_layer_caches_are_exact(mode, block_length):
    # With one layer a column's keys/values depend on its own token only. The prefix cache holds
    # the prompt and finished blocks, the dual cache also the still-masked suffix: none of them
    # changes during a block, so cached and uncached runs agree (one block is the case).
    model = _model(n_layer=1)
    prompts = [[1, 2, 3, 4]]
    for remasking in ("low_confidence", "threshold"):
        base = dict(gen_length=16, steps=16, block_length=block_length, remasking=remasking, threshold=0.5,
                    early_stop=False)
        ref, ref_events = _run(model, prompts, SampleConfig(**base))
        got, got_events = _run(model, prompts, SampleConfig(**base, cache=mode))
        assert torch.equal(got, ref) and len(got_events) == len(ref_events)
        for a, b in zip(got_events, ref_events):
            torch.testing.assert_close(a.confidence, b.confidence, atol=1e-5, rtol=1e-5)


def test_batched_with_cache_matches_one_by_one_within_tolerance():
    # Tolerance (documented in generate): with a cache, batched rows differ from one-by-one rows
    # only by float rounding of differently shaped attention: confidences within 1e-5.
    model = _model()
    prompts = [[1, 2], [3, 4, 5, 6, 7], [8, 9, 10]]
    for mode in ("none", "prefix", "dual"):
        cfg = SampleConfig(gen_length=12, steps=12, block_length=4, cache=mode, early_stop=False)
        batched, events = _run(model, prompts, cfg)
        for r, p in enumerate(prompts):
            alone, alone_events = _run(model, [p], cfg)
            assert torch.equal(batched[r], alone[0])
            for a, b in zip(events, alone_events):
                torch.testing.assert_close(a.confidence[r, -12:], b.confidence[0, -12:], atol=1e-5, rtol=1e-5)


def test_cache_with_cfg_threshold_and_infill():
    one = _model(n_layer=1)
    cfg = dict(gen_length=8, steps=8, block_length=4, cfg_scale=1.0, early_stop=False)
    ref = generate(one, [[1, 2, 3]], SampleConfig(**cfg), mask_id=MASK, eos_id=EOS)
    got = generate(one, [[1, 2, 3]], SampleConfig(**cfg, cache="dual"), mask_id=MASK, eos_id=EOS)
    assert torch.equal(got.tokens, ref.tokens) and got.n_forward == ref.n_forward == 16
    # Infill: a dual cache recomputes only the span of the holes.
    canvas = [1, 2, MASK, MASK, 5, MASK, 7, 8, 9]
    edit = [t == MASK for t in canvas]
    a = infill(one, canvas, edit, SampleConfig(steps=3), mask_id=MASK, eos_id=EOS)
    b = infill(one, canvas, edit, SampleConfig(steps=3, cache="dual"), mask_id=MASK, eos_id=EOS)
    assert torch.equal(a.canvas, b.canvas)
    # Parallel decoding and a cache together: fewer passes than steps (the random model is unsure,
    # so the threshold is low).
    fast = generate(_model(), [[1, 2]], SampleConfig(gen_length=16, steps=16, block_length=8, cache="dual",
                                                     remasking="threshold", threshold=0.2, early_stop=False),
                    mask_id=MASK, eos_id=EOS)
    assert fast.n_forward < 8 and not (fast.tokens == MASK).any()


def test_bf16_autocast_runs_on_cpu():
    out = generate(_model(), [[1, 2]], SampleConfig(gen_length=8, steps=8, block_length=4, cache="prefix",
                                                    dtype="bfloat16"), mask_id=MASK, eos_id=EOS)
    assert not (out.tokens == MASK).any()


def test_cache_needs_a_remask_model():
    class Plain(nn.Module):
        def forward(self, idx, attn_mask=None):
            return torch.zeros(*idx.shape, 32)

    with pytest.raises(RemaskError, match="--cache prefix needs a remask Transformer"):
        generate(Plain(), [[1]], SampleConfig(gen_length=4, steps=4, cache="prefix"), mask_id=MASK, eos_id=EOS)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_bf16_compiled_dual_cache():
    model = build_model(tiny_model_config(init_std=0.3), device="cuda", seed=0).eval()
    cfg = SampleConfig(gen_length=32, steps=32, block_length=8, cache="dual", remasking="threshold", compile=True)
    out = generate(model, [[1, 2, 3]], cfg, mask_id=MASK, eos_id=EOS)
    assert out.tokens.is_cuda and not (out.tokens == MASK).any()


# ----------------------------------------------------------------------------- the command line

def test_cli_sampler_flags(tmp_path, capsys):
    import json

    from remask.checkpoint import save_checkpoint
    from remask.commands import main
    from remask.config import ModelConfig, RunConfig
    from remask.data.tokenizer import ByteTokenizer

    cfg = ModelConfig(d_model=32, n_layer=1, n_head=2, max_seq_len=64, init_std=0.3)  # one layer: caches exact
    save_checkpoint(tmp_path / "ck", build_model(cfg, seed=0).eval(), RunConfig(model=cfg), ByteTokenizer())

    def run(*flags: str) -> dict:
        assert main(["generate", "--ckpt", str(tmp_path / "ck"), "--gen-length", "16", "--block-length", "8",
                     "--json", *flags, "ab"]) == 0
        return json.loads(capsys.readouterr().out)

    ref = run()
    assert run("--cache", "dual")["text"] == run("--cache", "prefix")["text"] == ref["text"]
    # The random model is unsure, so a low threshold shows the parallel commits.
    fast = run("--cache", "dual", "--remasking", "threshold", "--threshold", "0.05")
    slow = run("--cache", "dual", "--remasking", "threshold", "--confidence", "margin", "--threshold", "0.05")
    assert fast["n_forward"] < slow["n_forward"] < ref["n_forward"] == 16
    assert main(["generate", "--ckpt", str(tmp_path / "ck"), "--threshold", "2", "ab"]) == 2
    assert "--threshold must be in (0, 1]" in capsys.readouterr().err
