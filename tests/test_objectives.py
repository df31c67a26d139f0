from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from conftest import tiny_model_config
from remask.model import build_model
from remask.objectives import Batch, ar_loss, forward_process, mdm_loss, sft_loss
from remask.rng import keyed_uniform

MASK = 30


def test_masked_fraction_tracks_p():
    L = 4000
    x0 = torch.randint(0, 30, (5, L))
    noise = keyed_uniform(0, 0, np.arange(5), 1 + L)
    _, masked, p = forward_process(x0, noise, mask_id=MASK, eps=1e-3)
    frac = masked.float().mean(1)
    assert torch.all((frac - p).abs() < 4 * torch.sqrt(p * (1 - p) / L) + 1e-3)
    torch.testing.assert_close(p, (1 - 1e-3) * noise[:, 0] + 1e-3)


def test_forward_process_replaces_exactly_the_masked_tokens():
    x0 = torch.randint(0, 30, (3, 50))
    xt, masked, _ = forward_process(x0, keyed_uniform(1, 2, np.arange(3), 51), mask_id=MASK, eps=1e-3)
    assert torch.equal(xt == MASK, masked)
    assert torch.equal(xt[~masked], x0[~masked])


def test_mdm_loss_equals_hand_computation():
    torch.manual_seed(0)
    model = build_model(tiny_model_config(), seed=1)
    x0 = torch.randint(0, 30, (3, 10))
    noise = keyed_uniform(7, 0, np.arange(3), 11)
    got = mdm_loss(model, Batch(x0), noise, mask_id=MASK, eps=1e-3).sum() / 3
    # By hand, token by token: sum over masked positions of -log p(x0 | xt) / p, over B * L.
    total = 0.0
    for b in range(3):
        p = (1 - 1e-3) * noise[b, 0].item() + 1e-3
        xt = x0[b].clone()
        masked = [i for i in range(10) if noise[b, 1 + i].item() < p]
        xt[masked] = MASK
        logp = F.log_softmax(model(xt[None])[0], -1)
        total += sum(-logp[i, x0[b, i]].item() / p for i in masked)
    assert abs(got.item() - total / 30) < 1e-5


def test_sft_prompt_never_masked_and_normalised_by_answer_length():
    model = build_model(tiny_model_config(), seed=1)
    x0 = torch.randint(0, 29, (2, 12))
    x0[0, 8:] = 31  # EOS padding belongs to the answer
    prompt = torch.zeros(2, 12, dtype=torch.bool)
    prompt[0, :5] = True
    prompt[1, :3] = True
    for seed in range(200):
        noise = keyed_uniform(seed, 0, np.arange(2), 13)
        _, masked, _ = forward_process(x0, noise, mask_id=MASK, eps=1e-3, maskable=~prompt)
        assert not masked[prompt].any()
    noise = keyed_uniform(3, 0, np.arange(2), 13)
    got = sft_loss(model, Batch(x0, prompt_mask=prompt), noise, mask_id=MASK, eps=1e-3)
    for b, ans_len in ((0, 7), (1, 9)):
        p = (1 - 1e-3) * noise[b, 0] + 1e-3
        masked = (noise[b, 1:] < p) & ~prompt[b]
        xt = torch.where(masked, MASK, x0[b])
        nll = F.cross_entropy(model(xt[None])[0], x0[b], reduction="none")
        torch.testing.assert_close(got[b], (nll[masked] / p).sum() / ans_len, atol=1e-5, rtol=1e-5)


def test_ar_loss_is_next_token_cross_entropy():
    model = build_model(tiny_model_config(causal=True), seed=1)
    x = torch.randint(0, 30, (2, 9))
    ref = F.cross_entropy(model(x[:, :-1]).transpose(1, 2), x[:, 1:], reduction="none").mean(1)
    torch.testing.assert_close(ar_loss(model, Batch(x)), ref)


def test_row_nll_is_cross_entropy_with_its_gradient_in_any_chunking(monkeypatch):
    import remask.objectives as objectives

    torch.manual_seed(0)
    x, t = torch.randn(6, 9, dtype=torch.double, requires_grad=True), torch.randint(0, 9, (6,))
    assert torch.autograd.gradcheck(lambda logits: objectives.row_nll(logits, t), (x,))
    logits, target, g = torch.randn(40, 300), torch.randint(0, 300, (40,)), torch.randn(40)
    ref = logits.clone().requires_grad_()
    (F.cross_entropy(ref, target, reduction="none") * g).sum().backward()
    real = objectives._chunks
    monkeypatch.setattr(objectives, "_chunks", lambda lg: real(lg, floats=1000))  # 3 rows a chunk
    got = logits.clone().requires_grad_()
    nll = objectives.row_nll(got, target)
    (nll * g).sum().backward()
    torch.testing.assert_close(nll, F.cross_entropy(logits, target, reduction="none"))
    torch.testing.assert_close(got.grad, ref.grad)
    half = logits.bfloat16().requires_grad_()
    objectives.row_nll(half, target).sum().backward()
    assert half.grad.dtype == torch.bfloat16  # the gradient stays in the logits' dtype


def test_the_head_runs_at_the_selected_positions_only():
    model = build_model(tiny_model_config(), seed=1)
    x = torch.randint(0, 30, (3, 10))
    select = torch.rand(3, 10) < 0.4
    torch.testing.assert_close(model(x, select=select), model(x)[select])
    assert model(x, select=select).shape == (int(select.sum()), 32)
