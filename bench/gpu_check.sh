#!/usr/bin/env bash
# One GPU session for the Triton backend (see bench/gpu_check.py). Extra args pass through.
set -u
cd "$(dirname "$0")/.."
exec python bench/gpu_check.py "$@"
