"""Flags shared by the commands, each derived from the dataclass field that declares the setting.

A setting is declared once, as a documented config field (``remask.config.option``); its flag,
type, default, choices and help text come from that field here, as the server's request schema
(``remask.serve``) and the lm-eval adapter's arguments do elsewhere:

* sampler and likelihood settings: ``--gen-length 64``, ``--cfg-scale 1.5`` (``add_fields``);
* run configs: ``--model.d_model 256``, ``--train.lr 1e-3`` and ``--config run.yaml``
  (``add_config_args``), plus the short flags every training command shares (``add_run_args``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
import warnings
from pathlib import Path
from typing import Any

from remask.config import (
    PRESETS,
    ModelConfig,
    RunConfig,
    TrainConfig,
    apply_overrides,
    coerce,
    describe_fields,
)
from remask.errors import RemaskError

# ----------------------------------------------------------------------------- fields -> flags


def _help(f: dataclasses.Field) -> str:
    return f.metadata.get("help", "").replace("%", "%%")


def _converter(hint: Any, flag: str) -> Any:
    """A str -> value function for argparse: the config's own conversion, its error as argparse's."""
    def convert(text: str) -> Any:
        try:
            return coerce(text, hint, flag)
        except RemaskError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    convert.__name__ = getattr(hint, "__name__", "value")
    return convert


def _metavar(hint: Any) -> str | None:
    """N for a number (or an optional one); None lets argparse name the value."""
    return "N" if {int, float} & {hint, *typing.get_args(hint)} else None


def add_fields(p: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type, *, skip: tuple[str, ...] = (),
               defaults: dict[str, Any] | None = None) -> None:
    """One ``--field-name`` flag per field of dataclass ``cls`` (but ``skip``): dest, type, default,
    choices and help all come from the field (``defaults`` may replace a default). A bool that
    defaults to False is a switch; one that defaults to True gets ``--no-field-name`` too."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = (defaults or {}).get(f.name, f.default)
        if hints[f.name] is bool:
            action = argparse.BooleanOptionalAction if default else "store_true"
            p.add_argument(flag, dest=f.name, action=action, default=default, help=_help(f) or None)
            continue
        choices = f.metadata.get("choices")
        p.add_argument(flag, dest=f.name, type=_converter(hints[f.name], flag[2:]), default=default,
                       choices=list(choices) + ([None] if default is None else []) if choices else None,
                       metavar=None if choices else _metavar(hints[f.name]) or "V",
                       help=f"{_help(f)} [default: %(default)s]")


def field_values(args: argparse.Namespace, fields: typing.Iterable[str]) -> dict[str, Any]:
    """The parsed values of the named fields that the command has flags for."""
    return {name: getattr(args, name) for name in fields if hasattr(args, name)}


# ----------------------------------------------------------------------------- run configs

def add_config_args(p: argparse.ArgumentParser) -> None:
    """--preset, --config and one ``--section.field`` flag per config field (help from the field)."""
    p.add_argument("--preset", default="small", choices=sorted(PRESETS),
                   help="starting config (default: small; with --resume the run's own config is the start)")
    p.add_argument("--config", type=Path, help="YAML/JSON file of {model: {...}, train: {...}} overrides")
    for section, cls in (("model", ModelConfig), ("train", TrainConfig)):
        group = p.add_argument_group(f"{section} config (--{section}.FIELD VALUE)")
        for name, text, default in describe_fields(cls):
            group.add_argument(f"--{section}.{name}", dest=f"cfg:{section}.{name}", default=argparse.SUPPRESS,
                               metavar="V", help=f"{text} [{default}]".replace("%", "%%"))


# The short flags of every training command and the config fields they set.
RUN_SHORTCUTS = {"time_budget": "train.time_budget", "max_steps": "train.max_steps", "seed": "train.seed",
                 "batch_size": "train.batch_size", "seq_len": "train.seq_len", "device": "train.device"}


def _auto(value: str) -> str:
    if value != "auto":
        raise argparse.ArgumentTypeError(f"--resume takes no value or 'auto', got {value!r}")
    return value


def add_run_args(p: argparse.ArgumentParser, shortcuts: dict[str, str], *, help: dict[str, str] | None = None) -> None:
    """The flags every training command (train, sft) shares: --resume, --overwrite, one short flag
    per ``shortcuts`` entry (``--max-steps`` for ``train.max_steps``: type and help from that field,
    or from ``help``), --json, then the config flags of ``add_config_args``."""
    p.add_argument("--resume", nargs="?", const=True, default=False, type=_auto, metavar="auto",
                   help="continue the run in --out exactly from its newest complete checkpoint (its own config and "
                        "limits, unless --max-steps / --time-budget are given); `--resume auto` starts afresh where "
                        "there is none yet (for torchrun --max-restarts)")
    p.add_argument("--overwrite", action="store_true", help="replace the checkpoint already in --out")
    fields, hints = {f.name: f for f in dataclasses.fields(TrainConfig)}, typing.get_type_hints(TrainConfig)
    for flag, key in shortcuts.items():
        f = fields[key.partition(".")[2]]
        text = (help or {}).get(flag) or _help(f)
        p.add_argument("--" + flag.replace("_", "-"), dest=flag, type=_converter(hints[f.name], key),
                       default=argparse.SUPPRESS,  # absent, not None: `--time-budget none` is a value
                       metavar=_metavar(hints[f.name]), help=f"{text} (--{key})")
    p.add_argument("--json", action="store_true", help="print one JSON object with the final metrics")
    add_config_args(p)


def resolve_config(args: argparse.Namespace, shortcuts: dict[str, str], base: RunConfig | None = None) -> RunConfig:
    """``base`` (default: the --preset), then the --config file, then --section.field flags, then the
    short flags; no progress bar under --json (its output is the one JSON object). A resumed run
    passes its own saved config as ``base``, so only what this command line says changes."""
    cfg = base if base is not None else PRESETS[args.preset]()
    overrides: dict[str, Any] = {}
    if args.config is not None:
        overrides.update(_flatten(_read_config_file(args.config)))
    overrides.update({k[4:]: v for k, v in vars(args).items() if k.startswith("cfg:")})
    overrides.update({key: getattr(args, flag) for flag, key in shortcuts.items() if hasattr(args, flag)})
    cfg = apply_overrides(cfg, overrides)
    if getattr(args, "json", False):
        cfg.train.progress = False
    return cfg


def _read_config_file(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise RemaskError(f"--config file '{path}' does not exist") from None
    except yaml.YAMLError as e:
        raise RemaskError(f"--config file '{path}' is not valid YAML/JSON: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise RemaskError(f"--config file '{path}' must hold a mapping like {{train: {{lr: 0.001}}}}")
    return data


def _flatten(d: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for section, values in d.items():
        if not isinstance(values, dict):
            raise RemaskError(f"--config: section '{section}' must be a mapping of fields")
        out.update({f"{section}.{k}": v for k, v in values.items()})
    return out


# ----------------------------------------------------------------------------- checkpoints and sampling

def add_ckpt_args(p: argparse.ArgumentParser) -> None:
    """--ckpt, --device and --json: what every command that loads a checkpoint takes."""
    p.add_argument("--ckpt", required=True, help="checkpoint or run directory")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: CUDA when visible)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def load(args: argparse.Namespace) -> Any:
    """The checkpoint of --ckpt on the device of --device."""
    from remask.checkpoint import load_checkpoint
    from remask.devices import pick_device

    return load_checkpoint(args.ckpt, pick_device(args.device))


def add_sampler_args(p: argparse.ArgumentParser, *, show_steps: bool = True) -> None:
    """The checkpoint flags, then one flag per sampler setting (``sampling.config``: the shared
    ones, LLaDA's, the AR baseline's), then --show-steps."""
    from remask.sampling.config import SAMPLER_PRESETS, ARSampleConfig, DecodeConfig, SampleConfig

    add_ckpt_args(p)
    group = p.add_argument_group("sampling (every decoder)")
    group.add_argument("--sampler-preset", choices=sorted(SAMPLER_PRESETS), default=None,
                       help="start from a named setup (flags given still win): "
                            + "; ".join(f"{k}: {v}" for k, v in SAMPLER_PRESETS.items()).replace("%", "%%"))
    add_fields(group, DecodeConfig)
    shared = tuple(f.name for f in dataclasses.fields(DecodeConfig))
    add_fields(p.add_argument_group("sampling (masked diffusion)"), SampleConfig, skip=shared)
    add_fields(p.add_argument_group("sampling (autoregressive checkpoints)"), ARSampleConfig, skip=shared)
    if show_steps:
        p.add_argument("--show-steps", action="store_true", help="animate the denoising in the terminal")


def sampler_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The parsed sampler flags by field name, on top of --sampler-preset where one is named: a
    preset's value replaces a flag left at its default."""
    from remask.sampling.config import SAMPLER_FIELDS, SAMPLER_PRESETS

    values = field_values(args, SAMPLER_FIELDS)
    preset = SAMPLER_PRESETS.get(getattr(args, "sampler_preset", None) or "", {})
    return {**values, **{k: v for k, v in preset.items() if values.get(k) == SAMPLER_FIELDS[k].default}}


def sample_config(args: argparse.Namespace, *, causal: bool = False, **override: Any) -> Any:
    """The parsed sampler flags (``sampler_settings``) as the config of a causal or diffusion
    checkpoint; flags that only the other kind takes are named in a one-line warning and ignored."""
    from remask.sampling.config import sampler_config

    cfg, ignored = sampler_config({**sampler_settings(args), **override}, causal=causal)
    if ignored:
        kind = "autoregressive" if causal else "masked diffusion"
        flags = ", ".join("--" + k.replace("_", "-") for k in ignored)
        warnings.warn(f"{flags} ignored: the checkpoint is {kind}", stacklevel=2)
    return cfg


def emit(args: argparse.Namespace, result: dict[str, Any], human: str) -> None:
    """Exactly one JSON object on stdout with --json; readable text otherwise."""
    print(json.dumps(result) if getattr(args, "json", False) else human)


__all__ = ["RUN_SHORTCUTS", "add_ckpt_args", "add_config_args", "add_fields", "add_run_args", "add_sampler_args",
           "emit", "field_values", "load", "resolve_config", "sample_config", "sampler_settings"]
