#!/usr/bin/env bash
# Run by Snakemake inside the new env (`--sdm conda`): deepmir from the checkout at
# $DEEPMIR_SOURCE (set by workflow/rules/common.smk), without pyproject.toml's dependencies:
# the env file lists what this env's rules import.
set -euo pipefail
python -m pip install --no-deps -e "$DEEPMIR_SOURCE"
