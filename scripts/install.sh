#!/usr/bin/env bash
# Set up .venv with deepmir and everything it needs. Idempotent: a second run is quick.
# torch is installed first and pinned to the CPU build (2.13.0) when no torch is present,
# so that pip does not pull several GB of CUDA packages on a CPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
    .venv/bin/python -m pip install -q "torch==${DEEPMIR_TORCH_VERSION:-2.13.0}"
fi
.venv/bin/python -m pip install -q -e ".[test]"
echo "deepmir installed in $(pwd)/.venv"
