"""One declaration per setting: flags, the server's request schema and the lm-eval adapter are derived
from the config dataclasses, so their names, defaults and help texts cannot drift apart."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from conftest import tiny_model_config
from remask.commands import build_parser, main
from remask.commands.flags import sample_config
from remask.data.tokenizer import ByteTokenizer
from remask.errors import RemaskError
from remask.likelihood import LikelihoodConfig
from remask.model import build_model
from remask.sampling.config import SAMPLER_FIELDS, ARSampleConfig, SampleConfig, sampler_config

TOK = ByteTokenizer()


def _subparser(argv: list[str]) -> argparse.ArgumentParser:
    parser = build_parser(only=argv[0])
    for action in parser._subparsers._group_actions:
        p = action.choices[argv[0]]
        for name in argv[1:]:
            p = next(a for a in p._subparsers._group_actions).choices[name]
        return p
    raise AssertionError("no subcommands")


def _flags(p: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in p._actions}


@pytest.mark.parametrize("argv", [["generate"], ["infill"], ["chat"], ["serve"], ["eval", "completion"]])
def test_every_sampler_field_is_a_flag_with_its_default_and_help(argv, capsys):
    flags = _flags(_subparser(argv))
    assert main([*argv, "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for name, f in SAMPLER_FIELDS.items():
        action = flags[name]
        assert f"--{name.replace('_', '-')}" in action.option_strings
        expected = None if (argv == ["serve"] and name == "seed") else f.default  # serve: a fresh seed per request
        assert action.default == expected, name
        assert " ".join(f.metadata["help"].split())[:40] in text, name
        if f.metadata.get("choices"):
            assert set(f.metadata["choices"]) <= set(action.choices or ())


def test_likelihood_flags_follow_their_dataclass():
    for task in ("perplexity", "choice"):
        flags = _flags(_subparser(["eval", task]))
        for f in dataclasses.fields(LikelihoodConfig):
            assert flags[f.name].default == f.default and f"--{f.name.replace('_', '-')}" in flags[f.name].option_strings


def test_server_schema_generate_help_and_sampleconfig_agree():
    pytest.importorskip("fastapi")
    from remask.serve import REQUEST_FIELDS, SERVER_ONLY, create_app

    model = build_model(tiny_model_config(vocab_size=TOK.vocab_size, mask_token_id=TOK.mask_id,
                                          eos_token_id=TOK.eos_id, max_seq_len=96), seed=0).eval()
    schema = create_app(model, TOK).openapi()
    body = schema["paths"]["/v1/completions"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    chat_body = schema["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == chat_body
    props = body["properties"]
    generate = _flags(_subparser(["generate"]))
    defaults = SampleConfig()
    assert set(REQUEST_FIELDS) | set(SERVER_ONLY) == set(SAMPLER_FIELDS)
    for name in REQUEST_FIELDS:
        default = getattr(defaults, name, SAMPLER_FIELDS[name].default)
        assert props[name].get("default") == default, name  # a None default is left out of the schema
        assert props[name]["description"] == SAMPLER_FIELDS[name].metadata["help"]
        if name in SampleConfig.__dataclass_fields__ and name != "steps":  # steps: None resolves to gen_length
            assert generate[name].default == default == SampleConfig.__dataclass_fields__[name].default, name
    assert props["max_tokens"]["default"] == generate["gen_length"].default == defaults.gen_length
    assert props["remasking"]["enum"] == list(SAMPLER_FIELDS["remasking"].metadata["choices"])


def test_sampler_config_builds_either_kind_from_one_mapping():
    cfg, foreign = sampler_config({"gen_length": "32", "block_length": 8, "top_k": None, "early_stop": "false"},
                                  causal=False)
    assert isinstance(cfg, SampleConfig) and (cfg.gen_length, cfg.steps, cfg.block_length, cfg.early_stop) == \
        (32, 32, 8, False) and foreign == []
    ar, foreign = sampler_config({"gen_length": 8, "steps": 4, "remasking": "low_confidence", "top_k": 5},
                                 causal=True)
    assert isinstance(ar, ARSampleConfig) and (ar.gen_length, ar.top_k) == (8, 5)
    assert foreign == ["steps"]  # remasking is at its default: a parsed flag left alone is not reported
    kept, _ = sampler_config({"temperature": 0.5}, causal=True, base=SampleConfig(gen_length=16, seed=3))
    assert (kept.gen_length, kept.seed, kept.temperature) == (16, 3, 0.5)  # the shared fields carry over
    with pytest.raises(RemaskError, match="unknown sampler setting 'stepz'"):
        sampler_config({"stepz": 3}, causal=False)
    with pytest.raises(RemaskError, match="--steps expects int"):
        sampler_config({"steps": "many"}, causal=False)


def test_cli_flags_reach_the_config_and_foreign_ones_warn(recwarn):
    args = build_parser(only="generate").parse_args(["generate", "--ckpt", "x", "--gen-length", "16", "--cfg-scale",
                                                     "1.5", "--no-early-stop", "--top-k", "3"])
    cfg = sample_config(args)
    assert (cfg.gen_length, cfg.steps, cfg.cfg_scale, cfg.early_stop) == (16, 16, 1.5, False)
    assert "--top-k ignored: the checkpoint is masked diffusion" in str(recwarn.pop(UserWarning).message)
    ar = sample_config(args, causal=True)
    assert (ar.gen_length, ar.top_k, ar.early_stop) == (16, 3, False)
    assert "--cfg-scale ignored: the checkpoint is autoregressive" in str(recwarn.pop(UserWarning).message)


def test_bad_flag_values_are_one_line_usage_errors(capsys):
    assert main(["generate", "--ckpt", "x", "--steps", "many"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--steps" in err and "expects int" in err
    assert main(["generate", "--ckpt", "x", "--cache", "triple"]) == 2
    assert "invalid choice: 'triple'" in capsys.readouterr().err


def test_sampler_preset_sets_what_the_flags_leave_at_their_defaults():
    parser = build_parser(only="generate")
    args = parser.parse_args(["generate", "--ckpt", "x", "--gen-length", "64", "--sampler-preset", "llada-instruct"])
    cfg = sample_config(args)
    assert (cfg.block_length, cfg.remasking, cfg.confidence_eos_eot_inf, cfg.steps) == (32, "low_confidence", True, 64)
    args = parser.parse_args(["generate", "--ckpt", "x", "--gen-length", "64", "--block-length", "16",
                              "--sampler-preset", "llada-instruct"])
    assert sample_config(args).block_length == 16  # a flag given wins over the preset
    assert sample_config(parser.parse_args(["generate", "--ckpt", "x"])).block_length is None  # no preset: defaults
