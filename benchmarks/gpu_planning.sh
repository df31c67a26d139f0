#!/usr/bin/env bash
# Planning tasks at GPU scale: does the MDM pull ahead of AR on Countdown with a larger model and
# many more steps than a CPU allows? (Issue 3: on the 2-core CPU, at 0.33-0.9M parameters and a few
# minutes, the MDM stays at the fixed-answer floor on Countdown; see results/planning.md.)
#
#   bash benchmarks/gpu_planning.sh            # from the repository root, with remask installed
#   bash benchmarks/gpu_planning.sh --data DIR # the test sets from DIR/sudoku_countdown
#                                              # (a relative DIR is taken from the repository root)
#
# Data: the dataset root is --data DIR, else $REMASK_DATA, else ../shared/data beside the repository
# (see benchmarks/common.py). Extra arguments go to benchmarks/planning.py, after the ones below.
#
# UNTESTED: written without GPU access. One run of benchmarks/planning.py on CUDA (bf16 autocast),
# the MDM and AR workers sharing the GPU, about 9 minutes in all: Countdown with 400k generated
# problems and Sudoku, a 10.8M-parameter model (d_model 384, 6 layers), batch 256, a 200 s
# training cap per task and model. Results: benchmarks/results/gpu_planning.md.
set -euo pipefail
cd "$(dirname "$0")/.."
python - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA device: this script is for a GPU machine"
print("gpu:", torch.cuda.get_device_name(0), "| torch", torch.__version__)
PY
timeout 560 python benchmarks/planning.py --device cuda --tasks countdown sudoku \
    --d-model 384 --n-layer 6 --n-head 6 --batch-size 256 --countdown-train 400000 \
    --steps '{"countdown": 30000, "sudoku": 30000}' --lr '{"countdown": 1e-3, "sudoku": 1e-3}' \
    --time-cap 200 --lr-clock time --results benchmarks/results/gpu_planning.md "$@"
