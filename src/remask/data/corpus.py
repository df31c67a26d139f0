"""Where training text comes from: files, directories, .jsonl, or the built-in default corpus.

The default corpus is the Python standard library's own source (about 30 MB of ``*.py``). It is
installed on every machine that can run remask, so ``remask train`` works offline with no data
argument, and it is deterministic for a given Python version.

Everything streams one document at a time; nothing here holds more than one document in memory.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import sysconfig
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from remask.errors import RemaskError

_FIX = "remask needs UTF-8 text files, directories of them, or .jsonl files with a 'text' field"


@dataclass(frozen=True)
class Document:
    """One unit of text. ``id`` is stable across machines, so it can decide the train/val split."""

    id: str
    text: str


@dataclass
class CorpusStats:
    """Filled in while ``iter_documents`` runs: what was read and what was skipped."""

    documents: int = 0
    skipped_files: int = 0
    skipped_examples: list[str] = field(default_factory=list)  # the first few skipped paths

    def skip(self, path: Path) -> None:
        self.skipped_files += 1
        if len(self.skipped_examples) < 5:
            self.skipped_examples.append(str(path))


def default_corpus_root() -> Path:
    """The standard library directory of the running Python (the default corpus lives there)."""
    return Path(sysconfig.get_paths()["stdlib"])


def default_corpus_files() -> list[Path]:
    """Every ``*.py`` of the standard library (third-party packages excluded), by relative path."""
    root = default_corpus_root()
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        # prune rather than filter: site-packages can dwarf the stdlib itself
        dirnames[:] = [d for d in dirnames if d not in ("site-packages", "dist-packages")]
        found.extend(Path(dirpath) / name for name in filenames if name.endswith(".py"))
    return sorted((p for p in found if p.is_file()), key=lambda p: p.relative_to(root).as_posix())


def _decode(data: bytes) -> str | None:
    """UTF-8 text, or None for anything that looks binary (NUL bytes or invalid UTF-8)."""
    if b"\x00" in data:
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text.removeprefix("\ufeff")  # a BOM is an encoding marker, not content


def _walk(root: Path) -> list[tuple[str, Path]]:
    """(relative posix path, path) of the non-hidden files under root, sorted by relative path."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]  # prune hidden dirs in place
        for name in filenames:
            if not name.startswith("."):
                path = Path(dirpath) / name
                found.append((path.relative_to(root).as_posix(), path))
    return sorted(found)


def iter_jsonl(path: Path, base_id: str, start: int = 0, end: int | None = None,
                first_line: int = 1) -> Iterator[Document]:
    """The documents of the lines in bytes [start, end) of a .jsonl file (``start`` is a line start,
    line ``first_line``); ids ``base_id:lineno``."""
    with open(path, "rb") as f:
        f.seek(start)
        pos = start
        for lineno, raw in enumerate(f, start=first_line):
            if end is not None and pos >= end:
                break
            pos += len(raw)
            if not raw.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise RemaskError(f"{where}: not a JSON line ({e}); each line of a .jsonl file must be "
                                  'an object like {"text": "..."}') from None
            text = obj.get("text") if isinstance(obj, dict) else None
            if not isinstance(text, str):
                raise RemaskError(f"{where}: missing a string 'text' field; each line of a .jsonl file must be "
                                  'an object like {"text": "..."}')
            if text:
                yield Document(f"{base_id}:{lineno}", text)


@dataclass(frozen=True)
class SourceFile:
    """One input file, in corpus order. ``doc_id`` is its document's id (for .jsonl, the base of its
    lines' ids); ``explicit``: named by the user, so an unreadable one is an error, not a skip."""

    doc_id: str
    path: Path
    explicit: bool

    @property
    def is_jsonl(self) -> bool:
        return self.path.suffix == ".jsonl"


def corpus_files(inputs: Sequence[str | Path] | None) -> Iterator[SourceFile]:
    """The files of ``inputs`` (None: the default corpus) in the order their documents come: a
    directory is walked in sorted order, skipping hidden entries (ids ``dirname/relative/path``)."""
    if inputs is None:
        root = default_corpus_root()
        for path in default_corpus_files():
            yield SourceFile(path.relative_to(root).as_posix(), path, explicit=False)
        return
    if isinstance(inputs, (str, Path)):  # a lone path is a common slip; accept it
        inputs = [inputs]
    for item in inputs:
        path = Path(item)
        if not path.exists():
            raise RemaskError(f"data file '{item}' does not exist; {_FIX}")
        if path.is_dir():
            prefix = path.resolve().name + "/"
            for rel, sub in _walk(path):
                yield SourceFile(f"{prefix}{rel}", sub, explicit=False)
        else:
            yield SourceFile(path.name, path, explicit=True)


def read_documents(f: SourceFile, stats: CorpusStats) -> Iterator[Document]:
    """The documents of one file: a .jsonl's non-empty lines, else the whole file as one document
    (none if empty; binary or non-UTF-8: an error if ``f.explicit``, else counted in ``stats``)."""
    if f.is_jsonl:
        yield from iter_jsonl(f.path, f.doc_id)
        return
    try:
        data = f.path.read_bytes()
    except OSError as e:
        raise RemaskError(f"cannot read data file '{f.path}' ({e.strerror}); check its permissions") from None
    text = _decode(data)
    if text is None:
        if f.explicit:
            raise RemaskError(binary_file_error(f.path))
        stats.skip(f.path)
        return
    if text:
        yield Document(f.doc_id, text)


def binary_file_error(path: Path) -> str:
    return f"data file '{path}' is binary or not valid UTF-8; {_FIX}"


def iter_documents(inputs: Sequence[str | Path] | None, stats: CorpusStats | None = None) -> Iterator[Document]:
    """Yield the non-empty documents of ``inputs`` (None: the default corpus), one at a time.

    A text file is one document (id: its name); a directory is walked recursively in sorted
    order, skipping hidden entries and counting non-UTF-8 files (id: ``dirname/relative/path``);
    a ``.jsonl`` file gives one document per line (id: ``name:lineno``). Pass ``stats`` to learn
    how many files were skipped; a warning is also issued once the iteration ends.
    """
    stats = stats if stats is not None else CorpusStats()
    for f in corpus_files(inputs):
        for doc in read_documents(f, stats):
            stats.documents += 1
            yield doc
    if stats.skipped_files:
        warnings.warn(f"skipped {stats.skipped_files} binary or non-UTF-8 files "
                      f"(e.g. {stats.skipped_examples[0]})", stacklevel=2)


def scan_text(path: Path, chunk: int = 1 << 24) -> tuple[int, int] | None:
    """Stream a text file once without holding it: (characters, bytes of a leading BOM), or None if
    it is binary (a NUL byte) or not valid UTF-8. Memory stays at one ``chunk``."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    chars, bom = 0, 0
    with open(path, "rb") as f:
        first = True
        while data := f.read(chunk):
            if b"\x00" in data:
                return None
            try:
                decoder.decode(data)
            except UnicodeDecodeError:
                return None
            if first and data.startswith(codecs.BOM_UTF8):
                bom = len(codecs.BOM_UTF8)
            first = False
            chars += char_count(data)
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            return None
    return chars - (1 if bom else 0), bom


def char_count(data: bytes) -> int:
    """Characters in valid UTF-8 bytes: every byte but continuation bytes (0b10xxxxxx) starts one."""
    arr = np.frombuffer(data, dtype=np.uint8)
    return int(arr.size - np.count_nonzero((arr & 0xC0) == 0x80))


def char_offset(path: Path, start: int, n_chars: int, chunk: int = 1 << 24) -> int:
    """The byte offset of the character ``n_chars`` characters after byte ``start`` of a valid UTF-8 file."""
    with open(path, "rb") as f:
        f.seek(start)
        pos, left = start, n_chars
        while data := f.read(chunk):
            starts = np.flatnonzero((np.frombuffer(data, dtype=np.uint8) & 0xC0) != 0x80)
            if left < starts.size:
                return pos + int(starts[left])
            left -= starts.size
            pos += len(data)
    return pos


def describe_inputs(inputs: Sequence[str | Path] | None) -> str:
    """A short human description of the inputs, for messages."""
    if inputs is None:
        return f"the default corpus ({default_corpus_root()})"
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    names = [f"'{p}'" for p in inputs]
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "") if names else "no inputs"


def is_validation(doc_id: str, val_fraction: float, seed: int = 0) -> bool:
    """A deterministic split by document: the same id, fraction and seed give the same answer everywhere.

    sha256 rather than ``hash()``, which is salted per process for strings.
    """
    if val_fraction <= 0:
        return False
    if val_fraction >= 1:
        return True
    digest = hashlib.sha256(f"{seed}\x00{doc_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2**64 < val_fraction
