"""train.optimizer=muon: Muon on the blocks' matrices, AdamW on the rest, as one optimizer whose
steps match the two torch optimizers run apart and whose state round-trips through a checkpoint."""

from __future__ import annotations

import copy

import pytest
import torch

from remask.config import ModelConfig, TrainConfig
from remask.errors import RemaskError
from remask.model import Transformer
from remask.train.optim import MuonAdamW, build_optimizer


def _model(tie: bool) -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelConfig(vocab_size=40, mask_token_id=38, eos_token_id=39, d_model=16, n_layer=2, n_head=2, max_seq_len=16,
                                   tie_embeddings=tie))


def _loss(model: Transformer, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 40, (2, 8), generator=g)
    return model(x).logsumexp(-1).mean() - model(x).gather(-1, x[..., None]).mean()


def _names(model: Transformer, params: list[torch.Tensor]) -> set[str]:
    ids = {id(p) for p in params}
    return {n for n, p in model.named_parameters() if id(p) in ids}


@pytest.mark.parametrize("tie", [True, False])
def test_muon_takes_the_block_matrices_and_adamw_the_rest(tie):
    model = _model(tie)
    opt = build_optimizer(model, TrainConfig(optimizer="muon"))
    assert isinstance(opt, MuonAdamW)
    by = {a: [p for g in opt.param_groups if g["algorithm"] == a for p in g["params"]] for a in ("muon", "adamw")}
    muon, adamw = _names(model, by["muon"]), _names(model, by["adamw"])
    assert muon and all(n.startswith("blocks.") and n.endswith("proj.weight") for n in muon)
    assert "embed.weight" in adamw and any("norm" in n for n in adamw)
    assert ("lm_head.weight" in adamw) == (not tie)
    assert not muon & adamw
    assert len(by["muon"]) + len(by["adamw"]) == len(list(model.parameters()))  # every parameter once


def test_a_step_matches_muon_and_adamw_run_apart():
    """The reference: torch.optim.Muon and AdamW built by hand on a copy, same LR change mid-way."""
    cfg = TrainConfig(optimizer="muon", lr=1e-2, weight_decay=0.1)
    model, ref = _model(False), _model(False)
    opt = build_optimizer(model, cfg)
    hidden = [p for n, p in ref.named_parameters() if n.startswith("blocks.") and p.ndim == 2]
    rest = [p for n, p in ref.named_parameters() if not (n.startswith("blocks.") and p.ndim == 2)]
    ref_muon = torch.optim.Muon(hidden, lr=1e-2, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    decayed = [p for p in rest if p.ndim == 2 and p is not ref.embed.weight]
    others = [p for p in rest if p.ndim < 2 or p is ref.embed.weight]
    ref_adamw = torch.optim.AdamW([{"params": decayed, "weight_decay": 0.1}, {"params": others, "weight_decay": 0.0}],
                                  lr=1e-2, betas=(cfg.beta1, cfg.beta2))
    for step in range(3):
        lr = 1e-2 / (step + 1)  # the loop sets lr on every group; it must reach both rules
        for o in (opt, ref_muon, ref_adamw):
            for g in o.param_groups:
                g["lr"] = lr
            o.zero_grad()
        _loss(model, step).backward()
        _loss(ref, step).backward()
        opt.step()
        ref_muon.step()
        ref_adamw.step()
    for (name, a), b in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, msg=name)


def test_state_round_trips_and_keeps_both_rules_working():
    model = _model(True)
    opt = build_optimizer(model, TrainConfig(optimizer="muon"))
    _loss(model, 0).backward()
    opt.step()
    saved = copy.deepcopy(opt.state_dict())
    assert {"momentum_buffer"} in [set(s) for s in saved["state"].values()]  # Muon's state
    assert {"step", "exp_avg", "exp_avg_sq"} in [set(s) for s in saved["state"].values()]  # AdamW's

    twin = copy.deepcopy(model)
    twin_opt = build_optimizer(twin, TrainConfig(optimizer="muon"))
    twin_opt.load_state_dict(saved)
    for m, o in ((model, opt), (twin, twin_opt)):
        o.zero_grad()
        _loss(m, 1).backward()
        o.step()
    for (name, a), b in zip(model.named_parameters(), twin.parameters()):
        assert torch.equal(a, b), name


def test_muon_settings_are_validated():
    with pytest.raises(RemaskError, match=r"train\.optimizer must be adamw or muon"):
        TrainConfig(optimizer="sgd")
    with pytest.raises(RemaskError, match="FSDP shards"):
        TrainConfig(optimizer="muon", parallel="fsdp")
    with pytest.raises(RemaskError, match="muon_momentum"):
        TrainConfig(muon_momentum=1.0)
