#!/usr/bin/env bash
# Training throughput and MFU of a ~1B-parameter model on one CUDA GPU (H100/H200 class), in under 5 minutes.
#
#   bash benchmarks/gpu_scaling.sh                 # from the repository root, with remask installed
#   bash benchmarks/gpu_scaling.sh --train.compile true   # extra arguments go to `remask train`
#
# UNTESTED on a GPU: written without GPU access; its Python path was dry-run on the CPU with
#   python benchmarks/scaling.py gpu --size tiny --device cpu --dtype float32 --results -
# It runs `benchmarks/scaling.py gpu`: measures the best bf16 torch.matmul FLOP/s (8192 x 8192), prepares
# the built-in corpus (`remask prepare --workers 8`), then trains d_model 2048 x 20 layers (1.01B
# parameters, byte vocabulary) through `torchrun --nproc_per_node 1 -m remask train --train.parallel fsdp`
# in bf16 (FSDP2 mixed precision: bf16 compute, fp32 master weights and reduction), batch 16 x 2048
# tokens in micro-batches of 8, 30 steps, and reports tokens/s and MFU -> results/gpu_scaling.md.
# The training step has a hard timeout (240 s) so the whole script stays under 5 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
python - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA device: this script is for a GPU machine"
print("gpu:", torch.cuda.get_device_name(0), "| torch", torch.__version__)
PY
# A fixed work dir under the repository's (git-ignored) runs/, so the command recorded in the results
# names no machine-specific temporary directory; removed before and after.
WORK=runs/gpu-scaling
rm -rf "$WORK"
trap 'rm -rf "$WORK"' EXIT
timeout 290 python benchmarks/scaling.py gpu --size 1b --device cuda --dtype bfloat16 --warmup 10 --steps 20 \
    --workers 8 --timeout 240 --work-dir "$WORK" --results benchmarks/results/gpu_scaling.md "$@"
