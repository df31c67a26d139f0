"""SFT data: the chat template, record validation, tokenisation, keyed bucketed batches, the SFT loss."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_model_config
from remask.data.sft import SFTBatches, collate, read_records, split_val, tokenize, tokenize_records
from remask.data.template import DEFAULT_TEMPLATE, render, segments
from remask.data.tokenizer import ByteTokenizer, load_tokenizer
from remask.errors import RemaskError
from remask.model import build_model
from remask.objectives import sft_loss
from remask.rng import keyed_uniform

CONV = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"}]


def test_default_template_is_lladas_layout_and_round_trips(tmp_path):
    tok = ByteTokenizer()
    text = render([{"role": "user", "content": "What is 2+2?"}], tok, add_generation_prompt=True)
    assert text == ("<|startoftext|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
                    "<|start_header_id|>assistant<|end_header_id|>\n\n")
    ids = tok.encode(text, allow_special=True)
    assert ids[:2] == [tok.bos_id, tok.special_ids["<|start_header_id|>"]] and tok.eot_id in ids
    assert tok.decode(ids) == text  # specials parse to their reserved ids and back
    # Stored with the tokenizer, a custom template survives save/load and renders the same.
    tok.chat_template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}{{ eot_token }}{% endfor %}"
    tok.save(tmp_path)
    back = load_tokenizer(tmp_path)
    assert back.chat_template == tok.chat_template
    assert render(CONV, back) == render(CONV, tok) == ("[system] Be brief.<|eot_id|>[user] Hi there<|eot_id|>"
                                                       "[assistant] Hello!<|eot_id|>[user] 2+2?<|eot_id|>"
                                                       "[assistant] 4<|eot_id|>")


def test_segments_cover_the_conversation_and_answers_are_the_assistant_turns():
    tok = ByteTokenizer()
    segs = segments(CONV, tok)
    assert "".join(t for t, _ in segs) == render(CONV, tok)
    assert [t for t, a in segs if a] == ["Hello!<|eot_id|>", "4<|eot_id|>"]
    assert segs[2][0] == "<|start_header_id|>user<|end_header_id|>\n\n2+2?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"


def test_template_that_rewrites_history_is_rejected():
    tok = ByteTokenizer(chat_template="{{ messages | length }}{% for m in messages %}{{ m['content'] }}{% endfor %}")
    with pytest.raises(RemaskError, match="prefix-stable"):
        segments(CONV, tok)
    with pytest.raises(RemaskError, match="does not parse"):
        render(CONV, ByteTokenizer(chat_template="{% for m in messages %}"))


def test_tokenize_supervises_every_assistant_turn_or_splits_into_pairs():
    tok = ByteTokenizer()
    (ex,) = tokenize(CONV, tok)
    assert tok.decode(ex.ids) == render(CONV, tok) + "<|endoftext|>"
    answer = ex.ids[~ex.prompt]
    assert tok.decode(answer) == "Hello!<|eot_id|>4<|eot_id|><|endoftext|>"
    pairs = tokenize(CONV, tok, split_turns=True)
    assert len(pairs) == 2
    assert tok.decode(pairs[0].ids[~pairs[0].prompt]) == "Hello!<|eot_id|><|endoftext|>"
    # The second pair holds the first answer in its (unsupervised) prompt.
    assert tok.decode(pairs[1].ids[pairs[1].prompt]).endswith("Hello!<|eot_id|><|start_header_id|>user<|end_header_id|>"
                                                              "\n\n2+2?<|eot_id|><|start_header_id|>assistant"
                                                              "<|end_header_id|>\n\n")
    assert tok.decode(pairs[1].ids[~pairs[1].prompt]) == "4<|eot_id|><|endoftext|>"
    assert np.array_equal(pairs[1].ids, ex.ids)  # same tokens, only the supervision differs


BAD = [
    ("{not json", "not valid JSON"),
    ('["a list"]', "expected a JSON object"),
    ('{"messages": [{"content": "hi"}, {"role": "assistant", "content": "x"}]}', "messages[0] has no 'role'"),
    ('{"messages": [{"role": "bot", "content": "hi"}]}', "role 'bot'"),
    ('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}]}', "empty content"),
    ('{"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "x"}]}', "must be a string"),
    ('{"messages": [{"role": "user", "content": "hi"}]}', "end with an assistant"),
    ('{"messages": "hi"}', "non-empty list"),
    ('{"prompt": "hi"}', "missing 'response'"),
    ('{"prompt": "hi", "response": 5}', "'response' must be a non-empty string"),
    ('{"text": "hi"}', "expected {'messages'"),
]


@pytest.mark.parametrize("line,why", BAD)
def test_bad_records_name_file_and_line(tmp_path, line, why):
    f = tmp_path / "d.jsonl"
    good = json.dumps({"prompt": "a", "response": "b"})
    f.write_text(f"{good}\n\n{line}\n{good}\n")
    with pytest.raises(RemaskError) as e:
        read_records(f)
    assert f"{f}:3: " in str(e.value) and why in str(e.value) and "--skip-bad" in str(e.value)
    records, skipped = read_records(f, skip_bad=True)
    assert skipped == 1 and [r.where for r in records] == [f"{f}:1", f"{f}:4"]


def test_records_in_both_formats_and_too_long_examples(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text(json.dumps({"system": "s", "prompt": "p", "response": "r"}) + "\n"
                 + json.dumps({"messages": CONV}) + "\n")
    (a, b), _ = read_records(tmp_path)  # a directory of .jsonl works too
    assert a.messages == [{"role": "system", "content": "s"}, {"role": "user", "content": "p"},
                          {"role": "assistant", "content": "r"}]
    assert b.messages == CONV
    tok = ByteTokenizer()
    n_long = len(tokenize(CONV, tok)[0].ids)
    with pytest.raises(RemaskError, match=rf"d.jsonl:2: {n_long} tokens, longer than --seq-len"):
        tokenize_records([a, b], tok, seq_len=n_long - 1)
    kept, skipped = tokenize_records([a, b], tok, seq_len=n_long - 1, skip_bad=True)
    assert len(kept) == 1 and skipped == 1


def _examples(n: int, seed: int = 0):
    tok = ByteTokenizer()
    rng = np.random.default_rng(seed)
    convs = [[{"role": "user", "content": "q" * int(rng.integers(1, 30))},
              {"role": "assistant", "content": "a" * int(rng.integers(1, 30))}] for _ in range(n)]
    return tok, [e for c in convs for e in tokenize(c, tok)]


def test_batches_are_keyed_padded_with_eos_and_split_independent():
    tok, exs = _examples(60)
    src = SFTBatches(exs, [], batch_size=8, seed=3, eos_id=tok.eos_id, n_buckets=4)
    whole = src.train_batch(5, np.arange(40, 48))
    halves = [src.train_batch(5, np.arange(40, 44)), src.train_batch(5, np.arange(44, 48))]
    assert torch.equal(whole.tokens, torch.cat([h.tokens for h in halves]))  # micro-batching changes nothing
    assert torch.equal(whole.prompt_mask, torch.cat([h.prompt_mask for h in halves]))
    again = SFTBatches(exs, [], batch_size=8, seed=3, eos_id=tok.eos_id, n_buckets=4).train_batch(5, np.arange(40, 48))
    assert torch.equal(whole.tokens, again.tokens)
    assert whole.tokens.shape[1] == src.step_length(5) == max(len(e.ids) for e in _rows(src, whole))
    for row, p in zip(whole.tokens, whole.prompt_mask):
        n = int(p.sum())
        assert p[:n].all() and not p[n:].any()  # single-turn: prompt first, then answer + padding
        ends = (row == tok.eos_id).nonzero().flatten()
        assert ends.numel() >= 1 and torch.all(row[int(ends[0]):] == tok.eos_id)  # EOS right-padding


def _rows(src, batch):
    out = []
    for row in batch.tokens.tolist():
        out.append(next(e for e in src.train if row[: len(e.ids)] == e.ids.tolist()))
    return out


def test_bucketing_lowers_the_padding_fraction():
    tok, exs = _examples(200)
    bucketed = SFTBatches(exs, [], batch_size=16, seed=0, eos_id=tok.eos_id, n_buckets=8).padding_fraction(50)
    flat = SFTBatches(exs, [], batch_size=16, seed=0, eos_id=tok.eos_id, n_buckets=1).padding_fraction(50)
    assert 0 <= bucketed < flat / 3 and flat > 0.2
    # Every example can still be drawn: over many steps the draws cover the whole set.
    src = SFTBatches(exs, [], batch_size=16, seed=0, eos_id=tok.eos_id, n_buckets=8)
    seen = {k for s in range(300) for k in src._example_ids(s, range(s * 16, (s + 1) * 16))}
    assert len(seen) == len(exs)


def test_val_split_is_fixed_and_disjoint():
    _, exs = _examples(40)
    tr, va = split_val(exs, 0.25, seed=1)
    _, va2 = split_val(exs, 0.25, seed=1)
    assert len(va) == 10 and len(tr) == 30 and [id(e) for e in va] == [id(e) for e in va2]
    assert not {id(e) for e in tr} & {id(e) for e in va}


class Recorder(torch.nn.Module):
    """Uniform logits; remembers every input it saw."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab, self.seen = vocab, []

    def forward(self, x, attn_mask=None):
        self.seen.append(x.clone())
        return torch.zeros(*x.shape, self.vocab)


def test_prompt_never_masked_but_padding_is_over_many_draws():
    tok, exs = _examples(30)
    src = SFTBatches(exs, [], batch_size=8, seed=0, eos_id=tok.eos_id, n_buckets=1)
    model = Recorder(tok.vocab_size)
    padding_masked = 0
    for step in range(100):
        idx = np.arange(step * 8, (step + 1) * 8)
        batch = src.train_batch(step, idx)
        sft_loss(model, batch, keyed_uniform(0, step, idx, 1 + batch.tokens.shape[1]), mask_id=tok.mask_id)
        xt = model.seen[-1]
        assert torch.equal(xt[batch.prompt_mask], batch.tokens[batch.prompt_mask])  # prompt intact
        masked = xt == tok.mask_id
        assert not masked[batch.prompt_mask].any()
        padding_masked += int((masked & (batch.tokens == tok.eos_id)).sum())
    assert padding_masked > 100  # EOS padding is part of the answer: it gets masked and predicted


def test_sft_loss_matches_a_hand_computation_with_padding():
    tok = ByteTokenizer()
    model = build_model(tiny_model_config(vocab_size=tok.vocab_size, mask_token_id=tok.mask_id,
                                          eos_token_id=tok.eos_id), seed=2)
    short = tokenize([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], tok)[0]
    long = tokenize([{"role": "user", "content": "hey"}, {"role": "assistant", "content": "hello there"}], tok)[0]
    batch = collate([short, long], tok.eos_id)
    L = len(long.ids)
    assert batch.tokens.shape == (2, L) and (batch.tokens[0, len(short.ids):] == tok.eos_id).all()
    noise = keyed_uniform(11, 0, np.arange(2), 1 + L)
    got = sft_loss(model, batch, noise, mask_id=tok.mask_id, eps=1e-3).sum() / 2  # the loop: sum / global batch
    total = 0.0
    for b, ex in enumerate((short, long)):
        n_prompt = int(ex.prompt.sum())  # single-turn: the prompt comes first
        answer_len = L - n_prompt  # padding included (LLaDA)
        p = (1 - 1e-3) * noise[b, 0].item() + 1e-3
        masked = [i for i in range(n_prompt, L) if noise[b, 1 + i].item() < p]
        assert masked, "this seed masks something in each row"
        xt = batch.tokens[b].clone()
        xt[masked] = tok.mask_id
        logp = F.log_softmax(model(xt[None])[0].float(), -1)
        total += sum(-logp[i, batch.tokens[b, i]].item() / p for i in masked) / answer_len
    assert abs(got.item() - total / 2) < 1e-4


def test_default_template_constant_is_what_tokenizers_without_one_use():
    tok = ByteTokenizer()
    assert render(CONV, tok) == render(CONV, tok, template=DEFAULT_TEMPLATE)
