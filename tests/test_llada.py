"""LLaDA-8B directories (the Hugging Face layout) behind every --ckpt, and `remask export`.

Tiny random checkpoints are written here in exactly that layout (config.json of model_type "llada",
two bf16 shards with their index, a byte-level tokenizer.json whose specials have LLaDA's names, a
tokenizer_config.json with a template that behaves like LLaDA-8B-Instruct's). The logits are
checked against a forward pass written below from the formulas of the format alone.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

from remask.chat import ChatSession, prompt_ids
from remask.checkpoint import export_checkpoint, load_checkpoint, read_config, save_checkpoint
from remask.commands import main
from remask.config import ModelConfig, RunConfig
from remask.data.template import render, segments
from remask.data.tokenizer import LLADA_TEMPLATE, ByteTokenizer, load_tokenizer
from remask.errors import RemaskError
from remask.model import build_model
from remask.sampling.config import SAMPLER_PRESETS, SampleConfig, sampler_config
from remask.sampling.decode import decode
from remask.sampling.rules import RULES

D, LAYERS, HEADS, FFN, ROWS = 64, 2, 4, 192, 320  # ROWS: embedding rows; the tokenizer has 314 ids, as LLaDA pads
SPECIAL = {300: "<|startoftext|>", 301: "<|endoftext|>", 310: "<|mdm_mask|>", 311: "<|start_header_id|>",
           312: "<|end_header_id|>", 313: "<|eot_id|>"}
# Behaves as LLaDA-8B-Instruct's published template: BOS before the first message, trimmed contents,
# and the assistant header written whether or not a generation prompt is asked for.
PUBLISHED_TEMPLATE = (
    "{% for m in messages %}{% set text = '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + "
    "m['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set text = bos_token + text %}{% endif %}"
    "{{ text }}{% endfor %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
)
CONFIG = {
    "model_type": "llada", "architectures": ["LLaDAModelLM"], "d_model": D, "n_layers": LAYERS, "n_heads": HEADS,
    "n_kv_heads": HEADS, "mlp_hidden_size": FFN, "vocab_size": ROWS, "embedding_size": ROWS, "rope_theta": 500000.0,
    "rms_norm_eps": 1e-5, "max_sequence_length": 128, "mask_token_id": 310, "eos_token_id": 301, "pad_token_id": 301,
    "weight_tying": False, "include_bias": False, "include_qkv_bias": False, "attention_layer_norm": False,
    "block_type": "llama", "activation_type": "silu", "layer_norm_type": "rms", "scale_logits": False,
    "input_emb_norm": False, "alibi": False, "rope": True,
}


def block_shapes(d: int = D, ffn: int = FFN) -> dict[str, tuple[int, ...]]:
    return {"attn_norm": (d,), "q_proj": (d, d), "k_proj": (d, d), "v_proj": (d, d), "attn_out": (d, d),
            "ff_norm": (d,), "ff_proj": (ffn, d), "up_proj": (ffn, d), "ff_out": (d, ffn)}


# LLaDA name -> remask name, written out independently of remask.llada
OURS = {"attn_norm": "attn_norm", "q_proj": "attn.q_proj", "k_proj": "attn.k_proj", "v_proj": "attn.v_proj",
        "attn_out": "attn.o_proj", "ff_norm": "mlp_norm", "ff_proj": "mlp.gate_proj", "up_proj": "mlp.up_proj",
        "ff_out": "mlp.down_proj"}
T = "model.transformer."


def llada_weights(seed: int = 0, d: int = D, ffn: int = FFN, rows: int = ROWS) -> dict[str, torch.Tensor]:
    """Random bf16 weights under LLaDA's names; norm gains near 1 and large enough projections that
    a wrong mapping changes the logits by O(1)."""
    g = torch.Generator().manual_seed(seed)
    w = {T + "wte.weight": torch.randn(rows, d, generator=g), T + "ln_f.weight": 1 + 0.1 * torch.randn(d, generator=g),
         T + "ff_out.weight": 0.2 * torch.randn(rows, d, generator=g)}
    for i in range(LAYERS):
        for name, shape in block_shapes(d, ffn).items():
            w[f"{T}blocks.{i}.{name}.weight"] = (1 + 0.1 * torch.randn(shape, generator=g) if len(shape) == 1
                                                 else 0.25 * torch.randn(shape, generator=g))
    return {k: v.to(torch.bfloat16) for k, v in w.items()}


def tokenizer_files(d: Path, template: str = PUBLISHED_TEMPLATE) -> None:
    """A byte-level BPE (no merges) with reserved fillers and LLaDA's special strings at ids 300..313."""
    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab.update({SPECIAL.get(i, f"<|reserved_token_{i - 256}|>"): i for i in range(256, 314)})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(n, special=True, normalized=False) for n, i in vocab.items() if i >= 256])
    tok.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps({
        "add_bos_token": False, "add_eos_token": False, "bos_token": SPECIAL[300], "eos_token": SPECIAL[301],
        "pad_token": SPECIAL[301], "chat_template": template, "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": {str(i): {"content": n, "special": True} for i, n in SPECIAL.items()}}))


def write_llada(d: Path, weights: dict[str, torch.Tensor] | None = None, *, n_shards: int = 2, **config) -> Path:
    """A LLaDA directory: config.json, ``n_shards`` shards with their index, the tokenizer files."""
    d.mkdir(parents=True, exist_ok=True)
    weights = llada_weights() if weights is None else weights
    names = list(weights)
    weight_map = {}
    for s in range(n_shards):
        fname = f"model-{s + 1:05d}-of-{n_shards:05d}.safetensors"
        part = names[s::n_shards]  # interleaved, so every block spans both shards
        save_file({n: weights[n] for n in part}, str(d / fname), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, fname))
    total = sum(t.numel() * t.element_size() for t in weights.values())
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    (d / "config.json").write_text(json.dumps({**CONFIG, **config}))
    tokenizer_files(d)
    return d


@pytest.fixture(scope="module")
def llada_dir(tmp_path_factory) -> Path:
    return write_llada(tmp_path_factory.mktemp("llada") / "LLaDA-tiny")


# ----------------------------------------------------------------------------- the forward pass

def reference_logits(w: dict[str, torch.Tensor], ids: torch.Tensor) -> torch.Tensor:
    """LLaDA's forward from the format's formulas, in the weights' dtype: pre-norm blocks; RMSNorm in
    float32, cast back before the gain; rotate-half rotary embeddings in float32 at 0..T-1;
    bidirectional softmax attention scaled by 1/sqrt(head_dim); ff_out(silu(ff_proj h) * up_proj h)."""
    hd, eps, theta = D // HEADS, CONFIG["rms_norm_eps"], CONFIG["rope_theta"]
    B, L = ids.shape

    def rms(x, gain):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * gain

    inv_freq = 1.0 / theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd)
    angle = torch.arange(L, dtype=torch.float32)[:, None] * inv_freq[None]  # (L, hd/2)
    cos, sin = torch.cat([angle, angle], -1).cos(), torch.cat([angle, angle], -1).sin()  # (L, hd)

    def rope(x):  # (B, H, L, hd)
        xf = x.float()
        half = torch.cat([-xf[..., hd // 2:], xf[..., :hd // 2]], -1)
        return (xf * cos + half * sin).to(x.dtype)

    def heads(t):
        return t.view(B, L, HEADS, hd).transpose(1, 2)  # (B, H, L, hd)

    x = w[T + "wte.weight"][ids]  # (B, L, D)
    for i in range(LAYERS):
        def p(name: str, i: int = i) -> torch.Tensor:
            return w[f"{T}blocks.{i}.{name}.weight"]

        h = rms(x, p("attn_norm"))
        q, k, v = rope(heads(h @ p("q_proj").T)), rope(heads(h @ p("k_proj").T)), heads(h @ p("v_proj").T)
        att = ((q.float() @ k.float().transpose(-1, -2)) / math.sqrt(hd)).softmax(-1)  # (B, H, L, L)
        y = (att @ v.float()).to(x.dtype).transpose(1, 2).reshape(B, L, D)
        x = x + y @ p("attn_out").T
        h = rms(x, p("ff_norm"))
        x = x + (F.silu(h @ p("ff_proj").T) * (h @ p("up_proj").T)) @ p("ff_out").T
    return rms(x, w[T + "ln_f.weight"]) @ w[T + "ff_out.weight"].T  # (B, L, ROWS)


IDS = torch.tensor([[300, 311, 117, 115, 101, 114, 312, 72, 105, 310, 310, 310, 313],
                    [300, 311, 72, 310, 33, 310, 310, 310, 310, 310, 310, 301, 301]])


def test_logits_match_the_formulas_in_float32(llada_dir):
    model = load_checkpoint(llada_dir, "cpu").model  # float32 on the CPU by default
    assert next(model.parameters()).dtype == torch.float32
    w = {k: v.float() for k, v in llada_weights().items()}
    with torch.no_grad():
        got, want = model(IDS), reference_logits(w, IDS)
    assert want.std() > 1  # a wrong mapping would show
    torch.testing.assert_close(got, want, atol=2e-4, rtol=1e-4)


def test_logits_match_the_formulas_in_bfloat16(llada_dir):
    model = load_checkpoint(llada_dir, "cpu", dtype=torch.bfloat16).model
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    with torch.no_grad():
        got, want = model(IDS).float(), reference_logits(llada_weights(), IDS).float()
    # bf16 rounds differently along two computation orders; a mapping error would be O(logit std) ~ 3
    assert (got - want).abs().max() < 0.25 and (got - want).abs().mean() < 0.03
    assert (got.argmax(-1) == want.argmax(-1)).float().mean() > 0.9


def test_left_padding_with_the_attention_mask_equals_the_unpadded_rows(llada_dir):
    model = load_checkpoint(llada_dir, "cpu").model
    short = IDS[1, :7]
    padded = torch.cat([torch.full((5,), 301), short])[None]  # 5 EOS pads on the left
    mask = torch.cat([torch.zeros(5, dtype=torch.bool), torch.ones(7, dtype=torch.bool)])[None]
    with torch.no_grad():
        alone, with_pad = model(short[None]), model(padded, attn_mask=mask)
    torch.testing.assert_close(with_pad[:, 5:], alone, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- sampling, chat, CLI

def as_remask_checkpoint(d: Path, weights: dict[str, torch.Tensor]) -> Path:
    """The same weights as a remask checkpoint, mapped by this test's own name table."""
    cfg = ModelConfig(vocab_size=ROWS, d_model=D, n_layer=LAYERS, n_head=HEADS, ffn_hidden=FFN, max_seq_len=128,
                      rope_theta=500000.0, mask_token_id=310, eos_token_id=301)
    state = {"embed.weight": weights[T + "wte.weight"], "norm.weight": weights[T + "ln_f.weight"],
             "lm_head.weight": weights[T + "ff_out.weight"]}
    for i in range(LAYERS):
        state.update({f"blocks.{i}.{OURS[n]}.weight": weights[f"{T}blocks.{i}.{n}.weight"] for n in OURS})
    model = build_model(cfg)
    model.load_state_dict({k: v.float() for k, v in state.items()})
    tok_dir = d.parent / "tok"
    tok_dir.mkdir(exist_ok=True)
    tokenizer_files(tok_dir)
    return save_checkpoint(d, model, RunConfig(model=cfg), load_tokenizer(tok_dir))


def test_same_tokens_as_a_remask_checkpoint_with_every_rule_and_cache(llada_dir, tmp_path):
    ours = load_checkpoint(as_remask_checkpoint(tmp_path / "remask", llada_weights()))
    theirs = load_checkpoint(llada_dir)
    assert ours.kind == "remask" and theirs.kind == "llada"
    tok = theirs.tokenizer
    prompts = [prompt_ids(tok, "Hi there"), prompt_ids(tok, "2+2?")]  # different lengths: left padding
    for rule in RULES:
        for cache in ("none", "prefix", "dual"):
            cfg = SampleConfig(gen_length=16, steps=8, block_length=8, remasking=rule, cache=cache, early_stop=False)
            a = decode(ours.model, prompts, cfg, mask_id=tok.mask_id, eos_id=tok.eos_id, eot_id=tok.eot_id)
            b = decode(theirs.model, prompts, cfg, mask_id=tok.mask_id, eos_id=tok.eos_id, eot_id=tok.eot_id)
            assert torch.equal(a.tokens, b.tokens), (rule, cache)
            assert not (b.tokens == tok.mask_id).any()


def test_the_published_template_renders_llada_layout_and_can_hold_a_history(llada_dir):
    tok = load_tokenizer(llada_dir)
    assert (tok.bos_id, tok.eos_id, tok.mask_id, tok.eot_id, tok.vocab_size) == (300, 301, 310, 313, ROWS)
    assert tok.chat_template == LLADA_TEMPLATE  # the header-always template, made conditional
    user = [{"role": "user", "content": "What is 2 + 2?"}]
    text = render(user, tok, add_generation_prompt=True)
    assert text == ("<|startoftext|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2 + 2?<|eot_id|>"
                    "<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert text == render(user, tok, add_generation_prompt=True, template=PUBLISHED_TEMPLATE)
    chat = [*user, {"role": "assistant", "content": "4"}, {"role": "user", "content": "and 3 + 3?"},
            {"role": "assistant", "content": "6"}]
    assert [t for t, answer in segments(chat, tok) if answer] == ["4<|eot_id|>", "6<|eot_id|>"]  # no header supervised
    ids = tok.encode(text)
    assert ids[:2] == [300, 311] and ids[-3:] == [312, 198, 198]  # no BOS added by encode; "\n" is byte 10 -> 198


def test_a_conditional_template_is_kept(tmp_path):
    tokenizer_files(tmp_path, template="{% for m in messages %}{{ m['content'] }}{% endfor %}"
                                       "{% if add_generation_prompt %}>{% endif %}")
    assert load_tokenizer(tmp_path).chat_template.endswith("{% if add_generation_prompt %}>{% endif %}")


def test_chat_session_and_the_cli_on_a_llada_directory(llada_dir, capsys):
    ck = load_checkpoint(llada_dir)
    session = ChatSession(ck.model, ck.tokenizer, SampleConfig(gen_length=8, steps=8))
    session.reply("Hi")
    session.reply("Again")
    assert session.history[:2] == [300, 311] and session.history.count(313) == 4  # two turns each, closed
    assert main(["generate", "--ckpt", str(llada_dir), "--chat", "Hi", "--gen-length", "8", "--device", "cpu",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["n_forward"] >= 1
    assert main(["infill", "--ckpt", str(llada_dir), "a <mask:3> b", "--device", "cpu", "--json"]) == 0


def test_eval_and_the_lm_eval_adapter_on_a_llada_directory(llada_dir, tmp_path, capsys):
    (tmp_path / "t.txt").write_text("the quick brown fox jumps over the lazy dog\n")
    assert main(["eval", "perplexity", "--ckpt", str(llada_dir), "--data", str(tmp_path / "t.txt"), "--mc-num", "4",
                 "--batch-size", "4", "--device", "cpu", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["window"] == CONFIG["max_sequence_length"]  # the model's context
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance

    from remask.integrations.lm_eval import RemaskLM

    lm = RemaskLM(ckpt=str(llada_dir), device="cpu", mc_num=2)
    (logp, _), = lm.loglikelihood([Instance("loglikelihood", {}, ("The sky is", " blue"), 0)])
    assert logp < 0


def test_instruct_sampling_is_a_valid_sampler_setting():
    cfg, ignored = sampler_config({**SAMPLER_PRESETS["llada-instruct"], "gen_length": 128}, causal=False)
    assert not ignored and (cfg.block_length, cfg.remasking, cfg.confidence_eos_eot_inf, cfg.steps) == (
        32, "low_confidence", True, 128)


def test_sft_fine_tunes_a_llada_directory(llada_dir, tmp_path):
    from remask.config import preset_tiny
    from remask.sft import sft

    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{a}+{a}=", "response": str(2 * a)}) + "\n" for a in range(12)))
    cfg = preset_tiny()
    for k, v in {"max_steps": 2, "batch_size": 4, "micro_batch_size": 4, "seq_len": 48, "eval_batches": 1,
                 "eval_mc": 1, "progress": False}.items():
        setattr(cfg.train, k, v)
    assert read_config(llada_dir).model.vocab_size == ROWS
    res = sft(data, tmp_path / "tuned", cfg=cfg, init_from=llada_dir, val_fraction=0.2)
    tuned = load_checkpoint(res.train.checkpoint)
    assert tuned.kind == "remask" and tuned.config.model.vocab_size == ROWS and tuned.tokenizer.eot_id == 313
    assert tuned.tokenizer.chat_template == LLADA_TEMPLATE


# ----------------------------------------------------------------------------- export

def _state(model) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items()}


@pytest.mark.parametrize("causal", [False, True])
def test_export_then_load_is_bit_exact(tmp_path, causal):
    cfg = ModelConfig(vocab_size=264, d_model=32, n_layer=2, n_head=4, n_kv_head=2, max_seq_len=64, causal=causal,
                      tie_embeddings=causal, rope_theta=1234.0, norm_eps=1e-6, mask_token_id=256, eos_token_id=257)
    src = save_checkpoint(tmp_path / "run", build_model(cfg, seed=1), RunConfig(model=cfg), ByteTokenizer())
    out = export_checkpoint(src, tmp_path / "hf", shard_size=20_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) >= 2 and (out / "tokenizer.json").is_file()
    meta = json.loads((out / "config.json").read_text())
    assert meta["model_type"] == "llada" and meta["remask_causal"] is causal and meta["weight_tying"] is causal
    a, b = load_checkpoint(src), load_checkpoint(out)
    assert b.kind == "llada" and b.config.model == a.config.model  # causal and tying restored
    for k, v in _state(a.model).items():
        assert torch.equal(v, _state(b.model)[k]), k
    text = "".join(map(chr, range(128))) + "héllo <|mdm_mask|> wörld ✓ 🙂\n"  # every ASCII byte, multi-byte ones
    assert b.tokenizer.encode(text) == a.tokenizer.encode(text)
    assert b.tokenizer.encode_array(text).tolist() == a.tokenizer.encode_array(text).tolist()
    chat = [{"role": "user", "content": "hi"}]
    assert render(chat, b.tokenizer, add_generation_prompt=True) == render(chat, a.tokenizer, add_generation_prompt=True)


def test_export_keeps_a_bpe_tokenizer_and_its_roles(tmp_path):
    from remask.data.tokenizer import train_bpe

    tok = train_bpe(["the quick brown fox jumps over the lazy dog " * 20], 300)
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{{ eot_token }}{% endfor %}"
    cfg = ModelConfig(vocab_size=tok.vocab_size, d_model=32, n_layer=1, n_head=4, mask_token_id=tok.mask_id,
                      eos_token_id=tok.eos_id)
    src = save_checkpoint(tmp_path / "run", build_model(cfg, seed=0), RunConfig(model=cfg), tok)
    back = load_checkpoint(export_checkpoint(src, tmp_path / "hf")).tokenizer
    assert back.special_tokens == tok.special_tokens and back.special_ids == tok.special_ids
    assert back.encode("the lazy fox<|eot_id|>") == tok.encode("the lazy fox<|eot_id|>")
    chat = [{"role": "user", "content": "hi"}]
    assert render(chat, back) == render(chat, tok) == "hi<|eot_id|>"  # the template names the token literally
    assert '"<|eot_id|>"' in back.chat_template


def test_export_of_a_llada_directory_and_the_cli(llada_dir, tmp_path, capsys):
    assert main(["export", "--ckpt", str(llada_dir), "--out", str(tmp_path / "re"), "--shard-size", "30KB",
                 "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert len(res["shards"]) > 2 and res["causal"] is False
    a, b = load_checkpoint(llada_dir, dtype="stored"), load_checkpoint(tmp_path / "re", dtype="stored")
    assert all(torch.equal(v, _state(b.model)[k]) for k, v in _state(a.model).items())
    assert {p.dtype for p in b.model.parameters()} == {torch.bfloat16}
    assert b.tokenizer.chat_template.startswith("{% for message in messages %}")
    assert main(["export", "--ckpt", str(llada_dir), "--out", str(tmp_path / "re")]) == 2  # exists: refused
    assert "--overwrite" in capsys.readouterr().err
    assert main(["export", "--ckpt", str(llada_dir), "--out", str(llada_dir)]) == 2


# ----------------------------------------------------------------------------- memory and errors

MEASURE = textwrap.dedent("""
    import gc, json, sys, torch
    from remask.checkpoint import load_checkpoint
    from remask.config import ModelConfig
    from remask.data.tokenizer import load_tokenizer
    from remask.model import Transformer

    def status(key):
        return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(key + ":"))

    load_tokenizer(sys.argv[1])  # imports and one-off costs outside the measurement: the tokenizer,
    with torch.device("meta"):   # and torch's meta-device machinery (~800 modules, ~70 MB, once)
        Transformer(ModelConfig())
    for dtype in sys.argv[2:]:
        gc.collect()
        base = status("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # restart the peak (VmHWM) from the current size
        model = load_checkpoint(sys.argv[1], "cpu", dtype=getattr(torch, dtype)).model
        for p in model.parameters():  # read every weight, so the pages of a memory-mapped one count too
            for chunk in p.detach().view(-1).split(1 << 16):
                chunk.sum()
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        print(json.dumps({"dtype": dtype, "peak": status("VmHWM") - base, "weights": weights}))
        del model, p, chunk  # nothing of this load may stay for the next one
""")


@pytest.mark.slow  # a fresh Python process: ~5 s of imports
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_peak_host_memory_stays_near_the_weights(tmp_path):
    d, ffn, rows = 512, 1536, 16384  # 90 MiB in float32, 45 MiB as stored (bf16), three shards
    big = write_llada(tmp_path / "big", llada_weights(0, d, ffn, rows), n_shards=3, d_model=d, mlp_hidden_size=ffn,
                      vocab_size=rows, embedding_size=rows)
    # float32: converted copies of the bf16 shards; bfloat16: views of the memory-mapped shards
    out = subprocess.run([sys.executable, "-c", MEASURE, str(big), "float32", "bfloat16"], capture_output=True,
                         text=True, check=True)
    for res in map(json.loads, out.stdout.splitlines()):
        print(f"{res['dtype']}: peak {res['peak'] / 2**20:.1f} MiB for {res['weights'] / 2**20:.1f} MiB of weights "
              f"({res['peak'] / res['weights']:.3f}x)")
        assert res["weights"] > 40 * 2**20 and res["peak"] <= 1.1 * res["weights"], res


def _error(fn) -> str:
    with pytest.raises(RemaskError) as e:
        fn()
    assert "\n" not in str(e.value)
    return str(e.value)


def test_bad_llada_directories_give_one_line_errors(tmp_path):
    w = llada_weights()
    d = write_llada(tmp_path / "shard")
    (d / "model-00002-of-00002.safetensors").unlink()
    assert "shard 'model-00002-of-00002.safetensors'" in _error(lambda: load_checkpoint(d))
    bad = {**w, T + "blocks.1.k_proj.weight": torch.zeros(D, D + 2, dtype=torch.bfloat16)}
    msg = _error(lambda: load_checkpoint(write_llada(tmp_path / "shape", bad)))
    assert "blocks.1.k_proj.weight" in msg and "(64, 66)" in msg and "(64, 64)" in msg
    assert "model_type 'llama'" in _error(lambda: load_checkpoint(write_llada(tmp_path / "llama", model_type="llama")))
    assert "alibi: true" in _error(lambda: read_config(write_llada(tmp_path / "alibi", alibi=True)))
    assert "has no weight" in _error(lambda: load_checkpoint(write_llada(
        tmp_path / "lacks", {k: v for k, v in w.items() if "blocks.0.q_proj" not in k})))
    assert "blocks.1" in _error(lambda: load_checkpoint(write_llada(tmp_path / "layers", n_layers=1)))
    assert "tokenizer" in _error(lambda: load_checkpoint(write_llada(tmp_path / "tok", mask_token_id=309)))
    assert "embedding_size" in _error(lambda: read_config(write_llada(tmp_path / "rows", embedding_size=300)))


@pytest.mark.parametrize("key,value", [("include_bias", True), ("include_qkv_bias", True), ("scale_logits", True),
                                       ("input_emb_norm", True), ("attention_layer_norm", True), ("rope", False),
                                       ("block_type", "sequential"), ("layer_norm_type", "default"),
                                       ("activation_type", "swiglu")])
def test_settings_remask_does_not_implement_are_refused(key, value):
    from remask.llada import model_config

    assert f"{key}: {json.dumps(value)}" in _error(lambda: model_config({**CONFIG, key: value}, Path("config.json")))


def test_a_wrong_shape_in_a_remask_checkpoint_is_one_line_not_a_traceback(tmp_path, capsys):
    from safetensors.torch import load_file

    cfg = ModelConfig(vocab_size=264, d_model=32, n_layer=2, n_head=4, max_seq_len=64, mask_token_id=256,
                      eos_token_id=257)
    ck = save_checkpoint(tmp_path / "run", build_model(cfg), RunConfig(model=cfg), ByteTokenizer())
    state = load_file(ck / "model.safetensors")
    save_file({**state, "blocks.0.attn.k_proj.weight": torch.zeros(16, 32)}, str(ck / "model.safetensors"))
    assert main(["generate", "--ckpt", str(ck), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "blocks.0.attn.k_proj.weight" in err and "size mismatch" not in err
