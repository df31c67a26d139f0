"""Keeping the last K checkpoints behind a `latest` pointer, saving by the clock, and exact resume
after a SIGKILL at any moment, including in the middle of writing a checkpoint."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from remask.checkpoint import KEPT, LATEST, has_checkpoint, resolve_checkpoint
from remask.commands import main
from remask.config import TrainConfig, preset_tiny
from remask.errors import RemaskError
from remask.train import keep, load_checkpoint, train
from remask.train.distributed import DistInfo

TINY = ["--preset", "tiny", "--train.samples", "0", "--train.eval_batches", "1", "--train.progress", "false"]


def tiny_cfg(**train_kw):
    cfg = preset_tiny()
    for k, v in {"progress": False, "samples": 0, "eval_batches": 1, **train_kw}.items():
        setattr(cfg.train, k, v)
    return cfg


def steps(run: Path) -> list[str]:
    return sorted(p.name for p in (run / KEPT).iterdir())


def test_keep_k_holds_the_newest_k_behind_a_pointer_every_command_follows(tmp_path, text_corpus, capsys):
    run = tmp_path / "run"
    train(tiny_cfg(max_steps=6, ckpt_interval=2, keep=2), run, data=text_corpus)
    assert steps(run) == ["step-000004", "step-000006"]
    assert (run / LATEST).read_text() == "checkpoints/step-000006\n"
    assert not (run / "checkpoint").exists()
    # the run, RUN/checkpoint and the step directory itself all name the newest
    assert resolve_checkpoint(run) == resolve_checkpoint(run / "checkpoint") == run / KEPT / "step-000006"
    assert json.loads((resolve_checkpoint(run) / "train_state.json").read_text())["step"] == 6

    # leftovers of a killed save go with the next save; resume continues from the newest
    (run / KEPT / ".step-000008.tmp-99999").mkdir()
    assert main(["train", "--out", str(run), "--resume", "--max-steps", "8", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["step"] == 8
    assert steps(run) == ["step-000006", "step-000008"]

    # back to one: RUN/checkpoint again, the pointer and the kept ones go only after it is written
    assert main(["train", "--out", str(run), "--resume", "--max-steps", "9", "--train.keep", "1", "--json"]) == 0
    capsys.readouterr()
    assert not (run / LATEST).exists() and not (run / KEPT).exists()
    assert resolve_checkpoint(run) == run / "checkpoint"


def test_the_default_keeps_one_checkpoint_in_run_checkpoint(tmp_path, text_corpus):
    run = tmp_path / "run"
    train(tiny_cfg(max_steps=2), run, data=text_corpus)
    assert resolve_checkpoint(run) == run / "checkpoint"
    assert not (run / LATEST).exists() and not (run / KEPT).exists()


def test_a_pointer_caught_mid_swap_or_broken(tmp_path):
    run = tmp_path / "run"
    (run / KEPT).mkdir(parents=True)
    (run / LATEST).write_text("checkpoints/step-000004\n")
    # a kill between the two renames of re-saving step 4: the complete previous one is under .old-*
    old = run / KEPT / ".step-000004.old-123"
    old.mkdir()
    (old / "model.safetensors").write_bytes(b"")
    (old / "config.json").write_text("{}")
    assert has_checkpoint(run)
    assert resolve_checkpoint(run) == old
    (run / LATEST).write_text("../elsewhere\n")
    with pytest.raises(RemaskError, match="does not name a checkpoint inside the run"):
        resolve_checkpoint(run)


def test_the_clock_saves_by_minutes_as_well_as_steps(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(keep.time, "monotonic", lambda: now[0])
    clock, one = keep.SaveClock(), DistInfo(0, 1, 0, torch.device("cpu"))
    t = TrainConfig(ckpt_interval=10, ckpt_minutes=2.0)
    assert clock.due(10, t, one) and not clock.due(3, t, one)
    now[0] += 119
    assert not clock.due(4, t, one)
    now[0] += 1
    assert clock.due(5, t, one)
    clock.reset()
    assert not clock.due(6, t, one)
    assert not keep.SaveClock().due(7, TrainConfig(ckpt_interval=0), one)


def test_resume_auto_starts_afresh_then_resumes(tmp_path, text_corpus, capsys):
    run = tmp_path / "run"
    args = ["train", "--data", str(text_corpus), "--out", str(run), *TINY, "--resume", "auto", "--json"]
    assert main([*args, "--max-steps", "2"]) == 0
    assert main([*args, "--max-steps", "3"]) == 0
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [o["step"] for o in out] == [2, 3]
    assert main(["train", "--out", str(run), "--resume", "yes"]) == 2
    assert "--resume takes no value or 'auto'" in capsys.readouterr().err


# ----------------------------------------------------------------------------- SIGKILL

# Runs `remask train` with one test-only hook: the HOLD-th checkpoint write (weights, optimizer, or
# the `latest` pointer, in that order) touches a marker file and then blocks, so the test can kill
# the process at exactly that moment. save_file holds after its file is written (the checkpoint is
# still under its temporary name); the pointer holds before it is rewritten (the new checkpoint is
# complete, the pointer still names the previous one).
WRAPPER = """
import os, sys, time
from pathlib import Path
import remask.checkpoint as ckpt
import remask.train.keep as keep

calls, hold, marker = [0], int(os.environ.get("HOLD", "0")), Path(os.environ.get("MARKER", "marker"))

def block():
    calls[0] += 1
    if calls[0] == hold:
        marker.write_text("held")
        time.sleep(120)

def save_file(*a, _orig=ckpt.save_file, **k):
    _orig(*a, **k)
    block()

def write_text_atomic(*a, _orig=keep.write_text_atomic, **k):
    block()
    _orig(*a, **k)

ckpt.save_file, keep.write_text_atomic = save_file, write_text_atomic
from remask.commands import main
sys.exit(main(sys.argv[1:]))
"""


def _remask(script: Path, run: Path, corpus: Path, *extra: str, hold: int = 0) -> None:
    """Run the wrapped `remask train`; with ``hold``, SIGKILL it once it blocks at that write."""
    marker = run.parent / "marker"
    marker.unlink(missing_ok=True)
    argv = [sys.executable, str(script), "train", "--data", str(corpus), "--out", str(run), *TINY,
            "--max-steps", "9", "--train.ckpt_interval", "3", "--train.keep", "2", "--train.lr", "1e-2", *extra]
    env = {**os.environ, "HOLD": str(hold), "MARKER": str(marker), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if not hold:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()[-2000:]
        return
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "the run never reached the held write"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()


def _state(run: Path) -> dict[str, torch.Tensor]:
    ck = resolve_checkpoint(run)
    return {**load_file(ck / "model.safetensors"), **load_file(ck / "optimizer.safetensors")}


def test_sigkill_at_any_moment_resumes_to_the_same_weights(tmp_path, text_corpus):
    script = tmp_path / "wrapped_remask.py"
    script.write_text(WRAPPER)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    _remask(script, straight, text_corpus)

    # 1. in the middle of the very first checkpoint: nothing complete, so `--resume auto` starts afresh
    _remask(script, killed, text_corpus, hold=1)
    assert list((killed / KEPT).glob(".step-000003.tmp-*")) and not has_checkpoint(killed)
    # 2. step 6 complete but the pointer not yet moved to it: the pointer's step 3 is the one resumed
    _remask(script, killed, text_corpus, "--resume", "auto", hold=6)
    assert (killed / LATEST).read_text() == "checkpoints/step-000003\n"
    assert (killed / KEPT / "step-000006").is_dir()
    # 3. in the middle of writing the final checkpoint (step 9), after its weights, before its optimizer state
    _remask(script, killed, text_corpus, "--resume", hold=4)
    assert (killed / LATEST).read_text() == "checkpoints/step-000006\n"
    assert list((killed / KEPT).glob(".step-000009.tmp-*"))
    # then resume to the end
    _remask(script, killed, text_corpus, "--resume")

    assert steps(killed) == steps(straight) == ["step-000006", "step-000009"]
    a, b = _state(straight), _state(killed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ----------------------------------------------------------------------------- sharded (FSDP2)

SHARD_CFG = {"ckpt_interval": 2, "keep": 3, "min_lr_ratio": 1.0, "device": "cpu", "log_interval": 1}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sharded_worker(rank: int, port: int, run: str, corpus: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    # ckpt_minutes never fires here, but has rank 0 decide each step for both processes
    train(tiny_cfg(parallel="fsdp", sharded_ckpt=True, ckpt_minutes=60.0, max_steps=4, **SHARD_CFG), Path(run),
          data=corpus)


def _close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=1e-4, msg=k)


@pytest.mark.distributed
def test_sharded_saves_load_resume_and_consolidate(tmp_path, text_corpus, capsys):
    torch.set_num_threads(1)
    one, two = tmp_path / "one", tmp_path / "two"
    train(tiny_cfg(max_steps=6, **SHARD_CFG), one, data=text_corpus)
    mp.spawn(_sharded_worker, args=(_free_port(), str(two), str(text_corpus)), nprocs=2, join=True)
    step2, step4 = two / KEPT / "step-000002", two / KEPT / "step-000004"
    assert (step4 / "shards" / ".metadata").is_file() and not (step4 / "model.safetensors").exists()

    # every command loads a sharded checkpoint's weights as they are
    ck = load_checkpoint(two)
    assert ck.kind == "sharded" and ck.path == step4
    _close(dict(load_checkpoint(one / KEPT / "step-000004").model.state_dict()), dict(ck.model.state_dict()))

    # consolidate: one file each for the weights and the optimizer, the same state as one process saved
    assert main(["checkpoint", "consolidate", str(step2), "--out", str(tmp_path / "joined"), "--json"]) == 0
    capsys.readouterr()
    _close(_state_of(one / KEPT / "step-000002"), _state_of(tmp_path / "joined"))

    # one process resumes the sharded run (optimizer moments read from the shards) and ends where one did
    train(tiny_cfg(max_steps=6, **SHARD_CFG), two, resume=True)
    _close(_state_of(one / KEPT / "step-000006"), _state_of(two / KEPT / "step-000006"))
    assert main(["checkpoint", "consolidate", str(two)]) == 2
    assert "already a single-file checkpoint" in capsys.readouterr().err


def _state_of(ckpt: Path) -> dict[str, torch.Tensor]:
    return {**load_file(ckpt / "model.safetensors"), **load_file(ckpt / "optimizer.safetensors")}
