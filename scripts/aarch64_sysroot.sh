#!/usr/bin/env bash
# Builds an aarch64 Python 3.11 + torch environment that runs on this x86-64 machine under
# qemu-user (no binfmt needed), for testing aarch64 builds of edgetam_kernels.
#
#   bash scripts/aarch64_sysroot.sh [DIR] [TORCH_VERSION]     (default /opt/edgetam-aarch64, 2.10.0)
#   then: $DIR/python -m pytest ...      (a wrapper: qemu-aarch64-static -L sysroot python3.11)
#
# torch 2.9.1 and 2.10.0 are the last aarch64 wheels on PyPI without CUDA dependencies; 2.10.0 is
# also the oldest torch the stable-ABI build targets. torch needs ARMv8.2, hence QEMU_CPU=max.
set -euo pipefail
DIR=${1:-/opt/edgetam-aarch64}
TORCH=${2:-2.10.0}
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
if [ -x "$DIR/python" ] && [ -f "$DIR/.torch-$TORCH" ]; then
  echo "aarch64 environment ready in $DIR"; exit 0
fi

export DEBIAN_FRONTEND=noninteractive
need=()
command -v qemu-aarch64-static >/dev/null || need+=(qemu-user-static)
command -v aarch64-linux-gnu-g++ >/dev/null || need+=(g++-aarch64-linux-gnu)
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
  dpkg --add-architecture arm64
  apt-get update -qq
elif [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
fi
[ ${#need[@]} -eq 0 ] || apt-get install -y -qq --no-install-recommends "${need[@]}"

# The arm64 Python and every shared library it (and torch) needs, unpacked into a sysroot.
mkdir -p "$DIR/debs" "$DIR/sysroot"
(
  cd "$DIR/debs"
  pkgs=$(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
           --no-replaces --no-enhances --no-pre-depends python3.11:arm64 libgomp1:arm64 libstdc++6:arm64 \
           libpython3.11-dev:arm64 \
         | grep -E '^[a-z0-9].*:arm64$' | sort -u)
  apt-get download -qq $pkgs
)
for deb in "$DIR"/debs/*.deb; do dpkg -x "$deb" "$DIR/sysroot"; done

# aarch64 wheels: torch and what the tests import.
mkdir -p "$DIR/wheels" "$DIR/site"
PIPDL=(python3 -m pip --isolated download -q --no-deps --only-binary=:all: -d "$DIR/wheels"
       --platform manylinux_2_28_aarch64 --platform manylinux_2_17_aarch64
       --platform manylinux2014_aarch64 --platform any --python-version 3.11 --implementation cp)
"${PIPDL[@]}" "torch==$TORCH" numpy markupsafe
"${PIPDL[@]}" filelock typing-extensions sympy mpmath networkx jinja2 fsspec \
  pytest iniconfig packaging pluggy pygments expecttest
python3 -m pip --isolated install -q --no-deps --no-compile --target "$DIR/site" \
  --only-binary=:all: --platform manylinux_2_28_aarch64 --platform manylinux_2_17_aarch64 \
  --platform manylinux2014_aarch64 --python-version 3.11 --implementation cp "$DIR"/wheels/*.whl

cat > "$DIR/python" <<WRAP
#!/usr/bin/env bash
# aarch64 python 3.11 under qemu-user, with torch $TORCH on its path.
export PYTHONPATH="$DIR/site\${PYTHONPATH:+:\$PYTHONPATH}"
export QEMU_CPU=\${QEMU_CPU:-max}
exec qemu-aarch64-static -L "$DIR/sysroot" "$DIR/sysroot/usr/bin/python3.11" "\$@"
WRAP
chmod +x "$DIR/python"
"$DIR/python" -c "import platform, torch; print(platform.machine(), 'torch', torch.__version__)"
touch "$DIR/.torch-$TORCH"
echo "aarch64 environment ready in $DIR"
