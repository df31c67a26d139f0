"""The terminal chat driven programmatically: history as token ids, commands, live display."""

from __future__ import annotations

import io
from types import SimpleNamespace

import torch

from remask.chat import ChatSession, chat_loop, prompt_ids, trim_answer
from remask.data.template import render
from remask.data.tokenizer import ByteTokenizer
from remask.sampling import SampleConfig

TOK = ByteTokenizer()
GEN = 12


class Scripted:
    """A mock denoiser: each new prompt gets the next scripted answer, written from the first
    generated column on (argmax logits), followed by whatever the script says (EOT, EOS...)."""

    def __init__(self, answers: list[list[int]], max_seq_len: int = 512) -> None:
        self.answers = iter(answers)
        self.by_prompt: dict[int, list[int]] = {}
        self.inputs: list[torch.Tensor] = []
        self.cfg = SimpleNamespace(max_seq_len=max_seq_len, vocab_size=TOK.vocab_size, causal=False)

    def __call__(self, x: torch.Tensor, attn_mask=None) -> torch.Tensor:
        self.inputs.append(x.clone())
        P = x.shape[1] - GEN  # the canvas is the prompt, then GEN generated columns
        if P not in self.by_prompt:
            self.by_prompt[P] = next(self.answers)
        answer = self.by_prompt[P]
        logits = torch.zeros(*x.shape, TOK.vocab_size)  # (B, L, V)
        for j, t in enumerate(answer[:GEN]):
            logits[:, P + j, t] = 10.0
        return logits


def ids(text: str) -> list[int]:
    return TOK.encode(text, allow_special=True)


def turn(text: str) -> list[int]:
    return [*ids(text), TOK.eot_id]


def pad(answer: list[int]) -> list[int]:
    return (answer + [TOK.eos_id] * GEN)[:GEN]


def session(answers, system=None, max_seq_len=512):
    cfg = SampleConfig(gen_length=GEN, steps=GEN)
    return ChatSession(Scripted(answers, max_seq_len), TOK, cfg, system=system)


def test_multi_turn_history_is_rebuilt_as_ids_without_padding():
    s = session([pad(turn("Hello!")), pad(turn("4"))], system="Be brief.")
    assert s.reply("Hi there") == "Hello!"
    first = list(s.history)
    assert s.reply("2+2?") == "4"
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
            {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"}]
    assert s.messages == msgs
    assert s.history == ids(render(msgs, TOK))  # ids equal the template rendering of the conversation
    assert TOK.eos_id not in s.history and s.history.count(TOK.eot_id) == 5  # padding dropped, turn ends kept
    # The second turn's prompt was exactly the first turn's history plus the new user turn.
    second_prompt = s.model.inputs[-1][0, :-GEN].tolist()
    assert second_prompt[: len(first)] == first
    assert second_prompt == ids(render(msgs[:4], TOK, add_generation_prompt=True))


def test_answer_without_end_of_turn_is_closed_and_text_after_it_dropped():
    s = session([ids("abcdefghijkl"), pad([*turn("ok"), *ids("junk")])])
    assert s.reply("a") == "abcdefghijkl"  # filled the whole gen length: no end-of-turn generated
    assert s.history[-1] == TOK.eot_id
    assert s.reply("b") == "ok"
    assert TOK.decode(s.history).endswith("ok<|eot_id|>")
    assert trim_answer([*ids("x"), TOK.eos_id, TOK.eot_id], TOK) == (ids("x"), [TOK.eot_id])


def test_chat_loop_commands_reset_params_quit():
    s = session([pad(turn("one")), pad(turn("two"))])
    out = io.StringIO()
    lines = ["hello", "/params", "/params steps=6 temperature=0.5", "/params block_length=5", "/params nope=1",
             "/frobnicate", "/reset", "again please", "/quit", "never read"]
    turns = chat_loop(s, lines, out, live=False)
    text = out.getvalue()
    assert turns == 2
    assert "one\n" in text and "two\n" in text and "(new conversation)" in text
    assert "steps=12" in text and "steps=6 " in text and "temperature=0.5" in text
    assert s.cfg.steps == 6 and s.cfg.temperature == 0.5  # the invalid /params left the config alone
    assert "remask: error: --block-length 5 must divide --gen-length 12" in text
    assert "nope=1" in text and "unknown command /frobnicate" in text
    # After /reset only the second exchange is in the history.
    assert s.messages == [{"role": "user", "content": "again please"}, {"role": "assistant", "content": "two"}]
    assert s.history == ids(render(s.messages, TOK))


def test_chat_loop_live_display_and_context_overflow():
    s = session([pad(turn("hi"))] * 3, max_seq_len=60)
    out = io.StringIO()
    chat_loop(s, ["x", "a much longer message that cannot fit in the context any more"], out, live=True)
    text = out.getvalue()
    assert "░" in text and "\x1b[" in text and "hi\n" in text  # masked frames, redrawn in place
    assert "exceeds the model context of 60; /reset" in text  # reported, the chat goes on


def test_prompt_ids_for_generate_chat():
    p = prompt_ids(TOK, "Hi", system="S")
    assert TOK.decode(p) == ("<|startoftext|><|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|>"
                             "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
                             "<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_a_short_answer_stops_early_and_reports_the_passes_saved():
    cfg = SampleConfig(gen_length=GEN, steps=GEN, block_length=4)
    s = ChatSession(Scripted([pad(turn("hi"))]), TOK, cfg)
    assert s.reply("hello") == "hi"
    # Block 1 holds "hi<eot><eos>"; the rest is EOS, so at most one pass of block 2 is spent.
    assert s.last_n_forward <= 5 and s.last_n_forward + s.last_saved == GEN
    assert s.history[-3:] == turn("hi")
    full = ChatSession(Scripted([pad(turn("hi"))]), TOK, SampleConfig(
        gen_length=GEN, steps=GEN, block_length=4, early_stop=False))
    assert full.reply("hello") == "hi" and full.last_n_forward == GEN and full.last_saved == 0


def test_chat_and_generate_chat_commands(tmp_path, monkeypatch, capsys):
    import json

    from remask.commands import main
    from remask.config import preset_tiny
    from remask.sft import sft

    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{i}", "response": f"{i + 1}"}) + "\n" for i in range(8)))
    cfg = preset_tiny()
    cfg.train.max_steps, cfg.train.progress, cfg.train.eval_batches = 2, False, 1
    sft(data, tmp_path / "run", cfg=cfg, val_fraction=0)
    flags = ["--ckpt", str(tmp_path / "run"), "--gen-length", "8", "--steps", "8", "--block-length", "4"]
    assert main(["generate", "--chat", *flags, "--json", "3"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["prompt"] == "3" and "<|" not in res["text"] and res["n_forward"] <= 8
    monkeypatch.setattr("sys.stdin", io.StringIO("3\n/params temperature=0.7\n/quit\n"))
    assert main(["chat", *flags]) == 0
    out = capsys.readouterr().out
    assert "temperature=0.7" in out and out.startswith("commands:")


class ScriptedAR(torch.nn.Module):
    """A mock causal model: after a prompt of P tokens, the next token is ``answer[T - P]``."""

    def __init__(self, answer: list[int]) -> None:
        super().__init__()
        self.answer, self.prompt_len = answer, None
        self.w = torch.nn.Parameter(torch.zeros(1))  # gives the decoder a device
        self.cfg = SimpleNamespace(max_seq_len=512, vocab_size=TOK.vocab_size, causal=True)

    def forward(self, x: torch.Tensor, attn_mask=None) -> torch.Tensor:
        T = x.shape[1]
        self.prompt_len = self.prompt_len or T  # the first call sees the prompt alone
        logits = torch.zeros(*x.shape, TOK.vocab_size)  # (B, T, V)
        i = T - self.prompt_len
        logits[:, -1, self.answer[i] if i < len(self.answer) else TOK.eos_id] = 10.0
        return logits


def test_ar_chat_streams_token_by_token_and_stops_at_the_end_of_turn():
    from remask.sampling.ar import ARSampleConfig

    answer = turn("ok!")  # 3 characters and EOT, then EOS
    s = ChatSession(ScriptedAR(answer), TOK, ARSampleConfig(gen_length=GEN, kv_cache=False))
    frames = []
    assert s.reply("hi", frames.append) == "ok!"
    P = len(s.history) - len(answer)  # the prompt; history = prompt + answer (EOS padding dropped)
    assert s.history[P:] == answer
    # one frame per token until every row has ended (EOS after EOT), each one token longer
    assert len(frames) == len(answer) + 1 and s.last_n_forward == len(answer) + 1
    assert s.last_saved == GEN - len(answer) - 1
    for k, f in enumerate(frames):
        row = f.canvas[0, P:].tolist()
        rest = {TOK.eos_id} if k == len(frames) - 1 else {TOK.mask_id}  # early stop pads the end with EOS
        assert row[:k + 1] == [*answer, TOK.eos_id][:k + 1] and set(row[k + 1:]) <= rest
