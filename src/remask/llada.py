"""LLaDA-8B checkpoints (the Hugging Face layout) <-> remask: config keys, weight names, shards.

    LLADA_DIR/
      config.json                        model_type "llada"; d_model, n_layers, n_heads, ...
      model.safetensors.index.json       {"metadata": {"total_size"}, "weight_map": {name: shard}}
      model-00001-of-00006.safetensors   the shards (bf16 in the published checkpoints)
      tokenizer.json, tokenizer_config.json (with its chat_template)

LLaDA's network is remask's ``Transformer``: pre-norm blocks, RMSNorm computed in float32 and cast
back before the gain, rotate-half rotary embeddings in float32 at positions 0..T-1, bidirectional
attention scaled by 1/sqrt(head_dim), a SiLU-gated MLP, no biases, no embedding or logit scaling.
So nothing here computes anything: this module maps config keys (``model_config``) and weight
names (``weight_names``), refuses any setting whose value differs from the one remask implements
(``ARCHITECTURE``), finds each weight's shard (``weight_files``) and writes the format
(``write_llada``, ``write_tokenizer_files``). ``remask.checkpoint`` detects the format from
config.json, so every command that takes ``--ckpt`` reads both kinds, and ``remask export`` writes it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from remask.config import ModelConfig, RunConfig, TrainConfig
from remask.errors import RemaskError
from remask.fileio import write_text_atomic

MODEL_TYPE = "llada"
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"  # a checkpoint small enough for one file may have no index
CAUSAL_KEY = "remask_causal"  # remask's own key: LLaDA has no causal flag; True marks the AR baseline

# Settings that would change the computation, with the one value remask implements (the value of
# the published checkpoints). A key that is absent is taken to have that value.
ARCHITECTURE: dict[str, Any] = {
    "block_type": "llama", "activation_type": "silu", "layer_norm_type": "rms", "rope": True, "alibi": False,
    "include_bias": False, "include_qkv_bias": False, "bias_for_layer_norm": False, "layer_norm_with_affine": True,
    "attention_layer_norm": False, "scale_logits": False, "input_emb_norm": False, "rope_full_precision": True,
    "clip_qkv": None, "block_group_size": 1,
}

# ----------------------------------------------------------------------------- config

def is_hf_config(meta: dict[str, Any]) -> bool:
    """Whether a config.json is a Hugging Face model config (it names a ``model_type``)."""
    return "model_type" in meta


def _int(meta: dict[str, Any], key: str, where: Path, default: int | None = None) -> int:
    value = meta[key] if meta.get(key) is not None else default
    if isinstance(value, bool) or not isinstance(value, int):
        raise RemaskError(f"'{where}' has no integer {key} (got {value!r}); a LLaDA config.json needs d_model, "
                          "n_layers, n_heads, vocab_size, max_sequence_length, mask_token_id and eos_token_id")
    return value


def _float(meta: dict[str, Any], key: str, where: Path, default: float) -> float:
    value = meta[key] if meta.get(key) is not None else default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RemaskError(f"'{where}': {key} must be a number, got {value!r}; fix config.json")
    return float(value)


def check_supported(meta: dict[str, Any], where: Path) -> None:
    """A one-line error for a model type or a setting remask does not implement."""
    if meta.get("model_type") != MODEL_TYPE:
        raise RemaskError(f"'{where}' declares model_type {meta.get('model_type')!r}; remask reads its own "
                          f"checkpoints and LLaDA directories (model_type \"{MODEL_TYPE}\") only")
    for key, ok in ARCHITECTURE.items():
        if key in meta and meta[key] != ok:
            raise RemaskError(f"'{where}' sets {key}: {json.dumps(meta[key])}, which remask does not implement "
                              f"(it runs LLaDA's published architecture, {key}: {json.dumps(ok)})")


def model_config(meta: dict[str, Any], where: Path) -> ModelConfig:
    """LLaDA's config.json -> ModelConfig, after ``check_supported``.

    The model's vocabulary is the embedding's rows (``embedding_size``), as LLaDA's own code
    computes logits over all of them; rows past ``vocab_size`` are padding no tokenizer emits.
    """
    check_supported(meta, where)
    d_model, n_head = _int(meta, "d_model", where), _int(meta, "n_heads", where)
    vocab = _int(meta, "vocab_size", where)
    rows = _int(meta, "embedding_size", where, default=vocab)
    if rows < vocab:
        raise RemaskError(f"'{where}' has embedding_size {rows} < vocab_size {vocab}: token ids past the embedding "
                          "would have no row; fix config.json")
    kv_default = 1 if meta.get("multi_query_attention") else n_head
    hidden_default = _int(meta, "mlp_ratio", where) * d_model if meta.get("mlp_hidden_size") is None else None
    try:
        return ModelConfig(
            vocab_size=rows, d_model=d_model, n_layer=_int(meta, "n_layers", where), n_head=n_head,
            n_kv_head=_int(meta, "n_kv_heads", where, default=kv_default),
            ffn_hidden=_int(meta, "mlp_hidden_size", where, default=hidden_default),
            max_seq_len=_int(meta, "max_sequence_length", where), rope_theta=_float(meta, "rope_theta", where, 10000.0),
            norm_eps=_float(meta, "rms_norm_eps", where, 1e-5), causal=meta.get(CAUSAL_KEY) is True,
            tie_embeddings=meta.get("weight_tying") is True, mask_token_id=_int(meta, "mask_token_id", where),
            eos_token_id=_int(meta, "eos_token_id", where, default=meta.get("pad_token_id")),
            init_std=_float(meta, "init_std", where, 0.02))
    except RemaskError as e:  # ModelConfig's own checks (divisibility, ids inside the vocabulary)
        raise RemaskError(f"'{where}': {e}") from None


def run_config(meta: dict[str, Any], where: Path) -> RunConfig:
    """The RunConfig of a LLaDA directory: its model; training defaults, with ``seq_len`` at the model's
    context (what lm-eval's window and other readers of a checkpoint's training length then see)."""
    model = model_config(meta, where)
    return RunConfig(model=model, train=TrainConfig(seq_len=model.max_seq_len))


def llada_config(cfg: ModelConfig, dtype: torch.dtype) -> dict[str, Any]:
    """ModelConfig -> LLaDA's config.json: every key the published checkpoints set that fixes the
    computation, so LLaDA's own code reads it too, plus ``remask_causal`` for the AR baseline."""
    return {
        "model_type": MODEL_TYPE, "architectures": ["LLaDAModelLM"], **ARCHITECTURE,
        "d_model": cfg.d_model, "n_layers": cfg.n_layer, "n_heads": cfg.n_head, "n_kv_heads": cfg.n_kv_head,
        "mlp_hidden_size": cfg.ffn_hidden,
        "vocab_size": cfg.vocab_size, "embedding_size": cfg.vocab_size, "rope_theta": cfg.rope_theta,
        "rms_norm_eps": cfg.norm_eps, "max_sequence_length": cfg.max_seq_len, "mask_token_id": cfg.mask_token_id,
        "eos_token_id": cfg.eos_token_id, "pad_token_id": cfg.eos_token_id, "weight_tying": cfg.tie_embeddings,
        "multi_query_attention": None, "init_std": cfg.init_std, "use_cache": False,
        "torch_dtype": str(dtype).removeprefix("torch."), CAUSAL_KEY: cfg.causal,
    }


# ----------------------------------------------------------------------------- weights

def weight_names(cfg: ModelConfig) -> dict[str, str]:
    """remask parameter name -> LLaDA tensor name (the LM head is absent when tied)."""
    names = {"embed.weight": "model.transformer.wte.weight", "norm.weight": "model.transformer.ln_f.weight"}
    if not cfg.tie_embeddings:
        names["lm_head.weight"] = "model.transformer.ff_out.weight"
    per_block = {"attn_norm": "attn_norm", "attn.q_proj": "q_proj", "attn.k_proj": "k_proj", "attn.v_proj": "v_proj",
                 "attn.o_proj": "attn_out", "mlp_norm": "ff_norm", "mlp.gate_proj": "ff_proj",
                 "mlp.up_proj": "up_proj", "mlp.down_proj": "ff_out"}
    for i in range(cfg.n_layer):
        for ours, theirs in per_block.items():
            names[f"blocks.{i}.{ours}.weight"] = f"model.transformer.blocks.{i}.{theirs}.weight"
    return names


def _weight_map(directory: Path, wanted: list[str]) -> dict[str, str]:
    """LLaDA tensor name -> shard file name, from the index (or the one unindexed file)."""
    index = directory / INDEX_FILE
    if not index.is_file():
        if (directory / SINGLE_FILE).is_file():
            return dict.fromkeys(wanted, SINGLE_FILE)  # the loader checks the file holds them all
        raise RemaskError(f"LLaDA directory '{directory}' has neither {INDEX_FILE} nor {SINGLE_FILE}; "
                          "download the weights next to its config.json")
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise RemaskError(f"'{index}' is unreadable ({type(e).__name__}: {e}); re-download it") from None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise RemaskError(f"'{index}': weight_map must map tensor names to shard file names; re-download it")
    return weight_map


def weight_files(directory: Path, cfg: ModelConfig) -> dict[str, tuple[Path, str]]:
    """remask parameter name -> (shard file, LLaDA tensor name) for every weight ``cfg`` describes;
    a one-line error for a missing weight, an unexpected one, or a missing shard."""
    names = weight_names(cfg)
    weight_map = _weight_map(directory, list(names.values()))
    missing = [n for n in names.values() if n not in weight_map]
    if missing:
        raise RemaskError(f"LLaDA directory '{directory}' has no weight {missing[0]} ({len(missing)} missing) "
                          f"although its config.json needs it; re-download the checkpoint")
    extra = sorted(set(weight_map) - set(names.values()))
    if extra:
        raise RemaskError(f"LLaDA directory '{directory}' holds weight {extra[0]}, which its config.json does not "
                          "describe (n_layers or weight_tying disagree with the shards); fix config.json")
    out: dict[str, tuple[Path, str]] = {}
    for ours, theirs in names.items():
        shard = weight_map[theirs]
        if Path(shard).name != shard or shard in ("", ".", ".."):
            raise RemaskError(f"'{directory / INDEX_FILE}' names shard {shard!r}, not a file in the directory")
        if not (directory / shard).is_file():
            raise RemaskError(f"shard '{shard}' of LLaDA directory '{directory}' is missing (listed in "
                              f"{INDEX_FILE} for {theirs}); download it")
        out[ours] = (directory / shard, theirs)
    return out


def shard_plan(sizes: dict[str, int], shard_size: int) -> list[list[str]]:
    """Tensor names (in order) grouped into shards of at most ``shard_size`` bytes each (a tensor
    larger than that gets a shard of its own)."""
    shards: list[list[str]] = [[]]
    used = 0
    for name, size in sizes.items():
        if shards[-1] and used + size > shard_size:
            shards.append([])
            used = 0
        shards[-1].append(name)
        used += size
    return shards


def write_llada(model: torch.nn.Module, tokenizer: Any, directory: str | Path, *, shard_size: int,
                dtype: torch.dtype | None = None) -> list[Path]:
    """Write ``model`` (a remask Transformer) and its tokenizer into ``directory`` in LLaDA's format:
    config.json, shards of at most ``shard_size`` bytes with their index, tokenizer.json and a
    tokenizer_config.json with the chat template. ``dtype`` converts the weights (None: as they are,
    so loading the result back is bit-exact). The caller makes it atomic (``remask.checkpoint``)."""
    directory = Path(directory)
    cfg: ModelConfig = model.cfg  # type: ignore[assignment]
    params = dict(model.named_parameters())  # a tied LM head appears once, as embed.weight
    tensors = {theirs: params[ours].detach() for ours, theirs in weight_names(cfg).items()}
    out_dtype = dtype or params["embed.weight"].dtype
    sizes = {n: t.numel() * (dtype or t.dtype).itemsize for n, t in tensors.items()}
    plan = shard_plan(sizes, shard_size)
    files, weight_map = [], {}
    for i, names in enumerate(plan, start=1):
        fname = f"model-{i:05d}-of-{len(plan):05d}.safetensors"
        # one shard's converted copies at a time; CPU views of a memory-mapped checkpoint are read as written
        save_file({n: tensors[n].to("cpu", out_dtype if dtype else tensors[n].dtype).contiguous() for n in names},
                  str(directory / fname), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(names, fname))
        files.append(directory / fname)
    index = {"metadata": {"total_size": sum(sizes.values())}, "weight_map": weight_map}
    write_text_atomic(directory / INDEX_FILE, json.dumps(index, indent=2, sort_keys=True) + "\n")
    write_text_atomic(directory / "config.json", json.dumps(llada_config(cfg, out_dtype), indent=2, sort_keys=True) + "\n")
    write_tokenizer_files(tokenizer, directory, model_max_length=cfg.max_seq_len)
    return files


# ----------------------------------------------------------------------------- tokenizer

def write_tokenizer_files(tok: Any, directory: Path, *, model_max_length: int) -> None:
    """tokenizer.json and a Hugging Face tokenizer_config.json: the specials (added_tokens_decoder,
    bos/eos/pad/mask), every role under ``remask_special_tokens`` (so ``load_tokenizer`` restores them
    exactly) and the chat template with the special tokens written literally (``literal_template``)."""
    from remask.data.template import template_of
    from remask.data.tokenizer import CONFIG_FILE, HF_FILE, ROLES_KEY

    write_text_atomic(directory / HF_FILE, tok.hf_json())
    specials = dict(sorted((i, name) for name, i in tok.special_ids.items()))
    roles = tok.special_tokens
    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": False, "add_eos_token": False,
        "clean_up_tokenization_spaces": False, "model_max_length": model_max_length,
        "added_tokens_decoder": {str(i): {"content": n, "lstrip": False, "normalized": False, "rstrip": False,
                                          "single_word": False, "special": True} for i, n in specials.items()},
        "bos_token": roles["bos"], "eos_token": roles["eos"], "pad_token": roles["eos"], "mask_token": roles["mask"],
        ROLES_KEY: dict(roles), "chat_template": literal_template(template_of(tok), tok),
    }
    write_text_atomic(directory / CONFIG_FILE, json.dumps(cfg, indent=2) + "\n")


def literal_template(template: str, tok: Any) -> str:
    """``template`` with remask's variables for the header and end-of-turn tokens replaced by those
    tokens as string literals: Hugging Face renders a template with bos_token and eos_token (which
    stay) but not remask's start_header, end_header and eot_token."""
    values = {"start_header": tok.special_tokens["start_header"], "end_header": tok.special_tokens["end_header"],
              "eot_token": tok.special_tokens["eot"]}
    pattern = re.compile(r"(\{\{-?\s*)(start_header|end_header|eot_token)(\s*-?\}\})")
    return pattern.sub(lambda m: m.group(1) + json.dumps(values[m.group(2)], ensure_ascii=False) + m.group(3),
                       template)
