"""Tokenizer contracts: exact round-trips, specials only where allowed, stable ids across save/load."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer as HFTok
from tokenizers import models, pre_tokenizers

from remask.data.tokenizer import (
    BOS,
    END_HEADER,
    EOS,
    EOT,
    MASK,
    START_HEADER,
    ByteTokenizer,
    HFTokenizer,
    byte_tokenizer,
    load_tokenizer,
    train_bpe,
)
from remask.errors import RemaskError

UNICODE = "Hello, wörld! 🙂🚀 中文字符 ελληνικά\n\ttabs  and  spaces\r\n\x01 end"
CORPUS = [UNICODE, "the quick brown fox jumps over the lazy dog. " * 5, "def f(x):\n    return x + 1\n"] * 4
ROLES = {"mask": MASK, "eos": EOS, "bos": BOS, "start_header": START_HEADER, "end_header": END_HEADER, "eot": EOT}


@pytest.fixture(scope="module")
def bpe() -> HFTokenizer:
    return train_bpe(CORPUS, vocab_size=400, min_frequency=2)


def _word_level(vocab: dict[str, int]) -> HFTok:
    tok = HFTok(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return tok


def test_byte_layout():
    tok = byte_tokenizer()
    assert tok.vocab_size == 264
    assert (tok.mask_id, tok.eos_id, tok.bos_id, tok.eot_id, tok.pad_id) == (256, 257, 258, 261, 257)
    assert tok.special_ids[START_HEADER] == 259 and tok.special_ids[END_HEADER] == 260
    assert tok.special_ids["<|reserved_0|>"] == 262 and tok.special_ids["<|reserved_1|>"] == 263
    assert tok.token_to_id(MASK) == 256 and tok.token_to_id("a") == 97 and tok.token_to_id("ab") is None


def test_byte_roundtrip_unicode():
    tok = ByteTokenizer()
    ids = tok.encode(UNICODE)
    assert ids == list(UNICODE.encode("utf-8"))
    assert tok.decode(ids) == UNICODE
    arr = tok.encode_array(UNICODE)
    assert arr.dtype in (np.int64, np.uint32) and arr.tolist() == ids
    assert tok.decode(torch.tensor(ids)) == UNICODE


@pytest.mark.parametrize("make", [ByteTokenizer, lambda: train_bpe(CORPUS, vocab_size=400)])
def test_specials_parse_only_when_allowed(make):
    tok = make()
    text = f"{START_HEADER}user{END_HEADER}\nhi {MASK}{EOT}{EOS}"
    ids = tok.encode(text, allow_special=True)
    for s in (START_HEADER, END_HEADER, MASK, EOT, EOS):
        assert ids.count(tok.special_ids[s]) == 1
    assert tok.decode(ids) == text
    assert tok.decode(ids, skip_special_tokens=True) == "user\nhi "
    plain = tok.encode(text, allow_special=False)
    assert not set(plain) & set(tok.special_ids.values())
    assert tok.decode(plain) == text
    assert tok.encode_array(text).tolist() == plain


@pytest.mark.parametrize("make", [ByteTokenizer, lambda: train_bpe(CORPUS, vocab_size=400)])
def test_decode_never_raises(make):
    tok = make()
    rng = random.Random(0)
    for _ in range(50):
        ids = [rng.randint(-5, tok.vocab_size + 50) for _ in range(rng.randint(0, 40))]
        assert isinstance(tok.decode(ids), str)
    assert ByteTokenizer().decode([0xE4, 0xB8]) == "\ufffd"  # truncated UTF-8 sequence


def test_bpe_roundtrip_and_specials(bpe):
    for i, s in enumerate(ROLES.values()):  # specials occupy the first ids, independent of data
        assert bpe.special_ids[s] == i
    assert (bpe.mask_id, bpe.eos_id, bpe.bos_id, bpe.eot_id, bpe.pad_id) == (0, 1, 2, 5, 1)
    assert 262 < bpe.vocab_size <= 400
    for text in [*CORPUS, "unseen: Ω≈ç√∫ 😀 \u200b\n\n  x", ""]:
        ids = bpe.encode(text)
        assert max(ids, default=0) < bpe.vocab_size
        assert bpe.decode(ids) == text
    assert len(bpe.encode(CORPUS[1])) < len(CORPUS[1].encode())  # it actually learned merges


def test_bpe_vocab_too_small():
    with pytest.raises(RemaskError, match="vocab_size"):
        train_bpe(CORPUS, vocab_size=100)


def test_save_load_bytes(tmp_path):
    tok = ByteTokenizer()
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    tok.save(tmp_path)
    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert cfg["type"] == "bytes" and cfg["special_tokens"]["mask"] == MASK
    back = load_tokenizer(tmp_path)
    assert isinstance(back, ByteTokenizer)
    assert back.chat_template == tok.chat_template and back.vocab_size == 264
    assert load_tokenizer(None).vocab_size == 264 and isinstance(load_tokenizer("bytes"), ByteTokenizer)


def test_save_load_hf(bpe, tmp_path):
    bpe.chat_template = "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    bpe.save(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"tokenizer.json", "tokenizer_config.json"}
    for path in (tmp_path, tmp_path / "tokenizer.json"):
        back = load_tokenizer(path)
        assert isinstance(back, HFTokenizer)
        assert back.vocab_size == bpe.vocab_size and back.special_ids == bpe.special_ids
        assert (back.mask_id, back.eos_id, back.eot_id) == (bpe.mask_id, bpe.eos_id, bpe.eot_id)
        assert back.chat_template == bpe.chat_template
        assert back.encode(UNICODE) == bpe.encode(UNICODE)
    bpe.chat_template = None


def test_plain_tokenizer_json_gets_mask(tmp_path):
    vocab = {"[UNK]": 0, "hello": 1, "world": 2, "</s>": 3}
    _word_level(vocab).save(str(tmp_path / "tokenizer.json"))
    tok = load_tokenizer(tmp_path / "tokenizer.json")
    assert tok.eos_id == 3  # an existing EOS alias is reused, not added
    assert tok.mask_id >= 4 and tok.token_to_id(MASK) == tok.mask_id
    assert tok.vocab_size == 4 + 5  # mask, bos, eot and the two headers were added
    assert tok.encode(f"hello {MASK} world") == [1, tok.mask_id, 2]


def test_existing_ids_never_renumbered(tmp_path):
    # a LLaDA-like layout: specials scattered at high ids, some absent from the vocab order
    vocab = {"[UNK]": 0, "a": 1, "b": 2, BOS: 40, EOS: 41, MASK: 50, EOT: 60}
    _word_level(vocab).save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({
        "chat_template": "{{ messages[0]['content'] }}", "eos_token": {"content": EOS}, "bos_token": BOS,
        "added_tokens_decoder": {"50": {"content": MASK, "special": True}},
    }))
    tok = load_tokenizer(tmp_path)
    assert (tok.bos_id, tok.eos_id, tok.mask_id, tok.eot_id) == (40, 41, 50, 60)
    assert tok.chat_template == "{{ messages[0]['content'] }}"
    assert tok.vocab_size >= 61
    tok.save(tmp_path / "again")
    back = load_tokenizer(tmp_path / "again")
    assert back.special_ids == tok.special_ids and back.vocab_size == tok.vocab_size


def test_hf_wrapper_does_not_mutate_input():
    raw = _word_level({"[UNK]": 0, "x": 1})
    HFTokenizer(raw)
    assert raw.get_vocab_size(with_added_tokens=True) == 2


def test_load_errors(tmp_path):
    with pytest.raises(RemaskError, match="nope"):
        load_tokenizer(tmp_path / "nope")
    with pytest.raises(RemaskError, match=r"no tokenizer\.json"):
        load_tokenizer(tmp_path)  # an empty directory
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(RemaskError, match=r"tokenizer\.json"):
        load_tokenizer(bad)
    (tmp_path / "tokenizer_config.json").write_text("[1, 2")
    with pytest.raises(RemaskError, match=r"tokenizer_config\.json"):
        load_tokenizer(tmp_path)
