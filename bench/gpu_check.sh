#!/usr/bin/env bash
# GPU readiness in one run (≤ 8 min on one H100/H200): training throughput of the default
# (patch) learner and of the paper network with AMP on and off (patches or slices/s, achieved
# TFLOP/s against the chip's dense bf16 peak, the projected time of one paper-scale fold),
# the same on the host's CPU cores for reference, and MEDI on a 160³ volume on CUDA against
# the CPU (qsm_bench prints CPU rows, then CUDA rows).
#
#   bash bench/gpu_check.sh           # on the GPU machine
#   bash bench/gpu_check.sh --tiny    # CPU only, seconds: what the tests run so that it cannot rot
#
# On the device: install the project over its own CUDA torch first
# (pip install --no-deps -e . plus the missing pure-Python dependencies).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
if [ "${1:-}" = "--tiny" ]; then
    "$PY" bench/train_bench.py --tiny --steps 2 --warmup 1 --amp both
    "$PY" bench/qsm_bench.py --size 32 --device cpu --threads 1
    exit 0
fi
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print('#', torch.cuda.get_device_name(0), 'torch', torch.__version__)"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv || true
echo "## training on CUDA (AMP on, then off)"
timeout 240 "$PY" bench/train_bench.py --device cuda --amp both --steps 20 --warmup 5
echo "## training on the CPU cores (reference)"
timeout 120 "$PY" bench/train_bench.py --device cpu --threads "$(nproc)" --steps 2 --warmup 1 --paper-batch 2
echo "## MEDI on a 160³ volume: CPU rows, then CUDA rows"
timeout 180 "$PY" bench/qsm_bench.py --size 160 --device cuda --threads "$(nproc)"
