"""Tokenise a corpus once into train/val shards plus ``meta.json``; training then only memory-maps.

Layout of a prepared directory::

    meta.json                 written last: its presence means the directory is complete
    tokenizer/                the tokenizer that produced the ids (tokenizer.save)
    train-00000.bin ...       token shards (see shards.py)
    val-00000.bin ...
    .parts/                   only while preparing: one directory per finished segment (see below)

Documents are separated by EOS, matching LLaDA pre-training where documents are packed into
fixed-length windows. The split is decided per document by a hash of its id (corpus.is_validation),
so adding files never reshuffles the existing ones between train and val.

At scale: the input is cut into segments of about 16 MB (``remask.data.segments``: runs of small files, byte ranges
of a large .jsonl at line starts, byte ranges of a large text file at cuts the tokenizer cannot see),
planned from the inputs alone. Each segment is tokenised, by one of ``workers`` processes, into its
own part files under ``.parts/``, marked finished by a ``done.json`` written last; the parts are then
concatenated in segment order into the shards. So the shards do not depend on the number of
processes, memory stays at a few segments whatever the corpus size, and a prepare that was killed
picks up where it stopped when run again (finished segments are kept while the inputs, tokenizer
and options are unchanged).
"""

from __future__ import annotations

import functools
import hashlib
import json
import multiprocessing
import shutil
import sys
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from remask.data.corpus import (
    CorpusStats,
    SourceFile,
    default_corpus_root,
    describe_inputs,
    is_validation,
    iter_documents,
    iter_jsonl,
    read_documents,
)
from remask.data.segments import SAFE_CUT, Item, plan_segments
from remask.data.shards import ShardWriter, TokenData, token_dtype
from remask.data.tokenizer import ByteTokenizer, Tokenizer, load_tokenizer
from remask.errors import RemaskError
from remask.fileio import write_text_atomic

FORMAT = "remask-tokens"
VERSION = 1
META_FILE = "meta.json"
PARTS = ".parts"
_CHUNK_CHARS = 1 << 22  # encode longer documents piecewise so the id array stays bounded
_COPY_TOKENS = 1 << 20  # tokens per read when the parts are joined into shards
SPLITS = ("train", "val")


def _encode_pieces(tok: Tokenizer, text: str) -> Iterator[np.ndarray]:
    if len(text) <= _CHUNK_CHARS:
        yield tok.encode_array(text)
        return
    pos = 0
    while pos < len(text):
        end = pos + _CHUNK_CHARS
        if end < len(text) and not isinstance(tok, ByteTokenizer):  # bytes can be cut anywhere
            m = SAFE_CUT.search(text, end, end + _CHUNK_CHARS)
            end = m.start() if m else len(text)  # no safe cut nearby: take the rest whole
        yield tok.encode_array(text[pos:end])
        pos = end


def _utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8"))


class _Split:
    """One output split: its shard writer and the counts that go into meta.json, plus the size of
    its last document (the one ``prepare`` may have to move to the other split)."""

    def __init__(self, out: Path, name: str, dtype: np.dtype, tok: Tokenizer) -> None:
        self.writer = ShardWriter(out, name, dtype)
        self.tok = tok
        self.eos = np.array([tok.eos_id], dtype=np.int64)
        self.tokens = self.documents = self.bytes = 0
        self.last = [0, 0]  # (tokens, bytes) of the last document, as far as it lies in this split's output
        self.last_starts_here = False  # False: that document began in an earlier segment

    def add(self, text: str, *, first: bool = True, last: bool = True) -> None:
        """Append ``text``: a whole document, or a piece of one (``first``: it begins here; ``last``:
        it ends here, so EOS follows)."""
        n = 0
        for ids in _encode_pieces(self.tok, text):
            self.writer.write(ids)
            n += len(ids)
        if last:
            self.writer.write(self.eos)
            n += 1
        size = _utf8_len(text)
        self.tokens, self.bytes = self.tokens + n, self.bytes + size
        if first:
            self.documents += 1
            self.last, self.last_starts_here = [n, size], True
        else:
            self.last = [self.last[0] + n, self.last[1] + size]

    def counts(self) -> dict[str, int]:
        return {"tokens": self.tokens, "documents": self.documents, "bytes": self.bytes}


# ----------------------------------------------------------------------------- one segment

@functools.lru_cache(maxsize=2)
def _worker_tokenizer(path: str) -> Tokenizer:
    return load_tokenizer(path)  # once per worker process


def _read_item(item: Item, splits: dict[str, _Split], stats: CorpusStats, val_fraction: float, seed: int) -> None:
    def split_of(doc_id: str) -> str:
        return "val" if is_validation(doc_id, val_fraction, seed) else "train"

    if item.kind == "skip":
        stats.skip(Path(item.path))
    elif item.kind == "piece":
        with open(item.path, "rb") as f:
            f.seek(item.start)
            text = f.read(item.end - item.start).decode("utf-8")  # validated while planning
        splits[item.split or split_of(item.doc_id)].add(text, first=item.first, last=item.last)
        stats.documents += item.first
    else:
        src = SourceFile(item.doc_id, Path(item.path), item.explicit)
        docs = (read_documents(src, stats) if item.kind == "file"
                else iter_jsonl(src.path, item.doc_id, item.start, item.end, item.first_line))
        for doc in docs:
            splits[split_of(doc.id)].add(doc.text)
            stats.documents += 1


def _tokenise(index: int, segment: list[Item], parts: str, tok: Tokenizer | str, dtype: str,
              val_fraction: float, seed: int) -> dict[str, Any]:
    """Tokenise one segment into ``parts/NNNNN/{train,val}-*.bin``; ``done.json``, written last, holds
    its counts. Runs in a worker process (``tok`` is then the saved tokenizer's directory)."""
    tok = _worker_tokenizer(tok) if isinstance(tok, str) else tok
    out = Path(parts) / f"{index:05d}"
    shutil.rmtree(out, ignore_errors=True)  # what a killed attempt left
    splits = {name: _Split(out, name, np.dtype(dtype), tok) for name in SPLITS}
    stats = CorpusStats()
    try:
        for item in segment:
            _read_item(item, splits, stats, val_fraction, seed)
    except BaseException:
        for s in splits.values():
            s.writer.abort()
        raise
    for s in splits.values():
        s.writer.close()
    record = {"documents": stats.documents, "skipped": stats.skipped_files, "skipped_examples": stats.skipped_examples,
              "splits": {name: {**s.counts(), "last": s.last, "last_starts_here": s.last_starts_here}
                         for name, s in splits.items()}}
    write_text_atomic(out / "done.json", json.dumps(record) + "\n")
    return record


def _run_segments(plan: list[list[Item]], parts: Path, tok: Tokenizer, dtype: np.dtype, *, val_fraction: float,
                  seed: int, workers: int, progress: bool) -> list[dict[str, Any]]:
    """Every segment's record: read back for those a previous attempt finished, else tokenised here
    (``workers`` = 1) or in worker processes, in whatever order they finish."""
    records: list[dict[str, Any] | None] = []
    for i in range(len(plan)):
        done = parts / f"{i:05d}" / "done.json"
        records.append(json.loads(done.read_text()) if done.is_file() else None)
    sizes = [sum(item.size for item in seg) for seg in plan]
    todo = [i for i, r in enumerate(records) if r is None]
    args = (str(parts), np.dtype(dtype).str, val_fraction, seed)
    with tqdm(total=sum(sizes), initial=sum(sizes) - sum(sizes[i] for i in todo), unit="B", unit_scale=True,
              unit_divisor=1024, desc="prepare", disable=not progress, dynamic_ncols=True) as bar:
        if workers == 1 or len(todo) <= 1:
            for i in todo:
                records[i] = _tokenise(i, plan[i], args[0], tok, *args[1:])
                bar.update(sizes[i])
        else:
            tok.save(parts / "tokenizer")
            ctx = multiprocessing.get_context("spawn")  # no fork: the parent may hold threads (torch, tokenizers)
            with ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=ctx) as pool:
                futures = {pool.submit(_tokenise, i, plan[i], args[0], str(parts / "tokenizer"), *args[1:]): i
                           for i in todo}
                try:
                    for fut in as_completed(futures):
                        records[futures[fut]] = fut.result()
                        bar.update(sizes[futures[fut]])
                except BrokenProcessPool:
                    raise RemaskError("a prepare worker died (out of memory?); run the same command again to resume "
                                      "from the segments already done, with fewer --workers if memory is short") from None
                except BaseException:
                    pool.shutdown(cancel_futures=True)
                    raise
    return [r for r in records if r is not None]


# ----------------------------------------------------------------------------- joining the parts

def _last_document(records: list[dict[str, Any]], split: str) -> tuple[int, int]:
    """(tokens, bytes) of the last document of ``split``, which may span several segments' parts."""
    tokens = size = 0
    for r in reversed(records):
        s = r["splits"][split]
        if s["tokens"] == 0:
            continue
        tokens, size = tokens + s["last"][0], size + s["last"][1]
        if s["last_starts_here"]:
            break
    return tokens, size


def _join(out: Path, parts: Path, n_segments: int, dtype: np.dtype, move: tuple[str, int] | None) -> None:
    """Concatenate the parts into the final shards, in segment order. ``move`` = (split, tokens):
    that split's last ``tokens`` go to the other split instead (its last document, see ``prepare``)."""
    writers = {name: ShardWriter(out, name, dtype) for name in SPLITS}
    try:
        for name in SPLITS:
            total = sum(len(TokenData(parts / f"{i:05d}", name)) for i in range(n_segments))
            cutoff = total - move[1] if move is not None and move[0] == name else total
            other = writers["val" if name == "train" else "train"]
            pos = 0
            for i in range(n_segments):
                data = TokenData(parts / f"{i:05d}", name)
                for lo in range(0, len(data), _COPY_TOKENS):
                    chunk = data.get(lo, min(_COPY_TOKENS, len(data) - lo))
                    keep = max(0, min(len(chunk), cutoff - pos))
                    writers[name].write(chunk[:keep])
                    other.write(chunk[keep:])
                    pos += len(chunk)
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    for w in writers.values():
        w.close()


def _lone_document(inputs: Sequence[str | Path] | None, out: Path, tok: Tokenizer, dtype: np.dtype,
                   val_fraction: float) -> dict[str, dict[str, int]]:
    """The one document of ``inputs`` that are not a single text file (a directory of one file, a .jsonl
    of one line): its last ``val_fraction`` of characters is the val split. It is held in memory."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the segments already counted any skipped file
        text = next(iter(iter_documents(inputs))).text
    if len(text) < 2:
        raise RemaskError(f"only {len(text)} character of text in {describe_inputs(inputs)}; "
                          "need enough text for both a train and a validation split")
    cut = min(max(len(text) - max(1, round(len(text) * val_fraction)), 1), len(text) - 1)
    splits = {name: _Split(out, name, dtype, tok) for name in SPLITS}
    splits["train"].add(text[:cut])
    splits["val"].add(text[cut:])
    for s in splits.values():
        s.writer.close()
    return {name: s.counts() for name, s in splits.items()}


# ----------------------------------------------------------------------------- prepare

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


def _open_parts(out: Path, plan: list[list[Item]], fingerprint: str, dtype: np.dtype) -> Path:
    """``out/.parts``, keeping the segments a killed attempt finished only if it had the same plan."""
    parts = out / PARTS
    ident = {"fingerprint": fingerprint, "dtype": np.dtype(dtype).str,
             "plan": hashlib.sha256(json.dumps([[list(vars(i).values()) for i in s] for s in plan]).encode()).hexdigest()}
    try:
        same = json.loads((parts / "plan.json").read_text()) == ident
    except (OSError, json.JSONDecodeError):
        same = False
    if not same:
        shutil.rmtree(parts, ignore_errors=True)
        parts.mkdir(parents=True)
        write_text_atomic(parts / "plan.json", json.dumps(ident) + "\n")
    return parts


def _write_splits(records: list[dict[str, Any]], parts: Path, out: Path, inputs: Sequence[str | Path] | None,
                  tok: Tokenizer, dtype: np.dtype, val_fraction: float) -> dict[str, dict[str, int]]:
    """Join the segments' parts into the shards, with neither split left empty; return the splits' counts."""
    counts = {name: {k: sum(r["splits"][name][k] for r in records) for k in ("tokens", "documents", "bytes")}
              for name in SPLITS}
    documents = sum(r["documents"] for r in records)
    if documents == 0:
        shutil.rmtree(parts, ignore_errors=True)
        raise RemaskError(f"no text found in {describe_inputs(inputs)}; "
                          "give UTF-8 text files, directories or .jsonl with a 'text' field")
    if documents == 1 and not all(c["documents"] for c in counts.values()):  # not a lone text file (see segments)
        return _lone_document(inputs, out, tok, dtype, val_fraction)
    empty = next((name for name in SPLITS if counts[name]["documents"] == 0), None)
    move = None
    if empty is not None:  # every document went to the other split: its last one comes over
        full = "val" if empty == "train" else "train"
        tokens, size = _last_document(records, full)
        move = (full, tokens)
        counts[full] = {"tokens": counts[full]["tokens"] - tokens, "documents": counts[full]["documents"] - 1,
                        "bytes": counts[full]["bytes"] - size}
        counts[empty] = {"tokens": tokens, "documents": 1, "bytes": size}
    _join(out, parts, len(records), dtype, move)
    return counts


def prepare(inputs: Sequence[str | Path] | None, out_dir: str | Path, tokenizer: Tokenizer | None = None, *,
            val_fraction: float = 0.02, seed: int = 0, workers: int = 1, progress: bool = False) -> dict[str, Any]:
    """Tokenise ``inputs`` (None: the default corpus) into ``out_dir``; return the meta dict.

    workers: processes that tokenise segments side by side (the shards are the same for any
    number). Memory stays flat however large the corpus; run again after a kill, it resumes.
    progress: a progress bar (bytes read, rate, ETA) on stderr. Both splits are guaranteed
    non-empty: if the hash sent nothing to val (e.g. one input file), the last document goes to
    val, or, when it is the only document, its last ``val_fraction`` of characters.
    """
    if not 0 < val_fraction < 1:
        raise RemaskError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if workers < 1:
        raise RemaskError(f"--workers must be >= 1, got {workers}")
    tok = tokenizer if tokenizer is not None else ByteTokenizer()
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / META_FILE).unlink(missing_ok=True)  # an interrupted prepare must not look finished
    fingerprint = data_fingerprint(inputs, tok, val_fraction=val_fraction, seed=seed)
    dtype = token_dtype(tok.vocab_size)
    plan = plan_segments(inputs, tok, val_fraction)
    parts = _open_parts(out, plan, fingerprint, dtype)
    records = _run_segments(plan, parts, tok, dtype, val_fraction=val_fraction, seed=seed, workers=workers,
                            progress=progress)
    if sum(r["skipped"] for r in records):
        examples = [e for r in records for e in r["skipped_examples"]]
        warnings.warn(f"skipped {sum(r['skipped'] for r in records)} binary or non-UTF-8 files (e.g. {examples[0]})",
                      stacklevel=2)
    counts = _write_splits(records, parts, out, inputs, tok, dtype, val_fraction)
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
        "splits": counts,
        "skipped_files": sum(r["skipped"] for r in records),
        "inputs": None if inputs is None else [str(p) for p in inputs],
        "tokenizer": {"type": tok.kind, "digest": tok.digest()},
        "fingerprint": fingerprint,
    }
    write_text_atomic(out / META_FILE, json.dumps(meta, indent=2) + "\n")
    shutil.rmtree(parts, ignore_errors=True)
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
                 tokenizer: Tokenizer | None = None, *, val_fraction: float = 0.02, progress: bool = False) -> Path:
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
    prepare(inputs, work, tok, val_fraction=val_fraction, progress=progress)
    return work
