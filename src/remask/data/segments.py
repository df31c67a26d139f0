"""Cutting a corpus into segments: the units that ``remask.data.prepare`` tokenises in parallel,
resumes from, and joins in order.

The plan depends on the inputs and the tokenizer alone, never on the number of processes: runs of
small files make up one segment; a large .jsonl is cut into byte ranges at line starts; a large text
file (one document) is cut into byte ranges where the tokenizer cannot see a cut. Large files are read
in windows, never whole.
"""

from __future__ import annotations

import itertools
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from remask.data.corpus import (
    SourceFile,
    binary_file_error,
    char_offset,
    corpus_files,
    describe_inputs,
    scan_text,
)
from remask.data.tokenizer import ByteTokenizer, Tokenizer
from remask.errors import RemaskError

SEGMENT_BYTES = 1 << 24  # input bytes per segment: one worker's job, one resume point, one progress tick
_WINDOW = 1 << 16  # bytes read at a time while looking for a safe cut in a large file
# A BPE cut is invisible only where the pre-tokeniser would split anyway: a lone newline between
# two non-space characters (GPT-2-style regexes never merge across it).
SAFE_CUT = re.compile(r"(?<=\S\n)(?=\S)")


@dataclass(frozen=True)
class Item:
    """One read within a segment: a whole file (``file``; a .jsonl gives a document per line), the
    lines in bytes [start, end) of a large .jsonl (``jsonl``), a byte range of a large text file
    (``piece`` of one document), or a large file found binary while planning (``skip``)."""

    kind: str
    path: str
    doc_id: str
    size: int  # input bytes, for progress
    explicit: bool = False
    start: int = 0
    end: int = 0
    first_line: int = 1  # jsonl: the line number at ``start``
    first: bool = True  # piece: its document begins here
    last: bool = True  # piece: its document ends here
    split: str | None = None  # piece: forced (the halves of a lone document), else by document hash


def _cut_after(path: Path, pos: int, hi: int, any_char: bool) -> int:
    """The first position at or after byte ``pos`` (below ``hi``) where the text may be cut without
    changing its tokens: a character start for bytes, a ``SAFE_CUT`` for BPE; ``hi`` if none."""
    with open(path, "rb") as f:
        while pos < hi:
            f.seek(pos)
            data = f.read(min(_WINDOW, hi - pos))
            skip = next((i for i, b in enumerate(data) if b & 0xC0 != 0x80), len(data))  # to a character start
            if any_char and skip < len(data):
                return pos + skip
            text = data[skip:].decode("utf-8", errors="ignore")  # a character cut at the window's end is dropped
            m = SAFE_CUT.search(text, 2)
            if m:
                return pos + skip + len(text[: m.start()].encode("utf-8"))
            pos += max(1, len(data) - 8)  # overlap a little: a cut may straddle two windows
    return hi


def _pieces(f: SourceFile, tok: Tokenizer, lo: int, hi: int, split: str | None) -> list[Item]:
    """Bytes [lo, hi) of a large text file (one document) as pieces of about SEGMENT_BYTES."""
    cuts = [lo]
    while cuts[-1] + SEGMENT_BYTES < hi:
        cut = _cut_after(f.path, cuts[-1] + SEGMENT_BYTES, hi, isinstance(tok, ByteTokenizer))
        if cut >= hi:
            break
        cuts.append(cut)
    cuts.append(hi)
    return [Item("piece", str(f.path), f.doc_id, b - a, f.explicit, a, b, first=a == lo, last=b == hi, split=split)
            for a, b in itertools.pairwise(cuts)]


def _jsonl_ranges(f: SourceFile, size: int) -> list[Item]:
    """A large .jsonl as byte ranges of about SEGMENT_BYTES that start at line starts."""
    items, start, first_line, pos = [], 0, 1, 0
    with open(f.path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if pos - start >= SEGMENT_BYTES:
                items.append(Item("jsonl", str(f.path), f.doc_id, pos - start, True, start, pos, first_line))
                start, first_line = pos, lineno
            pos += len(raw)
    items.append(Item("jsonl", str(f.path), f.doc_id, size - start, True, start, size, first_line))
    return items


def _plan_lone_file(f: SourceFile, tok: Tokenizer, val_fraction: float, inputs: Sequence[str | Path] | None
                    ) -> list[list[Item]]:
    """One text file is one document: its last ``val_fraction`` of characters is the val split."""
    scan = scan_text(f.path)
    if scan is None:
        if f.explicit:
            raise RemaskError(binary_file_error(f.path))
        warnings.warn(f"skipped 1 binary or non-UTF-8 files (e.g. {f.path})", stacklevel=3)
        scan = (0, 0)
    chars, bom = scan
    if chars == 0:
        raise RemaskError(f"no text found in {describe_inputs(inputs)}; "
                          "give UTF-8 text files, directories or .jsonl with a 'text' field")
    if chars < 2:
        raise RemaskError(f"only {chars} character of text in {describe_inputs(inputs)}; "
                          "need enough text for both a train and a validation split")
    cut = min(max(chars - max(1, round(chars * val_fraction)), 1), chars - 1)
    at, size = char_offset(f.path, bom, cut), f.path.stat().st_size
    return [[p] for p in _pieces(f, tok, bom, at, "train") + _pieces(f, tok, at, size, "val")]


def plan_segments(inputs: Sequence[str | Path] | None, tok: Tokenizer, val_fraction: float) -> list[list[Item]]:
    """The segments of ``inputs`` in corpus order: decided by the inputs and tokenizer alone."""
    files = list(corpus_files(inputs))
    if len(files) == 1 and not files[0].is_jsonl:
        return _plan_lone_file(files[0], tok, val_fraction, inputs)
    segments: list[list[Item]] = []
    current: list[Item] = []
    filled = 0  # bytes in ``current``
    for f in files:
        size = f.path.stat().st_size
        if size <= SEGMENT_BYTES:  # small files share a segment
            current.append(Item("file", str(f.path), f.doc_id, size, f.explicit))
            filled += size
            if filled >= SEGMENT_BYTES:
                segments.append(current)
                current, filled = [], 0
            continue
        if current:
            segments.append(current)
            current, filled = [], 0
        if f.is_jsonl:
            segments += [[r] for r in _jsonl_ranges(f, size)]
            continue
        scan = scan_text(f.path)
        if scan is None and f.explicit:
            raise RemaskError(binary_file_error(f.path))
        if scan is None:
            segments.append([Item("skip", str(f.path), f.doc_id, size)])
        elif scan[0]:
            segments += [[p] for p in _pieces(f, tok, scan[1], size, None)]
    return segments + ([current] if current else [])
