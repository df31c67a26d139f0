"""A multi-turn terminal chat with a fine-tuned checkpoint, the denoising shown live.

    remask chat --ckpt runs/chat --gen-length 64 --block-length 32
    remask generate --chat --ckpt runs/chat "What is 2 + 3?"

The conversation is kept as token ids, never re-encoded from text: each turn appends the
template's text for the user message (up to the assistant header) and then the answer's ids as
sampled, cut at its end-of-turn token (kept) so the EOS padding after it never enters the
history. Commands: ``/reset`` (new conversation), ``/params`` (show; ``/params steps=32
temperature=0.5`` to change), ``/quit``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable, Iterable
from typing import Any, TextIO

from remask.config import coerce
from remask.data.chat import Message, _delta, render
from remask.errors import RemaskError

HELP = "commands: /reset (new conversation), /params [key=value ...], /quit"


def prompt_ids(tok: Any, text: str, *, system: str | None = None) -> list[int]:
    """A single user message through the chat template, ending with the assistant header."""
    msgs: list[Message] = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
    return tok.encode(render(msgs, tok, add_generation_prompt=True), allow_special=True)


def trim_answer(ids: list[int], tok: Any) -> tuple[list[int], list[int]]:
    """Generated ids -> (content, end): content stops at the first end-of-turn or EOS; ``end`` is
    the end-of-turn token that closes the turn in the history (added if the model gave none)."""
    ends = {tok.eot_id, tok.eos_id}
    cut = next((i for i, t in enumerate(ids) if t in ends), len(ids))
    return list(ids[:cut]), [tok.eot_id]


class ChatSession:
    """A conversation with one model: ``reply(text)`` samples the next answer.

    ``history`` holds the token ids of everything so far; ``messages`` the same as text.
    """

    def __init__(self, model: Any, tok: Any, sample_cfg: Any, *, system: str | None = None) -> None:
        self.model, self.tok, self.cfg, self.system = model, tok, sample_cfg, system
        self.last_n_forward = self.last_saved = 0  # forward passes of the last answer, and those early stop saved
        self.reset()

    def reset(self) -> None:
        self.messages: list[Message] = [{"role": "system", "content": self.system}] if self.system else []
        self.history: list[int] = self.tok.encode(render(self.messages, self.tok), allow_special=True)

    def next_prompt(self, text: str) -> list[int]:
        """The history plus the new user turn and the assistant header, as ids."""
        if not text.strip():
            raise RemaskError("empty message; type something (or /quit)")
        before = render(self.messages, self.tok)
        after = render([*self.messages, {"role": "user", "content": text}], self.tok, add_generation_prompt=True)
        return self.history + self.tok.encode(_delta(after, before, "the user turn"), allow_special=True)

    def reply(self, text: str, callback: Callable[[Any], None] | None = None) -> str:
        ids = self.next_prompt(text)
        gen_length = self.cfg.gen_length if hasattr(self.cfg, "gen_length") else self.cfg.max_new_tokens
        limit = getattr(getattr(self.model, "cfg", None), "max_seq_len", None)
        if limit is not None and len(ids) + gen_length > limit:
            raise RemaskError(f"the conversation ({len(ids)} tokens) + {gen_length} new ones exceeds the model "
                              f"context of {limit}; /reset or lower gen_length with /params")
        content, end = trim_answer(self._sample(ids, callback), self.tok)
        answer = self.tok.decode(content, skip_special_tokens=True)
        self.history = ids + content + end
        self.messages += [{"role": "user", "content": text}, {"role": "assistant", "content": answer}]
        return answer

    def _sample(self, ids: list[int], callback: Callable[[Any], None] | None) -> list[int]:
        tok = self.tok
        if getattr(getattr(self.model, "cfg", None), "causal", False):
            from remask.sampling.ar import ar_stream

            for out in ar_stream(self.model, [ids], self.cfg, eos_id=tok.eos_id, mask_id=tok.mask_id):
                if callback is not None:  # the same live view as denoising: one token per frame
                    callback(out)
        else:
            from remask.sampling import generate

            out = generate(self.model, [ids], self.cfg, mask_id=tok.mask_id, eos_id=tok.eos_id,
                           eot_id=tok.eot_id, callback=callback)
        self.last_n_forward, self.last_saved = out.n_forward, getattr(out, "n_forward_saved", 0)
        return out.tokens[0].tolist()

    def params(self) -> str:
        return " ".join(f"{f.name}={getattr(self.cfg, f.name)}" for f in dataclasses.fields(self.cfg))

    def set_params(self, assignments: list[str]) -> None:
        """``["steps=32", "temperature=0.5"]`` -> a new, validated sampler config."""
        import typing

        hints = typing.get_type_hints(type(self.cfg))
        changes: dict[str, Any] = {}
        for a in assignments:
            key, sep, value = a.partition("=")
            if not sep or key not in hints:
                raise RemaskError(f"/params: '{a}' is not key=value with a key among {', '.join(hints)}")
            changes[key] = coerce(value, hints[key], key)
        self.cfg = dataclasses.replace(self.cfg, **changes)  # __post_init__ validates


class LivePrinter:
    """A ``generate`` callback that redraws the answer region of the canvas in place after every
    denoising step; ``clear()`` erases the last frame (the final answer is printed instead)."""

    def __init__(self, tok: Any, out: TextIO, start: int) -> None:
        self.tok, self.out, self.start, self.lines = tok, out, start, 0

    def __call__(self, event: Any) -> None:
        from remask.cli import render_canvas

        text = render_canvas(self.tok, event.canvas[0, self.start:].tolist())
        self.clear()
        self.out.write(text + "\n")
        self.out.flush()
        self.lines = text.count("\n") + 1

    def clear(self) -> None:
        if self.lines:
            self.out.write(f"\x1b[{self.lines}F\x1b[J")  # back to the frame's first line, clear below
            self.lines = 0


def chat_loop(session: ChatSession, lines: Iterable[str] | None = None, out: TextIO | None = None, *,
              live: bool | None = None) -> int:
    """Run the chat until /quit or end of input; ``lines`` replaces stdin (tests, scripts).
    Returns the number of answers given."""
    out = out if out is not None else sys.stdout
    live = out.isatty() if live is None else live
    source = iter(lines) if lines is not None else None
    turns = 0
    out.write(HELP + "\n")
    while True:
        try:
            if source is None:
                line = input("> ")
            else:
                line = next(source)
        except (EOFError, StopIteration):
            break
        line = line.rstrip("\n")
        cmd, *rest = line.strip().split() or [""]
        try:
            if cmd == "/quit":
                break
            if cmd == "/reset":
                session.reset()
                out.write("(new conversation)\n")
            elif cmd == "/params":
                if rest:
                    session.set_params(rest)
                out.write(session.params() + "\n")
            elif cmd.startswith("/"):
                out.write(f"unknown command {cmd}; {HELP}\n")
            elif line.strip():
                printer = LivePrinter(session.tok, out, len(session.next_prompt(line))) if live else None
                answer = session.reply(line, printer)
                if printer is not None:
                    printer.clear()
                out.write(answer + "\n")
                turns += 1
        except RemaskError as e:  # a bad command or an over-long conversation: say so, keep chatting
            out.write(f"remask: error: {e}\n")
        out.flush()
    return turns


# ----------------------------------------------------------------------------- CLI

def add_args(p: argparse.ArgumentParser) -> None:
    from remask.cli import add_sampler_args

    p.add_argument("--system", default=None, help="a system message that starts every conversation")
    add_sampler_args(p)


def run(args: argparse.Namespace) -> int:
    from remask.cli import sample_config
    from remask.train.checkpoint import load_model
    from remask.train.distributed import pick_device

    model, tok = load_model(args.ckpt, pick_device(args.device))
    if model.cfg.causal:
        from remask.sampling.ar import ARSampleConfig

        cfg: Any = ARSampleConfig(max_new_tokens=args.gen_length, temperature=args.temperature, seed=args.seed)
    else:
        cfg = sample_config(args)
    session = ChatSession(model, tok, cfg, system=args.system)
    chat_loop(session, live=True if args.show_steps else None)
    return 0
