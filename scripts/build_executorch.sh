#!/usr/bin/env bash
# Builds the ExecuTorch kernel library (libedgetam_executorch.so) and edgetam_runner from
# csrc/executorch against an executorch 1.5.1 wheel.
#
#   scripts/build_executorch.sh [x86_64|aarch64] [OUT_DIR]
#
# x86_64 (default on an x86 host) uses the installed executorch; aarch64 is a cross-build with
# aarch64-linux-gnu-g++ against the aarch64 manylinux wheel (downloaded once into the cache; run
# the result with `qemu-aarch64-static -L /usr/aarch64-linux-gnu`, or copy OUT_DIR together with
# the wheel's lib/ folder to an ARM Linux board). Needs cmake >= 3.28 (pip install cmake).
set -euo pipefail
cd "$(dirname "$0")/.."
ARCH=${1:-$(uname -m)}
OUT=${2:-build/executorch/$ARCH}
PY=${PYTHON:-python3}
ET_VERSION=1.5.1
CACHE=${EDGETAM_KERNELS_CACHE:-$HOME/.cache/edgetam_kernels}

command -v cmake >/dev/null || { echo "build_executorch: cmake not found: pip install cmake" >&2; exit 1; }

if [ "$ARCH" = "$(uname -m)" ]; then
  ET=$($PY -c "import executorch; print(list(executorch.__path__)[0])" 2>/dev/null) || {
    echo "build_executorch: executorch is not installed: pip install executorch==$ET_VERSION" >&2; exit 1; }
  CROSS=()
elif [ "$ARCH" = aarch64 ]; then
  command -v aarch64-linux-gnu-g++ >/dev/null || {
    echo "build_executorch: aarch64-linux-gnu-g++ not found: apt-get install g++-aarch64-linux-gnu" >&2; exit 1; }
  WHEEL_DIR=$CACHE/executorch-$ET_VERSION-aarch64
  ET=$WHEEL_DIR/executorch
  if [ ! -f "$ET/share/cmake/executorch-config.cmake" ]; then
    mkdir -p "$WHEEL_DIR"
    $PY -m pip --isolated download -q executorch==$ET_VERSION --no-deps --only-binary=:all: \
      --platform manylinux_2_28_aarch64 --python-version 3.11 -d "$WHEEL_DIR"
    $PY -m zipfile -e "$WHEEL_DIR"/executorch-$ET_VERSION-*aarch64.whl "$WHEEL_DIR/unpacked"
    rm -rf "$ET" && mv "$WHEEL_DIR/unpacked/executorch" "$ET" && rm -rf "$WHEEL_DIR/unpacked"
  fi
  CROSS=(-DCMAKE_SYSTEM_NAME=Linux -DCMAKE_SYSTEM_PROCESSOR=aarch64
         -DCMAKE_CXX_COMPILER=aarch64-linux-gnu-g++ -DCMAKE_FIND_ROOT_PATH_MODE_PACKAGE=BOTH)
else
  echo "build_executorch: cannot build for $ARCH on $(uname -m) (x86_64 or aarch64)" >&2; exit 1
fi

cmake -S csrc/executorch -B "$OUT" -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$ET" "${CROSS[@]}" >/dev/null
cmake --build "$OUT" -j "$(nproc)"
echo "built $OUT/libedgetam_executorch.so and $OUT/edgetam_runner (executorch libs: $ET/lib)"
