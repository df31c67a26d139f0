"""The command line: one table of subcommands, each a thin layer over an importable function.

    remask prepare | tokenizer train | train | generate | infill

Every config field is also a flag, ``--model.d_model 256`` / ``--train.lr 1e-3``, and
``--config run.yaml`` loads a file of them. A user's mistake prints one line, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from remask.config import PRESETS, ModelConfig, RunConfig, TrainConfig, apply_overrides, describe_fields
from remask.errors import RemaskError


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    add_args: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


# ----------------------------------------------------------------------------- shared flags

def add_config_args(p: argparse.ArgumentParser) -> None:
    """--preset, --config and one ``--section.field`` flag per config field (help from the field)."""
    p.add_argument("--preset", default="small", choices=sorted(PRESETS), help="starting config (default: small)")
    p.add_argument("--config", type=Path, help="YAML/JSON file of {model: {...}, train: {...}} overrides")
    for section, cls in (("model", ModelConfig), ("train", TrainConfig)):
        group = p.add_argument_group(f"{section} config (--{section}.FIELD VALUE)")
        for name, text, default in describe_fields(cls):
            group.add_argument(f"--{section}.{name}", dest=f"cfg:{section}.{name}", default=argparse.SUPPRESS,
                               metavar="V", help=f"{text} [{default}]")


# The short flags of every training command and the config fields they set (train adds --objective).
RUN_SHORTCUTS = {"time_budget": "train.time_budget", "max_steps": "train.max_steps", "seed": "train.seed",
                 "batch_size": "train.batch_size", "seq_len": "train.seq_len", "device": "train.device"}


def add_run_args(p: argparse.ArgumentParser, *, seq_len_help: str | None = None) -> None:
    """The flags every training command (train, sft) shares: --resume, the ``RUN_SHORTCUTS`` flags,
    --json, then the config flags of ``add_config_args``."""
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly")
    p.add_argument("--overwrite", action="store_true", help="replace the checkpoint already in --out")
    p.add_argument("--time-budget", type=float, help="stop after this many seconds")
    p.add_argument("--max-steps", type=int, help="optimizer steps")
    p.add_argument("--seed", type=int)
    p.add_argument("--batch-size", type=int, help="global batch in sequences")
    p.add_argument("--seq-len", type=int, help=seq_len_help)
    p.add_argument("--device", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--json", action="store_true", help="print one JSON object with the final metrics")
    add_config_args(p)


def resolve_config(args: argparse.Namespace, shortcuts: dict[str, str]) -> RunConfig:
    """Preset, then --config file, then --section.field flags, then the short flags; no progress bar
    under --json (its output is the one JSON object)."""
    cfg = PRESETS[args.preset]()
    overrides: dict[str, Any] = {}
    if args.config is not None:
        overrides.update(_flatten(_read_config_file(args.config)))
    overrides.update({k[4:]: v for k, v in vars(args).items() if k.startswith("cfg:")})
    for flag, key in shortcuts.items():
        value = getattr(args, flag, None)
        if value is not None:
            overrides[key] = value
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


def add_sampler_args(p: argparse.ArgumentParser, *, prompt: bool = True) -> None:
    """The sampling flags shared by every command that samples."""
    p.add_argument("--ckpt", required=True, help="checkpoint or run directory")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: = gen length)")
    p.add_argument("--gen-length", type=int, default=64, help="tokens to generate")
    p.add_argument("--block-length", type=int, default=None, help="semi-autoregressive block length (default: one block)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = argmax (deterministic)")
    p.add_argument("--remasking", default="low_confidence",
                   help="rule: low_confidence (LLaDA), margin, entropy, random, or threshold (parallel decoding)")
    p.add_argument("--confidence", default=None, choices=["low_confidence", "margin", "entropy", "random"],
                   help="confidence measure for --remasking threshold (default: low_confidence)")
    p.add_argument("--threshold", type=float, default=0.9, help="threshold rule: commit tokens this confident")
    p.add_argument("--cache", default="none", choices=["none", "prefix", "dual"],
                   help="approximate K/V cache of the semi-autoregressive loop (none: exact)")
    p.add_argument("--cache-refresh", type=int, default=0, metavar="N",
                   help="with --cache: recompute the whole canvas every N steps of a block too (0: block starts only)")
    p.add_argument("--no-early-stop", dest="early_stop", action="store_false",
                   help="denoise every block even after the answer has ended in EOS")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="forward precision (auto: bf16 on CUDA)")
    p.add_argument("--compile", action="store_true", help="torch.compile the forward pass (GPU)")
    p.add_argument("--cfg", type=float, default=0.0, dest="cfg_scale", help="classifier-free guidance scale")
    p.add_argument("--logits-eos-inf", action="store_true", help="never generate EOS")
    p.add_argument("--confidence-eos-eot-inf", action="store_true", help="commit EOS / end-of-turn last")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--show-steps", action="store_true", help="animate the denoising in the terminal")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--remask-committed", type=int, default=0, metavar="K",
                   help="ReMDM-style: re-mask up to K doubtful tokens committed earlier in the block per step (0: off)")
    p.add_argument("--remask-below", type=float, default=0.5,
                   help="re-mask only committed tokens whose current confidence is below this")


def sample_config(args: argparse.Namespace, gen_length: int | None = None) -> Any:
    from remask.sampling import SampleConfig

    n = gen_length if gen_length is not None else args.gen_length
    return SampleConfig(gen_length=n, steps=args.steps if args.steps is not None else n,
                        block_length=args.block_length, temperature=args.temperature, remasking=args.remasking,
                        cfg_scale=args.cfg_scale, logits_eos_inf=args.logits_eos_inf,
                        confidence_eos_eot_inf=args.confidence_eos_eot_inf, seed=args.seed,
                        confidence=getattr(args, "confidence", None), threshold=getattr(args, "threshold", 0.9),
                        cache=getattr(args, "cache", "none"), cache_refresh=getattr(args, "cache_refresh", 0), early_stop=getattr(args, "early_stop", True),
                        dtype=getattr(args, "dtype", "auto"), compile=getattr(args, "compile", False),
                        remask_committed=getattr(args, "remask_committed", 0),
                        remask_below=getattr(args, "remask_below", 0.5))


def emit(args: argparse.Namespace, result: dict[str, Any], human: str) -> None:
    """Exactly one JSON object on stdout with --json; readable text otherwise."""
    print(json.dumps(result) if getattr(args, "json", False) else human)


# ----------------------------------------------------------------------------- commands

def _prepare_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="*", help="text files, directories, .jsonl (field 'text'); none: built-in corpus")
    p.add_argument("--out", required=True, type=Path, help="output directory for the token shards")
    p.add_argument("--tokenizer", default=None, help="'bytes' (default) or a tokenizer directory / tokenizer.json")
    p.add_argument("--val-fraction", type=float, default=0.02)
    p.add_argument("--json", action="store_true")


def _prepare_run(args: argparse.Namespace) -> int:
    from remask.data.prepare import prepare
    from remask.data.tokenizer import load_tokenizer

    meta = prepare(args.inputs or None, args.out, load_tokenizer(args.tokenizer), val_fraction=args.val_fraction)
    s = meta["splits"]
    emit(args, meta, f"prepared {args.out}: train {s['train']['tokens']:,} tokens ({s['train']['documents']} docs), "
                     f"val {s['val']['tokens']:,} tokens ({s['val']['documents']} docs)")
    return 0


def _tokenizer_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["train"], help="train: learn a byte-level BPE on your corpus")
    p.add_argument("inputs", nargs="*", help="text files, directories, .jsonl; none: built-in corpus")
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--out", required=True, type=Path, help="directory to write tokenizer.json into")
    p.add_argument("--json", action="store_true")


def _tokenizer_run(args: argparse.Namespace) -> int:
    from remask.data.corpus import iter_documents
    from remask.data.tokenizer import train_bpe

    tok = train_bpe((d.text for d in iter_documents(args.inputs or None)), args.vocab_size)
    tok.save(args.out)
    emit(args, {"out": str(args.out), "vocab_size": tok.vocab_size, "mask_id": tok.mask_id, "eos_id": tok.eos_id},
         f"wrote {args.out}/tokenizer.json: {tok.vocab_size} tokens (mask id {tok.mask_id}, eos id {tok.eos_id})")
    return 0


TRAIN_SHORTCUTS = {**RUN_SHORTCUTS, "objective": "train.objective"}


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", nargs="+", default=None, help="text files/dirs/.jsonl or a prepared dir; none: built-in")
    p.add_argument("--out", type=Path, default=Path("runs/default"), help="run directory (default: runs/default)")
    p.add_argument("--tokenizer", default=None, help="'bytes' (default) or a tokenizer directory / tokenizer.json")
    p.add_argument("--objective", choices=["mdm", "ar"], help="mdm (LLaDA, default) or ar (baseline)")
    add_run_args(p)


def _train_run(args: argparse.Namespace) -> int:
    from remask.train import train

    cfg = resolve_config(args, TRAIN_SHORTCUTS)
    if args.resume and not (args.out / "checkpoint").exists():
        raise RemaskError(f"--resume: '{args.out}' holds no checkpoint; drop --resume to start a new run")
    data = args.data[0] if args.data and len(args.data) == 1 else args.data
    res = train(cfg, args.out, data=data, tokenizer=args.tokenizer, resume=args.resume, overwrite=args.overwrite)
    bpb = f", {res.val_bpb:.3f} bits/byte" if res.val_bpb is not None else ""
    human = (f"step {res.step}: validation loss {res.val_loss:.4f} nats/token{bpb}; {res.tokens_per_s:,.0f} tokens/s\n"
             f"checkpoint: {res.checkpoint}\n" + "".join(f"--- sample {i}\n{s}\n" for i, s in enumerate(res.samples)))
    emit(args, res.to_json(), human.rstrip())
    return 0


def _generate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt", nargs="?", default="", help="prompt text (empty: start of a document)")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the checkpoint's chat template")
    add_sampler_args(p)


def _generate_run(args: argparse.Namespace) -> int:
    from remask.sampling import generate
    from remask.train.checkpoint import load_model
    from remask.train.distributed import pick_device

    model, tok = load_model(args.ckpt, pick_device(args.device))
    if args.chat:
        from remask.chat import prompt_ids, trim_answer

        ids = prompt_ids(tok, args.prompt)
    else:
        ids = tok.encode(args.prompt) if args.prompt else [tok.eos_id]
    if model.cfg.causal:
        from remask.sampling.ar import ARSampleConfig, ar_generate

        out = ar_generate(model, [ids], ARSampleConfig(max_new_tokens=args.gen_length, temperature=args.temperature,
                                                       seed=args.seed), eos_id=tok.eos_id, mask_id=tok.mask_id)
    else:
        show = _step_printer(tok, len(ids)) if args.show_steps and not args.json else None
        out = generate(model, [ids], sample_config(args), mask_id=tok.mask_id, eos_id=tok.eos_id,
                       eot_id=tok.eot_id, callback=show)
    gen = trim_answer(out.tokens[0].tolist(), tok)[0] if args.chat else out.tokens[0].tolist()
    text = tok.decode(gen, skip_special_tokens=True)
    emit(args, {"prompt": args.prompt, "text": text, "n_forward": out.n_forward}, text if args.chat else args.prompt + text)
    return 0


def _infill_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("text", help="text with spans to fill marked <mask:N> (N tokens)")
    add_sampler_args(p)


def _infill_run(args: argparse.Namespace) -> int:
    from remask.sampling.infill import infill, parse_infill
    from remask.train.checkpoint import load_model
    from remask.train.distributed import pick_device

    model, tok = load_model(args.ckpt, pick_device(args.device))
    ids, editable = parse_infill(args.text, tok)
    n_holes = sum(editable)
    args.block_length = None  # infill denoises the whole canvas as one block
    show = _step_printer(tok, 0) if args.show_steps and not args.json else None
    out = infill(model, ids, editable, sample_config(args, gen_length=n_holes), mask_id=tok.mask_id,
                 eos_id=tok.eos_id, eot_id=tok.eot_id, callback=show)
    text = tok.decode(out.canvas[0].tolist(), skip_special_tokens=True)
    emit(args, {"text": text, "n_forward": out.n_forward}, text)
    return 0


def render_canvas(tok: Any, ids: list[int], mask_char: str = "░") -> str:
    """Decode a partly masked canvas, drawing each mask token as ``mask_char``."""
    parts, run = [], []
    for t in ids:
        if t == tok.mask_id:
            if run:
                parts.append(tok.decode(run, skip_special_tokens=True))
                run = []
            parts.append(mask_char)
        else:
            run.append(t)
    if run:
        parts.append(tok.decode(run, skip_special_tokens=True))
    return "".join(parts)


def _step_printer(tok: Any, start: int) -> Callable[[Any], None]:
    """A callback that redraws the canvas in place after every denoising step."""
    lines = [0]

    def show(event: Any) -> None:
        text = f"[step {event.step + 1}] " + render_canvas(tok, event.canvas[0, start:].tolist())
        out = sys.stderr
        if lines[0]:
            out.write(f"\x1b[{lines[0]}F\x1b[J")  # back to the first line of the last frame, clear below
        out.write(text + "\n")
        out.flush()
        lines[0] = text.count("\n") + 1

    return show


def _lazy(module: str, name: str) -> Callable[..., Any]:
    """A command function that lives in another module, imported only when that command runs."""
    def call(*args: Any) -> Any:
        import importlib

        return getattr(importlib.import_module(module), name)(*args)

    return call


COMMANDS = [
    Command("prepare", "tokenise text into memory-mapped shards", _prepare_args, _prepare_run),
    Command("tokenizer", "train a BPE tokenizer on your corpus", _tokenizer_args, _tokenizer_run),
    Command("train", "train a masked diffusion LM (or the AR baseline)", _train_args, _train_run),
    Command("generate", "sample a continuation by iterative unmasking", _generate_args, _generate_run),
    Command("infill", "fill <mask:N> spans in a text", _infill_args, _infill_run),
    Command("sft", "fine-tune on chat data (LLaDA SFT, or the AR baseline)", _lazy("remask.sft", "add_args"),
            _lazy("remask.sft", "run")),
    Command("chat", "chat with a fine-tuned checkpoint in the terminal", _lazy("remask.chat", "add_args"),
            _lazy("remask.chat", "run")),
    Command("eval", "score a checkpoint: perplexity bound, completion accuracy, multiple choice",
            _lazy("remask.evaluate", "eval_add_args"), _lazy("remask.evaluate", "eval_run")),
    Command("serve", "serve a checkpoint over HTTP (OpenAI-compatible API)", _lazy("remask.serve", "add_args"),
            _lazy("remask.serve", "run")),
]


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line that points at --help."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"remask: error: {message} (see `{self.prog} --help`)\n")


def build_parser(commands: list[Command] | None = None) -> argparse.ArgumentParser:
    parser = _Parser(prog="remask", description="LLaDA-style masked diffusion language models.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    for cmd in commands or COMMANDS:
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        cmd.add_args(p)
        p.set_defaults(_run=cmd.run)
    return parser


def _one_line_warning(message: Warning | str, category: type, filename: str, lineno: int, line: str | None = None) -> str:
    return f"remask: warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    warnings.formatwarning = _one_line_warning  # the library warns; the CLI shows one line, no source
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2, already printed as one line)
        return int(e.code or 0)
    try:
        return args._run(args)
    except RemaskError as e:
        print(f"remask: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("remask: interrupted", file=sys.stderr)
        return 130
