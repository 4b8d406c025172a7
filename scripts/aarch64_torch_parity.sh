#!/usr/bin/env bash
# Torch-level parity of the C++ CPU backend on aarch64, on an x86-64 Debian 12 machine:
# an aarch64 Python 3.11 + torch 2.10 (CPU wheel) run under qemu-aarch64-static, the extension
# cross-built against the LibTorch stable ABI, and the CPU tests run for -cpu max (NEON + BF16
# dot) and -cpu cortex-a53 is not possible here (torch itself needs ARMv8.2), so the fallback
# path is forced with EDGETAM_KERNELS_CPU_ISA=neon instead.
#
#   scripts/aarch64_torch_parity.sh [WORKDIR]      (default build/aarch64; about 15 minutes)
#   PYTEST_K="expr"    the -k expression (default: a subset that fits qemu's speed)
#   PYTEST_ARGS="..."  more pytest arguments (split on spaces), e.g. "-x --durations 10"
#   ISAS="auto neon"   which dispatch choices to run (auto = best the emulated CPU has)
#
# Needs: apt-get install -y --no-install-recommends g++-aarch64-linux-gnu qemu-user-static,
# network access to the Debian archive and PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=${1:-$ROOT/build/aarch64}
SYSROOT=$WORK/sysroot
SITE=$WORK/site
PKG=$WORK/pkg
mkdir -p "$WORK/debs" "$WORK/wheels" "$SYSROOT" "$SITE" "$PKG"

# 1. aarch64 Python 3.11 and the shared libraries it and torch load, unpacked into a sysroot.
if [ ! -x "$SYSROOT/usr/bin/python3.11" ]; then
  dpkg --print-foreign-architectures | grep -qx arm64 || dpkg --add-architecture arm64
  apt-get update -qq
  PKGS="python3.11-minimal libpython3.11-minimal libpython3.11-stdlib python3.11 libc6 libstdc++6
        libgcc-s1 libgomp1 libffi8 libssl3 zlib1g libexpat1 libbz2-1.0 liblzma5 libsqlite3-0
        libncursesw6 libtinfo6 libreadline8 libuuid1 libmpdec3 libgdbm6 libnsl2 libtirpc3
        libcrypt1 libgssapi-krb5-2 libkrb5-3 libk5crypto3 libcom-err2 libkrb5support0
        libkeyutils1 libdb5.3 libzstd1 libcrypt1 media-types"
  (cd "$WORK/debs" && for p in $PKGS; do apt-get download -qq "$p:arm64" 2>/dev/null ||
      apt-get download -qq "$p" 2>/dev/null || echo "warning: could not download $p"; done)
  for d in "$WORK"/debs/*.deb; do dpkg -x "$d" "$SYSROOT"; done
fi

# 2. aarch64 wheels (torch 2.10.0 is CPU-only on aarch64), installed without resolving.
if [ ! -d "$SITE/torch" ]; then
  python3 -m pip --isolated download -q --no-deps --dest "$WORK/wheels" \
    --platform manylinux_2_28_aarch64 --platform manylinux2014_aarch64 --platform manylinux_2_17_aarch64 \
    --python-version 3.11 --only-binary=:all: \
    torch==2.10.0 numpy markupsafe
  python3 -m pip --isolated download -q --no-deps --dest "$WORK/wheels" --only-binary=:all: \
    typing_extensions sympy mpmath networkx jinja2 filelock fsspec pytest pluggy iniconfig \
    packaging pygments
  # pip refuses foreign-platform wheels; a wheel is a zip laid out for site-packages
  for w in "$WORK"/wheels/*.whl; do python3 -m zipfile -e "$w" "$SITE"; done
fi

# 3. The package with an aarch64 _C.so, cross-built against the stable ABI (torch >= 2.10).
rm -rf "$PKG/edgetam_kernels" "$PKG/tests"
cp -r "$ROOT/edgetam_kernels" "$PKG/edgetam_kernels"
# the tests run from a copy, so that nothing imports the host tree (and its x86 _C.so)
mkdir -p "$PKG/tests" && cp "$ROOT"/tests/conftest.py "$ROOT"/tests/backends/test_cpu_attention.py \
  "$ROOT"/tests/backends/test_cpu_perceiver.py "$ROOT"/tests/backends/test_cpu_perceiver_attention.py \
  "$PKG/tests/"
rm -f "$PKG"/edgetam_kernels/_C*.so
PYINC=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
aarch64-linux-gnu-g++ -O3 -std=c++17 -shared -fPIC -fvisibility=hidden \
  -DTORCH_TARGET_VERSION=0x020a000000000000 -DPy_LIMITED_API=0x030a0000 \
  -I"$SITE/torch/include" -I"$PYINC" \
  csrc/register.cpp csrc/dispatch.cpp csrc/isa/scalar.cpp csrc/isa/arm_neon.cpp \
  csrc/isa/arm_neon_fp16.cpp csrc/isa/arm_neon_bf16.cpp \
  -L"$SITE/torch/lib" -ltorch_cpu -lc10 -Wl,--allow-shlib-undefined \
  -o "$PKG/edgetam_kernels/_C.so"

# 4. Run the torch-level CPU tests under qemu. The env-var test spawns a subprocess (no binfmt
# here) and torch.compile needs a C++ compiler inside the emulated machine: both deselected, as
# are EdgeTAM-sized cases whose float64 reference is too slow under emulation.
DEFAULT_K='not env_var and not compile and not edgetam_grids and not edgetam_shape and not self_32x32 and not edgetam_32x32 and not budget_separates'
cd "$PKG"  # so `python -m` does not import the host tree's edgetam_kernels
run() {
  echo "== qemu -cpu max, EDGETAM_KERNELS_CPU_ISA=${1:-auto}"
  EDGETAM_KERNELS_CPU_ISA=${1:-} PYTHONPATH="$PKG:$SITE" QEMU_CPU=max \
    qemu-aarch64-static -L "$SYSROOT" "$SYSROOT/usr/bin/python3.11" -m pytest -q -p no:cacheprovider \
    --rootdir "$PKG" -c /dev/null tests/backends/test_cpu_attention.py tests/backends/test_cpu_perceiver.py \
    tests/backends/test_cpu_perceiver_attention.py -k "${PYTEST_K:-$DEFAULT_K}" ${PYTEST_ARGS:-}
}
PYTHONPATH="$PKG:$SITE" QEMU_CPU=max qemu-aarch64-static -L "$SYSROOT" "$SYSROOT/usr/bin/python3.11" -c \
  "import torch, edgetam_kernels as ek; from edgetam_kernels import cpu; print('torch', torch.__version__, 'isa', cpu.isa(), cpu.available_isas()); print(ek.backends()['cpu'])"
for isa in ${ISAS:-auto neon}; do
  if [ "$isa" = auto ]; then run ""; else run "$isa"; fi
done
