"""`remask eval`: perplexity (bound / exact), completion accuracy, multiple choice, input errors."""

from __future__ import annotations

import json
import math

import pytest

from conftest import tiny_model_config
from remask.checkpoint import save_checkpoint
from remask.commands import main
from remask.config import RunConfig, TrainConfig
from remask.data.tokenizer import ByteTokenizer
from remask.errors import RemaskError
from remask.evaluate import (
    choice_accuracy,
    completion_accuracy,
    encode_pair,
    generate_texts,
    perplexity,
    read_jsonl,
    render_chat,
)
from remask.likelihood import LikelihoodConfig, ar_loglik, rolling_loglik, rolling_windows
from remask.model import build_model
from remask.sampling import SampleConfig

TEXTS = ["the quick brown fox jumps over the lazy dog", "remask denoises every masked token, then stops."]


def _checkpoint(root, name, causal):
    tok = ByteTokenizer()
    cfg = tiny_model_config(vocab_size=tok.vocab_size, mask_token_id=tok.mask_id, eos_token_id=tok.eos_id,
                            causal=causal, init_std=0.2)
    model = build_model(cfg, seed=0).eval()
    run = RunConfig(model=cfg, train=TrainConfig(seq_len=24, objective="ar" if causal else "mdm"))
    return save_checkpoint(root / name, model, run, tok), model, tok


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    return {"mdm": _checkpoint(root, "mdm", False), "ar": _checkpoint(root, "ar", True)}


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _run_json(capsys, argv):
    assert main([*argv, "--json"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1  # exactly one JSON object
    return json.loads(out)


# ----------------------------------------------------------------------------- perplexity

def test_ar_perplexity_is_the_exact_chained_likelihood(ckpts):
    _, model, tok = ckpts["ar"]
    res = perplexity(model, tok, TEXTS, window=16, stride=8)
    total = 0.0
    for text in TEXTS:
        stream = [tok.eos_id, *tok.encode(text)]
        total += sum(ar_loglik(model, stream[c:s], stream[s:e]) for c, s, e in rolling_windows(len(stream), 16, 8))
    n = sum(len(t) for t in TEXTS)  # ASCII bytes = tokens
    assert res["bound"] == "exact" and res["tokens"] == n and res["bytes"] == n
    assert res["nats_per_token"] == pytest.approx(-total / n, rel=1e-6)
    assert res["bits_per_byte"] == pytest.approx(-total / n / math.log(2), rel=1e-6)
    assert res["perplexity"] == pytest.approx(math.exp(-total / n), rel=1e-6)
    assert res["stderr_nats_per_token"] == 0.0


def test_mdm_perplexity_is_a_bound_with_independent_window_noise(ckpts):
    _, model, tok = ckpts["mdm"]
    cfg = LikelihoodConfig(mc_num=16, batch_size=8)
    res = perplexity(model, tok, TEXTS, window=16, cfg=cfg)
    key, total = 0, 0.0
    for text in TEXTS:  # documents take consecutive key ranges, one key per window
        stream = [tok.eos_id, *tok.encode(text)]
        total += rolling_loglik(model, stream, window=16, stride=15, cfg=cfg, mask_id=tok.mask_id, key=key).value
        key += len(rolling_windows(len(stream), 16, 15))
    assert res["bound"] == "elbo" and res["windows"] == key
    assert res["nats_per_token"] == pytest.approx(-total / res["tokens"], rel=1e-9)
    assert res["stderr_nats_per_token"] > 0
    # a random 262-way predictor scores about log(262) nats per token
    assert 0.5 * math.log(262) < res["nats_per_token"] < 2 * math.log(262)


def test_perplexity_command_json(ckpts, tmp_path, capsys):
    path = tmp_path / "valid.txt"
    path.write_text(TEXTS[0])
    ar = _run_json(capsys, ["eval", "perplexity", "--ckpt", str(ckpts["ar"][0]), "--data", str(path)])
    assert ar["bound"] == "exact" and ar["window"] == 24 and ar["stride"] == 23  # the training seq_len
    assert ar["nats_per_token"] == pytest.approx(perplexity(ckpts["ar"][1], ckpts["ar"][2], [TEXTS[0]],
                                                            window=24)["nats_per_token"], rel=1e-6)
    mdm = _run_json(capsys, ["eval", "perplexity", "--ckpt", str(ckpts["mdm"][0]), "--data", str(path),
                             "--mc-num", "8", "--batch-size", "8", "--window", "12", "--stride", "6"])
    assert mdm["bound"] == "elbo" and mdm["mc_num"] == 8 and mdm["windows"] == math.ceil(len(TEXTS[0]) / 6)


# ----------------------------------------------------------------------------- completion

@pytest.mark.parametrize("kind", ["mdm", "ar"])
def test_completion_accuracy_counts_exact_and_contained_answers(ckpts, tmp_path, capsys, kind):
    ck, model, tok = ckpts[kind]
    prompts = ["abc", "hello wor", "x = 1 +"]
    sample = SampleConfig(gen_length=6, steps=6, logits_eos_inf=True)
    preds = generate_texts(model, tok, [tok.encode(p) for p in prompts], sample)
    records = [{"prompt": prompts[0], "completion": preds[0]},  # exact
               {"prompt": prompts[1], "completion": preds[1][1:4]},  # contained only (a clean slice)
               {"prompt": prompts[2], "completion": "\u2603never"}]  # neither
    metrics, rows = completion_accuracy(model, tok, records, sample, batch_size=2)
    assert [r["prediction"] for r in rows] == preds  # batching never changes an argmax sample
    assert metrics == {"exact_match": pytest.approx(1 / 3), "contains": pytest.approx(2 / 3), "n": 3}

    data, out = _jsonl(tmp_path / f"{kind}.jsonl", records), tmp_path / f"{kind}-preds.jsonl"
    res = _run_json(capsys, ["eval", "completion", "--ckpt", str(ck), "--data", str(data), "--gen-length", "6",
                             "--logits-eos-inf", "--out", str(out)])
    assert res["exact_match"] == pytest.approx(1 / 3) and res["contains"] == pytest.approx(2 / 3)
    assert [json.loads(line)["prediction"] for line in out.read_text().splitlines()] == preds


def test_chat_wraps_the_prompt_in_the_template(ckpts):
    _, model, tok = ckpts["mdm"]
    text = render_chat(tok, "What is 2 + 3?")
    assert "What is 2 + 3?" in text and text.index("What is") > 0
    sample = SampleConfig(gen_length=4, steps=4)
    _, rows = completion_accuracy(model, tok, [{"prompt": "What is 2 + 3?", "completion": "5"}], sample,
                                  chat=True)
    assert rows[0]["prediction"] == generate_texts(model, tok, [tok.encode(text)], sample)[0]


# ----------------------------------------------------------------------------- multiple choice

def test_choice_accuracy_picks_the_most_likely_option(ckpts):
    _, model, tok = ckpts["ar"]
    questions = [("The sky is", [" blue", " green", " a large grey"]), ("1 + 1 =", [" 2", " 11", " two"])]
    records = []
    for prompt, opts in questions:
        scores = [ar_loglik(model, tok.encode(prompt), tok.encode(o)) for o in opts]
        per_token = [s / len(o) for s, o in zip(scores, opts)]  # byte tokenizer: tokens = bytes
        records.append({"prompt": prompt, "choices": opts, "answer": opts[per_token.index(max(per_token))]})
        records.append({"prompt": prompt, "choices": opts, "answer": scores.index(max(scores))})
    metrics, rows = choice_accuracy(model, tok, records)
    assert metrics["acc_norm"] >= 0.5 and metrics["acc"] >= 0.5
    assert rows[0]["correct_norm"] and rows[1]["correct"] and rows[2]["correct_norm"] and rows[3]["correct"]
    assert rows[0]["loglik"] == pytest.approx([ar_loglik(model, tok.encode("The sky is"), tok.encode(o))
                                               for o in questions[0][1]], abs=1e-5)


def test_mdm_choices_share_noise_so_equal_options_tie(ckpts, tmp_path, capsys):
    ck, model, tok = ckpts["mdm"]
    records = [{"prompt": "Q: ", "choices": ["yes", "yes", "no!"], "answer": 2}]
    _, rows = choice_accuracy(model, tok, records, LikelihoodConfig(mc_num=8, batch_size=8))
    assert rows[0]["loglik"][0] == rows[0]["loglik"][1]
    data = _jsonl(tmp_path / "mc.jsonl", records * 2)
    res = _run_json(capsys, ["eval", "choice", "--ckpt", str(ck), "--data", str(data), "--mc-num", "8",
                             "--norm", "byte"])
    assert res["n"] == 2 and res["norm"] == "byte" and res["acc"] in (0.0, 1.0)


# ----------------------------------------------------------------------------- inputs and errors

def test_encode_pair_moves_trailing_space_into_the_continuation():
    tok = ByteTokenizer()
    assert encode_pair(tok, "Q: ", "A") == (tok.encode("Q:"), tok.encode(" A"))
    assert encode_pair(tok, "", "xy") == ([], tok.encode("xy"))


def test_bad_records_name_the_line(tmp_path, ckpts, capsys):
    with pytest.raises(RemaskError, match="does not exist"):
        read_jsonl(tmp_path / "nope.jsonl", ("prompt",))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "completion": "b"}\n{oops\n')
    with pytest.raises(RemaskError, match=r"bad.jsonl:2 is not valid JSON"):
        read_jsonl(bad, ("prompt", "completion"))
    bad.write_text('{"prompt": "a"}\n')
    with pytest.raises(RemaskError, match=r"bad.jsonl:1 lacks field\(s\) completion"):
        read_jsonl(bad, ("prompt", "completion"))
    bad.write_text('{"prompt": "a", "choices": ["x", "y"], "answer": 5}\n')
    assert main(["eval", "choice", "--ckpt", str(ckpts["ar"][0]), "--data", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("remask: error: record 1: 'answer' must be an index") and err.count("\n") == 1
    assert main(["eval", "choice", "--ckpt", str(ckpts["mdm"][0]), "--data", str(bad), "--mc-num", "10",
                 "--batch-size", "4"]) == 2
    assert "divide --mc-num" in capsys.readouterr().err
