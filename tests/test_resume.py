"""Resume: a run directory is self-contained (movable, resumable from any working directory), a
resumed run keeps its own config and limits, and continues exactly where it stopped."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from remask.commands import main
from remask.config import preset_tiny
from remask.train import load_checkpoint, train

TINY = ["--preset", "tiny", "--train.samples", "0"]


def cli(capsys, argv: list[str]) -> dict:
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out.strip())


def saved(run: Path, name: str) -> dict:
    return json.loads((run / "checkpoint" / name).read_text())


def losses(run: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def tiny_cfg(**train_kw):
    cfg = preset_tiny()
    for k, v in {"log_interval": 1, "progress": False, "samples": 0, **train_kw}.items():
        setattr(cfg.train, k, v)
    return cfg


def stop_at_2(step: int, loss: float) -> None:
    if step == 2:
        raise KeyboardInterrupt


def test_a_moved_run_resumes_from_any_working_directory(tmp_path, text_corpus, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default layout: a relative run directory, its corpus inside it
    cli(capsys, ["train", "--data", str(text_corpus), "--out", "runs/default", *TINY, "--max-steps", "3"])
    assert saved(tmp_path / "runs" / "default", "train_state.json")["data_dir"] == "data"

    moved = tmp_path / "elsewhere" / "moved"
    shutil.move(tmp_path / "runs" / "default", moved)
    (tmp_path / "unrelated").mkdir()
    monkeypatch.chdir(tmp_path / "unrelated")
    assert cli(capsys, ["train", "--out", str(moved), "--resume", "--max-steps", "5"])["step"] == 5
    monkeypatch.chdir(moved.parent)  # and with the run directory given relative to the new place
    assert cli(capsys, ["train", "--out", "moved", "--resume", "--max-steps", "6"])["step"] == 6
    assert saved(moved, "train_state.json")["data_dir"] == "data"


def test_data_prepared_outside_the_run_is_recorded_absolute(tmp_path, text_corpus, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli(capsys, ["prepare", str(text_corpus), "--out", "shards"])
    cli(capsys, ["train", "--data", "shards", "--out", "run", *TINY, "--max-steps", "2"])
    assert saved(tmp_path / "run", "train_state.json")["data_dir"] == str((tmp_path / "shards").resolve())
    shutil.move(tmp_path / "run", tmp_path / "moved")
    (tmp_path / "unrelated").mkdir()
    monkeypatch.chdir(tmp_path / "unrelated")
    assert cli(capsys, ["train", "--out", str(tmp_path / "moved"), "--resume", "--max-steps", "3"])["step"] == 3


def test_a_run_that_recorded_a_cwd_relative_data_dir_still_resumes(tmp_path, text_corpus, capsys, monkeypatch):
    """Runs saved before data_dir was run-relative recorded it relative to the working directory."""
    monkeypatch.chdir(tmp_path)
    cli(capsys, ["train", "--data", str(text_corpus), "--out", "runs/old", *TINY, "--max-steps", "2"])
    state_file = tmp_path / "runs" / "old" / "checkpoint" / "train_state.json"
    state_file.write_text(json.dumps({**json.loads(state_file.read_text()), "data_dir": "runs/old/data"}))
    assert cli(capsys, ["train", "--out", "runs/old", "--resume", "--max-steps", "3"])["step"] == 3
    assert json.loads(state_file.read_text())["data_dir"] == "data"  # re-recorded the portable way


def test_a_resumed_run_keeps_its_own_limits(tmp_path, text_corpus, capsys):
    run = tmp_path / "run"
    part = train(tiny_cfg(max_steps=6, time_budget=1000.0), run, data=text_corpus, callback=stop_at_2)
    assert part.interrupted and part.step == 2
    # No --max-steps: the run's own 6 and 1000 s, not the default preset's (small: 1200 steps, 270 s).
    assert cli(capsys, ["train", "--out", str(run), "--resume"])["step"] == 6
    cfg = saved(run, "config.json")["train"]
    assert cfg["max_steps"] == 6 and cfg["time_budget"] == 1000.0 and cfg["lr_clock"] == "steps"
    assert cli(capsys, ["train", "--out", str(run), "--resume", "--max-steps", "8"])["step"] == 8
    assert saved(run, "config.json")["train"]["max_steps"] == 8
    assert saved(run, "config.json")["train"]["time_budget"] == 1000.0


def test_the_time_budget_counts_the_time_spent_before_resume(tmp_path, text_corpus, capsys):
    run = tmp_path / "run"
    part = train(tiny_cfg(max_steps=6), run, data=text_corpus, callback=stop_at_2)
    assert part.step == 2 and part.elapsed > 1e-6
    # Two steps took more than the whole budget, so the resumed run stops before taking another,
    # and says how to train on.
    with pytest.warns(UserWarning, match="time budget of 1e-06 s is spent.*--time-budget none"):
        res = cli(capsys, ["train", "--out", str(run), "--resume", "--time-budget", "1e-6"])
    assert res["step"] == 2 and res["elapsed_s"] == round(part.elapsed, 2)
    # lifting the budget (and naming new steps) trains on
    assert cli(capsys, ["train", "--out", str(run), "--resume", "--time-budget", "none"])["step"] == 6
    assert saved(run, "config.json")["train"]["time_budget"] is None


def test_interrupted_moved_and_resumed_equals_uninterrupted(tmp_path, text_corpus, capsys, monkeypatch):
    cfg = tiny_cfg(max_steps=5)
    train(cfg, tmp_path / "full", data=text_corpus)
    part = train(cfg, tmp_path / "part", data=text_corpus, callback=stop_at_2)
    assert part.interrupted and part.step == 2
    shutil.move(tmp_path / "part", tmp_path / "moved")
    (tmp_path / "unrelated").mkdir()
    monkeypatch.chdir(tmp_path / "unrelated")
    res = cli(capsys, ["train", "--out", str(tmp_path / "moved"), "--resume"])
    assert res["step"] == 5
    assert losses(tmp_path / "moved") == losses(tmp_path / "full")  # same data, noise and optimizer state
    full, resumed = saved(tmp_path / "full", "train_state.json"), saved(tmp_path / "moved", "train_state.json")
    assert resumed["tokens_seen"] == full["tokens_seen"] and resumed["val_loss"] == full["val_loss"]
    a, b = load_checkpoint(tmp_path / "full").model, load_checkpoint(tmp_path / "moved").model
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(pa, pb), name


def test_resume_at_max_steps_trains_nothing_more(tmp_path, text_corpus, capsys):
    run = tmp_path / "run"
    first = train(tiny_cfg(max_steps=3), run, data=text_corpus)
    records = (run / "metrics.jsonl").read_text().splitlines()
    again = cli(capsys, ["train", "--out", str(run), "--resume"])
    assert again["step"] == 3 and again["val_loss"] == first.val_loss
    after = (run / "metrics.jsonl").read_text().splitlines()
    assert after[: len(records)] == records and all("loss" not in json.loads(r) for r in after[len(records):])


def test_ctrl_c_before_the_first_resumed_step_leaves_the_checkpoint_as_it_was(tmp_path, text_corpus, monkeypatch):
    run = tmp_path / "run"
    train(tiny_cfg(max_steps=3), run, data=text_corpus)
    state, metrics = saved(run, "train_state.json"), (run / "metrics.jsonl").read_text()

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("remask.train.loop.lr_at", ctrl_c)  # Ctrl-C as the first step begins
    res = train(tiny_cfg(max_steps=5), run, resume=True)
    assert res.interrupted and res.step == 3 and res.val_loss == state["val_loss"]
    state.pop("saved_at")
    assert {k: v for k, v in saved(run, "train_state.json").items() if k != "saved_at"} == state
    assert (run / "metrics.jsonl").read_text() == metrics  # no step taken, so no new validation
