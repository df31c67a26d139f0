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

import dataclasses
import sys
from collections.abc import Callable, Iterable
from typing import Any, TextIO

from remask.config import coerce
from remask.data.template import Message, delta, render
from remask.display import LiveCanvas
from remask.errors import RemaskError
from remask.model import check_context
from remask.sampling.config import DecodeConfig
from remask.sampling.decode import decode, for_model
from remask.sampling.stream import trim_eos

HELP = "commands: /reset (new conversation), /params [key=value ...], /quit"


def prompt_ids(tok: Any, text: str, *, system: str | None = None) -> list[int]:
    """A single user message through the chat template, ending with the assistant header."""
    msgs: list[Message] = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
    return tok.encode(render(msgs, tok, add_generation_prompt=True), allow_special=True)


def trim_answer(ids: list[int], tok: Any) -> tuple[list[int], list[int]]:
    """Generated ids -> (content, end): content stops at the first end-of-turn or EOS; ``end`` is
    the end-of-turn token that closes the turn in the history (added if the model gave none)."""
    return trim_eos(ids, tok.eos_id, tok.eot_id), [tok.eot_id]


class ChatSession:
    """A conversation with one model: ``reply(text)`` samples the next answer.

    ``history`` holds the token ids of everything so far; ``messages`` the same as text.
    """

    def __init__(self, model: Any, tok: Any, sample_cfg: DecodeConfig, *, system: str | None = None) -> None:
        self.model, self.tok, self.cfg, self.system = model, tok, for_model(sample_cfg, model), system
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
        return self.history + self.tok.encode(delta(after, before, "the user turn"), allow_special=True)

    def reply(self, text: str, callback: Callable[[Any], None] | None = None) -> str:
        ids = self.next_prompt(text)
        check_context(self.model, len(ids), self.cfg.gen_length, "the conversation ({used} tokens) + {new} new ones "
                      "exceeds the model context of {limit}; /reset or lower gen_length with /params")
        tok = self.tok
        out = decode(self.model, [ids], self.cfg, mask_id=tok.mask_id, eos_id=tok.eos_id, eot_id=tok.eot_id,
                     callback=callback)  # a live view sees every step: a denoising step, or one AR token
        self.last_n_forward, self.last_saved = out.n_forward, out.n_forward_saved
        content, end = trim_answer(out.tokens[0].tolist(), tok)
        answer = self.tok.decode(content, skip_special_tokens=True)
        self.history = ids + content + end
        self.messages += [{"role": "user", "content": text}, {"role": "assistant", "content": answer}]
        return answer

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
                printer = LiveCanvas(session.tok, out, len(session.next_prompt(line))) if live else None
                answer = session.reply(line, printer)
                if printer is not None:
                    printer.clear()
                out.write(answer + "\n")
                turns += 1
        except RemaskError as e:  # a bad command or an over-long conversation: say so, keep chatting
            out.write(f"remask: error: {e}\n")
        out.flush()
    return turns
