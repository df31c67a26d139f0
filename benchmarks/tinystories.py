"""TinyStories for the benchmarks: the train head, repaired, one story per document, and a BPE for it.

The slice is ``tinystories/tinystories_train_head_smallGPT.txt`` under the dataset root (see
``../shared/data/tinystories/SOURCES.md``; the text is CDLA-Sharing-1.0). In that file a story's
paragraphs are separated by a blank line and stories by a lone newline, so a newline with no other
newline beside it ends a story. The v1 encoding bug (UTF-8 read as cp1252) is undone first: the
three-character sequences become their punctuation, then a bare leftover ``â€`` is the closing
quote whose third byte was dropped.

``prepare_stories`` writes the stories as one .jsonl (a document each, so every story ends in EOS),
trains a byte-level BPE on the training stories only (prepare's hash split decides which those are)
and tokenises both splits with it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

TINYSTORIES = "tinystories/tinystories_train_head_smallGPT.txt"  # relative to the dataset root

# cp1252 readings of UTF-8 punctuation, longest first; the bare prefix last (see SOURCES.md)
MOJIBAKE = {"â€œ": "\u201c", "â€™": "\u2019", "â€“": "\u2013", "â€”": "\u2014", "â€˜": "\u2018", "â€Š": "\u200a",
            "â€": "\u201d"}
STORY_END = re.compile(r"(?<!\n)\n(?!\n)")  # a lone newline


def repair(text: str) -> str:
    """Undo the v1 TinyStories mojibake: ``â€™`` -> ``’`` and so on, then ``â€`` -> ``”``."""
    for bad, good in MOJIBAKE.items():
        text = text.replace(bad, good)
    return text


def stories(path: Path) -> list[str]:
    """The stories of the train head, repaired and stripped, in file order."""
    pieces = STORY_END.split(repair(path.read_text(encoding="utf-8")))
    return [s.strip() for s in pieces if s.strip()]


def prepare_stories(path: Path, work: Path, vocab_size: int, val_fraction: float) -> tuple[Any, dict[str, Any]]:
    """Stories -> ``work/stories.jsonl``, a BPE trained on the training ones, ``work/data`` prepared with it.

    Returns (the tokenizer, prepare's metadata).
    """
    from remask.data.corpus import is_validation, iter_documents
    from remask.data.prepare import prepare
    from remask.data.tokenizer import train_bpe

    corpus = work / "stories.jsonl"
    corpus.write_text("".join(json.dumps({"text": s}) + "\n" for s in stories(path)), encoding="utf-8")
    train_texts = [d.text for d in iter_documents([corpus]) if not is_validation(d.id, val_fraction)]
    tok = train_bpe(train_texts, vocab_size)
    return tok, prepare([corpus], work / "data", tok, val_fraction=val_fraction)
