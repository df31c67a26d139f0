"""remask.sft: fine-tuning through the one training loop, exact resume, the AR baseline, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from remask.commands import main
from remask.config import preset_tiny
from remask.data.template import DEFAULT_TEMPLATE
from remask.errors import RemaskError
from remask.sft import sft
from remask.train import load_checkpoint


@pytest.fixture
def chats(tmp_path: Path) -> Path:
    f = tmp_path / "chats.jsonl"
    lines = []
    for i in range(24):
        a, b = i % 7, (3 * i) % 5
        if i % 3:
            lines.append({"prompt": f"{a}+{b}=", "response": str(a + b)})
        else:
            lines.append({"messages": [{"role": "user", "content": f"{a}*{b}"}, {"role": "assistant", "content": str(a * b)},
                                       {"role": "user", "content": "twice"}, {"role": "assistant", "content": str(2 * a * b)}]})
    f.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return f


def tiny(**train_kw):
    cfg = preset_tiny()
    for k, v in {"max_steps": 4, "log_interval": 1, "eval_mc": 1, "progress": False, "seq_len": 64, "batch_size": 4, "micro_batch_size": 2,
                 "eval_batches": 1, **train_kw}.items():
        setattr(cfg.train, k, v)
    return cfg


def losses(run: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def test_sft_trains_and_resumes_exactly(tmp_path, chats):
    full = sft(chats, tmp_path / "full", cfg=tiny(), buckets=3, val_fraction=0.2)
    assert full.train.step == 4 and full.examples + full.val_examples == 24 and full.skipped == 0
    assert 0 <= full.padding_fraction <= full.padding_fraction_unbucketed < 1
    ck = load_checkpoint(tmp_path / "full")
    assert ck.config.train.objective == "sft" and not ck.config.model.causal
    assert ck.tokenizer.chat_template == DEFAULT_TEMPLATE  # the template travels with the checkpoint

    def stop_at_2(step, loss):
        if step == 2:
            raise KeyboardInterrupt

    part = sft(chats, tmp_path / "part", cfg=tiny(), buckets=3, val_fraction=0.2, callback=stop_at_2)
    assert part.train.interrupted and part.train.step == 2
    sft(None, tmp_path / "part", resume=True)  # data, options and config come from the run itself
    assert losses(tmp_path / "part") == losses(tmp_path / "full")
    a, b = ck.model, load_checkpoint(tmp_path / "part").model
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def test_sft_from_a_base_checkpoint_and_the_ar_baseline(tmp_path, chats):
    sft(chats, tmp_path / "base", cfg=tiny(max_steps=2))
    base = load_checkpoint(tmp_path / "base").model
    template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{{ eot_token }}{% endfor %}" \
               "{% if add_generation_prompt %}<assistant>{% endif %}"
    res = sft(chats, tmp_path / "tuned", cfg=tiny(max_steps=2, lr=1e-9, warmup_steps=0), init_from=tmp_path / "base",
              template=template)
    tuned = load_checkpoint(tmp_path / "tuned")
    assert tuned.tokenizer.chat_template == template and res.train.step == 2
    for pa, pb in zip(base.parameters(), tuned.model.parameters()):  # started from the base weights
        assert torch.allclose(pa, pb, atol=1e-5)
    with pytest.raises(RemaskError, match="bidirectional"):
        sft(chats, tmp_path / "bad", cfg=tiny(), init_from=tmp_path / "base", objective="ar")
    ar = sft(chats, tmp_path / "ar", cfg=tiny(max_steps=2), objective="ar")
    ck = load_checkpoint(tmp_path / "ar")
    assert ck.config.model.causal and ck.config.train.objective == "ar" and ar.train.val_loss > 0


def test_sft_cli_reports_padding_and_skips_bad_records(tmp_path, chats, capsys):
    with chats.open("a") as f:
        f.write('{"prompt": "x"}\n')
    argv = ["sft", "--data", str(chats), "--out", str(tmp_path / "run"), "--preset", "tiny", "--max-steps", "2",
            "--seq-len", "64", "--batch-size", "4", "--train.micro_batch_size", "4", "--train.eval_batches", "1", "--split-turns"]
    assert main(argv) == 2
    assert "chats.jsonl:25: missing 'response'; fix the record or pass --skip-bad" in capsys.readouterr().err
    assert main([*argv, "--skip-bad", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    # 24 good records: 16 single-turn + 8 two-turn conversations split into 2 pairs each.
    assert res["skipped"] == 1 and res["examples"] + res["val_examples"] == 32 and res["step"] == 2
    assert 0 <= res["padding_fraction"] <= res["padding_fraction_unbucketed"]
    assert main(["sft", "--out", str(tmp_path / "nothing"), "--resume"]) == 2
    assert "not exist" in capsys.readouterr().err
