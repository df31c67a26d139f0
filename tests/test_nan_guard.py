"""The NaN/Inf guard: a step whose loss or gradient norm is not finite is skipped and logged; a run
of them sends the run back to its last checkpoint with a lower learning rate, which resume keeps."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from remask.config import preset_tiny
from remask.errors import RemaskError
from remask.objectives import OBJECTIVES
from remask.train import load_checkpoint, train
from remask.train.optim import lr_at


def tiny_cfg(**train_kw):
    cfg = preset_tiny()
    for k, v in {"log_interval": 1, "progress": False, "samples": 0, **train_kw}.items():
        setattr(cfg.train, k, v)
    return cfg


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def poison(monkeypatch, bad_calls: set[int], where: str = "loss") -> list[int]:
    """Make the mdm objective's ``bad_calls``-th calls (1-based) non-finite: the loss itself, or only
    the gradient flowing back through it (the loss stays finite)."""
    real, calls = OBJECTIVES["mdm"], []

    def objective(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append(1)
        if len(calls) not in bad_calls:
            return out
        if where == "loss":
            return out * float("nan")
        out.register_hook(lambda g: g * float("inf"))
        return out

    monkeypatch.setitem(OBJECTIVES, "mdm", objective)
    return calls


def optimizer_updates(run: Path) -> int:
    state = load_checkpoint(run, with_optimizer=True).optimizer_state["state"]
    return int(state[0]["step"])  # AdamW counts the updates it applied


@pytest.mark.parametrize("where", ["loss", "grad"])
def test_a_non_finite_step_is_skipped_and_logged(tmp_path, text_corpus, monkeypatch, where):
    poison(monkeypatch, {3}, where)
    res = train(tiny_cfg(max_steps=5), tmp_path / "run", data=text_corpus)
    recs = records(tmp_path / "run")
    skipped = [r for r in recs if r.get("skipped")]
    reason = "non-finite loss" if where == "loss" else "non-finite gradient norm"
    assert [(r["step"], r["skipped"], r["nan_streak"]) for r in skipped] == [(3, reason, 1)]
    assert [r["step"] for r in recs if "loss" in r] == [1, 2, 4, 5]
    assert res.step == 5 and optimizer_updates(tmp_path / "run") == 4
    assert all(torch.isfinite(p).all() for p in load_checkpoint(tmp_path / "run").model.parameters())


def test_a_run_of_them_reloads_the_last_checkpoint_with_a_lower_lr(tmp_path, text_corpus, monkeypatch):
    # Checkpoints after steps 2 and 4; steps 4 and 5 fail (patience 2): back to step 4 at half the LR.
    calls = poison(monkeypatch, {4, 5})
    cfg = tiny_cfg(max_steps=6, ckpt_interval=2, nan_patience=2, nan_lr_factor=0.5)
    with pytest.warns(UserWarning, match="back to the checkpoint of step 4 with the learning rate x0.5"):
        res = train(cfg, tmp_path / "run", data=text_corpus)
    # 5 steps, 2 of them taken again after the reload, then validation: 2 batches x 2 mask draws
    assert res.step == 6 and len(calls) == 5 + 2 + 2 * 2
    recs = records(tmp_path / "run")
    assert [r["step"] for r in recs if r.get("skipped")] == [4, 5]
    [reload] = [r for r in recs if r.get("reload")]
    assert reload == {"step": 4, "reload": True, "failed_at": 5, "lr_scale": 0.5, "reloads": 1}
    lrs = {r["step"]: r["lr"] for r in recs if "loss" in r}
    assert sorted(lrs) == [1, 2, 3, 5, 6]
    assert lrs[3] == pytest.approx(lr_at(2, cfg.train)) and lrs[6] == pytest.approx(0.5 * lr_at(5, cfg.train))
    state = load_checkpoint(tmp_path / "run").train_state
    assert (state["lr_scale"], state["reloads"], state["step"]) == (0.5, 1, 6)
    assert optimizer_updates(tmp_path / "run") == 3 + 2  # steps 1-3, then 5 and 6 after the reload

    train(tiny_cfg(max_steps=7), tmp_path / "run", resume=True)  # resume keeps the lowered LR
    last = [r for r in records(tmp_path / "run") if "loss" in r][-1]
    assert last["step"] == 7 and last["lr"] == pytest.approx(0.5 * lr_at(6, replace(cfg.train, max_steps=7)))


def test_no_checkpoint_to_go_back_to_is_a_clear_error(tmp_path, text_corpus, monkeypatch):
    poison(monkeypatch, {1, 2})
    with pytest.raises(RemaskError, match=r"2 steps in a row had a non-finite loss.*before any checkpoint"):
        train(tiny_cfg(max_steps=4, nan_patience=2), tmp_path / "run", data=text_corpus)
