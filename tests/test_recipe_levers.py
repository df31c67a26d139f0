"""The training levers of the recipe ablation: low-discrepancy t, the loss weight, validation that
ignores both, continued pre-training of an AR checkpoint as a diffusion model, bf16 on the CPU
(attention in float32) and the compile guard."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_model_config
from remask import devices
from remask.config import TrainConfig, preset_tiny
from remask.errors import RemaskError
from remask.model import _attend, build_model
from remask.objectives import Batch, mdm_loss, stratify_t
from remask.rng import keyed_uniform
from remask.train import distributed, load_checkpoint, train
from remask.train.distributed import DistInfo

MASK = 30


def _times(kind: str, batch: int = 16, step: int = 3, slots: np.ndarray | None = None) -> np.ndarray:
    slots = np.arange(batch) if slots is None else slots
    noise = keyed_uniform(1, step, slots + step * batch, 5)
    return stratify_t(noise, slots, batch, seed=1, step=step, kind=kind)[:, 0].numpy()


def test_stratified_t_puts_one_draw_in_every_stratum():
    t = _times("stratified")
    assert sorted(np.floor(t * 16).astype(int).tolist()) == list(range(16))
    assert not np.allclose(t, _times("stratified", step=4))  # the offset is drawn afresh each step


def test_antithetic_t_pairs_sum_to_one_and_iid_is_untouched():
    t = _times("antithetic")
    np.testing.assert_allclose(t[0::2] + t[1::2], 1.0, atol=1e-6)
    assert len(set(np.round(t[0::2], 6))) == 8  # a fresh u per pair
    noise = keyed_uniform(1, 3, np.arange(16), 5)
    assert stratify_t(noise, np.arange(16), 16, seed=1, step=3, kind="iid") is noise


@pytest.mark.parametrize("kind", ["stratified", "antithetic"])
def test_low_discrepancy_t_does_not_depend_on_how_the_batch_is_split(kind):
    whole = _times(kind)
    parts = np.concatenate([_times(kind, slots=np.arange(i, i + 4)) for i in range(0, 16, 4)])
    np.testing.assert_array_equal(whole, parts)


@pytest.mark.parametrize("kind", ["stratified", "antithetic"])
def test_low_discrepancy_t_keeps_each_t_uniform_and_lowers_the_batch_variance(kind):
    """Over many steps each t is still U(0, 1) (the expected loss, and the bound, are unchanged),
    while the batch mean of a function of t, as the loss is once the model has learnt, varies less."""
    means, iid_means, pooled = [], [], []
    for step in range(400):
        iid = keyed_uniform(1, step, np.arange(8), 2)[:, 0].numpy()
        t = stratify_t(keyed_uniform(1, step, np.arange(8), 2), np.arange(8), 8, seed=1, step=step, kind=kind)[:, 0]
        pooled.append(t.numpy())
        means.append(np.mean(t.numpy() ** 2))  # a loss that grows with the masking rate
        iid_means.append(np.mean(iid ** 2))
    pooled = np.concatenate(pooled)
    assert abs(pooled.mean() - 0.5) < 0.02 and abs((pooled ** 2).mean() - 1 / 3) < 0.02
    assert np.histogram(pooled, bins=10, range=(0, 1))[0].min() > 0.8 * len(pooled) / 10
    assert np.std(means) < 0.5 * np.std(iid_means)


def test_flat_weight_drops_the_one_over_p():
    model = build_model(tiny_model_config(), seed=1).eval()
    x0 = torch.randint(0, 30, (3, 10))
    noise = keyed_uniform(7, 0, np.arange(3), 11)
    p = (1 - 1e-3) * noise[:, 0] + 1e-3
    elbo = mdm_loss(model, Batch(x0), noise, mask_id=MASK)
    flat = mdm_loss(model, Batch(x0), noise, mask_id=MASK, weight="flat")
    torch.testing.assert_close(flat, elbo * p)


def test_new_train_options_are_validated():
    with pytest.raises(RemaskError, match="t_sampling"):
        TrainConfig(t_sampling="sobol")
    with pytest.raises(RemaskError, match="loss_weight"):
        TrainConfig(loss_weight="snr")


def _tiny(**train_kw):
    cfg = preset_tiny()
    for k, v in {"max_steps": 4, "log_interval": 1, "progress": False, "samples": 0, "dtype": "float32",
                 "device": "cpu", **train_kw}.items():
        setattr(cfg.train, k, v)
    return cfg


def _val(run) -> float:
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return next(r["val_loss"] for r in reversed(recs) if "val_loss" in r)


def test_validation_reports_the_elbo_whatever_the_training_weight_and_floor(tmp_path, text_corpus):
    """Training with a mask-rate floor or the flat weight changes the steps, never what validation
    measures: the same weights validate to the same figure."""
    plain = train(_tiny(max_steps=1), tmp_path / "plain", data=text_corpus)
    for name, kw in {"floor": {"mask_eps": 0.3}, "flat": {"loss_weight": "flat"}}.items():
        cfg = _tiny(max_steps=1, lr=1e-9, **kw)  # a step that leaves the weights (almost) where they are
        res = train(cfg, tmp_path / name, data=text_corpus, init_from=plain.checkpoint)
        assert res.val_loss == pytest.approx(plain.val_loss, rel=1e-3)


def test_an_ar_checkpoint_continues_as_a_bidirectional_diffusion_model(tmp_path, text_corpus):
    ar = train(_tiny(objective="ar"), tmp_path / "ar", data=text_corpus)
    assert load_checkpoint(ar.checkpoint).model.cfg.causal
    mdm = train(_tiny(objective="mdm", max_steps=2), tmp_path / "mdm", data=text_corpus, init_from=ar.checkpoint)
    cont = load_checkpoint(mdm.checkpoint)
    assert not cont.model.cfg.causal and not cont.config.model.causal
    # and the weights it started from are the AR model's: one step at a tiny LR barely moves them
    low = train(_tiny(objective="mdm", max_steps=1, lr=1e-9), tmp_path / "low", data=text_corpus, init_from=ar.checkpoint)
    a, b = load_checkpoint(ar.checkpoint).model, load_checkpoint(low.checkpoint).model
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, atol=1e-6, rtol=0)


def test_cpu_bf16_attention_runs_in_float32():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 16, 8, generator=g) for _ in range(3))
    ref = F.scaled_dot_product_attention(q, k, v)
    low = [x.bfloat16() for x in (q, k, v)]
    got = _attend(*low, None, False)
    assert got.dtype == torch.bfloat16
    exact = F.scaled_dot_product_attention(*(x.float() for x in low))  # the rounded inputs, attended in fp32
    torch.testing.assert_close(got.float(), exact.bfloat16().float(), atol=0, rtol=0)
    torch.testing.assert_close(got.float(), ref, atol=3e-2, rtol=3e-2)


def test_training_auto_dtype_follows_the_cpu(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(devices, "native_bf16_cpu", lambda: True)
    assert devices.autocast_dtype("auto", cpu, cpu_bf16=True) == torch.bfloat16
    assert devices.autocast_dtype("auto", cpu) is None  # inference keeps float32
    assert devices.autocast_dtype("float32", cpu, cpu_bf16=True) is None
    monkeypatch.setattr(devices, "native_bf16_cpu", lambda: False)
    assert devices.autocast_dtype("auto", cpu, cpu_bf16=True) is None
    assert devices.autocast_dtype("bfloat16", cpu) == torch.bfloat16


def test_compile_without_a_cxx_compiler_warns_and_trains_uncompiled(monkeypatch):
    monkeypatch.setattr(distributed, "_cxx_compiler", lambda: None)
    model = build_model(tiny_model_config(), seed=0)
    forwards = [b.forward for b in model.blocks]
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        distributed.parallelize(model, info, compile=True)
    assert any("no C++ compiler" in str(w.message) for w in caught)
    assert [b.forward for b in model.blocks] == forwards


def test_compiled_blocks_run_eagerly_at_other_lengths(monkeypatch):
    """Blocks compile statically for the training length; LLaDA's random-length batches run eagerly,
    so they never turn the compiled blocks dynamic (which slowed every later step)."""
    calls = []

    def fake_compile(fn, **kw):
        assert kw == {"dynamic": False}
        return lambda x, *a, **k: calls.append(x.shape[1]) or fn(x, *a, **k)

    monkeypatch.setattr(torch, "compile", fake_compile)
    monkeypatch.setattr(distributed, "_cxx_compiler", lambda: "c++")
    model = build_model(tiny_model_config(), seed=0)
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    wrapped = distributed.parallelize(model, info, compile=True, compile_len=16)
    ref = build_model(tiny_model_config(), seed=0)
    for length in (16, 7, 16):
        x = torch.randint(0, 30, (2, length))
        torch.testing.assert_close(wrapped(x), ref(x))
    assert calls == [16] * len(model.blocks) * 2  # length 7 never reached the compiled function


def test_flush_denormals_zeroes_subnormals_inside_the_block_only():
    tiny = torch.tensor([1e-39], dtype=torch.float32)  # a float32 subnormal
    assert (tiny * 1.0).item() != 0.0
    with devices.flush_denormals(torch.device("cpu")):
        assert (tiny * 1.0).item() == 0.0
    assert (tiny * 1.0).item() != 0.0
    with devices.flush_denormals(torch.device("meta")):  # not the CPU: left alone
        assert (tiny * 1.0).item() != 0.0
