#!/usr/bin/env bash
# LLaDA-8B on one CUDA GPU (H100/H200 class), in under 5 minutes: load a checkpoint of the published
# format and shapes, and time remask's samplers on it.
#
#   bash benchmarks/gpu_llada.sh                        # from the repository root, with remask installed
#   REMASK_LLADA_TINY=1 bash benchmarks/gpu_llada.sh    # dry run: the same steps on a tiny model (CPU is fine)
#
# UNTESTED on a GPU: written without GPU access; the dry run passes on a 2-core CPU. Steps:
#   1. write a randomly initialised checkpoint with LLaDA-8B's exact layout and shapes into a temporary
#      directory: config.json (model_type "llada"), bf16 shards of at most 5 GB with their index,
#      tokenizer.json + tokenizer_config.json with LLaDA's special ids. Each tensor is drawn in bf16
#      on the GPU and copied out, so no float32 copy of the 8B weights ever exists on the host (the
#      host holds one shard at a time);
#   2. in a fresh process, load it with remask.checkpoint.load_checkpoint (bf16 on the GPU) and report
#      the load time (page cache warm: the shards were just written), peak host memory (VmHWM of
#      the process, measured from its size before the load) and GPU memory;
#   3. decode at gen_length 256 and 1024, batch 1 and 8, in blocks of 32: the reference setting
#      (LLaDA: low_confidence, one token per step, no cache) and the fast ones (dual cache; dual
#      cache + threshold 0.9). tokens/s counts committed tokens of all rows per second. A run that
#      would exceed its time cap is stopped there and reported as partial (steps done / scheduled):
#      a reference step is the same full forward pass from first to last, so its rate holds.
#      Random weights commit (almost) nothing above a 0.9 threshold, so threshold decoding runs one
#      token per step here; its real speed-up depends on trained weights.
# Results: benchmarks/results/gpu_llada.md (the dry run writes into the work directory instead),
# rewritten after every measurement so a timeout keeps what was measured.
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=full
if [[ "${REMASK_LLADA_TINY:-0}" == 1 ]]; then MODE=tiny; fi
WORK="${REMASK_LLADA_WORK:-${TMPDIR:-/tmp}/remask-gpu-llada-$$}"
rm -rf "$WORK"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK"
RESULTS=benchmarks/results/gpu_llada.md
if [[ $MODE == tiny ]]; then RESULTS="$WORK/gpu_llada_dry_run.md"; fi

read -r -d '' PY <<'PY' || true
import json, os, sys, time
from pathlib import Path

import torch

step, directory, mode = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
FULL = mode == "full"
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
if FULL:
    assert DEVICE.type == "cuda", "no CUDA device: run the dry run with REMASK_LLADA_TINY=1"
# LLaDA-8B's published config.json, less its remote-code bookkeeping; the tiny model keeps the
# vocabulary and special ids (the tokenizer is the same) and shrinks the rest.
CONFIG = {
    "model_type": "llada", "architectures": ["LLaDAModelLM"], "d_model": 4096, "n_layers": 32, "n_heads": 32,
    "n_kv_heads": 32, "mlp_hidden_size": 12288, "vocab_size": 126464, "embedding_size": 126464,
    "rope_theta": 500000.0, "rms_norm_eps": 1e-05, "max_sequence_length": 4096, "mask_token_id": 126336,
    "eos_token_id": 126081, "pad_token_id": 126081, "weight_tying": False, "include_bias": False,
    "include_qkv_bias": False, "attention_layer_norm": False, "block_type": "llama", "activation_type": "silu",
    "layer_norm_type": "rms", "scale_logits": False, "input_emb_norm": False, "alibi": False, "rope": True,
}
if not FULL:
    CONFIG.update(d_model=64, n_layers=2, n_heads=4, n_kv_heads=4, mlp_hidden_size=192)
SHARD_BYTES = 5 * 10**9 if FULL else 4 * 10**6
SPECIAL = {126080: "<|startoftext|>", 126081: "<|endoftext|>", 126336: "<|mdm_mask|>",
           126346: "<|start_header_id|>", 126347: "<|end_header_id|>", 126348: "<|eot_id|>"}
GEN_LENGTHS, BATCHES = ((256, 1024), (1, 8)) if FULL else ((32, 64), (1, 2))
RUN_CAP_S = 15.0 if FULL else 5.0  # per decoding run
TOTAL_CAP_S = 150.0 if FULL else 60.0  # all decoding runs


def weight_shapes():
    c, t = CONFIG, "model.transformer."
    d, f, v = c["d_model"], c["mlp_hidden_size"], c["embedding_size"]
    yield t + "wte.weight", (v, d)
    for i in range(c["n_layers"]):
        b = f"{t}blocks.{i}."
        yield from [(b + "attn_norm.weight", (d,)), (b + "q_proj.weight", (d, d)), (b + "k_proj.weight", (d, d)),
                    (b + "v_proj.weight", (d, d)), (b + "attn_out.weight", (d, d)), (b + "ff_norm.weight", (d,)),
                    (b + "ff_proj.weight", (f, d)), (b + "up_proj.weight", (f, d)), (b + "ff_out.weight", (d, f))]
    yield t + "ln_f.weight", (d,)
    yield t + "ff_out.weight", (v, d)


def write_tokenizer():
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab.update({SPECIAL.get(i, f"<|filler_{i}|>"): i for i in range(256, max(SPECIAL) + 1)})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIAL.values()])
    tok.save(str(directory / "tokenizer.json"))
    template = ("{% for m in messages %}{% set text = '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + "
                "m['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set text = bos_token + text %}"
                "{% endif %}{{ text }}{% endfor %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}")
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": SPECIAL[126080], "eos_token": SPECIAL[126081], "pad_token": SPECIAL[126081],
        "add_bos_token": False, "add_eos_token": False, "chat_template": template,
        "added_tokens_decoder": {str(i): {"content": s, "special": True} for i, s in SPECIAL.items()}}))


def write():
    from safetensors.torch import save_file

    directory.mkdir(parents=True)
    t0, gen = time.perf_counter(), torch.Generator(device=DEVICE).manual_seed(0)
    plan, used = [[]], 0  # shards of (name, shape), at most SHARD_BYTES each
    for name, shape in weight_shapes():
        size = 2 * torch.Size(shape).numel()
        if plan[-1] and used + size > SHARD_BYTES:
            plan.append([])
            used = 0
        plan[-1].append((name, shape))
        used += size
    weight_map = {}
    for i, entries in enumerate(plan, start=1):  # the host holds one shard at a time
        tensors = {name: (torch.ones(shape, dtype=torch.bfloat16, device=DEVICE) if len(shape) == 1 else
                          torch.empty(shape, dtype=torch.bfloat16, device=DEVICE).normal_(0.0, 0.02, generator=gen)
                          ).cpu() for name, shape in entries}
        fname = f"model-{i:05d}-of-{len(plan):05d}.safetensors"
        save_file(tensors, str(directory / fname), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, fname))
        del tensors
    total = sum(2 * torch.Size(s).numel() for _, s in weight_shapes())
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                        "weight_map": weight_map}))
    (directory / "config.json").write_text(json.dumps(CONFIG, indent=2))
    write_tokenizer()
    print(json.dumps({"wrote": str(directory), "shards": len(plan), "bytes": total,
                      "seconds": round(time.perf_counter() - t0, 1)}), flush=True)


def status(key):
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(key + ":"))


def sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def time_decode(model, tok, prompts, cfg):
    """(committed tokens per second, steps done, steps scheduled, peak GPU bytes) of one run, stopped
    at RUN_CAP_S."""
    from remask.sampling.loop import generate_stream

    if DEVICE.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sync()
    t0 = time.perf_counter()
    done, last = 0, None
    with torch.inference_mode():
        for last in generate_stream(model, prompts, cfg, mask_id=tok.mask_id, eos_id=tok.eos_id, eot_id=tok.eot_id):
            done += 1
            if time.perf_counter() - t0 > RUN_CAP_S:
                break
    sync()
    seconds = time.perf_counter() - t0
    committed = int((last.canvas[:, -cfg.gen_length:] != tok.mask_id).sum())
    peak = torch.cuda.max_memory_allocated() if DEVICE.type == "cuda" else 0
    return committed / seconds, done, cfg.steps, peak


def report(lines, rows, path):
    table = ["| gen_length | batch | setting | tokens/s | steps timed | peak GPU GB |", "|---:|---:|---|---:|---:|---:|"]
    table += [f"| {r['gen_length']} | {r['batch']} | {r['setting']} | {r['tokens_per_s']:.1f} | "
              f"{r['steps_done']}/{r['steps']}{' (partial)' if r['steps_done'] < r['steps'] else ''} | "
              f"{r['peak_gpu_gb']:.1f} |" for r in rows]
    Path(path).write_text("\n".join(lines + [""] + table) + "\n")


def bench(results):
    from remask.chat import prompt_ids
    from remask.checkpoint import load_checkpoint
    from remask.config import ModelConfig
    from remask.model import Transformer
    from remask.sampling.config import SampleConfig

    with torch.device("meta"):  # torch's meta-device machinery loads once; not part of the measurement
        Transformer(ModelConfig())
    base = status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # restart VmHWM from here
    t0 = time.perf_counter()
    ck = load_checkpoint(directory, DEVICE)
    sync()
    load_s = time.perf_counter() - t0
    weights = sum(p.numel() * p.element_size() for p in ck.model.parameters())
    host_peak = status("VmHWM") - base
    gpu = torch.cuda.memory_allocated() if DEVICE.type == "cuda" else 0
    name = torch.cuda.get_device_name(0) if DEVICE.type == "cuda" else "CPU (dry run)"
    lines = [f"# LLaDA-8B-format checkpoint on {name}" if FULL else "# gpu_llada.sh dry run (tiny model)", "",
             f"torch {torch.__version__}; {len(list(directory.glob('*.safetensors')))} bf16 shards, "
             f"{weights / 1e9:.2f} GB of weights ({sum(p.numel() for p in ck.model.parameters()) / 1e9:.2f} B params), "
             f"random init; dtype {next(ck.model.parameters()).dtype}.", "",
             f"- load: {load_s:.1f} s (page cache warm)",
             f"- peak host memory during the load: {host_peak / 1e9:.2f} GB above the process's {base / 1e9:.2f} GB "
             f"before it ({host_peak / weights:.3f}x the weights; the tokenizer's ~0.1 GB included)",
             f"- GPU memory after the load: {gpu / 1e9:.2f} GB"]
    print(json.dumps({"load_s": round(load_s, 2), "host_peak_bytes": host_peak, "weights_bytes": weights,
                      "gpu_bytes": gpu}), flush=True)
    report(lines, [], results)
    tok = ck.tokenizer
    prompt = prompt_ids(tok, "Write a short story about a lighthouse keeper who finds a message in a bottle.")
    settings = {"reference (low_confidence, no cache)": {},
                "dual cache": {"cache": "dual"},
                "dual cache + threshold 0.9": {"cache": "dual", "remasking": "threshold", "threshold": 0.9}}
    base_cfg = {"block_length": 32, "remasking": "low_confidence", "early_stop": False, "temperature": 0.0}
    time_decode(ck.model, tok, [prompt], SampleConfig(gen_length=32, steps=32, **base_cfg))  # warm-up
    rows, start = [], time.perf_counter()
    for gen in GEN_LENGTHS:
        for batch in BATCHES:
            for label, extra in settings.items():
                if time.perf_counter() - start > TOTAL_CAP_S:
                    lines.append(f"- stopped before gen_length {gen}, batch {batch}, {label}: total time cap")
                    report(lines, rows, results)
                    return
                cfg = SampleConfig(gen_length=gen, steps=gen, **{**base_cfg, **extra})
                rate, done, steps, peak = time_decode(ck.model, tok, [prompt] * batch, cfg)
                row = {"gen_length": gen, "batch": batch, "setting": label, "tokens_per_s": rate,
                       "steps_done": done, "steps": steps, "peak_gpu_gb": peak / 1e9}
                print(json.dumps(row), flush=True)
                rows.append(row)
                report(lines, rows, results)


if step == "write":
    write()
else:
    bench(sys.argv[4])
PY

if [[ $MODE == full ]]; then WRITE_T=110; BENCH_T=190; else WRITE_T=120; BENCH_T=180; fi
timeout "$WRITE_T" python -c "$PY" write "$WORK/llada" "$MODE"
timeout "$BENCH_T" python -c "$PY" bench "$WORK/llada" "$MODE" "$RESULTS" \
    || echo "the benchmark stopped early (timeout); $RESULTS holds what was measured"
cat "$RESULTS"
