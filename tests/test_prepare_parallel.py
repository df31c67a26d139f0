"""`remask prepare` at scale: segments tokenised by several processes give the very shards of one
process, which hold exactly the documents in corpus order; a killed prepare resumes where it stopped."""

from __future__ import annotations

import importlib
import json
import warnings

import numpy as np
import pytest

from remask.data.corpus import is_validation, iter_documents
from remask.data.prepare import prepare
from remask.data.shards import TokenData
from remask.data.tokenizer import ByteTokenizer, train_bpe
from remask.errors import RemaskError

prep = importlib.import_module("remask.data.prepare")  # the package re-exports the function of the same name
segments = importlib.import_module("remask.data.segments")

LINE = "def f{i}(x):\n    return x * {i}  # ünïcödé 🙂\n"


@pytest.fixture
def corpus(tmp_path):
    """Small files, a .jsonl and a text file several segments long (with a BOM), once segments are 2 KB."""
    tree = tmp_path / "tree"
    tree.mkdir()
    for i in range(12):
        (tree / f"f{i:02d}.py").write_text("".join(LINE.format(i=i * 10 + j) for j in range(i + 1)))
    (tree / "blob.bin").write_bytes(b"\x00\x01binary")  # skipped and counted
    lines = [json.dumps({"text": "".join(LINE.format(i=k) for k in range(i % 9))}) for i in range(60)]
    (tmp_path / "records.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "big.txt").write_text("\ufeff" + "".join(LINE.format(i=i) for i in range(300)), encoding="utf-8")
    return [tmp_path / "tree", tmp_path / "records.jsonl", tmp_path / "big.txt"]


@pytest.fixture
def small_segments(monkeypatch):
    monkeypatch.setattr(segments, "SEGMENT_BYTES", 2048)
    monkeypatch.setattr(segments, "_WINDOW", 256)


def expected_tokens(inputs, tok, val_fraction):
    """The definition: every document in corpus order, encoded whole, EOS after each, by its split."""
    out = {"train": [], "val": []}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for doc in iter_documents(inputs):
            split = "val" if is_validation(doc.id, val_fraction) else "train"
            out[split] += [*tok.encode(doc.text, allow_special=False), tok.eos_id]
    return out


def shards(path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.glob("*.bin"))}


def test_two_workers_write_the_shards_of_one(tmp_path, corpus, small_segments):
    tok = train_bpe([p.read_text() for p in (corpus[2],)], vocab_size=300, min_frequency=1)
    plan = segments.plan_segments(corpus, tok, 0.3)
    kinds = {item.kind for seg in plan for item in seg}
    assert len(plan) > 10 and kinds == {"file", "jsonl", "piece"}  # every kind of segment, several of each
    with pytest.warns(UserWarning, match="skipped 1 binary"):
        one = prepare(corpus, tmp_path / "one", tok, val_fraction=0.3)
    with pytest.warns(UserWarning, match="skipped 1 binary"):
        two = prepare(corpus, tmp_path / "two", tok, val_fraction=0.3, workers=2)
    assert shards(tmp_path / "two") == shards(tmp_path / "one") and two == one
    assert not (tmp_path / "two" / ".parts").exists()
    want = expected_tokens(corpus, tok, 0.3)
    for split in ("train", "val"):
        data = TokenData(tmp_path / "one", split)
        assert data.get(0, len(data)).tolist() == want[split]
        assert one["splits"][split]["tokens"] == len(want[split])


def test_a_lone_large_file_is_cut_by_characters(tmp_path, corpus, small_segments):
    text = corpus[2].read_text(encoding="utf-8").removeprefix("\ufeff")
    meta = prepare([corpus[2]], tmp_path / "out", val_fraction=0.1)
    cut = len(text) - round(len(text) * 0.1)
    tok = ByteTokenizer()
    for split, part in (("train", text[:cut]), ("val", text[cut:])):
        data = TokenData(tmp_path / "out", split)
        assert data.get(0, len(data)).tolist() == [*tok.encode(part), tok.eos_id]
        assert meta["splits"][split] == {"tokens": len(data), "documents": 1, "bytes": len(part.encode())}


def test_a_killed_prepare_resumes_where_it_stopped(tmp_path, corpus, small_segments, monkeypatch, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepare(corpus, tmp_path / "clean")
        real, calls = prep._tokenise, []

        def dies_at_the_fourth(index, *args, **kwargs):
            calls.append(index)
            if len(calls) == 4:
                raise KeyboardInterrupt  # as if killed while tokenising segment 3
            return real(index, *args, **kwargs)

        monkeypatch.setattr(prep, "_tokenise", dies_at_the_fourth)
        with pytest.raises(KeyboardInterrupt):
            prepare(corpus, tmp_path / "out")
        parts = tmp_path / "out" / ".parts"
        assert not (tmp_path / "out" / "meta.json").exists()
        assert sorted(p.parent.name for p in parts.glob("*/done.json")) == ["00000", "00001", "00002"]
        (parts / "00003").mkdir()
        (parts / "00003" / "train-00000.bin.tmp").write_bytes(b"half a shard")  # what a real kill leaves

        calls.clear()
        monkeypatch.setattr(prep, "_tokenise", lambda index, *a, **k: (calls.append(index), real(index, *a, **k))[1])
        prepare(corpus, tmp_path / "out", progress=True)
    n = len(segments.plan_segments(corpus, ByteTokenizer(), 0.02))
    assert calls == list(range(3, n))  # the three finished segments are not redone
    assert shards(tmp_path / "out") == shards(tmp_path / "clean")
    assert "prepare" in capsys.readouterr().err  # the progress bar (bytes, rate, ETA)


def test_changed_inputs_start_afresh_and_bad_workers_is_an_error(tmp_path, corpus, small_segments):
    with pytest.raises(RemaskError, match="--workers must be >= 1"):
        prepare(corpus, tmp_path / "out", workers=0)
    (tmp_path / "out" / ".parts" / "00000").mkdir(parents=True)
    (tmp_path / "out" / ".parts" / "00000" / "done.json").write_text("{}")  # from other inputs: no plan.json
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        meta = prepare(corpus, tmp_path / "out")
    assert meta["splits"]["train"]["documents"] + meta["splits"]["val"]["documents"] == 12 + 60 - 7 + 1
    assert np.asarray(TokenData(tmp_path / "out", "train").get(0, 5)).size == 5
