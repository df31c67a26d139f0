#!/usr/bin/env bash
# Fast-sampling table on one CUDA GPU (H100/H200 class), in under 5 minutes.
#
#   bash benchmarks/gpu_sampling.sh            # from the repository root, with remask installed
#   bash benchmarks/gpu_sampling.sh --data DIR # tinyshakespeare from DIR/tinyshakespeare
#                                              # (a relative DIR is taken from the repository root)
#
# UNTESTED: written without GPU access. It runs benchmarks/sampling.py twice:
#   1. bf16 autocast, eager: trains the MDM and the AR judge (60 s each, at the same time on the
#      one GPU), then times every setting at gen_length 256 and 1024 -> results/gpu_sampling.md
#   2. the same checkpoints with torch.compile of the forward (compile time not timed) for the
#      reference and the fastest setting -> results/gpu_sampling_compile.md
# Each step has a hard timeout so the whole script stays under 5 minutes; a timed-out step
# leaves the earlier results in place. Data: tinyshakespeare under the dataset root, --data DIR,
# else $REMASK_DATA, else ../shared/data beside the repository when present, else the built-in
# corpus (see benchmarks/common.py). Extra arguments go to both benchmarks/sampling.py calls.
set -euo pipefail
cd "$(dirname "$0")/.."
python - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA device: this script is for a GPU machine"
print("gpu:", torch.cuda.get_device_name(0), "| torch", torch.__version__)
PY
# A fixed work dir under the repository's (git-ignored) runs/, so the commands recorded in the
# results files name no machine-specific temporary directory; removed before and after.
WORK=runs/gpu-sampling
rm -rf "$WORK"
trap 'rm -rf "$WORK"' EXIT
COMMON=(--device cuda --dtype bfloat16 --d-model 256 --n-layer 6 --n-head 8 --batch-size 16 --seq-len 1088
        --gen-lengths 256 1024 --prompts 4 2 --rules-at-1024 "$@")

timeout 200 python benchmarks/sampling.py "${COMMON[@]}" --train-seconds 60 --work-dir "$WORK/run" \
    --results benchmarks/results/gpu_sampling.md --note "GPU run: bf16 autocast, eager."

timeout 80 python benchmarks/sampling.py "${COMMON[@]}" --compile --ckpt "$WORK/run/mdm/run" \
    --judge "$WORK/run/ar/run/best" --work-dir "$WORK/compile" --prompts 2 1 \
    --configs "reference (LLaDA)" "dual cache + threshold 0.9" \
    --results benchmarks/results/gpu_sampling_compile.md --note "GPU run: bf16 autocast, torch.compile." \
    || echo "compile pass did not finish within its timeout (eager results are in gpu_sampling.md)"
