#!/usr/bin/env bash
# Installs everything the project, its tests and its benchmarks need on a fresh Debian 12 machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

# System packages: a C++ compiler (the CPU extension, the Metal emulator and its ThreadSanitizer
# build) and, for the aarch64 tests, a cross compiler and qemu-user.
APT_PKGS=(g++ g++-aarch64-linux-gnu qemu-user-static unzip)
if command -v apt-get >/dev/null; then
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  missing=()
  for p in "${APT_PKGS[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
else
  echo "setup.sh: no apt-get; install a C++ compiler yourself (aarch64 tests will skip)" >&2
fi

# torch first, pinned: anything that merely depends on torch would otherwise pull a CUDA build.
$PY -m pip install -q torch==2.13.0
$PY -m pip install -q triton==3.7.1 numpy tqdm ninja pytest pytest-benchmark expecttest hypothesis
# Meta's EdgeTAM code and Hugging Face's, for parity tests. torchvision 0.28 matches torch 2.13;
# --no-deps keeps pip from replacing the CPU torch with a CUDA build.
$PY -m pip install -q --no-deps torchvision==0.28.0 edgetam-dimos==1.0.1 timm==1.0.31
$PY -m pip install -q hydra-core iopath pillow av pyyaml safetensors huggingface_hub "transformers>=5,<6" matplotlib
# What Meta's predictor reads and post-processes with: OpenCV (without it Meta silently skips
# hole filling) and decord (its mp4 reader); the tests that compare with Meta on a path need them.
$PY -m pip install -q opencv-python-headless decord
# ExecuTorch (the .pte path, docs/phones.md): 1.5.1 is built against torch 2.13.0 and does not
# list torch, so it never replaces the pinned CPU torch; cmake >= 3.28 builds our kernel library.
$PY -m pip install -q executorch==1.5.1 "cmake>=3.28"
# The package itself (builds the C++ CPU extension when a compiler is present).
$PY -m pip install -q --no-build-isolation -e .
$PY -m edgetam_kernels info
