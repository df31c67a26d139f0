"""`remask chat`: a multi-turn terminal chat with a checkpoint (``remask.chat``)."""

from __future__ import annotations

import argparse

from remask.chat import ChatSession, chat_loop
from remask.commands.flags import add_sampler_args, load, sample_config
from remask.model import is_causal


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--system", default=None, help="a system message that starts every conversation")
    add_sampler_args(p)


def run(args: argparse.Namespace) -> int:
    ck = load(args)
    session = ChatSession(ck.model, ck.tokenizer, sample_config(args, causal=is_causal(ck.model)), system=args.system)
    chat_loop(session, live=True if args.show_steps else None)
    return 0
