"""Streaming: text that is final while later blocks are still being denoised.

A diffusion sampler commits tokens anywhere in its block, so the text is not produced left to
right. What *is* final at any step is the stable prefix: the committed tokens before the first
mask. With semi-autoregressive blocks it grows a block at a time, so a chat client or server
can show it while the rest is still masked:

    events = generate_stream(model, [ids], cfg, mask_id=tok.mask_id, eos_id=tok.eos_id)
    for delta in text_deltas(events, tok, gen_length=cfg.gen_length):
        print(delta, end="", flush=True)

Deltas never split a multi-byte UTF-8 character (the byte tokenizer commits one byte at a
time) and stop at the first EOS/EOT: what follows the end of an answer is padding.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Sequence
from typing import Protocol

from torch import Tensor

from remask.sampling.loop import StepEvent

REPLACEMENT = "\ufffd"  # what a decoder writes for an incomplete UTF-8 sequence


class Decoder(Protocol):
    """The part of the tokenizer interface streaming uses."""

    mask_id: int
    eos_id: int

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str: ...


def stop_index(ids: Sequence[int], stops: Collection[int | None]) -> int:
    """The position of the first id in ``stops`` (``len(ids)`` when there is none)."""
    return next((i for i, t in enumerate(ids) if t in stops), len(ids))


def trim_eos(ids: Sequence[int] | Tensor, eos_id: int, eot_id: int | None = None) -> list[int]:
    """One row of generated ids, cut before its first EOS (or EOT): the answer without its padding.

    LLaDA answers end in EOS padding (SFT trains the model to fill the rest of the canvas with
    EOS), and ``SampleConfig.early_stop`` fills it in without denoising it. Every decoder's
    answer is cut here: chat, the server, evaluation and ``remask generate --chat``.
    """
    row = ids.tolist() if isinstance(ids, Tensor) else list(ids)
    return row[:stop_index(row, {eos_id, eot_id} - {None})]


class TextDeltas:
    """Feed one row's generated ids after every step; get back the newly final text.

    The final text is the decoded stable prefix: tokens before the first mask, cut at the first
    EOS/EOT. A trailing replacement character (an incomplete UTF-8 sequence) is held back until
    its remaining bytes arrive; ``finish`` flushes whatever is left.
    """

    def __init__(self, tokenizer: Decoder) -> None:
        self.tokenizer = tokenizer
        self.stop_ids = {tokenizer.eos_id} | ({tokenizer.eot_id} if getattr(tokenizer, "eot_id", None) is not None
                                              else set())
        self.sent = ""
        self.ended = False

    def update(self, ids: Sequence[int] | Tensor) -> str:
        """Ids (the generated region, masks included) -> text that became final since the last call."""
        return self._emit(ids, final=False)

    def finish(self, ids: Sequence[int] | Tensor) -> str:
        """The last ids -> the rest of the text, incomplete characters included."""
        return self._emit(ids, final=True)

    def _emit(self, ids: Sequence[int] | Tensor, final: bool) -> str:
        if self.ended:
            return ""
        prefix, ended = self._stable_prefix(ids.tolist() if isinstance(ids, Tensor) else list(ids))
        text = self.tokenizer.decode(prefix, skip_special_tokens=True)
        self.ended = ended or final
        if not self.ended:
            text = text.rstrip(REPLACEMENT)  # maybe the first bytes of a character still being denoised
        if not text.startswith(self.sent):  # the decoder rewrote earlier text: keep what was sent
            return ""
        delta, self.sent = text[len(self.sent):], text
        return delta

    def _stable_prefix(self, ids: list[int]) -> tuple[list[int], bool]:
        """(tokens before the first mask or stop token, whether a stop token ended the answer)."""
        cut = stop_index(ids, self.stop_ids | {self.tokenizer.mask_id})
        return ids[:cut], cut < len(ids) and ids[cut] in self.stop_ids


def text_deltas(events: Iterable[StepEvent], tokenizer: Decoder, *, gen_length: int, row: int = 0) -> Iterator[str]:
    """``generate_stream`` events -> the text of ``row`` in non-empty pieces, each as soon as it is final."""
    deltas = TextDeltas(tokenizer)
    last: list[int] | None = None
    for event in events:
        last = event.canvas[row, event.canvas.shape[1] - gen_length:].tolist()
        delta = deltas.update(last)
        if delta:
            yield delta
    if last is not None:
        rest = deltas.finish(last)
        if rest:
            yield rest
