"""The terminal view of a canvas being decoded: masks drawn as ``░``, redrawn in place each step.

``remask generate --show-steps``, ``remask infill --show-steps`` and ``remask chat`` pass a
``LiveCanvas`` as the decoder's callback; it works for both decoders' steps (``StepEvent`` and
``ARStep`` both carry ``step`` and ``canvas``).
"""

from __future__ import annotations

from typing import Any, TextIO


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


class LiveCanvas:
    """A decoder callback that redraws row 0 of the canvas from column ``start`` on after every step
    (prefixed ``[step N]`` with ``label``); ``clear()`` erases the last frame."""

    def __init__(self, tok: Any, out: TextIO, start: int, *, label: bool = False) -> None:
        self.tok, self.out, self.start, self.label, self.lines = tok, out, start, label, 0

    def __call__(self, event: Any) -> None:
        text = render_canvas(self.tok, event.canvas[0, self.start:].tolist())
        if self.label:
            text = f"[step {event.step + 1}] {text}"
        self.clear()
        self.out.write(text + "\n")
        self.out.flush()
        self.lines = text.count("\n") + 1

    def clear(self) -> None:
        if self.lines:
            self.out.write(f"\x1b[{self.lines}F\x1b[J")  # back to the frame's first line, clear below
            self.lines = 0
