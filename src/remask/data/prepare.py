"""Tokenise a corpus once into train/val shards plus ``meta.json``; training then only memory-maps.

Layout of a prepared directory::

    meta.json                 written last: its presence means the directory is complete
    tokenizer/                the tokenizer that produced the ids (tokenizer.save)
    train-00000.bin ...       token shards (see shards.py)
    val-00000.bin ...

Documents are separated by EOS, matching LLaDA pre-training where documents are packed into
fixed-length windows. The split is decided per document by a hash of its id (corpus.is_validation),
so adding files never reshuffles the existing ones between train and val.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from remask.data.corpus import (
    CorpusStats,
    Document,
    default_corpus_root,
    describe_inputs,
    is_validation,
    iter_documents,
)
from remask.data.shards import ShardWriter, token_dtype
from remask.data.tokenizer import ByteTokenizer, Tokenizer
from remask.errors import RemaskError
from remask.fileio import write_text_atomic

FORMAT = "remask-tokens"
VERSION = 1
META_FILE = "meta.json"
_CHUNK_CHARS = 1 << 22  # encode longer documents piecewise so the id array stays bounded
# A BPE cut is invisible only where the pre-tokeniser would split anyway: a lone newline between
# two non-space characters (GPT-2-style regexes never merge across it).
_SAFE_CUT = re.compile(r"(?<=\S\n)(?=\S)")


def _encode_pieces(tok: Tokenizer, text: str) -> Iterator[np.ndarray]:
    if len(text) <= _CHUNK_CHARS:
        yield tok.encode_array(text)
        return
    pos = 0
    while pos < len(text):
        end = pos + _CHUNK_CHARS
        if end < len(text) and not isinstance(tok, ByteTokenizer):  # bytes can be cut anywhere
            m = _SAFE_CUT.search(text, end, end + _CHUNK_CHARS)
            end = m.start() if m else len(text)  # no safe cut nearby: take the rest whole
        yield tok.encode_array(text[pos:end])
        pos = end


def _utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8"))


class _Split:
    """One output split: its shard writer and the counts that go into meta.json."""

    def __init__(self, out: Path, name: str, dtype: np.dtype, tok: Tokenizer) -> None:
        self.writer = ShardWriter(out, name, dtype)
        self.tok = tok
        self.eos = np.array([tok.eos_id], dtype=np.int64)
        self.tokens = self.documents = self.bytes = 0

    def add(self, text: str) -> None:
        for ids in _encode_pieces(self.tok, text):
            self.writer.write(ids)
            self.tokens += len(ids)
        self.writer.write(self.eos)
        self.tokens += 1
        self.documents += 1
        self.bytes += _utf8_len(text)

    def counts(self) -> dict[str, int]:
        return {"tokens": self.tokens, "documents": self.documents, "bytes": self.bytes}


def _hash_path(h: Any, path: Path) -> None:
    try:
        st = path.stat()
    except OSError:
        h.update(f"{path}\0missing\n".encode())
        return
    h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())


def data_fingerprint(inputs: Sequence[str | Path] | None, tokenizer: Tokenizer, *,
                     val_fraction: float, seed: int) -> str:
    """Changes whenever the inputs (paths, sizes, mtimes), the tokenizer or the split would."""
    h = hashlib.sha256()
    h.update(json.dumps({"format": FORMAT, "version": VERSION, "tokenizer": tokenizer.digest(),
                         "vocab_size": tokenizer.vocab_size, "val_fraction": val_fraction, "seed": seed}).encode())
    if inputs is None:
        h.update(f"default\0{sys.version}\0{default_corpus_root()}".encode())
        return h.hexdigest()
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    for item in inputs:
        path = Path(item).resolve()
        if path.is_dir():
            for sub in sorted(p for p in path.rglob("*") if p.is_file()):
                _hash_path(h, sub)
        else:
            _hash_path(h, path)
    return h.hexdigest()


def prepare(inputs: Sequence[str | Path] | None, out_dir: str | Path, tokenizer: Tokenizer | None = None, *,
            val_fraction: float = 0.02, seed: int = 0) -> dict[str, Any]:
    """Tokenise ``inputs`` (None: the default corpus) into ``out_dir``; return the meta dict.

    Streams document by document, so memory stays flat however large the corpus. Both splits are
    guaranteed non-empty: if the hash sent nothing to val (e.g. one input file), the last document
    goes to val, or, when it is the only document, its last ``val_fraction`` of characters.
    """
    if not 0 < val_fraction < 1:
        raise RemaskError(f"val_fraction must be in (0, 1), got {val_fraction}")
    tok = tokenizer if tokenizer is not None else ByteTokenizer()
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / META_FILE).unlink(missing_ok=True)  # an interrupted prepare must not look finished
    fingerprint = data_fingerprint(inputs, tok, val_fraction=val_fraction, seed=seed)
    dtype = token_dtype(tok.vocab_size)
    stats = CorpusStats()
    splits = {name: _Split(out, name, dtype, tok) for name in ("train", "val")}
    try:
        # One document of lookahead: the last one is held back so it can fill an empty split.
        pending: tuple[str, Document] | None = None
        for doc in iter_documents(inputs, stats):
            if pending is not None:
                splits[pending[0]].add(pending[1].text)
            pending = ("val" if is_validation(doc.id, val_fraction, seed) else "train", doc)
        if pending is None:
            raise RemaskError(f"no text found in {describe_inputs(inputs)}; "
                              "give UTF-8 text files, directories or .jsonl with a 'text' field")
        name, doc = pending
        other = "val" if name == "train" else "train"
        if splits[other].documents > 0:
            splits[name].add(doc.text)
        elif stats.documents > 1:
            splits[other].add(doc.text)  # every earlier document went to `name`
        else:
            text = doc.text
            if len(text) < 2:
                raise RemaskError(f"only {len(text)} character of text in {describe_inputs(inputs)}; "
                                  "need enough text for both a train and a validation split")
            cut = min(max(len(text) - max(1, round(len(text) * val_fraction)), 1), len(text) - 1)
            splits["train"].add(text[:cut])
            splits["val"].add(text[cut:])
    except BaseException:
        for s in splits.values():
            s.writer.abort()
        raise
    for s in splits.values():
        s.writer.close()

    tok.save(out / "tokenizer")
    meta: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "vocab_size": tok.vocab_size,
        "dtype": str(np.dtype(dtype).name),
        "mask_id": tok.mask_id,
        "eos_id": tok.eos_id,
        "val_fraction": val_fraction,
        "seed": seed,
        "splits": {name: s.counts() for name, s in splits.items()},
        "skipped_files": stats.skipped_files,
        "inputs": None if inputs is None else [str(p) for p in inputs],
        "tokenizer": {"type": tok.kind, "digest": tok.digest()},
        "fingerprint": fingerprint,
    }
    write_text_atomic(out / META_FILE, json.dumps(meta, indent=2) + "\n")
    return meta


def is_prepared(path: str | Path) -> bool:
    """True if ``path`` is a directory holding a complete prepared dataset."""
    try:
        meta = json.loads((Path(path) / META_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(meta, dict) and meta.get("format") == FORMAT


def load_meta(path: str | Path) -> dict[str, Any]:
    """The meta dict of a prepared directory, or a RemaskError that says how to make one."""
    file = Path(path) / META_FILE
    fix = "run `remask prepare DATA --out DIR` (or pass raw text files) to create one"
    if not file.is_file():
        raise RemaskError(f"'{path}' is not a prepared dataset (no {META_FILE}); {fix}")
    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RemaskError(f"cannot read '{file}' ({e}); {fix}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise RemaskError(f"'{file}' is not remask token metadata; {fix}")
    if meta.get("version") != VERSION:
        raise RemaskError(f"'{file}' has format version {meta.get('version')}, this remask reads {VERSION}; {fix}")
    return meta


def resolve_data(data: str | Path | Sequence[str | Path] | None, work_dir: str | Path,
                 tokenizer: Tokenizer | None = None, *, val_fraction: float = 0.02) -> Path:
    """A prepared directory for ``data``: ``data`` itself if already prepared, else ``work_dir``,
    which is (re)built only when its fingerprint doesn't match the inputs and tokenizer."""
    if isinstance(data, (str, Path)):
        if is_prepared(data):
            return Path(data)
        inputs: list[str | Path] | None = [data]
    elif data is None:
        inputs = None
    else:
        inputs = list(data)
        if len(inputs) == 1 and is_prepared(inputs[0]):
            return Path(inputs[0])
    tok = tokenizer if tokenizer is not None else ByteTokenizer()
    work = Path(work_dir)
    if is_prepared(work):
        fingerprint = data_fingerprint(inputs, tok, val_fraction=val_fraction, seed=0)
        if load_meta(work).get("fingerprint") == fingerprint:
            return work
    prepare(inputs, work, tok, val_fraction=val_fraction)
    return work
