"""The command line: the top layer, one module per subcommand over functions users can import.

    remask prepare            tokenise text into memory-mapped shards         remask.data.prepare
    remask tokenizer train    learn a byte-level BPE tokenizer                 remask.data.tokenizer
    remask train              pre-train an MDM (LLaDA) or the AR baseline      remask.train
    remask sft                fine-tune on chat data                           remask.sft
    remask generate           continue a prompt (diffusion or AR decoding)     remask.sampling
    remask infill             fill <mask:N> spans inside a text                remask.sampling.infill
    remask chat               a multi-turn chat in the terminal                remask.chat
    remask eval               perplexity bound, completion, multiple choice    remask.evaluate
    remask serve              an OpenAI-compatible HTTP server                 remask.serve
    remask export             write a checkpoint in LLaDA-8B's HF layout       remask.checkpoint
    remask checkpoint         consolidate a sharded (FSDP) checkpoint          remask.train.sharded
    remask plot               training curves of runs, side by side            remask.plot

Each module here holds its command's ``add_args(parser)`` and ``run(args) -> int``;
``flags`` derives the shared flags from the config dataclasses. Nothing below this package imports
it. A user's mistake (a ``RemaskError``) prints one line, never a traceback. A command's module is
imported only when that command runs, so ``remask --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from dataclasses import dataclass
from types import ModuleType

from remask.errors import RemaskError


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    module: str  # remask.commands.<module>: add_args(parser) and run(args)

    def load(self) -> ModuleType:
        return importlib.import_module(f"remask.commands.{self.module}")


# The one list of commands: name, help line, module.
COMMANDS = [
    Command("prepare", "tokenise text into memory-mapped shards", "prepare"),
    Command("tokenizer", "train a BPE tokenizer on your corpus", "tokenizer"),
    Command("train", "train a masked diffusion LM (or the AR baseline)", "train"),
    Command("sft", "fine-tune on chat data (LLaDA SFT, or the AR baseline)", "sft"),
    Command("generate", "sample a continuation by iterative unmasking (AR checkpoints: left to right)", "generate"),
    Command("infill", "fill <mask:N> spans in a text", "infill"),
    Command("chat", "chat with a fine-tuned checkpoint in the terminal", "chat"),
    Command("eval", "score a checkpoint: perplexity bound, completion accuracy, multiple choice", "eval"),
    Command("serve", "serve a checkpoint over HTTP (OpenAI-compatible API)", "serve"),
    Command("export", "write a checkpoint in LLaDA-8B's Hugging Face layout (config, shards, tokenizer)", "export"),
    Command("checkpoint", "consolidate a sharded checkpoint (saved under FSDP) into single files", "checkpoint"),
    Command("plot", "draw runs' training curves side by side", "plot"),
]


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line that points at --help."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"remask: error: {message} (see `{self.prog} --help`)\n")


def build_parser(commands: list[Command] | None = None, only: str | None = None) -> argparse.ArgumentParser:
    """The whole parser; with ``only``, the flags of that one command alone are built (the others
    are listed, so ``remask --help`` shows every command without importing them all)."""
    parser = _Parser(prog="remask", description="LLaDA-style masked diffusion language models.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    for cmd in commands or COMMANDS:
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        if only is None or only == cmd.name:
            module = cmd.load()
            module.add_args(p)
            p.set_defaults(_run=module.run)
    return parser


def _one_line_warning(message: Warning | str, category: type, filename: str, lineno: int, line: str | None = None) -> str:
    return f"remask: warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    warnings.formatwarning = _one_line_warning  # the library warns; the CLI shows one line, no source
    chosen = next((a for a in argv if not a.startswith("-")), None)
    try:
        args = build_parser(only=chosen if chosen in {c.name for c in COMMANDS} else None).parse_args(argv)
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
