"""The lm-evaluation-harness adapter on local task YAMLs over local .jsonl files (no download).

Skipped where the optional extra (``pip install 'remask[lm-eval]'``) is not installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import tiny_model_config
from remask.checkpoint import save_checkpoint
from remask.config import RunConfig, TrainConfig
from remask.data.tokenizer import ByteTokenizer
from remask.evaluate import choice_accuracy, generate_texts, perplexity
from remask.likelihood import LikelihoodConfig
from remask.model import build_model
from remask.sampling import SampleConfig

lm_eval = pytest.importorskip("lm_eval")

TEXTS = ["the quick brown fox jumps over the lazy dog", "remask denoises every masked token, then stops."]
CHOICES = [{"prompt": "The sky is", "choices": [" blue", " green", " a large grey"], "answer": 0},
           {"prompt": "1 + 1 =", "choices": [" 2", " 11"], "answer": 1}]
GEN_PROMPTS = ["abc", "hello wor"]

TASK = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
"""
TASKS = {
    "remask_t_choice": ("choice.jsonl", """output_type: multiple_choice
doc_to_text: "{{{{prompt}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
target_delimiter: ""
metric_list:
  - metric: acc
  - metric: acc_norm
"""),
    "remask_t_ppl": ("text.jsonl", """output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: bits_per_byte
"""),
    "remask_t_gen": ("gen.jsonl", """output_type: generate_until
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{completion}}}}"
generation_kwargs:
  until: ["<<END>>"]
  max_gen_toks: 6
  do_sample: false
metric_list:
  - metric: exact_match
"""),
}


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    """No network and no writes outside tmp: datasets reads these at call time."""
    import datasets.config

    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.setenv(var, "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf" / "datasets", raising=False)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from remask.integrations.lm_eval import register

    register()
    root = tmp_path_factory.mktemp("lmeval")
    tok = ByteTokenizer()
    ckpts, models = {}, {}
    for kind, causal in (("ar", True), ("mdm", False)):
        cfg = tiny_model_config(vocab_size=tok.vocab_size, mask_token_id=tok.mask_id, eos_token_id=tok.eos_id,
                                causal=causal, init_std=0.2)
        models[kind] = build_model(cfg, seed=0).eval()
        ckpts[kind] = save_checkpoint(root / kind, models[kind], RunConfig(model=cfg, train=TrainConfig(seq_len=24)),
                                      tok)
    # generation targets: row 0 is what the AR model produces (a hit), row 1 is not
    pred = generate_texts(models["ar"], tok, [tok.encode(GEN_PROMPTS[0])], SampleConfig(gen_length=6, steps=6))[0]
    rows = {"choice.jsonl": CHOICES, "text.jsonl": [{"text": t} for t in TEXTS],
            "gen.jsonl": [{"prompt": GEN_PROMPTS[0], "completion": pred},
                          {"prompt": GEN_PROMPTS[1], "completion": "\u2603 never"}]}
    for name, data in rows.items():
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in data))
    tasks = root / "tasks"
    tasks.mkdir()
    for name, (data, body) in TASKS.items():
        (tasks / f"{name}.yaml").write_text(TASK.format(name=name, data=root / data) + body.format())
    return {"ckpts": ckpts, "models": models, "tok": tok, "tasks": tasks}


def _evaluate(setup, kind: str, tasks: list[str], extra: str = "") -> dict:
    from lm_eval.tasks import TaskManager

    out = lm_eval.simple_evaluate(model="remask", model_args=f"ckpt={setup['ckpts'][kind]}{extra}", tasks=tasks,
                                  task_manager=TaskManager(include_path=str(setup["tasks"]), include_defaults=False),
                                  device="cpu")
    return {task: {k.split(",")[0]: v for k, v in res.items()} for task, res in out["results"].items()}


def test_ar_checkpoint_through_lm_eval_matches_remask_eval(setup):
    res = _evaluate(setup, "ar", list(TASKS))
    model, tok = setup["models"]["ar"], setup["tok"]
    ppl = perplexity(model, tok, TEXTS, window=24)  # the window the checkpoint trained with
    assert res["remask_t_ppl"]["bits_per_byte"] == pytest.approx(ppl["bits_per_byte"], rel=1e-6)
    ours, _ = choice_accuracy(model, tok, CHOICES, norm="byte")  # lm-eval's acc_norm divides by characters
    assert res["remask_t_choice"]["acc"] == pytest.approx(ours["acc"])
    assert res["remask_t_choice"]["acc_norm"] == pytest.approx(ours["acc_norm"])
    assert res["remask_t_gen"]["exact_match"] == pytest.approx(0.5)


def test_mdm_rolling_loglikelihood_is_the_perplexity_bound(setup):
    res = _evaluate(setup, "mdm", ["remask_t_ppl"], ",mc_num=8,mc_batch_size=8")
    ppl = perplexity(setup["models"]["mdm"], setup["tok"], TEXTS, window=24,
                     cfg=LikelihoodConfig(mc_num=8, batch_size=8))  # same windows, same noise keys
    assert res["remask_t_ppl"]["bits_per_byte"] == pytest.approx(ppl["bits_per_byte"], rel=1e-6)


def test_mdm_choice_and_generation_run(setup):
    res = _evaluate(setup, "mdm", ["remask_t_choice", "remask_t_gen"], ",mc_num=8,mc_batch_size=8,steps=6")
    assert 0.0 <= res["remask_t_choice"]["acc"] <= 1.0
    assert res["remask_t_gen"]["exact_match"] in (0.0, 0.5, 1.0)


@pytest.mark.slow
def test_command_line_wrapper_registers_the_model(setup, tmp_path):
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    cmd = [sys.executable, "-m", "remask.integrations.lm_eval", "--model", "remask", "--model_args",
           f"ckpt={setup['ckpts']['ar']}", "--include_path", str(setup["tasks"]), "--tasks", "remask_t_choice",
           "--device", "cpu", "--output_path", str(tmp_path / "out")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "remask_t_choice" in proc.stdout
    assert list(Path(tmp_path / "out").rglob("results_*.json"))


@pytest.mark.slow
def test_command_line_without_device_runs_on_the_cpu(setup, tmp_path):
    """lm-eval's own --device default is cuda:0; remask-lm-eval must still run where no CUDA is visible."""
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "remask.integrations.lm_eval", "--model", "remask", "--model_args",
           f"ckpt={setup['ckpts']['ar']}", "--include_path", str(setup["tasks"]), "--tasks", "remask_t_choice"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "remask_t_choice" in proc.stdout


def test_model_args_are_config_fields_with_one_line_errors(setup, monkeypatch):
    from remask.errors import RemaskError
    from remask.integrations.lm_eval import RemaskLM

    lm = RemaskLM(str(setup["ckpts"]["mdm"]), device="cpu", mc_num=8, mc_batch_size=4, estimator="t", cfg_scale=0.5,
                  steps=4, block_length=2, remasking="random")
    assert (lm.lcfg.mc_num, lm.lcfg.batch_size, lm.lcfg.estimator, lm.lcfg.cfg_scale) == (8, 4, "t", 0.5)
    sample = lm._sample_config({"max_gen_toks": 4})
    assert (sample.gen_length, sample.steps, sample.block_length, sample.remasking, sample.cfg_scale) == \
        (4, 4, 2, "random", 0.5)  # a setting both configs declare (cfg_scale, seed) goes to both
    with pytest.raises(RemaskError, match="unknown --model_args key 'bogus'"):
        RemaskLM(str(setup["ckpts"]["mdm"]), device="cpu", bogus=1)
    with pytest.raises(RemaskError, match="--steps 3 must be a multiple"):
        RemaskLM(str(setup["ckpts"]["mdm"]), device="cpu", steps=3, block_length=2)._sample_config({"max_gen_toks": 4})
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(RemaskError, match="device cuda:0 was asked for but no CUDA device is visible; use device cpu"):
        RemaskLM(str(setup["ckpts"]["mdm"]), device="cuda:0")
    assert str(RemaskLM(str(setup["ckpts"]["mdm"]), device=None).model.embed.weight.device) == "cpu"
