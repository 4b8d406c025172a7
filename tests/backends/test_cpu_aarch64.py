"""The C++ kernel tests (tests/backends/csrc/test_kernels.cpp, torch-free) built natively and cross-built
for aarch64, run under qemu: NEON + BF16 dot with `-cpu max`, the plain NEON fallback with
`-cpu cortex-a53` (no FP16 / BF16, where those instructions would raise SIGILL).

Needs `apt-get install -y --no-install-recommends g++-aarch64-linux-gnu qemu-user-static`;
skipped (saying so) only when the cross compiler or qemu is missing.
"""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# every torch-free kernel source of csrc/sources.txt: each ISA file compiles to nothing on
# another architecture, so one list serves the host and the cross build
SOURCES = ["tests/backends/csrc/test_kernels.cpp", *(
    row.split()[1] for row in (ROOT / "csrc" / "sources.txt").read_text().splitlines()
    if row.strip() and not row.startswith("#") and row.split()[0] != "torch")]
CROSS = shutil.which("aarch64-linux-gnu-g++")
QEMU = shutil.which("qemu-aarch64-static")
HOST = shutil.which(os.environ.get("CXX", "g++"))


def build(compiler, out, extra=()):
    cmd = [compiler, "-O2", "-std=c++17", "-pthread", *extra, "-o", str(out), *SOURCES]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, f"build failed: {' '.join(cmd)}\n{res.stderr[-4000:]}"
    return out


def run(cmd):
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{res.stdout[-6000:]}{res.stderr[-2000:]}"
    assert "PASSED" in res.stdout
    return res.stdout


@pytest.fixture(scope="module")
def arm_binary(tmp_path_factory):
    if CROSS is None or QEMU is None:
        pytest.skip("aarch64 cross compiler or qemu missing: apt-get install -y "
                    "--no-install-recommends g++-aarch64-linux-gnu qemu-user-static")
    return build(CROSS, tmp_path_factory.mktemp("arm") / "test_kernels", ["-static"])


@pytest.mark.skipif(HOST is None, reason="no host C++ compiler")
def test_host_kernels(tmp_path):
    out = run([build(HOST, tmp_path / "test_kernels")])
    assert "attention scalar" in out and "perceiver" in out and "perceiver_attention" in out


def test_aarch64_max_neon_bf16(arm_binary):
    """-cpu max has FEAT_FP16, FEAT_FHM and FEAT_BF16: best path neon_bf16 (BFDOT, FMLAL), and
    neon_fp16 (FMLAL) is tested on its own too."""
    out = run([QEMU, "-cpu", "max", str(arm_binary), "--expect-best", "neon_bf16",
               "--expect-supported", "scalar,neon,neon_fp16,neon_bf16"])
    assert "attention neon_bf16" in out and "attention neon_fp16" in out
    assert "perceiver_attention neon_bf16" in out and "perceiver_attention neon " in out
    assert "compute bf16" in out and "compute f16" in out


def test_aarch64_cortex_a53_fallback(arm_binary):
    """Cortex-A53 (ARMv8.0): no FP16 / FHM / BF16; plain NEON runs every precision (emulated)."""
    run([QEMU, "-cpu", "cortex-a53", str(arm_binary), "--expect-best", "neon",
         "--expect-supported", "scalar,neon"])
