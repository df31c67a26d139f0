from __future__ import annotations

import json
import os
import socket
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from remask.config import preset_tiny
from remask.errors import RemaskError
from remask.train import load_checkpoint, train
from remask.train.optim import lr_at


def tiny_cfg(**train_kw):
    cfg = preset_tiny()
    for k, v in {"max_steps": 6, "log_interval": 1, "progress": False, "samples": 0, **train_kw}.items():
        setattr(cfg.train, k, v)
    return cfg


def losses(run: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def test_train_writes_a_self_describing_checkpoint(tmp_path, text_corpus):
    res = train(tiny_cfg(), tmp_path / "run", data=text_corpus)
    assert res.step == 6 and res.val_loss > 0 and res.val_bpb is not None
    ck = load_checkpoint(tmp_path / "run")  # run dir resolves to run/checkpoint
    assert ck.train_state["step"] == 6
    assert ck.config.model.vocab_size == ck.tokenizer.vocab_size
    assert ck.config.model.mask_token_id == ck.tokenizer.mask_id
    assert len(losses(tmp_path / "run")) == 6


def test_checkpoint_round_trip_gives_identical_logits(tmp_path, text_corpus):
    train(tiny_cfg(max_steps=2), tmp_path / "run", data=text_corpus)
    a = load_checkpoint(tmp_path / "run").model
    b = load_checkpoint(tmp_path / "run" / "checkpoint").model
    x = torch.randint(0, 256, (2, 16))
    assert torch.equal(a(x), b(x))


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_resume_reproduces_the_uninterrupted_run(tmp_path, text_corpus, optimizer):
    cfg = tiny_cfg(max_steps=6, optimizer=optimizer)
    train(cfg, tmp_path / "full", data=text_corpus)

    def stop_at_3(step, loss):
        if step == 3:
            raise KeyboardInterrupt

    part = train(cfg, tmp_path / "resumed", data=text_corpus, callback=stop_at_3)
    assert part.interrupted and part.step == 3
    with (tmp_path / "resumed" / "metrics.jsonl").open("a") as f:  # a crash cut this append short
        f.write('{"step": 4, "loss": 1.')
    train(cfg, tmp_path / "resumed", data=text_corpus, resume=True)
    assert losses(tmp_path / "resumed") == losses(tmp_path / "full")
    a, b = load_checkpoint(tmp_path / "full").model, load_checkpoint(tmp_path / "resumed").model
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(pa, pb), name


def test_ar_objective_trains_a_causal_model(tmp_path, text_corpus):
    res = train(tiny_cfg(objective="ar", max_steps=4), tmp_path / "ar", data=text_corpus)
    ck = load_checkpoint(tmp_path / "ar")
    assert ck.config.model.causal and res.val_loss > 0


def test_loss_decreases_on_a_repetitive_corpus(tmp_path, text_corpus):
    cfg = tiny_cfg(max_steps=40, lr=1e-2)
    train(cfg, tmp_path / "run", data=text_corpus)
    ls = losses(tmp_path / "run")
    assert sum(ls[-5:]) / 5 < 0.8 * sum(ls[:5]) / 5


def test_random_length_cut_shortens_whole_batches(tmp_path, text_corpus):
    train(tiny_cfg(max_steps=4, random_length_prob=1.0), tmp_path / "run", data=text_corpus)
    recs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    tokens = [r["tokens"] for r in recs if "tokens" in r]
    per_step = [b - a for a, b in zip([0, *tokens], tokens)]
    assert all(n % 8 == 0 and n < 8 * 32 for n in per_step)  # B=8 sequences, each cut below L=32


def test_lr_schedules():
    cfg = tiny_cfg(max_steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.1).train
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(99, cfg) == pytest.approx(0.1, abs=1e-3)
    cfg.schedule = "wsd"
    assert lr_at(50, cfg) == 1.0 and lr_at(100, cfg) == pytest.approx(0.1)
    # lr_clock=time: half the budget spent at step 20 puts the schedule at step 50 of 100.
    cfg.schedule, cfg.lr_clock, cfg.time_budget = "cosine", "time", 60.0
    assert lr_at(20, cfg, elapsed=30.0) == pytest.approx(lr_at(50, cfg))
    assert lr_at(50, cfg) < lr_at(20, cfg, elapsed=1.0) == lr_at(20, cfg)
    assert lr_at(20, cfg, elapsed=60.0) == pytest.approx(0.1)
    cfg.time_budget = None  # no budget: the time clock has nothing to follow, steps rule
    assert lr_at(20, cfg, elapsed=1e9) == lr_at(20, replace(cfg, lr_clock="steps"))


def test_resume_without_checkpoint_and_seq_len_too_long_are_clear_errors(tmp_path, text_corpus):
    with pytest.raises(RemaskError, match="does not exist"):
        train(tiny_cfg(), tmp_path / "nothing", data=text_corpus, resume=True)
    cfg = tiny_cfg()
    cfg.train.seq_len = 128
    with pytest.raises(RemaskError, match="max_seq_len"):
        train(cfg, tmp_path / "x", data=text_corpus)


def _worker(rank: int, world: int, port: int, out: str, corpus: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    train(tiny_cfg(max_steps=3, device="cpu"), out, data=corpus)


@pytest.mark.distributed
def test_two_processes_match_one(tmp_path, text_corpus):
    """Data and noise are keyed by global sample index and the loss is divided by the global
    batch, so two gloo ranks must reproduce the single-process run."""
    train(tiny_cfg(max_steps=3), tmp_path / "one", data=text_corpus)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(2, port, str(tmp_path / "two"), str(text_corpus)), nprocs=2, join=True)
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), abs=1e-5)
    a, b = load_checkpoint(tmp_path / "one").model, load_checkpoint(tmp_path / "two").model
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, atol=1e-5, rtol=1e-4)
