"""The CLI end to end on a tiny corpus, in-process (fast), plus its one-line error contract."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from remask.commands import main
from remask.data.tokenizer import byte_tokenizer
from remask.display import render_canvas

TINY = ["--preset", "tiny", "--max-steps", "3", "--train.samples", "0"]


def run_json(capsys, argv: list[str]) -> dict:
    assert main([*argv, "--json"]) == 0
    out = capsys.readouterr().out.strip()
    return json.loads(out)  # exactly one JSON object on stdout


@pytest.fixture
def trained(tmp_path, text_corpus, capsys) -> Path:
    run = tmp_path / "run"
    run_json(capsys, ["train", "--data", str(text_corpus), "--out", str(run), *TINY])
    return run


def test_train_generate_infill_end_to_end(trained, capsys):
    res = run_json(capsys, ["train", "--out", str(trained), "--resume", *TINY[:2], "--max-steps", "5"])
    assert res["step"] == 5 and res["val_loss"] > 0 and res["val_bpb"] > 0 and res["tokens_per_s"] > 0
    gen = run_json(capsys, ["generate", "--ckpt", str(trained), "--gen-length", "16", "--steps", "8",
                            "--block-length", "8", "the quick"])
    assert isinstance(gen["text"], str) and gen["n_forward"] == 8
    fill = run_json(capsys, ["infill", "--ckpt", str(trained), "--steps", "4", "the <mask:6> fox"])
    assert fill["text"].startswith("the ") and fill["text"].endswith(" fox") and "<mask" not in fill["text"]


def test_generate_show_steps_draws_masks(trained, capsys):
    assert main(["generate", "--ckpt", str(trained), "--gen-length", "8", "--steps", "4", "--show-steps", "ab"]) == 0
    err = capsys.readouterr().err
    assert "[step 1]" in err and "░" in err and "[step 4]" in err


def test_prepare_and_tokenizer_train(tmp_path, text_corpus, capsys):
    meta = run_json(capsys, ["prepare", str(text_corpus), "--out", str(tmp_path / "shards")])
    assert meta["splits"]["train"]["tokens"] > 0 and meta["splits"]["val"]["tokens"] > 0
    tok = run_json(capsys, ["tokenizer", "train", str(text_corpus), "--vocab-size", "300",
                            "--out", str(tmp_path / "tok")])
    assert (tmp_path / "tok" / "tokenizer.json").is_file() and tok["vocab_size"] <= 300
    res = run_json(capsys, ["train", "--data", str(text_corpus), "--tokenizer", str(tmp_path / "tok"),
                            "--out", str(tmp_path / "bpe-run"), *TINY])
    assert res["step"] == 3
    # A directory prepared with the BPE tokenizer brings that tokenizer along: no --tokenizer needed.
    run_json(capsys, ["prepare", str(text_corpus), "--tokenizer", str(tmp_path / "tok"), "--out", str(tmp_path / "bpe")])
    run_json(capsys, ["train", "--data", str(tmp_path / "bpe"), "--out", str(tmp_path / "bpe-run2"), *TINY])
    saved = json.loads((tmp_path / "bpe-run2" / "checkpoint" / "config.json").read_text())
    assert saved["model"]["vocab_size"] == tok["vocab_size"] and saved["model"]["mask_token_id"] == tok["mask_id"]
    assert "different tokenizer" in _error(capsys, ["train", "--data", str(tmp_path / "bpe"), "--tokenizer", "bytes",
                                                    "--out", str(tmp_path / "x"), *TINY])


def test_config_file_and_section_flags(tmp_path, text_corpus, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("model:\n  n_layer: 1\ntrain:\n  lr: 0.01\n")
    run_json(capsys, ["train", "--data", str(text_corpus), "--out", str(tmp_path / "r"), *TINY,
                      "--config", str(cfg), "--model.d_model", "48"])
    saved = json.loads((tmp_path / "r" / "checkpoint" / "config.json").read_text())
    assert saved["model"]["n_layer"] == 1 and saved["model"]["d_model"] == 48 and saved["train"]["lr"] == 0.01


def _error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("remask: error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_bad_input_gives_one_line_errors(tmp_path, trained, text_corpus, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.txt").write_text("")
    binary = tmp_path / "blob.bin"
    binary.write_bytes(bytes(range(256)) * 4)
    out = str(tmp_path / "o")
    assert "no text" in _error(capsys, ["train", "--data", str(empty), "--out", out, *TINY])
    assert "blob.bin" in _error(capsys, ["train", "--data", str(binary), "--out", out, *TINY])
    assert "missing.txt" in _error(capsys, ["train", "--data", str(tmp_path / "missing.txt"), "--out", out, *TINY])
    assert "--block-length" in _error(capsys, ["generate", "--ckpt", str(trained), "--gen-length", "16",
                                               "--block-length", "5", "hi"])
    assert "context" in _error(capsys, ["generate", "--ckpt", str(trained), "--gen-length", "16", "x" * 60])
    assert "not a remask checkpoint" in _error(capsys, ["generate", "--ckpt", str(tmp_path), "hi"])
    bad = tmp_path / "bad"
    (bad).mkdir()
    (bad / "model.safetensors").write_bytes(b"garbage")
    (bad / "config.json").write_text("{}")
    assert "bad" in _error(capsys, ["generate", "--ckpt", str(bad), "hi"])
    assert "--train.bogus" in _error(capsys, ["train", "--out", out, "--train.bogus", "1"])
    assert "--resume" in _error(capsys, ["train", "--out", str(tmp_path / "fresh"), "--resume"])
    # Nothing is lost: a second run into the same directory needs --resume or --overwrite.
    before = (trained / "checkpoint" / "model.safetensors").read_bytes()
    assert "already holds a checkpoint" in _error(capsys, ["train", "--out", str(trained), *TINY])
    assert (trained / "checkpoint" / "model.safetensors").read_bytes() == before
    run_json(capsys, ["train", "--out", str(trained), "--data", str(text_corpus), "--overwrite", *TINY, "--seed", "7"])
    assert (trained / "checkpoint" / "model.safetensors").read_bytes() != before


def test_render_canvas_marks_masks():
    tok = byte_tokenizer()
    assert render_canvas(tok, [*b"ab", tok.mask_id, tok.mask_id, *b"c"]) == "ab░░c"


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "remask", "--help"], capture_output=True, text=True, check=True)
    for cmd in ("prepare", "tokenizer", "train", "generate", "infill"):
        assert cmd in out.stdout


def test_train_init_from_continues_an_ar_checkpoint_as_a_diffusion_model(tmp_path, text_corpus, capsys):
    ar = tmp_path / "ar"
    run_json(capsys, ["train", "--data", str(text_corpus), "--out", str(ar), "--objective", "ar", *TINY])
    mdm = tmp_path / "mdm"
    res = run_json(capsys, ["train", "--data", str(text_corpus), "--out", str(mdm), "--init-from", str(ar), *TINY])
    assert res["step"] == 3
    cfg = json.loads((mdm / "checkpoint" / "config.json").read_text())
    assert cfg["model"]["causal"] is False and cfg["train"]["objective"] == "mdm"
    assert main(["train", "--out", str(mdm), "--resume", "--init-from", str(ar), *TINY]) == 2
    assert "--init-from" in capsys.readouterr().err
