"""Corpus reading, token shards and prepare: exact counts, stable splits, clear errors."""

from __future__ import annotations

import importlib
import json
import struct
import warnings

import numpy as np
import pytest

from remask.data.corpus import (
    CorpusStats,
    default_corpus_files,
    default_corpus_root,
    is_validation,
    iter_documents,
)
from remask.data.prepare import is_prepared, load_meta, prepare, resolve_data
from remask.data.shards import MAGIC, ShardWriter, TokenData, token_dtype
from remask.data.tokenizer import ByteTokenizer, load_tokenizer, train_bpe
from remask.errors import RemaskError

# the package re-exports the function prepare(), which shadows the module of the same name
prep = importlib.import_module("remask.data.prepare")

DOCS = {
    "a/one.txt": "first document\nwith two lines\n",
    "a/two.md": "ünïcödé 🙂 and 中文\n",
    "b/three.py": "print('hello')\n" * 20,
    "b/c/four.txt": "deeply nested\n",
}
JSONL_TEXTS = ["line doc one", "", "line doc three 🚀"]  # the empty one is skipped


def _corpus(root):
    """A directory tree with a hidden file, a non-UTF-8 file and an empty file, plus a .jsonl."""
    for rel, text in DOCS.items():
        (root / "tree" / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / "tree" / rel).write_text(text, encoding="utf-8")
    (root / "tree" / ".hidden.txt").write_text("never read")
    (root / "tree" / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (root / "tree" / "empty.txt").write_text("")
    jsonl = root / "docs.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": t, "meta": 1}) for t in JSONL_TEXTS) + "\n\n")
    return [root / "tree", jsonl]


def _split_docs(path, split, tok):
    """Decode a split back into its EOS-separated documents."""
    data = TokenData(path, split)
    ids = data.get(0, len(data)).tolist()
    assert ids[-1] == tok.eos_id
    docs, cur = [], []
    for i in ids:
        if i == tok.eos_id:
            docs.append(tok.decode(cur))
            cur = []
        else:
            cur.append(i)
    return docs


# ----------------------------------------------------------------------------- corpus

def test_iter_documents_tree_and_jsonl(tmp_path):
    stats = CorpusStats()
    with pytest.warns(UserWarning, match="skipped 1"):
        docs = list(iter_documents(_corpus(tmp_path), stats))
    assert [d.id for d in docs] == ["tree/a/one.txt", "tree/a/two.md", "tree/b/c/four.txt", "tree/b/three.py",
                                    "docs.jsonl:1", "docs.jsonl:3"]
    assert [d.text for d in docs] == [DOCS["a/one.txt"], DOCS["a/two.md"], DOCS["b/c/four.txt"],
                                      DOCS["b/three.py"], JSONL_TEXTS[0], JSONL_TEXTS[2]]
    assert stats.skipped_files == 1 and stats.documents == 6


def test_default_corpus_files():
    files = default_corpus_files()
    assert len(files) > 100
    assert all(f.suffix == ".py" for f in files)
    assert not any(part in ("site-packages", "dist-packages") for f in files for part in f.parts)
    rel = [f.relative_to(default_corpus_root()).as_posix() for f in files]
    assert rel == sorted(rel)


def test_is_validation_deterministic():
    ids = [f"doc{i}.txt" for i in range(2000)]
    picks = [is_validation(i, 0.2, seed=3) for i in ids]
    assert picks == [is_validation(i, 0.2, seed=3) for i in ids]
    assert 0.15 < sum(picks) / len(ids) < 0.25
    assert picks != [is_validation(i, 0.2, seed=4) for i in ids]
    assert not is_validation("x", 0.0) and is_validation("x", 1.0)


def test_corpus_errors_name_the_file(tmp_path):
    with pytest.raises(RemaskError, match=r"missing\.txt' does not exist"):
        list(iter_documents([tmp_path / "missing.txt"]))
    binary = tmp_path / "blob.bin"
    binary.write_bytes(b"abc\x00\x01\x02")
    with pytest.raises(RemaskError, match=r"blob\.bin.*UTF-8"):
        list(iter_documents([binary]))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": oops}\n')
    with pytest.raises(RemaskError, match=r"bad\.jsonl:2"):
        list(iter_documents([bad]))
    bad.write_text('{"text": "ok"}\n\n{"body": "no text field"}\n')
    with pytest.raises(RemaskError, match=r"bad\.jsonl:3.*'text'"):
        list(iter_documents([bad]))


# ----------------------------------------------------------------------------- shards

def test_token_dtype():
    assert token_dtype(264) == np.uint16 and token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32 and token_dtype(126464) == np.uint32


def test_shard_header_bytes(tmp_path):
    with ShardWriter(tmp_path, "train", np.uint16) as w:
        w.write(np.array([1, 2, 65535]))
    raw = (tmp_path / "train-00000.bin").read_bytes()
    assert raw[:32] == MAGIC + struct.pack("<IIQ", 1, 2, 3) + bytes(8)
    assert raw[32:] == np.array([1, 2, 65535], dtype="<u2").tobytes()
    assert not list(tmp_path.glob("*.tmp"))


def test_uint32_roundtrip(tmp_path):
    ids = np.array([0, 65535, 65536, 126081, 126336, 126463])
    with ShardWriter(tmp_path, "val", token_dtype(126464)) as w:
        w.write(ids)
    assert (tmp_path / "val-00000.bin").read_bytes()[12:16] == struct.pack("<I", 4)
    data = TokenData(tmp_path, "val")
    assert data.dtype == np.uint32 and len(data) == 6
    got = data.get(0, 6)
    assert got.dtype == np.int64 and got.tolist() == ids.tolist()


def test_get_across_shards(tmp_path):
    rng = np.random.default_rng(0)
    chunks = [rng.integers(0, 264, size=n) for n in (3, 0, 11, 1, 7, 20)]
    with ShardWriter(tmp_path, "train", np.uint16, max_tokens_per_shard=7) as w:
        for c in chunks:
            w.write(c)
    full = np.concatenate(chunks)  # 42 tokens -> 6 full shards of 7
    assert w.paths == [tmp_path / f"train-{i:05d}.bin" for i in range(6)]
    data = TokenData(tmp_path, "train")
    assert len(data) == data.n_tokens == len(full)
    for start in range(len(full)):
        for length in (0, 1, 6, 7, 8, 15, len(full) - start):
            if start + length <= len(full):
                assert np.array_equal(data.get(start, length), full[start:start + length])
    with pytest.raises(IndexError):
        data.get(40, 5)


def test_rewrite_drops_stale_shards(tmp_path):
    with ShardWriter(tmp_path, "train", np.uint16, max_tokens_per_shard=2) as w:
        w.write(np.arange(10))
    with ShardWriter(tmp_path, "train", np.uint16, max_tokens_per_shard=2) as w:
        w.write(np.arange(3))
    assert len(TokenData(tmp_path, "train")) == 3


def test_corrupt_shards(tmp_path):
    with ShardWriter(tmp_path, "train", np.uint16) as w:
        w.write(np.arange(10))
    path = tmp_path / "train-00000.bin"
    raw = path.read_bytes()
    path.write_bytes(b"NOTMAGIC" + raw[8:])
    with pytest.raises(RemaskError, match=r"train-00000\.bin.*remask prepare"):
        TokenData(tmp_path, "train")
    path.write_bytes(raw[:-2])  # one token short of what the header promises
    with pytest.raises(RemaskError, match=r"train-00000\.bin"):
        TokenData(tmp_path, "train")
    path.write_bytes(raw[:20])
    with pytest.raises(RemaskError, match="truncated"):
        TokenData(tmp_path, "train")
    with pytest.raises(RemaskError, match="'val'"):
        TokenData(tmp_path, "val")


# ----------------------------------------------------------------------------- prepare

def test_prepare_counts_and_content(tmp_path):
    inputs = _corpus(tmp_path)
    tok = ByteTokenizer()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        meta = prepare(inputs, tmp_path / "out", val_fraction=0.3)
        texts = [d.text for d in iter_documents(inputs)]
    expected = sum(len(tok.encode_array(t)) + 1 for t in texts)
    train, val = meta["splits"]["train"], meta["splits"]["val"]
    assert train["tokens"] + val["tokens"] == expected
    assert train["documents"] + val["documents"] == len(texts) == 6
    assert val["tokens"] > 0 and train["tokens"] > 0
    assert train["bytes"] + val["bytes"] == sum(len(t.encode()) for t in texts)
    assert meta["skipped_files"] == 1 and meta["dtype"] == "uint16"
    assert (meta["vocab_size"], meta["mask_id"], meta["eos_id"]) == (264, 256, 257)
    out = tmp_path / "out"
    assert sorted(_split_docs(out, "train", tok) + _split_docs(out, "val", tok)) == sorted(texts)
    assert len(TokenData(out, "val")) == val["tokens"]
    assert load_meta(out) == meta == json.loads((out / "meta.json").read_text())
    assert isinstance(load_tokenizer(out / "tokenizer"), ByteTokenizer)


def test_prepare_is_deterministic(tmp_path):
    inputs = _corpus(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepare(inputs, tmp_path / "r1")
        prepare(inputs, tmp_path / "r2")
    for name in ("train-00000.bin", "val-00000.bin"):
        assert (tmp_path / "r1" / name).read_bytes() == (tmp_path / "r2" / name).read_bytes()
    assert load_meta(tmp_path / "r1")["splits"] == load_meta(tmp_path / "r2")["splits"]


def test_single_file_gets_val(tmp_path):
    text = "To be, or not to be, that is the question. 🙂\n" * 40
    (tmp_path / "input.txt").write_text(text)
    meta = prepare([tmp_path / "input.txt"], tmp_path / "out", val_fraction=0.1)
    tok = ByteTokenizer()
    train, val = _split_docs(tmp_path / "out", "train", tok), _split_docs(tmp_path / "out", "val", tok)
    assert len(train) == len(val) == 1 and train[0] + val[0] == text
    assert abs(len(val[0]) - 0.1 * len(text)) <= 1
    assert meta["splits"]["val"]["tokens"] == len(val[0].encode()) + 1


def test_several_docs_none_in_val(tmp_path):
    names = [f"f{i}.txt" for i in range(3)]
    assert not any(is_validation(n, 0.01) for n in names)
    for n in names:
        (tmp_path / n).write_text(f"text of {n}\n")
    prepare([tmp_path / n for n in names], tmp_path / "out", val_fraction=0.01)
    assert _split_docs(tmp_path / "out", "val", ByteTokenizer()) == ["text of f2.txt\n"]


def test_prepare_uint32_for_large_vocab(tmp_path):
    tok = ByteTokenizer()
    tok.vocab_size = 126464  # pretend LLaDA-8B's vocabulary: ids no longer fit uint16
    (tmp_path / "t.txt").write_text("some text here")
    meta = prepare([tmp_path / "t.txt"], tmp_path / "out", tok)
    assert meta["dtype"] == "uint32"
    assert TokenData(tmp_path / "out", "train").dtype == np.uint32


def test_prepare_with_bpe(tmp_path):
    texts = ["the cat sat on the mat.\n" * 5, "the dog sat on the log 🙂\n" * 5, "a mat, a log, a cat\n"]
    files = []
    for i, t in enumerate(texts):
        files.append(tmp_path / f"d{i}.txt")
        files[-1].write_text(t)
    tok = train_bpe(texts, vocab_size=300, min_frequency=1)
    meta = prepare(files, tmp_path / "out", tok, val_fraction=0.3)
    assert meta["tokenizer"]["type"] == "hf" and meta["mask_id"] == tok.mask_id
    assert meta["splits"]["train"]["tokens"] + meta["splits"]["val"]["tokens"] == sum(len(tok.encode(t)) + 1 for t in texts)
    back = load_tokenizer(tmp_path / "out" / "tokenizer")
    docs = _split_docs(tmp_path / "out", "train", back) + _split_docs(tmp_path / "out", "val", back)
    assert sorted(docs) == sorted(texts)


def test_long_documents_encode_in_pieces(monkeypatch):
    text = "".join(f"line {i}: word  word\n\n  indented {i}\nnext\n" for i in range(60))
    bpe = train_bpe([text], vocab_size=320)
    monkeypatch.setattr(prep, "_CHUNK_CHARS", 50)
    for tok in (ByteTokenizer(), bpe):
        pieces = list(prep._encode_pieces(tok, text))
        assert len(pieces) > 3
        assert np.concatenate(pieces).tolist() == tok.encode(text, allow_special=False)


def test_prepare_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "blank.txt").write_text("")
    with pytest.raises(RemaskError, match=r"no text found in '.*empty'"):
        prepare([tmp_path / "empty"], tmp_path / "out")
    assert not is_prepared(tmp_path / "out")
    with pytest.raises(RemaskError, match=r"gone\.txt"):
        prepare([tmp_path / "gone.txt"], tmp_path / "out")
    (tmp_path / "img.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    with pytest.raises(RemaskError, match=r"img\.png"):
        prepare([tmp_path / "img.png"], tmp_path / "out")
    (tmp_path / "x.jsonl").write_text("[1, 2]\n")
    with pytest.raises(RemaskError, match=r"x\.jsonl:1"):
        prepare([tmp_path / "x.jsonl"], tmp_path / "out")
    with pytest.raises(RemaskError, match=r"meta\.json"):
        load_meta(tmp_path / "out")


def test_resolve_data_reuses(tmp_path):
    src = tmp_path / "input.txt"
    src.write_text("hello world, " * 50)
    work = tmp_path / "work"
    assert resolve_data(src, work) == work and is_prepared(work)
    stamp = (work / "meta.json").stat().st_mtime_ns
    assert resolve_data([src], work) == work
    assert (work / "meta.json").stat().st_mtime_ns == stamp  # reused, not rebuilt
    assert resolve_data(work, tmp_path / "elsewhere") == work  # a prepared dir is used as is
    assert not (tmp_path / "elsewhere").exists()
    src.write_text("different text now, and longer " * 50)
    resolve_data(src, work)
    assert load_meta(work)["splits"]["train"]["bytes"] + load_meta(work)["splits"]["val"]["bytes"] == 31 * 50
