from __future__ import annotations

import pytest
import torch

from conftest import tiny_model_config
from remask.config import ModelConfig
from remask.errors import RemaskError
from remask.model import RMSNorm, apply_rope, build_model, rope_tables


def test_bidirectional_later_token_changes_first_position():
    model = build_model(tiny_model_config(), seed=0).eval()
    x = torch.randint(0, 30, (1, 12))
    y = x.clone()
    y[0, -1] = (x[0, -1] + 1) % 30
    a, b = model(x), model(y)
    assert not torch.allclose(a[0, 0], b[0, 0], atol=1e-6)


def test_causal_earlier_positions_ignore_later_tokens():
    model = build_model(tiny_model_config(causal=True), seed=0).eval()
    x = torch.randint(0, 30, (1, 12))
    y = x.clone()
    y[0, 7] = (x[0, 7] + 1) % 30
    a, b = model(x), model(y)
    torch.testing.assert_close(a[0, :7], b[0, :7])
    assert not torch.allclose(a[0, 7:], b[0, 7:], atol=1e-6)


@pytest.mark.parametrize("causal", [False, True])
def test_left_padding_gives_the_unpadded_logits(causal):
    model = build_model(tiny_model_config(causal=causal), seed=0).eval()
    x = torch.randint(0, 30, (1, 9))
    padded = torch.cat([torch.full((1, 4), 31), x], dim=1)
    attn = torch.cat([torch.zeros(1, 4, dtype=torch.bool), torch.ones(1, 9, dtype=torch.bool)], dim=1)
    alone = model(x)
    batched = model(padded, attn_mask=attn)
    torch.testing.assert_close(batched[:, 4:], alone, atol=1e-5, rtol=1e-5)
    assert torch.isfinite(batched).all()  # padding rows never see zero keys


def test_rope_matches_complex_rotation():
    D, L = 8, 5
    x = torch.randn(1, 1, L, D)
    cos, sin = rope_tables(torch.arange(L)[None], D, 10000.0)
    got = apply_rope(x, cos, sin)
    # Reference: pair dimension i with i + D/2 and rotate by angle pos * theta^(-2i/D).
    freqs = 1.0 / 10000.0 ** (torch.arange(0, D, 2).float() / D)
    z = torch.complex(x[..., : D // 2], x[..., D // 2 :]) * torch.polar(torch.ones(L, D // 2), torch.arange(L)[:, None] * freqs)
    torch.testing.assert_close(got, torch.cat([z.real, z.imag], dim=-1), atol=1e-5, rtol=1e-5)


def test_rmsnorm_matches_formula():
    norm = RMSNorm(6, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.arange(1.0, 7.0))
    x = torch.randn(3, 6)
    ref = x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-5) * torch.arange(1.0, 7.0)
    torch.testing.assert_close(norm(x), ref)


def test_grouped_query_attention_and_tied_embeddings():
    model = build_model(tiny_model_config(n_head=4, n_kv_head=2, tie_embeddings=True), seed=0)
    assert model.blocks[0].attn.k_proj.weight.shape == (2 * 8, 32)
    assert model.lm_head.weight is model.embed.weight
    assert model(torch.randint(0, 30, (2, 7))).shape == (2, 7, 32)


def test_build_materialises_every_parameter_and_seeds_init():
    a = build_model(tiny_model_config(), seed=3)
    b = build_model(tiny_model_config(), seed=3)
    assert all(not p.is_meta for p in a.parameters())
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb)
    assert all(torch.all(n.weight == 1) for n in a.modules() if isinstance(n, RMSNorm))
    # no biases anywhere (LLaMA style)
    assert not any(name.endswith("bias") for name, _ in a.named_parameters())


def test_model_config_validation_errors_are_one_line():
    with pytest.raises(RemaskError, match="divisible"):
        ModelConfig(d_model=30, n_head=4)
    with pytest.raises(RemaskError, match="mask_token_id"):
        ModelConfig(vocab_size=10, mask_token_id=12)
    with pytest.raises(RemaskError, match="n_kv_head"):
        ModelConfig(n_head=4, n_kv_head=3)
