#!/usr/bin/env bash
# Installs everything the project, its tests and its benchmarks need on a fresh Debian 12 machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

# torch first, pinned: anything that merely depends on torch would otherwise pull a CUDA build.
$PY -m pip install -q torch==2.13.0
$PY -m pip install -q triton==3.7.1 numpy tqdm ninja pytest pytest-benchmark expecttest hypothesis
# Meta's EdgeTAM code and Hugging Face's, for parity tests. torchvision 0.28 matches torch 2.13;
# --no-deps keeps pip from replacing the CPU torch with a CUDA build.
$PY -m pip install -q --no-deps torchvision==0.28.0 edgetam-dimos==1.0.1 timm==1.0.31
$PY -m pip install -q hydra-core iopath pillow av pyyaml safetensors huggingface_hub "transformers>=5,<6" matplotlib
# The package itself (builds the C++ CPU extension when a compiler is present).
$PY -m pip install -q --no-build-isolation -e .
$PY -m edgetam_kernels info
