"""Early stopping on validation: the run stops after `early_stop_patience` validations without a new
best, RUN/best holds the weights of the best validation, and resume keeps the count exactly."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from remask.checkpoint import resolve_checkpoint
from remask.commands import main
from remask.config import preset_tiny
from remask.errors import RemaskError
from remask.train import best as best_mod
from remask.train import load_checkpoint, train

# Scripted validation figures, one per validation in order: the best is the second (step 4).
SCRIPT = [3.0, 2.0, 2.5, 2.6, 2.7, 2.8, 2.9, 3.0, 3.1, 3.2, 3.3, 3.4]


def tiny_cfg(**train_kw):
    cfg = preset_tiny()
    base = {"log_interval": 1, "progress": False, "samples": 0, "eval_interval": 2, "max_steps": 30,
            "device": "cpu", "early_stop_patience": 2}
    for k, v in {**base, **train_kw}.items():
        setattr(cfg.train, k, v)
    return cfg


@pytest.fixture
def scripted(monkeypatch) -> Iterator[list[int]]:
    """The loop's validation returns SCRIPT in order; yields the list of steps it was called at."""
    import remask.train.loop as loop

    figures, calls = iter(SCRIPT), []

    def fake(model, batches, cfg, info, amp=None):
        calls.append(1)
        return next(figures)

    monkeypatch.setattr(loop, "evaluate", fake)
    yield calls


def vals(run: Path) -> list[tuple[int, float]]:
    recs = map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
    return [(r["step"], r["val_loss"]) for r in recs if "val_loss" in r]


def test_best_counts_validations_without_improvement():
    b = best_mod.Best()
    assert [b.update(v, s) for s, v in enumerate([3.0, 2.0, 2.5, 2.0, float("nan"), 1.0])] == [
        True, True, False, False, False, True]
    assert (b.val, b.step, b.stale) == (1.0, 5, 0)
    b.update(1.5, 6)
    assert b.stale == 1 and not b.exhausted(2) and b.exhausted(1) and not b.exhausted(0)
    assert best_mod.Best.from_train_state(json.loads(json.dumps(b.train_state()))) == b


def test_rising_validation_stops_after_patience_and_best_holds_the_best_weights(tmp_path, text_corpus, scripted):
    run = tmp_path / "run"
    res = train(tiny_cfg(ckpt_interval=2, keep=20), run, data=text_corpus)
    # evals at 2 (3.0), 4 (2.0 best), 6 (2.5), 8 (2.6): two without a new best -> stop at step 8
    assert res.step == 8 and vals(run) == [(2, 3.0), (4, 2.0), (6, 2.5), (8, 2.6)]
    assert len(scripted) == 4  # the final validation is not repeated at the step early stopping ended
    state = json.loads((run / "best" / "train_state.json").read_text())
    assert (state["step"], state["best_step"], state["best_val"]) == (4, 4, 2.0)
    best = load_file(run / "best" / "model.safetensors")
    at4 = load_file(run / "checkpoints" / "step-000004" / "model.safetensors")
    last = load_file(resolve_checkpoint(run) / "model.safetensors")
    assert all(torch.equal(best[k], at4[k]) for k in best)
    assert any(not torch.equal(best[k], last[k]) for k in best)
    assert resolve_checkpoint(run / "best") == run / "best"
    assert load_checkpoint(run / "best").train_state["best_step"] == 4


def test_resume_keeps_the_best_figure_and_the_patience_count(tmp_path, text_corpus, scripted):
    run = tmp_path / "run"
    first = train(tiny_cfg(max_steps=8, early_stop_patience=3), run, data=text_corpus)
    assert first.step == 8  # evals 3.0, 2.0 (best), 2.5, 2.6 (final): two without a new best, patience 3
    resumed = train(tiny_cfg(max_steps=30, early_stop_patience=3), run, data=text_corpus, resume=True)
    # a count restarted at 0 would stop at step 14; the kept count stops at the next validation
    assert resumed.step == 10 and vals(run)[-1] == (10, 2.7)
    state = json.loads((run / "checkpoint" / "train_state.json").read_text())
    assert (state["best_step"], state["best_val"], state["best_stale"]) == (4, 2.0, 3)


def test_patience_off_never_stops_and_writes_no_best(tmp_path, text_corpus, scripted):
    run = tmp_path / "run"
    res = train(tiny_cfg(max_steps=12, early_stop_patience=0), run, data=text_corpus)
    assert res.step == 12 and not (run / "best").exists()


def test_the_flag_reaches_the_cli_and_best_works_as_a_ckpt(tmp_path, text_corpus, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", str(text_corpus), "--out", str(run), "--preset", "tiny", "--train.samples", "0",
                 "--max-steps", "6", "--train.eval_interval", "2", "--train.early_stop_patience", "5"]) == 0
    assert (run / "best" / "model.safetensors").is_file()
    assert main(["generate", "--ckpt", str(run / "best"), "--gen-length", "8", "--steps", "4", "ab"]) == 0
    with pytest.raises(RemaskError, match="early_stop_patience"):
        tiny_cfg(early_stop_patience=-1).train.__post_init__()


def test_a_fresh_run_over_an_old_one_drops_its_best(tmp_path, text_corpus):
    run = tmp_path / "run"
    train(tiny_cfg(max_steps=4), run, data=text_corpus)
    assert (run / "best").is_dir()
    train(tiny_cfg(max_steps=4, early_stop_patience=0), run, data=text_corpus, overwrite=True)
    assert not (run / "best").exists()
