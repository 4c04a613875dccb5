#!/usr/bin/env bash
# Set up .venv with deepmir, everything it needs and the test extra (pytest, nnU-Net's readers).
# Idempotent: a second run is quick.
# torch is installed first and pinned to the CPU build (2.13.0) when no torch is present,
# so that pip does not pull several GB of CUDA packages on a CPU machine: the +cpu wheel from
# wherever pip already finds it (a local wheel, a mirror), else from PyTorch's CPU index
# (DEEPMIR_TORCH_INDEX to use another, e.g. a CUDA one: https://download.pytorch.org/whl/cu128).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
TORCH=${DEEPMIR_TORCH_VERSION:-2.13.0}
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
    if [ -n "${DEEPMIR_TORCH_INDEX:-}" ] \
        || ! .venv/bin/python -m pip install -q "torch==${TORCH}+cpu" 2>/dev/null; then
        .venv/bin/python -m pip install -q "torch==${TORCH}" \
            --index-url "${DEEPMIR_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}"
    fi
fi
# the test extra holds nnU-Net (its readers check the nnU-Net export); the torch already there
# is kept (a constraint), or pip would replace a CPU torch with the newest CUDA build
.venv/bin/python -W ignore -c "import torch; print('torch==' + torch.__version__.split('+')[0])" \
    2>/dev/null > .venv/torch-constraint.txt    # (torch warns that numpy is not there yet)
.venv/bin/python -m pip install -q -e ".[test]" -c .venv/torch-constraint.txt
echo "deepmir installed in $(pwd)/.venv"
